"""Tensors and results across the process boundary: header dicts for frames, bytes in the arena.

A tensor header names the tensor, its datatype and shape, and either an arena region
(offset and size) or, when the arena cannot take it (a response sent after its batch is done,
or one too large), the bytes inline. BYTES tensors travel in Triton's wire form
(``<uint32 length><bytes>`` per element), everything else as its raw little-endian buffer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evserve.gpu.process.arena import CANCEL_FLAGS, Arena, ArenaFull, Bump
from evserve.protocol.datatypes import deserialize_bytes, numpy_dtype, serialize_bytes
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferResponse, InputTensor, OutputTensor

# [name, datatype, shape, offset, nbytes] for a tensor in the arena; [name, datatype, shape, -1,
# bytes] for one inline. A list, not a map: msgpack packs and unpacks it in a third of the time.
Header = list[Any]
_INLINE = -1
# Looking up where an array lies costs ~2 µs: worth it only where a copy would cost more.
_ALIAS_CHECK_BYTES = 1 << 16


def _raw(datatype: str, array: np.ndarray) -> memoryview:
    if datatype == "BYTES":
        return memoryview(serialize_bytes(array))
    return memoryview(np.ascontiguousarray(array)).cast("B")


def pack(name: str, datatype: str, shape: tuple[int, ...], array: np.ndarray, bump: Bump | None,
         *, spill: bool = True) -> Header:
    """The header of one tensor; its bytes go into the arena through ``bump`` when it has room.

    Without room they go inline, or, with ``spill=False``, :class:`ArenaFull` is raised. An array
    that already lies in the arena (a model that returns an input, or a view of one) is not copied.
    """
    if bump is not None and datatype != "BYTES" and array.nbytes >= _ALIAS_CHECK_BYTES:
        offset = bump.arena.offset_of(array)
        if offset >= CANCEL_FLAGS:
            return [name, datatype, shape, offset, array.nbytes]
    data = _raw(datatype, array)
    if bump is not None:
        try:
            offset = bump.take(data.nbytes)
        except ArenaFull:
            if not spill:
                raise
        else:
            bump.arena.write(offset, data)
            return [name, datatype, shape, offset, data.nbytes]
    return [name, datatype, shape, _INLINE, data.tobytes()]


def unpack(header: Header, arena: Arena, *, copy: bool) -> np.ndarray:
    """The tensor of ``header``: a view of the arena (``copy=False``) or an array of its own."""
    _, datatype, shape, offset, extent = header
    shape = tuple(shape)
    if datatype == "BYTES":
        buf = memoryview(extent) if offset == _INLINE else arena.bytes_at(offset, extent)
        return deserialize_bytes(buf, math.prod(shape)).reshape(shape)
    if offset == _INLINE:
        return np.frombuffer(extent, dtype=numpy_dtype(datatype)).reshape(shape)
    # A view straight onto the mapping (a third of the cost of slicing it first); NumPy refuses a
    # region that runs past the arena's end.
    array = np.ndarray(shape, numpy_dtype(datatype), arena.view, offset)
    return array.copy() if copy else array


def unpack_input(header: Header, arena: Arena) -> InputTensor:
    """An input tensor of a request that crossed the boundary: a view of the arena where it lies there."""
    return InputTensor(header[0], header[1], tuple(header[2]), unpack(header, arena, copy=False))


def pack_result(result: InferResponse | ProtocolError | None, bump: Bump | None) -> Header:
    """A job's result (a response, an error, or None for a bare FINAL) as a header:
    ``[]``, ``[message, status]``, or ``[model_name, model_version, id, parameters, outputs]``."""
    if result is None:
        return []
    if isinstance(result, ProtocolError):
        return [result.message, result.status]
    return [
        result.model_name, result.model_version, result.id, result.parameters,
        [pack(o.name, o.datatype, o.shape, o.data, bump) for o in result.outputs],
    ]


def unpack_result(header: Header, arena: Arena) -> InferResponse | ProtocolError | None:
    """The result of a header, its tensors copied out of the arena (the region is reused)."""
    if not header:
        return None
    if len(header) == 2:
        return ProtocolError(header[0], header[1])
    model_name, model_version, id_, parameters, packed = header
    outputs = [OutputTensor(out[0], out[1], tuple(out[2]), unpack(out, arena, copy=True)) for out in packed]
    return InferResponse(model_name, model_version, id_, outputs, parameters or {})
