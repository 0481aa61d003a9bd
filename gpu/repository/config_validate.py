"""Triton's checks on a model configuration; every error names the file and the field.

Core ``model_config_utils.cc``: ``ValidateModelConfig``, ``ValidateInstanceGroup``,
``ValidateModelIOConfig`` and ``ValidateIOShape``. The message ends up verbatim in a
``load failed for model 'm': ...`` reply, so it says where the problem is.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from typing import Any

from evserve.gpu.repository.config_parse import ModelConfigError
from evserve.gpu.repository.schema import schema
from evserve.protocol.datatypes import CONFIG_TYPES

WILDCARD_DIM = -1
_TENSORRT_PLATFORM = "tensorrt_plan"


def _fail(source: str, field: str, problem: str) -> ModelConfigError:
    return ModelConfigError(f"{source}: {field}: {problem}")


def validate_model(message: Any, model_name: str, source: str) -> None:
    """The model-level checks of Triton's ``ValidateModelConfig`` and the repository manager."""
    name = message.name
    if name != model_name:
        raise _fail(
            source,
            "name",
            f"unexpected directory name '{model_name}' for model '{name}', directory name must equal model name",
        )
    if not message.backend and not message.platform:
        raise _fail(source, "backend", f"must specify 'platform' or 'backend' for '{name}'")
    if message.max_batch_size < 0:
        raise _fail(source, "max_batch_size", f"'max_batch_size' must be non-negative value for {name}")
    if message.HasField("dynamic_batching"):
        _validate_dynamic_batching(message, source)
    if message.HasField("sequence_batching"):
        _validate_sequence_batching(message, source)
    if message.model_transaction_policy.decoupled and message.response_cache.enable:
        raise _fail(source, "response_cache", f"Response Cache does not currently support model {name} with "
                    "'decoupled' transaction policy. Please disable the response cache.")


def _validate_preferred_sizes(sizes: Iterable[int], max_batch_size: int, field: str, source: str) -> None:
    for size in sizes:
        if size <= 0:
            raise _fail(source, field, f"preferred batch size must be positive, got {size}")
        if size > max_batch_size:
            raise _fail(source, field, f"preferred batch size {size} must be <= max_batch_size {max_batch_size}")


def _validate_dynamic_batching(message: Any, source: str) -> None:
    batching = message.dynamic_batching
    _validate_preferred_sizes(
        batching.preferred_batch_size, message.max_batch_size, "dynamic_batching.preferred_batch_size", source
    )
    levels = batching.priority_levels
    if levels:
        if not 1 <= batching.default_priority_level <= levels:
            raise _fail(
                source,
                "dynamic_batching.default_priority_level",
                f"default priority level must be in range [1, {levels}]",
            )
        for level in batching.priority_queue_policy:
            if not 1 <= level <= levels:
                raise _fail(
                    source,
                    "dynamic_batching.priority_queue_policy",
                    f"priority queue policy must have priority level in range [1, {levels}], got {level}",
                )
    if batching.preserve_ordering:
        _validate_preserve_ordering(batching, source)


def _validate_preserve_ordering(batching: Any, source: str) -> None:
    if batching.priority_levels > 1:
        raise _fail(
            source,
            "dynamic_batching.preserve_ordering",
            "Only one priority level is allowed when 'preserve_ordering' is true",
        )
    delay = schema().ModelQueuePolicy.DELAY
    policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
    if any(p.default_timeout_microseconds != 0 and p.timeout_action == delay for p in policies):
        raise _fail(
            source,
            "dynamic_batching.preserve_ordering",
            "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true",
        )


def _validate_sequence_batching(message: Any, source: str) -> None:
    sequence = message.sequence_batching
    if message.response_cache.enable:
        problem = (f"Response Cache does not currently support model {message.name} with sequence batching "
                   "scheduler. Please disable the response cache.")
        raise _fail(source, "response_cache", problem)
    if sequence.HasField("oldest"):
        _validate_preferred_sizes(
            sequence.oldest.preferred_batch_size,
            message.max_batch_size,
            "sequence_batching.oldest.preferred_batch_size",
            source,
        )
    _validate_control_inputs(message, source)
    if sequence.HasField("direct") and not 0.0 <= sequence.direct.minimum_slot_utilization <= 1.0:
        raise _fail(
            source,
            "sequence_batching.direct.minimum_slot_utilization",
            "sequence batching minimum slot utilization must be in range (0.0, 1.0]",
        )


_CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")
_FLAG_FIELDS = ("int32_false_true", "fp32_false_true", "bool_false_true")


def _validate_control_inputs(message: Any, source: str) -> None:
    """Triton's checks of ``sequence_batching.control_input`` (its texts, after file and field)."""
    name = message.name
    field = "sequence_batching.control_input"
    control_kind = schema().ModelSequenceBatching.Control.Kind
    data_type = schema().DataType
    seen: set[str] = set()
    for entry in message.sequence_batching.control_input:
        if not entry.name:
            raise _fail(source, field, f"sequence batching control tensor must have a name for {name}")
        for control in entry.control:
            kind = control_kind.Name(control.kind)
            if kind in seen:
                raise _fail(source, field, f"sequence batching specifies multiple {kind} tensors for {name}")
            seen.add(kind)
            if kind == "CONTROL_SEQUENCE_CORRID":
                if data_type.Name(control.data_type) not in _CORRID_TYPES:
                    raise _fail(source, field, f"unexpected data type for control {kind} for {name}. Allowed data "
                                               "types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and "
                                               "TYPE_STRING")
                continue
            given = [flags for flags in _FLAG_FIELDS if len(getattr(control, flags))]
            if not given:
                raise _fail(source, field, "sequence batching must specify either 'int32_false_true', "
                                           f"'fp32_false_true' or 'bool_false_true' for {kind} for {name}")
            if len(given) > 1:
                raise _fail(source, field, "sequence batching specifies more than one from 'int32_false_true', "
                                           f"'fp32_false_true' and 'bool_false_true' for {kind} for {name}")
            if len(getattr(control, given[0])) != 2:
                raise _fail(source, field, f"sequence batching control '{given[0]}' must have exactly 2 entries for "
                                           f"{kind} for {name}")


def validate_instance_groups(message: Any, gpu_count: int, source: str) -> None:
    """Triton's ``ValidateInstanceGroup``: kinds and GPU ids must fit this machine."""
    kinds = schema().ModelInstanceGroup
    for index, group in enumerate(message.instance_group):
        field = f"instance_group[{index}]"
        label = f"instance group {group.name} of model {message.name}"
        if group.kind == kinds.KIND_GPU:
            if not group.gpus:
                raise _fail(source, field, f"{label} has kind KIND_GPU but no GPUs are available")
            for gpu in group.gpus:
                if not 0 <= gpu < gpu_count:
                    available = ", ".join(map(str, range(gpu_count))) or "none"
                    problem = f"{label} specifies invalid gpu id {gpu}, available: {available}"
                    raise _fail(source, f"{field}.gpus", problem)
        elif group.kind in (kinds.KIND_CPU, kinds.KIND_MODEL):
            if group.gpus:
                kind = kinds.Kind.Name(group.kind)
                raise _fail(source, f"{field}.gpus", f"{label} has kind {kind} but specifies one or more GPUs")
        else:
            raise _fail(source, f"{field}.kind", f"{label} has unknown kind {group.kind}")
        if group.profile and message.platform != _TENSORRT_PLATFORM:
            raise _fail(source, f"{field}.profile", f"{label} specifies profiles, which only TensorRT models support")


def validate_io(message: Any, source: str) -> None:
    """Triton's ``ValidateModelIOConfig``, plus unique names and label files kept inside the model."""
    formats = schema().ModelInput
    for kind, ios in (("input", message.input), ("output", message.output)):
        seen: set[str] = set()
        for index, io in enumerate(ios):
            field = f"{kind}[{index}]"
            _validate_io_shape(io, kind, field, message.max_batch_size, source)
            if io.name in seen:
                raise _fail(source, f"{field}.name", f"model {kind} '{io.name}' is declared more than once")
            seen.add(io.name)
            if io.is_shape_tensor and message.platform != _TENSORRT_PLATFORM:
                problem = "shape tensors are only supported for TensorRT platform"
                raise _fail(source, f"{field}.is_shape_tensor", problem)
            if io.is_non_linear_format_io and message.platform != _TENSORRT_PLATFORM:
                raise _fail(
                    source,
                    f"{field}.is_non_linear_format_io",
                    "Non-linear IO format is only supported for the TensorRT platform",
                )
            if kind == "input" and io.format in (formats.FORMAT_NHWC, formats.FORMAT_NCHW) and len(io.dims) != 3:
                raise _fail(source, f"{field}.format", "model input NHWC/NCHW require 3 dims")
            if kind == "output" and io.label_filename and not _stays_inside(io.label_filename):
                raise _fail(
                    source,
                    f"{field}.label_filename",
                    f"label file path '{io.label_filename}' for output '{io.name}' is outside model directory",
                )


def _stays_inside(relative: str) -> bool:
    normal = posixpath.normpath(relative.replace(os.sep, "/"))
    return not posixpath.isabs(normal) and normal != ".." and not normal.startswith("../") and "\0" not in normal


def _validate_io_shape(io: Any, kind: str, field: str, max_batch_size: int, source: str) -> None:
    """Triton's ``ValidateIOShape``: name, data type, dims and reshape."""
    if not io.name:
        raise _fail(source, f"{field}.name", f"model {kind} must specify 'name'")
    label = f"model {kind} '{io.name}'"
    data_types = schema().DataType
    if io.data_type not in data_types.values() or data_types.Name(io.data_type) not in CONFIG_TYPES:
        raise _fail(source, f"{field}.data_type", f"{label} must specify a valid 'data_type'")
    if not io.dims:
        raise _fail(source, f"{field}.dims", f"{label} must specify 'dims'")
    if any(dim < 1 and dim != WILDCARD_DIM for dim in io.dims):
        raise _fail(
            source,
            f"{field}.dims",
            f"{label} dimension must be integer >= 1, or {WILDCARD_DIM} to indicate a variable-size dimension",
        )
    if io.HasField("reshape"):
        _validate_reshape(list(io.dims), list(io.reshape.shape), f"{field}.reshape", label, max_batch_size, source)


def _element_count(dims: list[int]) -> int:
    """Triton's ``GetElementCount``: -1 if any dimension is variable, 0 for no dimensions."""
    if WILDCARD_DIM in dims:
        return WILDCARD_DIM
    count = 0
    for dim in dims:
        count = dim if count == 0 else count * dim
    return count


def _fixed_runs(dims: list[int]) -> list[int]:
    """Element counts of the runs of fixed dimensions between variable ones."""
    runs, current = [], 1
    for dim in dims:
        if dim == WILDCARD_DIM:
            runs.append(current)
            current = 1
        else:
            current *= dim
    runs.append(current)
    return runs


def _validate_reshape(
    dims: list[int], shape: list[int], field: str, label: str, max_batch_size: int, source: str
) -> None:
    if not shape and max_batch_size == 0:
        raise _fail(
            source,
            field,
            f"{label} cannot have empty reshape for non-batching model as scalar tensors are not supported",
        )
    if any(dim < 1 and dim != WILDCARD_DIM for dim in shape):
        raise _fail(
            source,
            field,
            f"{label} reshape dimensions must be integer >= 1, or {WILDCARD_DIM} to indicate a variable-size dimension",
        )
    dims_size, reshape_size = _element_count(dims), _element_count(shape)
    # An empty reshape (a scalar) is allowed for dims of one element.
    if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
        raise _fail(source, field, f"{label} has different size for dims and reshape")
    if dims_size == WILDCARD_DIM:
        dim_runs, shape_runs = _fixed_runs(dims), _fixed_runs(shape)
        if len(dim_runs) != len(shape_runs):
            raise _fail(source, field, f"{label} has different number of variable-size dimensions for dims and reshape")
        if dim_runs != shape_runs:
            raise _fail(source, field, f"{label} has different size for dims and reshape")
