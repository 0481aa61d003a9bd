"""Reading DLPack capsules with ctypes: their device and element type, zero-copy."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from evserve.gpu.python_backend.pb_utils.errors import TritonModelException

# DLPack. A capsule is opaque to Python, yet Tensor.from_dlpack must know its device (NumPy or
# CuPy?) and its element type (BF16 has no NumPy/CuPy dtype, so BF16 capsules are read as
# uint16 and the tensor remembers it is BF16). The DLPack structs are read with ctypes.

KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 13
_KDL_INT, _KDL_UINT, _KDL_FLOAT, KDL_BFLOAT, _KDL_BOOL = 0, 1, 2, 4, 6

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
    (KDL_BFLOAT, 16): "BF16",
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


def is_capsule(obj: object) -> bool:
    return type(obj).__name__ == "PyCapsule"


def dltensor_of(capsule: object) -> _DLTensor:
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


def capsule_of(obj: Any) -> object:
    if not (hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__")):
        raise TritonModelException(
            "Provided tensor is not supported. Tensor must be a DLPack capsule or have "
            "`__dlpack__` and `__dlpack_device__` attributes"
        )
    device_type = obj.__dlpack_device__()[0]
    if device_type in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        return obj.__dlpack__(stream=_consumer_stream())
    return obj.__dlpack__()


def array_of_capsule(capsule: object) -> tuple[Any, str]:
    """Consume a capsule: the array over its memory (NumPy or CuPy) and its datatype."""
    dl_tensor = dltensor_of(capsule)
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
    if device[0] in (KDL_CPU, _KDL_CUDA_HOST):
        return np.from_dlpack(source), datatype
    if device[0] in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        return _cupy().from_dlpack(source), datatype
    raise TritonModelException(f"DLPack device type {device[0]} is not supported.")
