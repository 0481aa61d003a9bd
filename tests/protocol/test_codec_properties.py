"""Property tests: every array survives every codec, and no input makes a decoder crash.

"Crash" means raising anything but :class:`ProtocolError` (which the server turns into a
4xx/5xx reply): a ValueError, RecursionError or NumPy warning escaping a decoder would be a
500 with a traceback for a client mistake.
"""

from __future__ import annotations

import gzip
import json
import zlib

import ml_dtypes
import msgpack
import numpy as np
import orjson
import tritonclient.http as httpclient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.http import InferenceServerClient, InferResult

from evserve.protocol.compression import choose_encoding, decompress
from evserve.protocol.datatypes import DATATYPES, deserialize_bytes, numpy_dtype, serialize_bytes
from evserve.protocol.errors import ProtocolError
from evserve.protocol.infer_codec import decode_infer_request, encode_infer_response, parse_header_length
from evserve.protocol.types import InferRequest, InferResponse, ModelSignature, OutputTensor, TensorSpec

# No example database: the tests leave nothing behind in the work tree.
PROFILE = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX = 1 << 20
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)


def identity(datatype: str, ndim: int) -> ModelSignature:
    dims = (-1,) * ndim
    return ModelSignature(
        "identity", "1", 0, (TensorSpec("INPUT0", datatype, dims),), (TensorSpec("OUTPUT0", datatype, dims),)
    )


SIGNATURES = [
    ModelSignature(
        "simple",
        "1",
        8,
        (TensorSpec("INPUT0", "INT32", (16,)), TensorSpec("INPUT1", "INT32", (16,))),
        (TensorSpec("OUTPUT0", "INT32", (16,)), TensorSpec("OUTPUT1", "INT32", (16,))),
    ),
    identity("BYTES", 1),
    identity("FP32", 2),
    ModelSignature("one", "1", 4, (TensorSpec("INPUT0", "BYTES", (1,)),), (TensorSpec("OUTPUT0", "BYTES", (1,)),)),
]


@st.composite
def tensors(draw, datatypes=DATATYPES, *, json_safe: bool = False) -> tuple[str, np.ndarray]:
    """(datatype, array) with the array in evserve's carrier dtype."""
    datatype = draw(st.sampled_from(datatypes))
    shape = draw(SHAPES)
    if datatype == "BYTES":
        element = st.text(max_size=8).map(str.encode) if json_safe else st.binary(max_size=8)
        items = draw(st.lists(element, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return datatype, array.reshape(shape)
    dtype = numpy_dtype(datatype)
    elements = None
    if dtype.kind == "f":
        elements = st.floats(width=8 * dtype.itemsize, allow_nan=not json_safe, allow_infinity=not json_safe)
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes and equal values, NaN included (floats compared as bits)."""
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return a.tolist() == b.tolist()


def decode(body, signature, *, header_length=None, msgpack=False):
    return decode_infer_request(
        body, header_length=header_length, msgpack=msgpack, signature=signature, max_input_size=MAX
    )


def joined(reply) -> bytes:
    return b"".join(bytes(b) for b in reply.buffers)


def client_result(reply) -> InferResult:
    headers = dict(reply.headers)
    length = headers.get("Inference-Header-Content-Length")
    return InferResult.from_response_body(joined(reply), header_length=None if length is None else int(length))


def reply_for(req: InferRequest, datatype: str, array: np.ndarray):
    resp = InferResponse("identity", "1", outputs=[OutputTensor("OUTPUT0", datatype, array.shape, array)])
    return encode_infer_response(resp, req)


# ---------------------------------------------------------------------------------------------
# Round trips


@PROFILE
@given(tensors())
def test_binary_round_trip(tensor):
    datatype, array = tensor
    client = array.view(ml_dtypes.bfloat16) if datatype == "BF16" else array
    wire = httpclient.InferInput("INPUT0", list(array.shape), datatype)
    wire.set_data_from_numpy(client, binary_data=True)
    body, json_size = InferenceServerClient.generate_request_body([wire])
    req = decode(body, identity(datatype, array.ndim), header_length=json_size)
    assert same(req.inputs[0].data, array)
    back = client_result(reply_for(req, datatype, req.inputs[0].data)).as_numpy("OUTPUT0")
    if datatype == "BF16":
        back = back.view(np.uint16)
    assert same(back.reshape(array.shape), array)


@PROFILE
@given(tensors([d for d in DATATYPES if d not in ("FP16", "BF16")], json_safe=True))
def test_json_round_trip(tensor):
    datatype, array = tensor
    wire = httpclient.InferInput("INPUT0", list(array.shape), datatype)
    wire.set_data_from_numpy(array, binary_data=False)
    body, _ = InferenceServerClient.generate_request_body([wire])
    req = decode(body, identity(datatype, array.ndim))
    assert same(req.inputs[0].data, array)
    req.binary_data_output = False  # tritonclient asked for binary; read the JSON form back here
    document = json.loads(joined(reply_for(req, datatype, req.inputs[0].data)))
    (output,) = document["outputs"]
    if datatype == "BYTES":
        back = np.array([s.encode() for s in output["data"]] + [None], dtype=object)[:-1]
    else:
        back = np.array(output["data"], dtype=numpy_dtype(datatype))
    assert same(back.reshape(output["shape"]), array)


@PROFILE
@given(tensors(["FP32", "FP64"]))
def test_json_replies_carry_every_float(tensor):
    datatype, array = tensor
    document = json.loads(joined(reply_for(InferRequest("identity", "1"), datatype, array)))
    back = np.array(document["outputs"][0]["data"], dtype=numpy_dtype(datatype))
    assert same(back.reshape(array.shape), array)


@PROFILE
@given(tensors())
def test_msgpack_round_trip(tensor):
    datatype, array = tensor
    data = serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
    entry = {"name": "INPUT0", "shape": list(array.shape), "datatype": datatype, "data": data}
    req = decode(msgpack.packb({"inputs": [entry]}), identity(datatype, array.ndim), msgpack=True)
    assert same(req.inputs[0].data, array)
    (output,) = msgpack.unpackb(joined(reply_for(req, datatype, req.inputs[0].data)))["outputs"]
    if datatype == "BYTES":
        back = deserialize_bytes(output["data"])
    else:
        back = np.frombuffer(output["data"], dtype=numpy_dtype(datatype))
    assert same(back.reshape(output["shape"]), array)


@PROFILE
@given(st.lists(st.binary(max_size=20), max_size=20))
def test_bytes_wire_form_round_trip(items):
    array = np.empty(len(items), dtype=object)
    array[:] = items
    assert deserialize_bytes(serialize_bytes(array), count=len(items)).tolist() == items


# ---------------------------------------------------------------------------------------------
# Hostile input: nothing but ProtocolError may come out


def must_not_crash(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except ProtocolError as exc:
        assert 400 <= exc.status < 600 and exc.message


def _valid_bodies() -> list[tuple[bytes, int | None, bool, ModelSignature]]:
    simple = SIGNATURES[0]
    inputs = [httpclient.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    for wire in inputs:
        wire.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16), binary_data=True)
    binary, size = InferenceServerClient.generate_request_body(inputs, request_id="x", parameters={"k": 1})
    for wire in inputs:
        wire.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", class_count=2)]
    plain, _ = InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    strings = orjson.dumps({"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "BYTES", "data": [[["a"]], "b"]}]})
    zeros = [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": bytes(64)} for n in ("INPUT0", "INPUT1")]
    packed = msgpack.packb({"inputs": zeros})
    return [
        (binary, size, False, simple),
        (plain, None, False, simple),
        (strings, None, False, SIGNATURES[1]),
        (packed, None, True, simple),
    ]


VALID = _valid_bodies()


@st.composite
def mutated(draw) -> tuple[bytes, int | None, bool, ModelSignature]:
    body, header_length, packed, signature = draw(st.sampled_from(VALID))
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.sampled_from([b"[", b"]", b"{", b'"', b"-1", b"1e999", b"\xff", b"null"]))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[position:]
        else:
            data[position:position] = body[: draw(st.integers(0, len(body)))]
    if header_length is not None:
        header_length = min(max(header_length + draw(st.integers(-3, 3)), 0), len(data))
    return bytes(data), header_length, packed, signature


@settings(PROFILE, max_examples=400)
@given(mutated())
def test_mutated_bodies_never_crash_the_decoder(case):
    body, header_length, packed, signature = case
    must_not_crash(decode, body, signature, header_length=header_length, msgpack=packed)


@settings(PROFILE, max_examples=300)
@given(
    st.binary(max_size=300),
    st.one_of(st.none(), st.integers(0, 300)),
    st.booleans(),
    st.sampled_from(SIGNATURES),
)
def test_garbage_bodies_never_crash_the_decoder(body, header_length, packed, signature):
    if header_length is not None:
        header_length = min(header_length, len(body))
    must_not_crash(decode, body, signature, header_length=header_length, msgpack=packed)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(["name", "shape", "datatype", "data", "parameters", "binary_data_size", "classification"])


@st.composite
def structured_requests(draw) -> dict:
    """Objects shaped like requests, with any JSON where a value goes."""

    def entry():
        base = {
            "name": draw(st.sampled_from(["INPUT0", "INPUT1", "OUTPUT0", "X"]) | JSON_VALUES),
            "shape": draw(st.lists(st.integers(-2, 2**64), max_size=3) | JSON_VALUES),
            "datatype": draw(st.sampled_from(DATATYPES) | JSON_VALUES),
            "data": draw(JSON_VALUES),
        }
        base.update(draw(st.dictionaries(FIELDS, JSON_VALUES, max_size=2)))
        if draw(st.booleans()):
            base["parameters"] = draw(st.dictionaries(FIELDS | st.sampled_from(["binary_data"]), JSON_VALUES))
        return base

    doc = {"inputs": [entry() for _ in range(draw(st.integers(0, 3)))]}
    if draw(st.booleans()):
        doc["outputs"] = [entry() for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))
    if draw(st.booleans()):
        doc["id"] = draw(JSON_VALUES)
    return doc


@settings(PROFILE, max_examples=200)
@given(structured_requests(), st.sampled_from(SIGNATURES), st.booleans())
def test_structurally_wrong_requests_are_refused_cleanly(doc, signature, packed):
    if packed:
        assume(all(-(2**63) <= v < 2**64 for v in _ints(doc)))
        body = msgpack.packb(doc)
    else:
        body = json.dumps(doc).encode()
    must_not_crash(decode, body, signature, header_length=None, msgpack=packed)


def _ints(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _ints(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _ints(item)


@settings(PROFILE, max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(gzip.compress),
        st.binary(max_size=200).map(zlib.compress),
    ),
    st.integers(0, 50),
    st.integers(0, 10),
    st.sampled_from(["gzip", "deflate", "identity", None, "br", "gzip, gzip", ""]),
    st.integers(1, 400),
)
def test_decompress_only_raises_protocol_errors(body, cut, flip, coding, limit):
    data = bytearray(body[: len(body) - cut] if cut < len(body) else body)
    if data and flip:
        data[flip % len(data)] ^= 0xFF
    try:
        out = decompress(bytes(data), coding, limit)
    except ProtocolError as exc:
        assert exc.status in (400, 413, 415)
    else:
        assert coding in ("identity", None, "") or len(out) <= limit


@PROFILE
@given(st.binary(max_size=64), st.one_of(st.none(), st.integers(0, 20)))
def test_deserialize_bytes_only_raises_protocol_errors(buf, count):
    must_not_crash(deserialize_bytes, buf, count)


@PROFILE
@given(st.text(max_size=30), st.integers(0, 2**40))
def test_parse_header_length_only_raises_protocol_errors(value, length):
    must_not_crash(parse_header_length, value, length)


@PROFILE
@given(st.text(max_size=60))
def test_choose_encoding_always_answers(header):
    assert choose_encoding(header) in (None, "gzip", "deflate")
