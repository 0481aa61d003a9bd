"""Tensors and results across the process boundary: header dicts for frames, bytes in the arena.

A tensor header names the tensor, its datatype and shape, and either an arena region
(``offset``, ``nbytes``) or, when the arena cannot take it (a response sent after its batch is
done, or one too large), the bytes inline. BYTES tensors travel in Triton's wire form
(``<uint32 length><bytes>`` per element), everything else as its raw little-endian buffer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evserve.gpu.process.arena import Arena, ArenaFull, Bump
from evserve.protocol.datatypes import deserialize_bytes, numpy_dtype, serialize_bytes
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferResponse, OutputTensor

Header = dict[str, Any]


def _raw(datatype: str, array: np.ndarray) -> memoryview:
    if datatype == "BYTES":
        return memoryview(serialize_bytes(array))
    return memoryview(np.ascontiguousarray(array)).cast("B")


def pack(name: str, datatype: str, shape: tuple[int, ...], array: np.ndarray, bump: Bump | None,
         *, spill: bool = True) -> Header:
    """The header of one tensor; its bytes go into the arena through ``bump`` when it has room.

    Without room they go inline, or, with ``spill=False``, :class:`ArenaFull` is raised.
    """
    data = _raw(datatype, array)
    header: Header = {"name": name, "datatype": datatype, "shape": list(shape)}
    if bump is not None:
        try:
            offset = bump.take(data.nbytes)
        except ArenaFull:
            if not spill:
                raise
        else:
            bump.arena.write(offset, data)
            header["offset"], header["nbytes"] = offset, data.nbytes
            return header
    header["inline"] = data.tobytes()
    return header


def unpack(header: Header, arena: Arena, *, copy: bool) -> np.ndarray:
    """The tensor of ``header``: a view of the arena (``copy=False``) or an array of its own."""
    shape = tuple(header["shape"])
    datatype = header["datatype"]
    inline = header.get("inline")
    buf = memoryview(inline) if inline is not None else arena.bytes_at(header["offset"], header["nbytes"])
    if datatype == "BYTES":
        count = math.prod(shape)
        return deserialize_bytes(buf, count).reshape(shape)
    dtype = numpy_dtype(datatype)
    if inline is not None:
        return np.frombuffer(inline, dtype=dtype).reshape(shape)
    view = arena.array(header["offset"], dtype, shape)
    return view.copy() if copy else view


def pack_result(result: InferResponse | ProtocolError | None, bump: Bump | None) -> Header:
    """A job's result (a response, an error, or None for a bare FINAL) as a header."""
    if result is None:
        return {"kind": "none"}
    if isinstance(result, ProtocolError):
        return {"kind": "error", "message": result.message, "status": result.status}
    return {
        "kind": "response",
        "model_name": result.model_name,
        "model_version": result.model_version,
        "id": result.id,
        "parameters": result.parameters,
        "outputs": [pack(o.name, o.datatype, tuple(o.shape), o.data, bump) for o in result.outputs],
    }


def unpack_result(header: Header, arena: Arena) -> InferResponse | ProtocolError | None:
    """The result of a header, its tensors copied out of the arena (the region is reused)."""
    kind = header["kind"]
    if kind == "none":
        return None
    if kind == "error":
        return ProtocolError(header["message"], header["status"])
    outputs = []
    for out in header["outputs"]:
        data = unpack(out, arena, copy=True)
        outputs.append(OutputTensor(out["name"], out["datatype"], tuple(out["shape"]), data))
    return InferResponse(header["model_name"], header["model_version"], header["id"], outputs,
                         header["parameters"] or {})
