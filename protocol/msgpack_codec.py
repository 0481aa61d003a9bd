"""msgpack for ``/infer`` (evserve's extension, ``Content-Type: application/msgpack``).

JSON spends most of an inference request on turning numbers into text and back; msgpack
carries the same v2 object with tensors as raw bytes, so a client gets binary-extension
speed without the Inference-Header-Content-Length framing.

The format, exactly:

* Request: a msgpack map with the fields of the v2 JSON request (``id``, ``parameters``,
  ``inputs``, ``outputs``). An input's ``data`` is either a msgpack *bin* holding the
  tensor's wire bytes (little-endian, row-major, unpadded; BOOL one byte per element;
  BYTES as ``<uint32 LE length><bytes>`` per element, the binary extension's layout), or
  an array nested as JSON's would be (BYTES elements may then be str or bin).
  ``parameters.binary_data_size`` with an Inference-Header-Content-Length also works.
* Reply: a msgpack map ``{"id"?, "model_name", "model_version", "parameters"?,
  "outputs": [{"name", "datatype", "shape", "data"}]}``; ``model_version`` is a string and
  every output's ``data`` is a *bin* in the same wire layout, whatever the request's
  ``binary_data`` flags say. FP16 and BF16 are therefore allowed, and NaN is just a float.

Maps must have string keys; invalid UTF-8 in a str, extension types, trailing bytes,
nesting beyond msgpack's own stack limit, and declared lengths beyond the buffer are all
400s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from evserve.protocol.errors import BadRequest

CONTENT_TYPE = "application/msgpack"


def unpack(buf: bytes | bytearray | memoryview) -> Any:
    """Decode one msgpack object filling ``buf``, or raise :class:`BadRequest`."""
    try:
        # The max_*_len limits default to len(buf): a declared length can never ask for
        # more than the buffer holds.
        return msgpack.unpackb(buf, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many kinds (ValueError, TypeError, StackError...) for bad input
        # Some of them carry no text (FormatError, StackError): name what they mean instead.
        detail = str(exc) or _MEANING.get(type(exc).__name__, "invalid msgpack data")
        raise BadRequest(f"failed to parse the request msgpack buffer: {type(exc).__name__}: {detail}") from None


_MEANING = {
    "FormatError": "the bytes are not valid msgpack",
    "StackError": "the data is nested too deeply",
    "ExtraData": "unexpected bytes after the msgpack object",
    "OutOfData": "the msgpack object is truncated",
}


def _bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def pack_reply(
    head: Mapping[str, Any], outputs: Iterable[tuple[Mapping[str, Any], bytes | memoryview | None]]
) -> list[bytes | memoryview]:
    """The reply map as buffers for ``writelines``: ``head`` fields, then ``outputs``.

    Each output is its metadata map plus a payload written as the ``data`` bin (None: no
    ``data``, for an output written to shared memory). Payloads are passed through as they are
    (no copy of tensor bytes); the small msgpack pieces between them are merged.
    """
    packer = msgpack.Packer(use_bin_type=True)
    outputs = list(outputs)
    buffers: list[bytes | memoryview] = []
    pending = bytearray(packer.pack_map_header(len(head) + 1))
    for key, value in head.items():
        pending += packer.pack(key)
        pending += packer.pack(value)
    pending += packer.pack("outputs")
    pending += packer.pack_array_header(len(outputs))
    for meta, payload in outputs:
        pending += packer.pack_map_header(len(meta) + (payload is not None))
        for key, value in meta.items():
            pending += packer.pack(key)
            pending += packer.pack(value)
        if payload is None:
            continue
        size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        pending += packer.pack("data")
        pending += _bin_header(size)
        if size:
            buffers.append(bytes(pending))
            buffers.append(payload)
            pending.clear()
    buffers.append(bytes(pending))
    return buffers
