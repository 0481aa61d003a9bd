"""The fourteen tensor datatypes: their NumPy carriers, config names, and the BYTES wire form.

Every codec needs the same answers (which NumPy dtype carries ``INT32``, how wide an
element is, how a BYTES tensor looks on the wire), so they live here once.

Two carriers are not the obvious ones:

* ``BF16`` has no NumPy dtype, so its payload travels as little-endian ``uint16``: the
  bits are kept exactly, and a model that wants arithmetic converts them itself.
* ``BYTES`` is an object array of ``bytes``. On the wire (binary extension, raw bodies,
  msgpack) each element is a 4-byte little-endian length followed by the bytes, with no
  padding, as Triton and tritonclient lay it out.

All multi-byte dtypes are explicitly little-endian, the protocol's byte order, so that
``np.frombuffer`` over a request body is correct on any host.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from evserve.protocol.errors import BadRequest

DATATYPES: tuple[str, ...] = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
)

_NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
    "BF16": np.dtype("<u2"),
}

# NumPy kind+itemsize → protocol name; uint16 maps to UINT16 (BF16 is only known by name).
_BY_KIND: dict[tuple[str, int], str] = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}

# The native dtypes of _BY_KIND (and object), built once and only read afterwards.
NATIVE_DATATYPES: dict[np.dtype, str] = {
    **{np.dtype(f"{kind}{size}"): name for (kind, size), name in _BY_KIND.items()},
    np.dtype(object): "BYTES",
}

_CONFIG_NAMES: dict[str, str] = {name: "TYPE_" + name for name in DATATYPES}
_CONFIG_NAMES["BYTES"] = "TYPE_STRING"
_PROTOCOL_NAMES: dict[str, str] = {config: name for name, config in _CONFIG_NAMES.items()}

_LENGTH = struct.Struct("<I")


def numpy_dtype(datatype: str) -> np.dtype:
    """The NumPy dtype that carries ``datatype`` (BYTES → object, BF16 → ``<u2``)."""
    try:
        return _NUMPY_DTYPES[datatype]
    except KeyError:
        raise ValueError(f"unknown datatype '{datatype}'") from None


def datatype_of(dtype: np.dtype) -> str:
    """The protocol name for a NumPy dtype.

    ``uint16`` is UINT16: a BF16 payload cannot be told apart by its dtype, so BF16 is
    recognised only as ``ml_dtypes.bfloat16`` (by name, without importing ml_dtypes).
    """
    # Every model output passes here: the common dtypes are one dict lookup, because
    # ``dtype.name`` is computed in Python by NumPy (~3 µs).
    known = NATIVE_DATATYPES.get(dtype)
    if known is not None:
        return known
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    try:
        return _BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise ValueError(f"no protocol datatype for numpy dtype '{dtype}'") from None


def itemsize(datatype: str) -> int | None:
    """Bytes per element, or None for BYTES (its elements vary in size)."""
    if datatype == "BYTES":
        return None
    return numpy_dtype(datatype).itemsize


# Every config data type name (TYPE_*) that has a protocol datatype.
CONFIG_TYPES = frozenset(_PROTOCOL_NAMES)


def config_to_protocol(config_type: str) -> str:
    """``TYPE_FP32`` → ``FP32``; ``TYPE_STRING`` → ``BYTES``."""
    try:
        return _PROTOCOL_NAMES[config_type]
    except KeyError:
        raise ValueError(f"unknown config data type '{config_type}'") from None


def protocol_to_config(datatype: str) -> str:
    """``FP32`` → ``TYPE_FP32``; ``BYTES`` → ``TYPE_STRING``."""
    try:
        return _CONFIG_NAMES[datatype]
    except KeyError:
        raise ValueError(f"unknown datatype '{datatype}'") from None


def _element_bytes(item: object) -> bytes:
    # Models hand back str as often as bytes; anything else is written as its text, the
    # rule Triton's python backend applies when it serializes an object array.
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    return str(item).encode("utf-8", "surrogatepass")


def serialize_bytes(arr: np.ndarray | Iterable[object]) -> bytes:
    """A BYTES tensor in wire form: ``<uint32 LE length><bytes>`` per element, row-major."""
    items = arr.reshape(-1).tolist() if isinstance(arr, np.ndarray) else list(arr)
    parts: list[bytes] = []
    extend = parts.extend
    pack = _LENGTH.pack
    try:
        for item in items:
            data = item if type(item) is bytes else _element_bytes(item)
            extend((pack(len(data)), data))
    except struct.error:
        raise ValueError("a BYTES element is larger than 4 GiB and cannot be length-prefixed") from None
    return b"".join(parts)


def deserialize_bytes(buf: bytes | bytearray | memoryview, count: int | None = None) -> np.ndarray:
    """Split a wire-form BYTES buffer into a 1-D object array of ``bytes``.

    With ``count``, exactly that many elements must fill the buffer exactly. Truncation,
    a length that runs past the end, or a count mismatch raise :class:`BadRequest`; the
    caller adds which input it was.
    """
    # One copy of the whole buffer makes every element a single bytes slice: several
    # times faster than slicing a memoryview and converting each piece.
    data = buf if isinstance(buf, bytes) else bytes(buf)
    total = len(data)
    if count is not None and count * _LENGTH.size > total:
        # Every element costs at least its 4-byte prefix: refuse before looping.
        raise BadRequest(f"expected {count} string elements but the {total} bytes cannot hold them")
    items: list[bytes] = []
    append = items.append
    unpack = _LENGTH.unpack_from
    offset = 0
    # At most one element per 4 bytes (rounded up, so that a stray tail is reported).
    for _ in range(-(-total // _LENGTH.size) if count is None else count):
        if offset == total:
            break
        if total - offset < _LENGTH.size:
            raise BadRequest(
                f"incomplete string length indicator: expecting {_LENGTH.size} bytes but only "
                f"{total - offset} bytes available"
            )
        (length,) = unpack(data, offset)
        start = offset + _LENGTH.size
        offset = start + length
        if offset > total:
            raise BadRequest(
                f"string element {len(items)} declares {length} bytes but only {total - start} bytes remain"
            )
        append(data[start:offset])
    if offset < total:
        raise BadRequest(f"unexpected number of string elements, expecting {count} in {total} bytes")
    if count is not None and len(items) != count:
        raise BadRequest(f"expected {count} string elements, got {len(items)}")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
