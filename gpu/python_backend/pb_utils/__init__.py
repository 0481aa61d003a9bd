"""The ``triton_python_backend_utils`` module that Triton python-backend models import.

Why this exists: evserve runs Triton python-backend models unchanged, and every such model
starts with ``import triton_python_backend_utils as pb_utils``. In Triton that module is a
Python file plus C++ classes injected by the per-instance stub process. evserve runs models
in-process, so the same API is written here in Python over NumPy arrays (and CuPy arrays when
a model hands back device tensors). :mod:`evserve.gpu.python_backend.importer` registers this package as
``sys.modules["triton_python_backend_utils"]`` when it loads a model; no top-level package of
that name is ever installed.

Behaviour, messages and return types follow Triton's python backend (``pb_stub.cc``,
``pb_tensor.cc``, ``response_sender.cc`` and ``triton_python_backend_utils.py``) so that a
model which works there works here, and fails the same way where it would fail there. The
few places that differ are said where they are: the model-loading API raises, BLS raises in
process-isolated instances (their process has no model manager), and ``TritonError`` may also be
raised as an exception.

Triton's module is flat, so this package re-exports every public name of its modules here.
"""

from __future__ import annotations

from evserve.gpu.python_backend.pb_utils.datatypes import (
    TRITON_STRING_TO_NUMPY,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    deserialize_bytes_tensor,
    numpy_to_triton_type,
    serialize_byte_tensor,
    triton_string_to_numpy,
    triton_to_numpy_type,
)
from evserve.gpu.python_backend.pb_utils.errors import (
    TritonError,
    TritonModelException,
)
from evserve.gpu.python_backend.pb_utils.inference import (
    TRITONSERVER_MEMORY_CPU,
    TRITONSERVER_MEMORY_GPU,
    InferenceRequest,
    InferenceResponse,
    InferenceResponseSender,
    MemoryType,
    PreferredMemory,
    get_input_tensor_by_name,
    get_output_tensor_by_name,
)
from evserve.gpu.python_backend.pb_utils.logger import (
    Logger,
)
from evserve.gpu.python_backend.pb_utils.metrics import (
    Metric,
    MetricFamily,
    MetricKind,
)
from evserve.gpu.python_backend.pb_utils.model_config import (
    ModelConfig,
    get_input_config_by_name,
    get_output_config_by_name,
    using_decoupled_model_transaction_policy,
)
from evserve.gpu.python_backend.pb_utils.model_control import (
    is_model_ready,
    load_model,
    unload_model,
)
from evserve.gpu.python_backend.pb_utils.tensor import (
    Tensor,
)

__all__ = [
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITON_STRING_TO_NUMPY",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "deserialize_bytes_tensor",
    "TritonError",
    "TritonModelException",
    "Tensor",
    "PreferredMemory",
    "MemoryType",
    "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_MEMORY_CPU",
    "InferenceResponse",
    "InferenceResponseSender",
    "InferenceRequest",
    "get_input_tensor_by_name",
    "get_output_tensor_by_name",
    "get_input_config_by_name",
    "get_output_config_by_name",
    "using_decoupled_model_transaction_policy",
    "ModelConfig",
    "Logger",
    "MetricKind",
    "Metric",
    "MetricFamily",
    "load_model",
    "unload_model",
    "is_model_ready",
]
