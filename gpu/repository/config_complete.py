"""Completing a parsed config: what Triton's core does between reading a config and serving it.

Triton core ``model_config_utils.cc`` (``AutoCompleteBackendFields``, ``NormalizeModelConfig``,
``NormalizeInstanceGroup``), restricted to what matters for the python backend; the checks
that run in between live in :mod:`evserve.gpu.repository.config_validate`. The result is what
``/config`` returns and what the model's ``initialize`` receives.
"""

from __future__ import annotations

import os
from typing import Any

from evserve.gpu.repository.config_parse import message_from_dict, message_to_dict
from evserve.gpu.repository.config_validate import validate_instance_groups, validate_io, validate_model
from evserve.gpu.repository.scan import available_versions
from evserve.gpu.repository.schema import schema

PYTHON_BACKEND = "python"
PYTHON_MODEL_FILENAME = "model.py"
# Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS.
SEQUENCE_IDLE_DEFAULT_US = 1_000_000


def complete_config(
    cfg: dict,
    model_name: str,
    source: str,
    *,
    model_dir: str | None = None,
    gpu_count: int = 0,
    check_io: bool = True,
) -> dict:
    """Validate ``cfg`` and fill in Triton's defaults; the result is what ``/config`` returns.

    ``model_dir`` lets a config without ``backend`` be recognised as a python model by its
    ``<version>/model.py``. ``gpu_count`` is the number of usable GPUs, which decides what the
    default instance group and ``KIND_AUTO`` become. ``check_io=False`` skips the input/output
    checks, as Triton does before the python model's ``auto_complete_config`` has run; call
    again with the default afterwards. The function is idempotent.
    """
    message = message_from_dict(cfg, f"{source}: ")
    _autofill(message, model_name, model_dir)
    validate_model(message, model_name, source)
    _normalize(message)
    _normalize_instance_groups(message, gpu_count)
    validate_instance_groups(message, gpu_count, source)
    if check_io:
        validate_io(message, source)
    return message_to_dict(message)


def _has_python_model(model_dir: str) -> bool:
    return any(
        os.path.isfile(os.path.join(model_dir, str(version), PYTHON_MODEL_FILENAME))
        for version in available_versions(model_dir)
    )


def _autofill(message: Any, model_name: str, model_dir: str | None) -> None:
    """Triton's ``AutoCompleteBackendFields``, for the python backend only.

    Triton looks at the first subdirectory only; any version directory with a model.py counts here.
    """
    if not message.name:
        message.name = model_name
    if not message.backend and not message.platform:
        if message.default_model_filename == PYTHON_MODEL_FILENAME or (
            not message.default_model_filename and model_dir is not None and _has_python_model(model_dir)
        ):
            message.backend = PYTHON_BACKEND
    if message.backend == PYTHON_BACKEND and not message.default_model_filename:
        message.default_model_filename = PYTHON_MODEL_FILENAME


def _normalize(message: Any) -> None:
    """Triton's ``NormalizeModelConfig``: defaults that depend on other fields."""
    if not message.HasField("version_policy"):
        message.version_policy.latest.num_versions = 1
    if message.HasField("dynamic_batching") and not message.dynamic_batching.preferred_batch_size:
        if message.max_batch_size > 0:
            message.dynamic_batching.preferred_batch_size.append(message.max_batch_size)
    if message.HasField("sequence_batching"):
        sequence = message.sequence_batching
        if sequence.max_sequence_idle_microseconds == 0:
            sequence.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_US
        if sequence.HasField("oldest") and not sequence.oldest.preferred_batch_size and message.max_batch_size > 0:
            sequence.oldest.preferred_batch_size.append(message.max_batch_size)
    if message.HasField("ensemble_scheduling"):
        message.model_transaction_policy.SetInParent()  # Triton prints {"decoupled": false} for ensembles
    else:
        optimization = message.optimization
        if not optimization.HasField("input_pinned_memory"):
            optimization.input_pinned_memory.enable = True
        if not optimization.HasField("output_pinned_memory"):
            optimization.output_pinned_memory.enable = True


def _normalize_instance_groups(message: Any, gpu_count: int) -> None:
    """Triton's ``NormalizeInstanceGroup`` with the python backend's preferred group.

    Without ``instance_group`` there is one group named after the model: ``KIND_GPU`` on every
    GPU when there are GPUs (one instance per GPU), else one ``KIND_CPU`` instance.
    """
    if message.HasField("ensemble_scheduling"):
        return
    kinds = schema().ModelInstanceGroup
    if not message.instance_group:
        group = message.instance_group.add(name=message.name)
        if gpu_count > 0:
            group.kind = kinds.KIND_GPU
    for index, group in enumerate(message.instance_group):
        if not group.name:
            group.name = f"{message.name}_{index}"
        if group.kind == kinds.KIND_AUTO:
            on_gpus = gpu_count > 0 and all(0 <= gpu < gpu_count for gpu in group.gpus)
            group.kind = kinds.KIND_GPU if on_gpus else kinds.KIND_CPU
        if group.count < 1:
            group.count = 1
        if group.kind == kinds.KIND_GPU and not group.gpus:
            group.gpus.extend(range(gpu_count))
