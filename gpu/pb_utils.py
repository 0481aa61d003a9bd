"""The ``triton_python_backend_utils`` module that Triton python-backend models import.

Why this exists: evserve runs Triton python-backend models unchanged, and every such model
starts with ``import triton_python_backend_utils as pb_utils``. In Triton that module is a
Python file plus C++ classes injected by the per-instance stub process. evserve runs models
in-process, so the same API is written here in Python over NumPy arrays (and CuPy arrays when
a model hands back device tensors). :mod:`evserve.gpu.python_model` registers this module as
``sys.modules["triton_python_backend_utils"]`` when it loads a model; no top-level package of
that name is ever installed.

Behaviour, messages and return types follow Triton's python backend (``pb_stub.cc``,
``pb_tensor.cc``, ``response_sender.cc`` and ``triton_python_backend_utils.py``) so that a
model which works there works here, and fails the same way where it would fail there. The
few places that differ are said where they are: BLS and the model-loading API raise
(in-process models have no stub to route them), custom metrics are kept but not exported, and
``TritonError`` may also be raised as an exception.
"""

from __future__ import annotations

import ctypes
import enum
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from evserve.protocol.datatypes import datatype_of
from evserve.protocol.errors import TritonCode

_log = logging.getLogger("evserve.model")

# --------------------------------------------------------------------------------------------
# Constants (values are Triton's C API values)

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# --------------------------------------------------------------------------------------------
# Data types. Kept here rather than shared with the protocol layer because the python backend
# has its own vocabulary: TRITONSERVER_DataType codes and config names (TYPE_*).

# (protocol name, TRITONSERVER_DataType code)
_DATATYPE_CODES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 2,
    "UINT16": 3,
    "UINT32": 4,
    "UINT64": 5,
    "INT8": 6,
    "INT16": 7,
    "INT32": 8,
    "INT64": 9,
    "FP16": 10,
    "FP32": 11,
    "FP64": 12,
    "BYTES": 13,
    "BF16": 14,
}

# Triton's own table, including its quirk that TYPE_BOOL maps to Python's bool.
TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

_NUMPY_OF_CODE: dict[int, Any] = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    13: np.object_,
}


def _datatype_of(dtype: np.dtype) -> str | None:
    """Protocol name of a NumPy dtype, or None; object and fixed-width bytes arrays are BYTES.

    Unicode arrays are refused, as Triton's python backend refuses them: strings travel as bytes.
    """
    if dtype.kind == "U":
        return None
    try:
        return datatype_of(dtype)
    except ValueError:
        return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """NumPy type for a config data type name, e.g. ``"TYPE_FP32"`` → ``np.float32``."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> Any:
    """NumPy type for a TRITONSERVER_DataType code; None for codes NumPy cannot hold (BF16)."""
    return _NUMPY_OF_CODE.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """TRITONSERVER_DataType code of a NumPy dtype or type; None when Triton has none."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    datatype = _datatype_of(dtype)
    return None if datatype is None else _DATATYPE_CODES[datatype]


# --------------------------------------------------------------------------------------------
# Errors


class TritonError(Exception):
    """An error a model reports for one request: ``InferenceResponse(error=TritonError(...))``.

    The code picks the HTTP status (INVALID_ARG → 400, UNAVAILABLE → 503, ...). Triton's class is
    not an exception; evserve's also may be raised from ``execute``, which then fails the whole
    batch with this code and message instead of a 500.
    """

    UNKNOWN = TritonCode.UNKNOWN
    INTERNAL = TritonCode.INTERNAL
    NOT_FOUND = TritonCode.NOT_FOUND
    INVALID_ARG = TritonCode.INVALID_ARG
    UNAVAILABLE = TritonCode.UNAVAILABLE
    UNSUPPORTED = TritonCode.UNSUPPORTED
    ALREADY_EXISTS = TritonCode.ALREADY_EXISTS
    CANCELLED = TritonCode.CANCELLED

    def __init__(self, message: str, code: int = TritonCode.INTERNAL) -> None:
        if message is None:
            raise TypeError("TritonError: message must not be None")
        super().__init__(message)
        self._message = str(message)
        self._code = TritonCode(code)

    def message(self) -> str:
        return self._message

    def code(self) -> TritonCode:
        return self._code

    def __str__(self) -> str:
        return self._message


class TritonModelException(Exception):
    """Raised by the backend API on misuse, and by models to fail initialize/execute/finalize."""

    def message(self) -> str:
        """The message, as Triton's older python implementation offered it."""
        return str(self)


# --------------------------------------------------------------------------------------------
# BYTES helpers: each element is a 4-byte little-endian length followed by its bytes, the same
# layout as the HTTP binary extension.


def _element_bytes(item: Any) -> bytes:
    """Bytes of one BYTES element: bytes as they are, anything else as UTF-8 of ``str()``."""
    if isinstance(item, bytes):
        return item
    return str(item).encode("utf-8")


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | None:
    """Flatten a BYTES array (object or ``np.bytes_``) in C order into length-prefixed bytes.

    Returns None for other dtypes and ``b""`` for an empty array (Triton returns an empty tuple
    there; both are empty and falsy).
    """
    if input_tensor.dtype.kind not in "OS":
        return None
    parts: list[bytes] = []
    for item in input_tensor.ravel(order="C"):
        data = _element_bytes(item)
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Split length-prefixed bytes into a 1-D object array of ``bytes``.

    Truncated input raises TritonModelException with Triton's messages rather than returning a
    partial array.
    """
    view = memoryview(encoded_tensor).cast("B")
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise TritonModelException("Invalid bytes tensor data: incomplete length field")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > end:
            raise TritonModelException("Invalid bytes tensor data: string extends beyond buffer")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    result = np.empty(len(items), dtype=np.object_)
    result[:] = items
    return result


# --------------------------------------------------------------------------------------------
# DLPack. A capsule is opaque to Python, yet Tensor.from_dlpack must know its device (NumPy or
# CuPy?) and its element type (BF16 has no NumPy/CuPy dtype, so BF16 capsules are read as
# uint16 and the tensor remembers it is BF16). The DLPack structs are read with ctypes.

_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 13
_KDL_INT, _KDL_UINT, _KDL_FLOAT, _KDL_BFLOAT, _KDL_BOOL = 0, 1, 2, 4, 6

_DATATYPE_OF_DLPACK: dict[tuple[int, int], str] = {
    (_KDL_BOOL, 8): "BOOL",
    (_KDL_UINT, 8): "UINT8",
    (_KDL_UINT, 16): "UINT16",
    (_KDL_UINT, 32): "UINT32",
    (_KDL_UINT, 64): "UINT64",
    (_KDL_INT, 8): "INT8",
    (_KDL_INT, 16): "INT16",
    (_KDL_INT, 32): "INT32",
    (_KDL_INT, 64): "INT64",
    (_KDL_FLOAT, 16): "FP16",
    (_KDL_FLOAT, 32): "FP32",
    (_KDL_FLOAT, 64): "FP64",
    (_KDL_BFLOAT, 16): "BF16",
}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensorVersioned(ctypes.Structure):
    """DLPack ≥ 1.0 capsules ("dltensor_versioned") put a header before the DLTensor."""

    _fields_ = [
        ("version_major", ctypes.c_uint32),
        ("version_minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


# Own prototypes rather than ctypes.pythonapi attributes, whose restype other code may change.
_capsule_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


def _is_capsule(obj: object) -> bool:
    return type(obj).__name__ == "PyCapsule"


def _dltensor(capsule: object) -> _DLTensor:
    """The DLTensor a DLPack capsule points at (live view: writes change the capsule)."""
    name = _capsule_name(capsule)
    if name == b"dltensor":
        return _DLTensor.from_address(_capsule_pointer(capsule, name))
    if name == b"dltensor_versioned":
        return _DLManagedTensorVersioned.from_address(_capsule_pointer(capsule, name)).dl_tensor
    if name in (b"used_dltensor", b"used_dltensor_versioned"):
        raise TritonModelException("The DLPack capsule has already been consumed.")
    raise TritonModelException(f"Not a DLPack capsule (capsule name {name!r}).")


class _CapsuleSource:
    """Hands an existing capsule to ``np.from_dlpack``/``cupy.from_dlpack``, which want an object."""

    def __init__(self, capsule: object, device: tuple[int, int]) -> None:
        self._capsule = capsule
        self._device = device

    def __dlpack__(self, **_kwargs: Any) -> object:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._device


def _cupy() -> Any:
    """CuPy, imported on first need so that CPU-only servers never import it."""
    try:
        import cupy
    except ImportError as exc:
        raise TritonModelException("A GPU tensor was given but CuPy is not installed.") from exc
    return cupy


def _consumer_stream() -> int:
    """The CUDA stream a producer must make its data ready on: CuPy's current one (1 = legacy default)."""
    return _cupy().cuda.get_current_stream().ptr or 1


def _capsule_of(obj: Any) -> object:
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise TritonModelException(
            "Provided tensor is not supported. Tensor must be a DLPack capsule or have "
            "`__dlpack__` and `__dlpack_device__` attributes"
        )
    device_type = obj.__dlpack_device__()[0]
    if device_type in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        return obj.__dlpack__(stream=_consumer_stream())
    return obj.__dlpack__()


def _array_of_capsule(capsule: object) -> tuple[Any, str]:
    """Consume a capsule: the array over its memory (NumPy or CuPy) and its datatype."""
    dl_tensor = _dltensor(capsule)
    dtype = dl_tensor.dtype
    datatype = _DATATYPE_OF_DLPACK.get((dtype.code, dtype.bits)) if dtype.lanes == 1 else None
    if datatype is None:
        raise TritonModelException(
            f"DLPack data type (code {dtype.code}, {dtype.bits} bits, {dtype.lanes} lanes) is not supported."
        )
    if datatype == "BF16":
        dtype.code = _KDL_UINT  # read the 2-byte elements as uint16; the tensor keeps "BF16"
    device = (dl_tensor.device.device_type, dl_tensor.device.device_id)
    source = _CapsuleSource(capsule, device)
    if device[0] in (_KDL_CPU, _KDL_CUDA_HOST):
        return np.from_dlpack(source), datatype
    if device[0] in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        return _cupy().from_dlpack(source), datatype
    raise TritonModelException(f"DLPack device type {device[0]} is not supported.")


# --------------------------------------------------------------------------------------------
# Tensor


def _check_tensor_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"Tensor name must be a str, found type '{type(name)}'")
    if name == "":
        raise TritonModelException("Tensor name cannot be an empty string.")


def _unsupported_dtype(dtype: np.dtype) -> TritonModelException:
    hint = " Use dtype=np.object_ for strings." if dtype.kind == "U" else ""
    return TritonModelException(f"NumPy dtype is not supported: {dtype}.{hint}")


class Tensor:
    """A named input or output tensor: a NumPy array (or a CuPy array, for device tensors).

    Like Triton, the array is kept C-contiguous (copying only when it is not), BYTES tensors are
    object arrays of ``bytes`` or ``str``, and BF16 tensors cannot be read with ``as_numpy()``:
    use ``to_dlpack()``/``from_dlpack()``.
    """

    __slots__ = ("_name", "_array", "_datatype")

    def __init__(self, name: str, numpy_array: Any) -> None:
        _check_tensor_name(name)
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        datatype = _datatype_of(array.dtype)
        if datatype is None:
            raise _unsupported_dtype(array.dtype)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        self._name = name
        self._array = np.ascontiguousarray(array)
        self._datatype = datatype

    @classmethod
    def _wrap(cls, name: str, array: Any, datatype: str) -> Tensor:
        """A tensor over ``array`` as is (no checks, no copy): evserve's inputs and DLPack imports."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        tensor._datatype = datatype
        return tensor

    def name(self) -> str:
        return self._name

    def triton_dtype(self) -> int:
        """The TRITONSERVER_DataType code (FP32 = 11, BYTES = 13, BF16 = 14, ...)."""
        return _DATATYPE_CODES[self._datatype]

    def shape(self) -> list[int]:
        return [int(dim) for dim in self._array.shape]

    def is_cpu(self) -> bool:
        return isinstance(self._array, np.ndarray)

    def as_numpy(self) -> np.ndarray:
        if not self.is_cpu():
            raise TritonModelException("Tensor is stored in GPU and cannot be converted to NumPy.")
        if self._datatype == "BF16":
            raise TritonModelException(
                "Tensor dtype is BF16 and cannot be converted to NumPy. Use to_dlpack() and from_dlpack() instead."
            )
        return self._array

    def to_dlpack(self) -> object:
        """A (legacy, "dltensor") DLPack capsule over the data, zero-copy where DLPack allows."""
        return self._export(None)

    def __dlpack__(self, stream: Any = None, **_kwargs: Any) -> object:
        return self._export(stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        if self.is_cpu():
            return (_KDL_CPU, 0)
        return tuple(self._array.__dlpack_device__())

    def _export(self, stream: Any) -> object:
        if self._datatype == "BYTES":
            raise TritonModelException("DLPack does not have support for string tensors.")
        array = self._array
        if self.is_cpu():
            # A legacy capsule cannot mark memory read-only (evserve's inputs are views of the
            # request body), so read-only data is exported from a copy.
            capsule = (array if array.flags.writeable else array.copy()).__dlpack__()
        else:
            capsule = array.__dlpack__(stream=stream)
        if self._datatype == "BF16":
            _dltensor(capsule).dtype.code = _KDL_BFLOAT
        return capsule

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> Tensor:
        """A tensor over a DLPack capsule or any object with ``__dlpack__`` (zero-copy).

        Host memory becomes a NumPy array; device memory a CuPy array (``is_cpu()`` is then
        False). Like Triton, only C-contiguous data is accepted.
        """
        _check_tensor_name(name)
        if isinstance(dlpack_tensor, Tensor):
            return Tensor._wrap(name, dlpack_tensor._array, dlpack_tensor._datatype)
        capsule = dlpack_tensor if _is_capsule(dlpack_tensor) else _capsule_of(dlpack_tensor)
        array, datatype = _array_of_capsule(capsule)
        if not array.flags.c_contiguous:
            raise TritonModelException(
                "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored in C-Order are "
                "supported."
            )
        return Tensor._wrap(name, array, datatype)

    def __repr__(self) -> str:
        return f"Tensor(name={self._name!r}, datatype={self._datatype}, shape={self.shape()})"


# --------------------------------------------------------------------------------------------
# Requests and responses


def _checked_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of request/response parameters, refused unless keys are str and values bool/int/str."""
    if not parameters:
        return {}
    if not isinstance(parameters, dict):
        raise TritonModelException(f"Expect parameters to be a dict, found type {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, (bool, int, str)):
            raise TritonModelException(f"Expect parameters values to have type bool/int/str, found type {type(value)}")
    return dict(parameters)


def _json(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters) if parameters else "{}"


class PreferredMemory:
    """Where a BLS caller would like outputs placed; kept so BLS code constructs, then fails in exec()."""

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class MemoryType(enum.IntEnum):
    TRITONSERVER_MEMORY_GPU = 0
    TRITONSERVER_MEMORY_CPU = 1


TRITONSERVER_MEMORY_GPU = MemoryType.TRITONSERVER_MEMORY_GPU
TRITONSERVER_MEMORY_CPU = MemoryType.TRITONSERVER_MEMORY_CPU

_BLS_UNSUPPORTED = (
    "BLS is not supported by evserve: InferenceRequest.{method}() cannot run model '{model}' "
    "(models run in-process; import the other model's code or call it over HTTP)."
)


class InferenceResponse:
    """A model's answer to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: Sequence[Tensor] = (),
        error: TritonError | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(output_tensors, (list, tuple)):
            raise TritonModelException('"output_tensors" must be a list.')
        for tensor in output_tensors:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f'"output_tensors" must contain pb_utils.Tensor objects, found type {type(tensor)}'
                )
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException(f'"error" must be a pb_utils.TritonError, found type {type(error)}')
        self._output_tensors = list(output_tensors)
        self._error = error
        self._parameters = _checked_parameters(parameters)

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        """The response parameters as a JSON string (Triton returns a string, not a dict)."""
        return _json(self._parameters)


def _never_cancelled() -> bool:
    return False


class InferenceResponseSender:
    """Sends responses for one request, with Triton's rules on counts and the FINAL flag.

    A decoupled model may send any number of responses and then FINAL. A default-mode model
    (allowed since Triton 24.06) sends exactly one response, with FINAL or followed by a bare
    FINAL. Nothing may follow FINAL. ``deliver`` (set by evserve) receives each accepted send,
    under this sender's lock so that responses keep their order.
    """

    def __init__(
        self,
        decoupled: bool | None,
        deliver: Callable[[InferenceResponse | None, int], None] | None = None,
        is_cancelled: Callable[[], bool] = _never_cancelled,
    ) -> None:
        self._decoupled = decoupled
        self._deliver = deliver
        self._is_cancelled = is_cancelled
        self._lock = threading.Lock()
        self._closed = False
        self._sent = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                f"Unable to send response. Expected an InferenceResponse, found type {type(response)}"
            )
        with self._lock:
            self._count(response, flags)
            if self._deliver is not None:
                self._deliver(response, flags)

    def _count(self, response: InferenceResponse | None, flags: int) -> None:
        if self._decoupled is None:
            raise TritonModelException(
                "Unable to send response. Response sender has no reference to the decoupled state of the model."
            )
        if not self._decoupled:
            if response is not None and self._sent > 0:
                raise TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send more than one response."
                )
            if response is None and self._sent == 0:
                raise TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send complete final before sending a response."
                )
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        self._sent += 1

    def is_cancelled(self) -> bool:
        return self._is_cancelled()

    def _close(self) -> None:
        """Refuse further sends: the request has been answered (or failed) by evserve."""
        with self._lock:
            self._closed = True


class InferenceRequest:
    """A request as ``execute`` receives it; constructed by a model, a BLS request (unsupported).

    The constructor has Triton's BLS signature so that BLS code fails at ``exec()`` with a clear
    message instead of at construction. evserve builds the requests it hands to ``execute``
    with :meth:`_received`.
    """

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: Sequence[Tensor] = (),
        requested_output_names: Iterable[str] = (),
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: object = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(correlation_id, (int, str)):
            raise TritonModelException("Correlation ID must be integer or string")
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._requested_output_names = set(requested_output_names)
        self._model_name = model_name
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._parameters = _json(_checked_parameters(parameters))
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._sender = InferenceResponseSender(None)
        self._is_cancelled: Callable[[], bool] = _never_cancelled

    @classmethod
    def _received(
        cls,
        *,
        request_id: str,
        correlation_id: int | str,
        inputs: list[Tensor],
        requested_output_names: Iterable[str],
        model_name: str,
        model_version: int,
        flags: int,
        parameters_json: str,
        sender: InferenceResponseSender,
        is_cancelled: Callable[[], bool],
    ) -> InferenceRequest:
        """A request from a client (parameters may include doubles, which BLS ones may not)."""
        request = cls(
            request_id=request_id,
            correlation_id=correlation_id,
            inputs=inputs,
            requested_output_names=requested_output_names,
            model_name=model_name,
            model_version=model_version,
            flags=flags,
        )
        request._parameters = parameters_json
        request._sender = sender
        request._is_cancelled = is_cancelled
        return request

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        """Request parameters as a JSON string (sequence/priority/timeout keys are not included)."""
        return self._parameters

    def requested_output_names(self) -> set[str]:
        """The outputs the client asked for (all of the model's when it named none); a set, as in Triton."""
        return self._requested_output_names

    def get_response_sender(self) -> InferenceResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._is_cancelled()

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = flags

    def exec(self, decoupled: bool = False) -> Any:
        raise TritonModelException(_BLS_UNSUPPORTED.format(method="exec", model=self._model_name))

    def async_exec(self, decoupled: bool = False) -> Any:
        raise TritonModelException(_BLS_UNSUPPORTED.format(method="async_exec", model=self._model_name))


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input called ``name``; None when the request does not carry it."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output called ``name``; None when it has none."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


# --------------------------------------------------------------------------------------------
# Model configuration helpers (on the JSON dict from ``json.loads(args["model_config"])``)


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in model_config.get("input", ()):
        if entry["name"] == name:
            return entry
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in model_config.get("output", ()):
        if entry["name"] == name:
            return entry
    return None


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    policy = model_config.get("model_transaction_policy")
    return bool(policy.get("decoupled", False)) if policy else False


class ModelConfig:
    """The configuration ``auto_complete_config`` may edit: inputs, outputs, batching, decoupling.

    Edits that contradict what config.pbtxt already says raise ValueError, with Triton's
    messages; the load then fails with that message.
    """

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        text = model_config if isinstance(model_config, str) else json.dumps(model_config)
        self._model_config: dict[str, Any] = json.loads(text)
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])
        self._model_config.setdefault("max_batch_size", 0)

    @property
    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def as_dict(self) -> dict[str, Any]:
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = self._model_config["max_batch_size"]
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config function for "
                f"model '{self._name}' specified max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in self._model_config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{scheduler}', but auto-complete-config "
                    f"function for model '{self._name}' tries to set scheduling_choice as 'dynamic_batching'"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add_tensor("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add_tensor("output", output, ("name", "data_type", "dims"))

    def _add_tensor(self, kind: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        """Add an input/output, or fill in one the config names; disagreeing entries raise."""
        label = tensor.get("name", "")
        extra = [key for key in tensor if key not in allowed]
        if extra:
            listed = ", ".join(f"'{key}'" for key in allowed)
            raise ValueError(
                f"{kind} '{label}' in auto-complete-config function for model '{self._name}' contains property "
                f"other than {listed}."
            )
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                where = f"{kind} '{label}'" if key != "name" else kind
                raise ValueError(
                    f"{where} in auto-complete-config function for model '{self._name}' is missing '{key}' property."
                )
        for current in self._model_config[kind]:
            if current["name"] == tensor["name"]:
                self._merge_tensor(kind, current, tensor)
                return
        self._model_config[kind].append(tensor)

    def _merge_tensor(self, kind: str, current: dict[str, Any], tensor: dict[str, Any]) -> None:
        name = tensor["name"]
        if current.get("data_type", "TYPE_INVALID") not in ("TYPE_INVALID", tensor["data_type"]):
            raise ValueError(
                f"unable to load model '{self._name}', configuration expects datatype {current['data_type']} for "
                f"{kind} '{name}', model provides {tensor['data_type']}"
            )
        if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
            raise ValueError(
                f"model '{self._name}', tensor '{name}': the model expects dims {tensor['dims']} but the model "
                f"configuration specifies dims {current['dims']}"
            )
        if "optional" in current and "optional" in tensor and current["optional"] != tensor["optional"]:
            raise ValueError(
                f"model '{self._name}', tensor '{name}': the model expects optional {tensor['optional']} but the "
                f"model configuration specifies optional {current['optional']}"
            )
        current["data_type"] = tensor["data_type"]
        current["dims"] = tensor["dims"]
        if "optional" in tensor:
            current["optional"] = tensor["optional"]

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        if any(key != "decoupled" for key in transaction_policy_dict):
            raise ValueError(
                f"model transaction property in auto-complete-config function for model '{self._name}' contains "
                "property other than 'decoupled'."
            )
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" not in transaction_policy_dict:
            return
        wanted = transaction_policy_dict["decoupled"]
        if "decoupled" in policy and policy["decoupled"] != wanted:
            raise ValueError(
                f"trying to change decoupled property in auto-complete-config for model '{self._name}', which is "
                f"already set to '{policy['decoupled']}'."
            )
        policy["decoupled"] = wanted


# --------------------------------------------------------------------------------------------
# Logging


class Logger:
    """Model logging into evserve's log (logger ``evserve.model``), tagged with the caller's line."""

    class LogLevel(enum.IntEnum):
        INFO = 0
        WARNING = 1
        ERROR = 2
        VERBOSE = 3

    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        _emit(Logger.LogLevel(level), message)

    @staticmethod
    def log_info(message: str) -> None:
        _emit(Logger.LogLevel.INFO, message)

    @staticmethod
    def log_warn(message: str) -> None:
        _emit(Logger.LogLevel.WARNING, message)

    @staticmethod
    def log_error(message: str) -> None:
        _emit(Logger.LogLevel.ERROR, message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _emit(Logger.LogLevel.VERBOSE, message)


_LOGGING_LEVEL = {
    Logger.LogLevel.INFO: logging.INFO,
    Logger.LogLevel.WARNING: logging.WARNING,
    Logger.LogLevel.ERROR: logging.ERROR,
    Logger.LogLevel.VERBOSE: logging.DEBUG,
}


def _emit(level: Logger.LogLevel, message: str) -> None:
    # stacklevel 3: past _emit and the Logger method, to the model's own line.
    _log.log(_LOGGING_LEVEL[level], "%s", message, stacklevel=3)


# --------------------------------------------------------------------------------------------
# Custom metrics: values are kept so models that use them run, but evserve does not export them.


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_metrics_warned = threading.Event()


class Metric:
    """One labelled series of a MetricFamily, with the C API's per-kind rules."""

    def __init__(self, kind: MetricKind, labels: dict[str, str], buckets: list[float] | None) -> None:
        self._kind = kind
        self.labels = dict(labels)
        self._lock = threading.Lock()
        self._value = 0.0
        self._buckets = buckets

    def increment(self, value: float) -> None:
        if self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException("increment is not supported for HISTOGRAM metrics")
        if self._kind is MetricKind.COUNTER and value < 0:
            raise TritonModelException("Counter metrics cannot be decremented")
        with self._lock:
            self._value += value

    def set(self, value: float) -> None:
        if self._kind is not MetricKind.GAUGE:
            raise TritonModelException("set is only supported for GAUGE metrics")
        with self._lock:
            self._value = float(value)

    def observe(self, value: float) -> None:
        if self._kind is not MetricKind.HISTOGRAM:
            raise TritonModelException("observe is only supported for HISTOGRAM metrics")
        with self._lock:
            self._value += value

    def value(self) -> float:
        if self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException("value is not supported for HISTOGRAM metrics")
        return self._value


class MetricFamily:
    """A named family of custom metrics (kept in-process; evserve does not export them)."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name = name
        self.description = description
        self.kind = MetricKind(kind)
        if not _metrics_warned.is_set():
            _metrics_warned.set()
            _log.warning("custom metrics (pb_utils.MetricFamily) are kept but not exported by evserve")

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        if self.kind is MetricKind.HISTOGRAM and not buckets:
            raise TritonModelException("buckets are required for HISTOGRAM metrics")
        return Metric(self.kind, labels or {}, buckets)


# --------------------------------------------------------------------------------------------
# Model-control API of BLS: unsupported in-process.


def _model_control_unsupported(call: str) -> TritonModelException:
    return TritonModelException(f"pb_utils.{call}() is not supported by evserve; use the HTTP model control API.")


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    raise _model_control_unsupported("load_model")


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    raise _model_control_unsupported("unload_model")


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    raise _model_control_unsupported("is_model_ready")
