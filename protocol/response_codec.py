"""Encoding an :class:`InferResponse` for the wire: JSON, binary extension, or msgpack.

Which outputs go back, and how (Triton's rules, which tritonclient depends on):

* the request named no outputs: every output of the response, binary iff the request
  set ``binary_data_output`` (tritonclient always does) or was a raw request;
* the request named outputs: only those, each binary iff it set ``binary_data: true``
  (``binary_data_output`` does *not* apply to listed outputs), or the request was raw.

The JSON head is assembled from pieces that orjson serializes, so tensor ``data`` is
written straight from the NumPy array and binary tensors are never copied: they follow the
head as memoryviews, in output order. ``Inference-Header-Content-Length`` is the length of
the *uncompressed* head, whatever Content-Encoding is applied afterwards.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from evserve.protocol import msgpack_codec
from evserve.protocol.binary_codec import HEADER_LENGTH_NAME, output_array, tensor_buffer
from evserve.protocol.classification import classify
from evserve.protocol.compression import choose_encoding, compress
from evserve.protocol.datatypes import NATIVE_DATATYPES
from evserve.protocol.errors import ProtocolError, Unsupported
from evserve.protocol.json_codec import data_json
from evserve.protocol.shared_memory import write_output
from evserve.protocol.types import EncodedReply, InferRequest, InferResponse, OutputTensor

_SCALARS = (bool, int, float, str)


_Selected = tuple[OutputTensor, bool, int, "memoryview | None"]


def _selected_outputs(resp: InferResponse, req: InferRequest) -> list[_Selected]:
    """(output, binary?, classification count, shared-memory bytes) for every output the reply carries."""
    if req.outputs is None:
        binary = req.binary_data_output or req.raw
        return [(output, binary, 0, None) for output in resp.outputs]
    wanted = {requested.name: requested for requested in req.outputs}
    selected = []
    for output in resp.outputs:
        requested = wanted.get(output.name)
        if requested is not None:
            selected.append((output, requested.binary or req.raw, requested.classification, requested.shm))
    return selected


def response_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (bytes, bytearray)):
            raise Unsupported("Response parameter of type 'TRITONSERVER_PARAMETER_BYTES' is not currently supported")
        if not isinstance(value, _SCALARS):
            raise ProtocolError(
                f"response parameter '{key}' has type {type(value).__name__}; it should be bool, int, float or str",
                status=500,
            )
        out[str(key)] = value
    return out


def _head_fields(resp: InferResponse, req: InferRequest) -> dict[str, Any]:
    head: dict[str, Any] = {}
    request_id = resp.id or req.id
    if request_id:
        head["id"] = request_id
    head["model_name"] = resp.model_name
    head["model_version"] = str(resp.model_version)
    parameters = response_parameters(resp.parameters)
    if parameters:
        head["parameters"] = parameters
    return head


def _output_meta(output: OutputTensor) -> dict[str, Any]:
    return {"name": output.name, "datatype": output.datatype, "shape": [int(d) for d in output.shape]}


def _to_region(output: OutputTensor, region: memoryview) -> None:
    """Write an output's wire bytes (BYTES: length-prefixed, as Triton) into its shared-memory bytes."""
    payload = tensor_buffer(output.datatype, output_array(output))
    write_output(output.name, region, payload, payload.nbytes if isinstance(payload, memoryview) else len(payload))


def _json_body(
    head: dict[str, Any], outputs: Sequence[tuple[OutputTensor, bool, memoryview | None]]
) -> tuple[list[bytes | memoryview], int | None]:
    """Buffers of the JSON (+binary) body, and the head length when anything is binary."""
    entries: list[bytes] = []
    payloads: list[bytes | memoryview] = []
    any_binary = False
    for output, binary, region in outputs:
        meta = _output_meta(output)
        if region is not None:
            _to_region(output, region)  # the reply says only name, datatype and shape
            entries.append(orjson.dumps(meta))
            continue
        flat = output_array(output)
        if binary:
            any_binary = True
            payload = tensor_buffer(output.datatype, flat)
            size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
            meta["parameters"] = {"binary_data_size": size}
            entries.append(orjson.dumps(meta))
            if size:
                payloads.append(payload)
        else:
            # `data` is spliced in as text: '{"name":..,"shape":[..]}' → '{..,"data":[..]}'.
            entries.append(orjson.dumps(meta)[:-1] + b',"data":' + data_json(output.name, output.datatype, flat) + b"}")
    # `head` always holds model_name, so the outputs follow a comma.
    json_head = orjson.dumps(head)[:-1] + b',"outputs":[' + b",".join(entries) + b"]}"
    return [json_head, *payloads], (len(json_head) if any_binary else None)


def _msgpack_body(
    head: dict[str, Any], outputs: Sequence[tuple[OutputTensor, bool, memoryview | None]]
) -> list[bytes | memoryview]:
    packed: list[tuple[dict[str, Any], bytes | memoryview | None]] = []
    for output, _, region in outputs:
        if region is not None:
            _to_region(output, region)
            packed.append((_output_meta(output), None))
        else:
            packed.append((_output_meta(output), tensor_buffer(output.datatype, output_array(output))))
    return msgpack_codec.pack_reply(head, packed)


def _compressed(
    buffers: list[bytes | memoryview], headers: list[tuple[str, str]], accept_encoding: str | None
) -> list[bytes | memoryview]:
    encoding = choose_encoding(accept_encoding)
    if encoding is None:
        return buffers
    try:
        body = compress(buffers, encoding)
    except (zlib.error, MemoryError):
        return buffers  # Triton's rule: a reply that cannot be compressed goes out as it is
    headers.append(("Content-Encoding", encoding))
    return [body]


def encode_infer_response(
    resp: InferResponse,
    req: InferRequest,
    *,
    accept_encoding: str | None = None,
    batched: bool = False,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> EncodedReply:
    """The 200 reply for ``resp`` to the decoded request ``req``.

    ``accept_encoding`` is the request's Accept-Encoding header. ``batched`` (the model's
    max_batch_size > 0) and ``labels`` (class labels per output name, from the config's
    ``label_filename``) matter only for classification outputs. Raises
    :class:`ProtocolError`: 400 for outputs that JSON cannot carry (FP16/BF16, non-UTF-8
    BYTES) or an unclassifiable output, 500 when an output's data does not fit its shape.
    """
    if not req.msgpack and not req.raw:
        common = encode_common(resp, req)
        if common is not None:
            if accept_encoding is not None:
                common.buffers = _compressed(common.buffers, common.headers, accept_encoding)
            return common
    labels = labels or {}
    outputs = [
        (classify(output, top, batched=batched, labels=labels.get(output.name)) if top else output, binary, region)
        for output, binary, top, region in _selected_outputs(resp, req)
    ]
    head = _head_fields(resp, req)
    headers: list[tuple[str, str]]
    if req.msgpack:
        buffers = _msgpack_body(head, outputs)
        headers = [("Content-Type", msgpack_codec.CONTENT_TYPE)]
    else:
        buffers, head_length = _json_body(head, outputs)
        if head_length is None:
            headers = [("Content-Type", "application/json")]
        else:
            headers = [("Content-Type", "application/octet-stream"), (HEADER_LENGTH_NAME, str(head_length))]
    buffers = _compressed(buffers, headers, accept_encoding)
    return EncodedReply(200, headers, buffers)


# Output datatypes whose NumPy carrier orjson writes as JSON numbers or booleans as they are.
_COMMON_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"}
)
_JSON_HEADERS = [("Content-Type", "application/json")]


def encode_common(resp: InferResponse, req: InferRequest) -> EncodedReply | None:
    """The JSON (+binary) reply in one orjson call when every output is plain, else None.

    The common reply (numeric outputs already in their datatype's dtype, finite floats, no
    classification, no response parameters) is one dict that orjson serializes with the
    arrays in it. Anything else takes :func:`encode_infer_response`'s full path, which gives
    the same bytes for the common case; ``tests/protocol/test_response_common.py`` compares
    the two.
    """
    if resp.parameters:
        return None
    requested = req.outputs
    wanted = None if requested is None else {r.name: r for r in requested}
    entries: list[dict[str, Any]] = []
    payloads: list[memoryview] = []
    for output in resp.outputs:
        if wanted is None:
            binary = req.binary_data_output
        else:
            choice = wanted.get(output.name)
            if choice is None:
                continue
            if choice.classification or choice.shm is not None:
                return None
            binary = choice.binary
        data = output.data
        datatype = output.datatype
        if type(data) is not np.ndarray or datatype not in _COMMON_DATATYPES:
            return None
        if NATIVE_DATATYPES.get(data.dtype) != datatype or data.size != math.prod(output.shape):
            return None
        flat = np.ascontiguousarray(data.reshape(-1))  # orjson and the wire want C order
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": list(output.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": flat.nbytes}
            if flat.nbytes:
                payloads.append(memoryview(flat.view(np.uint8)))
        else:
            if flat.dtype.kind == "f" and not np.isfinite(flat).all():
                return None  # NaN and infinities are written as tokens by the full path
            entry["data"] = flat
        entries.append(entry)
    head = _head_fields(resp, req)
    head["outputs"] = entries
    json_head = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not any(entry.get("parameters") for entry in entries):
        return EncodedReply(200, list(_JSON_HEADERS), [json_head])
    headers = [("Content-Type", "application/octet-stream"), (HEADER_LENGTH_NAME, str(len(json_head)))]
    return EncodedReply(200, headers, [json_head, *payloads])
