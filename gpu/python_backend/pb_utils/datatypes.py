"""Triton's C API constants, data-type tables and the BYTES tensor (de)serialisers."""

from __future__ import annotations

from typing import Any

import numpy as np

from evserve.gpu.python_backend.pb_utils.errors import TritonModelException
from evserve.protocol.datatypes import datatype_of

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2


# Data types. Kept here rather than shared with the protocol layer because the python backend
# has its own vocabulary: TRITONSERVER_DataType codes and config names (TYPE_*).

# (protocol name, TRITONSERVER_DataType code)
DATATYPE_CODES: dict[str, int] = {
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


def datatype_of_dtype(dtype: np.dtype) -> str | None:
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
    datatype = datatype_of_dtype(dtype)
    return None if datatype is None else DATATYPE_CODES[datatype]


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
