"""decode_infer_request / encode_infer_response against Triton's behaviour and tritonclient itself.

Request bodies come from tritonclient's own ``generate_request_body`` where it can build
them, and replies are read back with its ``InferResult``: wire compatibility with the real
client is what these tests are for.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib

import ml_dtypes
import msgpack
import numpy as np
import orjson
import pytest
import rapidjson
import tritonclient.http as httpclient
from tritonclient.http import InferenceServerClient, InferResult

from evserve.protocol.datatypes import DATATYPES, deserialize_bytes, numpy_dtype, serialize_bytes
from evserve.protocol.errors import ProtocolError
from evserve.protocol.infer_codec import decode_infer_request, encode_infer_response, parse_header_length
from evserve.protocol.types import (
    InferRequest,
    InferResponse,
    ModelSignature,
    OutputTensor,
    RequestedOutput,
    TensorSpec,
)

MAX = 1 << 20
NOTE = "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension"
SIMPLE = ModelSignature(
    "simple",
    "1",
    8,
    (TensorSpec("INPUT0", "INT32", (16,)), TensorSpec("INPUT1", "INT32", (16,))),
    (TensorSpec("OUTPUT0", "INT32", (16,)), TensorSpec("OUTPUT1", "INT32", (16,))),
)
OPTIONAL = ModelSignature(
    "optional",
    "1",
    0,
    (TensorSpec("A", "FP32", (2,)), TensorSpec("B", "FP32", (2,), optional=True)),
    (TensorSpec("OUT", "FP32", (2,)),),
)


def identity(datatype: str, dims: tuple[int, ...] = (-1, -1), max_batch_size: int = 0) -> ModelSignature:
    return ModelSignature(
        f"identity_{datatype.lower()}",
        "1",
        max_batch_size,
        (TensorSpec("INPUT0", datatype, dims),),
        (TensorSpec("OUTPUT0", datatype, dims),),
    )


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """Values that exercise each type's edges."""
    count = math.prod(shape)
    rng = np.random.default_rng(1234)
    if datatype == "BYTES":
        items = [f"s{i}-é".encode() for i in range(count)]
        if count > 1:
            items[1] = b""
        return np.array(items + [], dtype=object).reshape(shape)
    dtype = numpy_dtype(datatype)
    if datatype == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if datatype in ("FP16", "FP32", "FP64"):
        return (rng.standard_normal(count) * 1000).astype(dtype).reshape(shape)
    if datatype == "BF16":
        return rng.integers(0, 1 << 16, count, dtype=np.uint16).reshape(shape)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
    values[0], values[-1] = info.min, info.max
    return values.reshape(shape)


def client_array(datatype: str, array: np.ndarray) -> np.ndarray:
    # tritonclient takes BF16 only as ml_dtypes.bfloat16 (a dependency of tritonclient).
    return array.view(ml_dtypes.bfloat16) if datatype == "BF16" else array


def decode(body, signature=SIMPLE, *, header_length=None, msgpack=False, max_input_size=MAX) -> InferRequest:
    if isinstance(body, (dict, list)):
        body = json.dumps(body, separators=(",", ":")).encode()  # not orjson: some tests use >64-bit ints
    return decode_infer_request(
        body, header_length=header_length, msgpack=msgpack, signature=signature, max_input_size=max_input_size
    )


def refused(body, signature=SIMPLE, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(body, signature, **kwargs)
    return info.value


def joined(reply) -> bytes:
    return b"".join(bytes(buffer) for buffer in reply.buffers)


def client_result(reply) -> InferResult:
    headers = dict(reply.headers)
    length = headers.get("Inference-Header-Content-Length")
    return InferResult.from_response_body(
        joined(reply),
        header_length=None if length is None else int(length),
        content_encoding=headers.get("Content-Encoding"),
    )


def simple_inputs(**extra) -> list[dict]:
    first = {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
    second = {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [[1] * 16]}
    first.update(extra)
    return [first, second]


def simple_response(req: InferRequest, **kwargs) -> InferResponse:
    total = req.inputs[0].data + req.inputs[1].data
    diff = req.inputs[0].data - req.inputs[1].data
    outputs = [OutputTensor("OUTPUT0", "INT32", total.shape, total), OutputTensor("OUTPUT1", "INT32", diff.shape, diff)]
    return InferResponse("simple", "1", id=req.id, outputs=outputs, **kwargs)


# ---------------------------------------------------------------------------------------------
# Round trips for every datatype


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_round_trip_through_tritonclient(datatype):
    signature = identity(datatype)
    array = sample(datatype)
    tensor = httpclient.InferInput("INPUT0", list(array.shape), datatype)
    tensor.set_data_from_numpy(client_array(datatype, array), binary_data=True)
    body, json_size = InferenceServerClient.generate_request_body([tensor], request_id="r-1")

    req = decode(body, signature, header_length=json_size)
    data = req.inputs[0].data
    assert req.id == "r-1" and req.binary_data_output and req.outputs is None
    assert data.shape == array.shape and data.dtype == numpy_dtype(datatype)
    assert data.tolist() == array.tolist()
    if datatype != "BYTES":  # numeric inputs are views of the body, not copies
        assert np.shares_memory(data, np.frombuffer(body, dtype=np.uint8))

    resp = InferResponse(signature.name, "1", id=req.id, outputs=[OutputTensor("OUTPUT0", datatype, data.shape, data)])
    reply = encode_infer_response(resp, req)
    headers = dict(reply.headers)
    assert headers["Content-Type"] == "application/octet-stream"
    assert int(headers["Inference-Header-Content-Length"]) == len(reply.buffers[0])
    result = client_result(reply)
    back = result.as_numpy("OUTPUT0")
    if datatype == "BF16":
        back = back.view(np.uint16)
    assert back.reshape(array.shape).tolist() == array.tolist()
    assert result.get_response()["id"] == "r-1"
    if datatype != "BYTES":  # and outputs go out as views of the model's array
        assert np.shares_memory(np.frombuffer(reply.buffers[1], dtype=np.uint8), data)


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d not in ("FP16", "BF16")])
def test_json_round_trip_through_tritonclient(datatype):
    signature = identity(datatype)
    array = sample(datatype)
    tensor = httpclient.InferInput("INPUT0", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    wanted = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
    body, json_size = InferenceServerClient.generate_request_body([tensor], outputs=[wanted])
    assert json_size is None

    req = decode(body, signature)
    assert req.outputs == [RequestedOutput("OUTPUT0", binary=False)]
    data = req.inputs[0].data
    assert data.dtype == numpy_dtype(datatype) and data.tolist() == array.tolist()

    resp = InferResponse(signature.name, "1", outputs=[OutputTensor("OUTPUT0", datatype, data.shape, data)])
    reply = encode_infer_response(resp, req)
    assert dict(reply.headers) == {"Content-Type": "application/json"}
    document = orjson.loads(joined(reply))
    assert document["outputs"][0]["shape"] == [2, 3]
    assert len(document["outputs"][0]["data"]) == 6  # JSON data is always flat
    back = client_result(reply).as_numpy("OUTPUT0")
    if datatype == "BYTES":
        back = np.array([b if isinstance(b, bytes) else b.encode() for b in back.reshape(-1)], dtype=object)
    assert back.reshape(array.shape).tolist() == array.tolist()


@pytest.mark.parametrize(
    ("datatype", "as_list"),
    [(d, False) for d in DATATYPES] + [(d, True) for d in DATATYPES if d not in ("FP16", "BF16")],
)
def test_msgpack_round_trip(datatype, as_list):
    signature = identity(datatype)
    array = sample(datatype)
    if as_list:
        data = array.tolist()
    else:
        data = serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
    body = msgpack.packb(
        {"id": "m", "inputs": [{"name": "INPUT0", "shape": [2, 3], "datatype": datatype, "data": data}]}
    )

    req = decode(body, signature, msgpack=True)
    assert req.msgpack and req.id == "m"
    assert req.inputs[0].data.tolist() == array.tolist()

    resp = InferResponse(signature.name, "1", id="m", outputs=[OutputTensor("OUTPUT0", datatype, (2, 3), array)])
    reply = encode_infer_response(resp, req)
    assert dict(reply.headers) == {"Content-Type": "application/msgpack"}
    document = msgpack.unpackb(joined(reply))
    assert document["id"] == "m" and document["model_version"] == "1"
    (output,) = document["outputs"]
    assert output["name"] == "OUTPUT0" and output["datatype"] == datatype and output["shape"] == [2, 3]
    if datatype == "BYTES":
        back = deserialize_bytes(output["data"])
    else:
        back = np.frombuffer(output["data"], dtype=numpy_dtype(datatype))
    assert back.reshape(2, 3).tolist() == array.tolist()


def test_msgpack_bytes_lists_take_str_and_bin():
    body = msgpack.packb({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES", "data": ["é", b"\xff"]}]})
    assert decode(body, identity("BYTES"), msgpack=True).inputs[0].data.tolist() == [["é".encode(), b"\xff"]]


def test_msgpack_reply_leaves_tensor_bytes_uncopied():
    array = np.arange(1000, dtype=np.float32)
    req = InferRequest("m", "1", msgpack=True)
    reply = encode_infer_response(InferResponse("m", "1", outputs=[OutputTensor("o", "FP32", (1000,), array)]), req)
    assert any(isinstance(b, memoryview) and np.shares_memory(np.frombuffer(b, np.uint8), array) for b in reply.buffers)
    document = msgpack.unpackb(joined(reply))
    assert np.frombuffer(document["outputs"][0]["data"], np.float32).tolist() == array.tolist()


# ---------------------------------------------------------------------------------------------
# Raw binary requests (Inference-Header-Content-Length: 0)


def test_raw_request_deduces_the_variable_dimension():
    array = np.arange(12, dtype=np.float32)
    req = decode(array.tobytes(), identity("FP32", (3, -1)), header_length=0)
    assert req.raw and req.outputs is None
    tensor = req.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.shape) == ("INPUT0", "FP32", (3, 4))
    assert tensor.data.tolist() == array.reshape(3, 4).tolist()


def test_raw_request_on_a_batching_model_is_batch_one_and_all_outputs_binary():
    array = np.arange(16, dtype=np.int32)
    signature = identity("INT32", (16,), max_batch_size=8)
    req = decode(bytearray(array.tobytes()), signature, header_length=0)
    assert req.inputs[0].shape == (1, 16)
    resp = InferResponse(signature.name, "1", outputs=[OutputTensor("OUTPUT0", "INT32", (1, 16), req.inputs[0].data)])
    reply = encode_infer_response(resp, req)
    assert joined(reply)[len(reply.buffers[0]) :] == array.tobytes()


def test_raw_bytes_request_is_one_element():
    req = decode(b"hello\x00", identity("BYTES", (1,)), header_length=0)
    assert req.inputs[0].shape == (1,) and req.inputs[0].data.tolist() == [b"hello\x00"]
    resp = InferResponse("x", "1", outputs=[OutputTensor("OUTPUT0", "BYTES", (1,), req.inputs[0].data)])
    assert joined(encode_infer_response(resp, req)).endswith(b"\x06\x00\x00\x00hello\x00")


def test_empty_raw_body_is_an_empty_tensor():
    assert decode(b"", identity("FP32", (-1,)), header_length=0).inputs[0].shape == (0,)


@pytest.mark.parametrize(
    ("signature", "body", "message"),
    [
        (
            SIMPLE,
            b"\x00" * 64,
            "Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in 'simple' model "
            "configuration",
        ),
        (
            identity("FP32", (-1, -1)),
            b"\x00" * 16,
            "The shape of the raw input 'INPUT0' can not be deduced because there are more than one "
            "variable-sized dimension",
        ),
        (
            identity("BYTES", (2,)),
            b"ab",
            "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]",
        ),
        (identity("BYTES", (-1,)), b"ab", "For BYTE datatype raw input 'INPUT0', the model must have input shape [1]"),
        (
            identity("FP32", (4,)),
            b"\x00" * 12,
            "input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 16, got 12",
        ),
        (identity("FP32", (2, -1)), b"\x00" * 12, "not a whole number of"),
        (
            identity("UINT8", (-1,)),
            b"\x00" * (MAX + 1),
            f"Raw input has a byte_size ({MAX + 1} bytes) that exceeds the maximum allowed value of {MAX} bytes. "
            "Use --http-max-input-size to increase the limit.",
        ),
    ],
)
def test_raw_request_errors(signature, body, message):
    error = refused(body, signature, header_length=0)
    assert error.status == 400
    assert message in error.message


# ---------------------------------------------------------------------------------------------
# The binary extension


def binary_body(head: dict, *sections: bytes) -> tuple[bytes, int]:
    text = json.dumps(head).encode()  # json, not orjson: some tests need integers beyond 64 bits
    return text + b"".join(sections), len(text)


def test_binary_inputs_follow_json_order_and_mix_with_json_data():
    first = np.arange(16, dtype=np.int32).reshape(1, 16)
    head = {
        "inputs": [
            {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [2] * 16},
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
        ]
    }
    body, length = binary_body(head, first.tobytes())
    req = decode(memoryview(body), header_length=length)
    assert [t.name for t in req.inputs] == ["INPUT1", "INPUT0"]
    assert req.inputs[1].data.tolist() == first.tolist()
    assert req.inputs[1].parameters == {}


def test_zero_byte_binary_input_and_zero_element_json_input():
    signature = identity("FP32", (-1,))
    head = {"inputs": [{"name": "INPUT0", "shape": [0], "datatype": "FP32", "parameters": {"binary_data_size": 0}}]}
    body, length = binary_body(head)
    assert decode(body, signature, header_length=length).inputs[0].data.shape == (0,)
    req = decode({"inputs": [{"name": "INPUT0", "shape": [0], "datatype": "FP32", "data": []}]}, signature)
    assert req.inputs[0].data.shape == (0,) and req.inputs[0].data.dtype == np.float32


def test_binary_bool_bytes_other_than_zero_and_one_become_true():
    head = {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}]}
    body, length = binary_body(head, b"\x00\x02\x01")
    data = decode(body, identity("BOOL", (-1,)), header_length=length).inputs[0].data
    assert data.tolist() == [False, True, True]
    assert (data == np.array([False, True, True])).all()


@pytest.mark.parametrize(
    ("sizes", "payload", "message"),
    [
        (
            (64, 64),
            b"\x00" * 124,
            "unexpected size for input 'INPUT1', expecting 4 additional bytes for model 'simple'",
        ),
        ((64, 64), b"\x00" * 129, "unexpected additional input data for model 'simple'"),
        (
            (60, 64),
            b"\x00" * 124,
            "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 60",
        ),
        ((-1, 64), b"\x00" * 128, "Unable to parse 'binary_data_size'"),
        ((True, 64), b"\x00" * 128, "Unable to parse 'binary_data_size'"),
        (("64", 64), b"\x00" * 128, "Unable to parse 'binary_data_size'"),
        ((2**64, 64), b"\x00" * 128, "Unable to parse 'binary_data_size'"),
    ],
    ids=["short", "long", "mismatch", "negative", "bool", "string", "huge"],
)
def test_binary_section_errors(sizes, payload, message):
    head = {
        "inputs": [
            {"name": name, "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": size}}
            for name, size in zip(("INPUT0", "INPUT1"), sizes, strict=True)
        ]
    }
    body, length = binary_body(head, payload)
    error = refused(body, header_length=length)
    assert (error.status, error.message) == (400, message)


def test_binary_data_size_without_the_header_length():
    head = {"inputs": simple_inputs(data=None)}
    del head["inputs"][0]["data"]
    head["inputs"][0]["parameters"] = {"binary_data_size": 64}
    assert (
        refused(head).message == "unexpected size for input 'INPUT0', expecting 64 additional bytes for model 'simple'"
    )


def test_garbage_bytes_tensor_names_the_input():
    head = {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}
    body, length = binary_body(head, b"\x09\x00\x00\x00ab")
    error = refused(body, identity("BYTES", (-1,)), header_length=length)
    assert error.status == 400
    assert "for inference input 'INPUT0' for model 'identity_bytes'" in error.message


def test_json_head_larger_than_the_input_limit():
    body, length = binary_body({"inputs": simple_inputs()})
    error = refused(body, max_input_size=length - 1, header_length=length)
    assert error.message == (
        f"request JSON size of {length} bytes exceeds the maximum allowed input size of {length - 1} bytes. "
        "Use --http-max-input-size to increase the limit."
    )


@pytest.mark.parametrize(
    ("value", "length", "expected"),
    [(None, 10, None), ("0", 10, 0), ("10", 10, 10), (" 7 ", 10, 7), ("+3", 10, 3)],
)
def test_parse_header_length(value, length, expected):
    assert parse_header_length(value, length) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("11", "inference header size should be in range (0, 10), got: 11"),
        ("-1", "inference header size should be in range (0, 10), got: -1"),
        ("abc", "Unable to parse Inference-Header-Content-Length, got: abc"),
        ("", "Unable to parse Inference-Header-Content-Length, got: "),
        ("1.5", "Unable to parse Inference-Header-Content-Length, got: 1.5"),
        ("99999999999", "Unable to parse Inference-Header-Content-Length, got: 99999999999"),
        ("9223372036854775808", "Unable to parse Inference-Header-Content-Length"),
        ("١٢", "Unable to parse Inference-Header-Content-Length"),
        ("9" * 5000, "Unable to parse Inference-Header-Content-Length, got: 9999"),
        ("0x10", "Unable to parse Inference-Header-Content-Length, got: 0x10"),
        ("1 0", "Unable to parse Inference-Header-Content-Length, got: 1 0"),
    ],
)
def test_parse_header_length_errors(value, message):
    with pytest.raises(ProtocolError) as info:
        parse_header_length(value, 10)
    assert info.value.status == 400 and info.value.message.startswith(message)


# ---------------------------------------------------------------------------------------------
# JSON request structure and validation


def test_request_fields_reach_the_request():
    tensors = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in tensors:
        tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.int32), binary_data=True)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", class_count=3), httpclient.InferRequestedOutput("OUTPUT1")]
    body, size = InferenceServerClient.generate_request_body(
        tensors,
        outputs=outputs,
        request_id="abc",
        sequence_id=42,
        sequence_start=True,
        priority=2,
        timeout=1000,
        parameters={"custom": "x", "n": 3, "f": 1.5, "b": False},
    )
    req = decode(body, header_length=size)
    assert req.id == "abc" and not req.binary_data_output
    assert req.parameters == {
        "sequence_id": 42,
        "sequence_start": True,
        "sequence_end": False,
        "priority": 2,
        "timeout": 1000,
        "custom": "x",
        "n": 3,
        "f": 1.5,
        "b": False,
    }
    assert req.outputs == [RequestedOutput("OUTPUT0", True, 3), RequestedOutput("OUTPUT1", True, 0)]
    assert (req.model_name, req.model_version) == ("simple", "1")


def test_string_sequence_id_and_extra_output_parameters():
    doc = {
        "inputs": simple_inputs(parameters={"note": "kept"}),
        "parameters": {"sequence_id": "seq-1", "binary_data_output": True},
        "outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": False, "extra": 1}}],
    }
    req = decode(doc)
    assert req.parameters == {"sequence_id": "seq-1"} and req.binary_data_output
    assert req.inputs[0].parameters == {"note": "kept"}
    assert req.outputs == [RequestedOutput("OUTPUT1", False, 0, {"extra": 1})]


def test_empty_outputs_list_means_all_outputs():
    assert decode({"inputs": simple_inputs(), "outputs": []}).outputs is None


def test_data_may_be_flat_nested_or_mixed():
    req = decode({"inputs": simple_inputs(data=[[0, 1, 2, 3], [4, 5, 6, 7], [8, [9, 10], 11], 12, 13, 14, [[15]]])})
    assert req.inputs[0].data.tolist() == [list(range(16))]


def test_nesting_up_to_the_limit_is_accepted():
    signature = identity("INT64", (-1,))
    for depth in (50, 99):  # 99 arrays put the value at depth 99; Triton refuses 100
        data: list = [7]
        for _ in range(depth - 1):
            data = [data]
        req = decode({"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT64", "data": data}]}, signature)
        assert req.inputs[0].data.tolist() == [7]


@pytest.mark.parametrize("depth", [100, 120, 5000, 100_000])
@pytest.mark.parametrize("datatype", ["INT64", "BYTES"])
def test_deep_nesting_is_refused_with_triton_message(depth, datatype):
    inner = b"7" if datatype == "INT64" else b'"x"'
    data = b"[" * depth + inner + b"]" * depth
    body = b'{"inputs":[{"name":"INPUT0","shape":[1],"datatype":"' + datatype.encode() + b'","data":' + data + b"}]}"
    error = refused(body, identity(datatype, (-1,)))
    assert (error.status, error.message) == (400, "JSON nesting depth exceeds maximum allowed limit (100)")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b"[" * 1_000_000,
        b'{"inputs":[' + b'{"x":' * 3000 + b"1" + b"}" * 3000 + b"]}",
    ],
)
def test_deep_documents_cannot_crash_the_parser(body):
    error = refused(body)
    assert error.status == 400


def test_brackets_inside_strings_do_not_count_as_nesting():
    name = "[" * 3000 + "{" * 3000
    error = refused({"inputs": [{"name": name, "shape": [1], "datatype": "INT32", "data": [1]}]})
    assert error.message == f"unexpected inference input '{name}' for model 'simple'"


def test_escaped_quotes_do_not_hide_brackets():
    body = b'{"id":"\\"' + b"[" * 2000 + b'", "inputs":' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert refused(body).message == "JSON nesting depth exceeds maximum allowed limit (100)"


def test_optional_inputs_may_be_left_out():
    req = decode({"inputs": [{"name": "A", "shape": [2], "datatype": "FP32", "data": [1, 2.5]}]}, OPTIONAL)
    assert req.inputs[0].data.tolist() == [1.0, 2.5]


def test_fp32_takes_ints_and_overflows_to_inf_as_c_does():
    signature = identity("FP32", (-1,))
    req = decode(
        {"inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "data": [1, 1e300, -(2**63)]}]}, signature
    )
    assert req.inputs[0].data.tolist() == [1.0, math.inf, -(2.0**63)]


def _input(name="INPUT0", shape=(1, 16), datatype="INT32", **fields):
    entry = {"name": name, "shape": list(shape), "datatype": datatype}
    entry.update(fields)
    return entry


_TRITON_TYPES = identity("INT32", (-1,))


@pytest.mark.parametrize(
    ("doc", "signature", "message"),
    [
        (b"{", SIMPLE, "failed to parse the request JSON buffer"),
        (b"", SIMPLE, "failed to parse the request JSON buffer"),
        (b'{"inputs":[{"name":"INPUT0","shape":[1],"datatype":"FP32","data":[NaN]}]}', SIMPLE, "failed to parse"),
        (b'{"inputs":[{"name":"INPUT0","shape":[1],"datatype":"FP32","data":[Infinity]}]}', SIMPLE, "failed to parse"),
        (b'{"id":"\xff","inputs":[]}', SIMPLE, "failed to parse the request JSON buffer"),
        (b'{"id":"\\ud800","inputs":[]}', SIMPLE, "failed to parse the request JSON buffer"),
        (b'{"inputs":[]} trailing', SIMPLE, "failed to parse the request JSON buffer"),
        ([1, 2], SIMPLE, "Unable to parse the inference request: expected an object at the top level"),
        ({}, SIMPLE, "Unable to parse 'inputs'"),
        ({"inputs": {"name": "INPUT0"}}, SIMPLE, "Unable to parse 'inputs'"),
        ({"inputs": [5]}, SIMPLE, "Unable to parse 'inputs': each input must be an object"),
        (
            {"inputs": [_input()]},
            SIMPLE,
            "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            "'shared_memory_region' in 'parameters'. But no field is set",
        ),
        (
            {"inputs": [_input(data=[1], parameters={"binary_data_size": 4, "shared_memory_region": "r"})]},
            SIMPLE,
            "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            "'shared_memory_region' in 'parameters'. But set 'data' 'binary_data_size' 'shared_memory_region'",
        ),
        ({"inputs": [_input(parameters=[1], data=[1])]}, SIMPLE, "Unable to parse 'parameters' of an input"),
        ({"inputs": [{"shape": [1], "datatype": "INT32", "data": [1]}]}, SIMPLE, "Unable to parse 'name'"),
        ({"inputs": [_input(name=5, data=[1])]}, SIMPLE, "Unable to parse 'name'"),
        ({"inputs": [_input(datatype=None, data=[1])]}, SIMPLE, "Unable to parse 'datatype'"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "data": [1]}]}, SIMPLE, "Unable to parse 'shape'"),
        ({"inputs": [_input(shape=[1, -16], data=[1])]}, SIMPLE, "dimensions must be non-negative integers"),
        ({"inputs": [_input(shape=[1, 16.0], data=[1])]}, SIMPLE, "dimensions must be non-negative integers"),
        ({"inputs": [_input(shape=[True, 16], data=[1])]}, SIMPLE, "dimensions must be non-negative integers"),
        ({"inputs": [_input(shape=[1] * 17, data=[1])]}, SIMPLE, "17 dimensions exceed the maximum of 16"),
        ({"inputs": [_input(shape=[1] * 5000, data=[1])]}, SIMPLE, "5000 dimensions exceed the maximum of 16"),
        (
            {"inputs": [_input(shape=[2**62, 2**62], data=[1])]},
            SIMPLE,
            "invalid shape for input 'INPUT0': shape [4611686018427387904,4611686018427387904] causes total element "
            "count to exceed maximum size of 9223372036854775807",
        ),
        (
            {"inputs": [_input(shape=[2**31] * 3, data=[1])]},
            SIMPLE,
            "causes total element count to exceed maximum size of 9223372036854775807",
        ),
        (
            {"inputs": [_input(shape=[0, 2**63 - 1], data=[])]},
            SIMPLE,
            "causes total element count to exceed maximum size",
        ),
        (
            {"inputs": [_input(shape=[2**61, 2], datatype="INT64", data=[1])]},
            identity("INT64", (-1, -1)),
            "byte size overflow for input 'INPUT0': element count (4611686018427387904) * data type size (8) exceeds "
            "maximum allowed size (9223372036854775807)",
        ),
        (
            {"inputs": [_input(shape=[1024, 1024], datatype="INT64", data=[1])]},
            identity("INT64", (-1, -1)),
            "JSON input 'INPUT0' has a byte_size (8388608 bytes) that exceeds the maximum allowed value of 1048576 "
            "bytes. Use --http-max-input-size to increase the limit.",
        ),
        (
            {"inputs": [_input(shape=[300_000], datatype="BYTES", data=[""] * 300_000)]},
            identity("BYTES", (-1,)),
            "JSON input 'INPUT0' has a byte_size (1200000 bytes) that exceeds the maximum allowed value",
        ),
        ({"inputs": [*simple_inputs(), simple_inputs()[0]]}, SIMPLE, "input 'INPUT0' already exists in request"),
        (
            {"inputs": [*simple_inputs(), _input(name="EXTRA", data=[1])]},
            SIMPLE,
            "unexpected inference input 'EXTRA' for model 'simple'",
        ),
        (
            {"inputs": simple_inputs()[:1]},
            SIMPLE,
            "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT0'], but missing required "
            "input(s) ['INPUT1']. Please provide all required input(s).",
        ),
        (
            {"inputs": []},
            SIMPLE,
            "expected 2 inputs but got 0 inputs for model 'simple'. Got input(s) [], but missing required input(s) "
            "['INPUT0','INPUT1']. Please provide all required input(s).",
        ),
        (
            {"inputs": [_input("B", [2], "FP32", data=[1, 2])]},
            OPTIONAL,
            "expected number of inputs between 1 and 2 but got 1 inputs for model 'optional'. Got input(s) ['B'], "
            "but missing required input(s) ['A']. Please provide all required input(s).",
        ),
        (
            {"inputs": simple_inputs(datatype="FP32")},
            SIMPLE,
            "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'",
        ),
        (
            {"inputs": simple_inputs(datatype="NOPE")},
            SIMPLE,
            "inference input 'INPUT0' data-type is 'NOPE', but model 'simple' expects 'INT32'",
        ),
        (
            {"inputs": [_input(shape=[1, 15], data=[1] * 15), simple_inputs()[1]]},
            SIMPLE,
            f"unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,15]. {NOTE}",
        ),
        (
            {"inputs": [_input(shape=[16], data=[1] * 16), simple_inputs()[1]]},
            SIMPLE,
            "input 'INPUT1' batch size does not match other inputs for 'simple'",
        ),
        (
            {"inputs": [_input(shape=[9, 16], data=[1] * 144), _input("INPUT1", shape=[9, 16], data=[1] * 144)]},
            SIMPLE,
            "inference request batch-size must be <= 8 for 'simple'",
        ),
        (
            {"inputs": [_input(shape=[], data=[1]), simple_inputs()[1]]},
            SIMPLE,
            "input 'INPUT0' has no shape but model requires batch dimension for 'simple'",
        ),
        (
            {"inputs": [_input("A", [3], "FP32", data=[1, 2, 3])]},
            OPTIONAL,
            "unexpected shape for input 'A' for model 'optional'. Expected [2], got [3].",
        ),
        (
            {"inputs": simple_inputs(data=list(range(15)))},
            SIMPLE,
            "Failed to parse 'data' field: shape does not match true shape",
        ),
        (
            {"inputs": simple_inputs(data=list(range(17)))},
            SIMPLE,
            "Unable to parse 'data': Shape does not match true shape of 'data' field",
        ),
        ({"inputs": simple_inputs(data=5)}, SIMPLE, "Unable to parse 'data' for input 'INPUT0': expected an array"),
        ({"inputs": simple_inputs(data=None)}, SIMPLE, "Unable to parse 'data' for input 'INPUT0': expected an array"),
        (
            {"inputs": simple_inputs(data=[1.5] + [1] * 15)},
            SIMPLE,
            "Unable to parse 'data': input 'INPUT0' of datatype INT32 takes integers, got number",
        ),
        (
            {"inputs": simple_inputs(data=[True] * 16)},
            SIMPLE,
            "Unable to parse 'data': input 'INPUT0' of datatype INT32 takes integers, got boolean",
        ),
        (
            {"inputs": simple_inputs(data=["1"] * 15 + [None])},
            SIMPLE,
            "Unable to parse 'data': input 'INPUT0' of datatype INT32 takes integers, got null, string",
        ),
        (
            {"inputs": simple_inputs(data=[{"a": 1}] * 16)},
            SIMPLE,
            "Unable to parse 'data': input 'INPUT0' of datatype INT32 takes integers, got object",
        ),
        (
            {"inputs": [_input(shape=[2], datatype="BOOL", data=[True, 1])]},
            identity("BOOL", (-1,)),
            "Unable to parse 'data': input 'INPUT0' of datatype BOOL takes booleans, got integer",
        ),
        (
            {"inputs": [_input(shape=[2], datatype="FP64", data=[True, 1])]},
            identity("FP64", (-1,)),
            "Unable to parse 'data': input 'INPUT0' of datatype FP64 takes numbers, got boolean",
        ),
        (
            {"inputs": [_input(shape=[1], datatype="BYTES", data=[1])]},
            identity("BYTES", (-1,)),
            "Unable to parse 'data': input 'INPUT0' of datatype BYTES takes strings, got integer",
        ),
        (
            {"inputs": [_input(shape=[2], datatype="UINT8", data=[0, -1])]},
            identity("UINT8", (-1,)),
            "Unable to parse 'data': value -1 of input 'INPUT0' is out of range for UINT8 [0, 255]",
        ),
        (
            {"inputs": [_input(shape=[1], datatype="INT8", data=[128])]},
            identity("INT8", (-1,)),
            "Unable to parse 'data': value 128 of input 'INPUT0' is out of range for INT8 [-128, 127]",
        ),
        (
            {"inputs": [_input(shape=[1], datatype="UINT64", data=[-1])]},
            identity("UINT64", (-1,)),
            "out of range for UINT64",
        ),
        (
            {"inputs": [_input(shape=[1], datatype="INT64", data=[2**63])]},
            identity("INT64", (-1,)),
            "out of range for INT64",
        ),
        (
            {"inputs": [_input(shape=[1], datatype="UINT64", data=[2**64])]},
            identity("UINT64", (-1,)),
            "takes integers, got number",
        ),
        (
            {"inputs": [_input(shape=[1], datatype="FP16", data=[1.0])]},
            identity("FP16", (-1,)),
            "receiving FP16 data via JSON is not supported. Please use the binary data format for input INPUT0",
        ),
        (
            {"inputs": [_input(shape=[1], datatype="BF16", data=[1.0])]},
            identity("BF16", (-1,)),
            "receiving BF16 data via JSON is not supported. Please use the binary data format for input INPUT0",
        ),
        (
            {"inputs": simple_inputs(), "parameters": {"triton_x": 1}},
            SIMPLE,
            "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
        ),
        (
            {"inputs": simple_inputs(), "parameters": {"headers": "x"}},
            SIMPLE,
            "parameter key 'headers' is reserved for Triton usage and should not be specified.",
        ),
        (
            {"inputs": simple_inputs(), "parameters": {"nested": {"a": 1}}},
            SIMPLE,
            "parameter 'nested' has invalid type. It should be either 'int', 'bool', or 'string'.",
        ),
        (
            {"inputs": simple_inputs(), "parameters": {"k": None}},
            SIMPLE,
            "parameter 'k' has invalid type. It should be either 'int', 'bool', or 'string'.",
        ),
        (
            {"inputs": simple_inputs(), "parameters": {"k": [1]}},
            SIMPLE,
            "parameter 'k' has invalid type. It should be either 'int', 'bool', or 'string'.",
        ),
        ({"inputs": simple_inputs(), "parameters": {"sequence_id": 1.5}}, SIMPLE, "Unable to parse 'sequence_id'"),
        ({"inputs": simple_inputs(), "parameters": {"sequence_end": 1}}, SIMPLE, "Unable to parse 'sequence_end'"),
        ({"inputs": simple_inputs(), "parameters": {"priority": -1}}, SIMPLE, "Unable to parse 'priority'"),
        ({"inputs": simple_inputs(), "parameters": {"timeout": "1"}}, SIMPLE, "Unable to parse 'timeout'"),
        (
            {"inputs": simple_inputs(), "parameters": {"binary_data_output": "yes"}},
            SIMPLE,
            "Unable to parse 'binary_data_output'",
        ),
        ({"inputs": simple_inputs(), "parameters": [1]}, SIMPLE, "Unable to parse 'parameters': expected an object"),
        ({"inputs": simple_inputs(), "id": 7}, SIMPLE, "Unable to parse 'id'"),
        ({"inputs": simple_inputs(), "outputs": {"name": "OUTPUT0"}}, SIMPLE, "Unable to parse 'outputs'"),
        ({"inputs": simple_inputs(), "outputs": ["OUTPUT0"]}, SIMPLE, "Unable to parse 'outputs'"),
        ({"inputs": simple_inputs(), "outputs": [{"parameters": {}}]}, SIMPLE, "Unable to parse 'name'"),
        (
            {"inputs": simple_inputs(), "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]},
            SIMPLE,
            "output 'OUTPUT0' already exists in request",
        ),
        (
            {"inputs": simple_inputs(), "outputs": [{"name": "NOPE"}]},
            SIMPLE,
            "unexpected inference output 'NOPE' for model 'simple'",
        ),
        (
            {"inputs": simple_inputs(), "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": 1}}]},
            SIMPLE,
            "Unable to parse 'binary_data'",
        ),
        (
            {"inputs": simple_inputs(), "outputs": [{"name": "OUTPUT0", "parameters": {"classification": -2}}]},
            SIMPLE,
            "Unable to set 'classification'",
        ),
        (
            {"inputs": simple_inputs(), "outputs": [
                {"name": "OUTPUT0", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64,
                                                 "binary_data": True}}]},
            SIMPLE,
            "Output can't set both 'shared_memory_region' and 'binary_data'",
        ),
        (
            {"inputs": [_input(parameters={"shared_memory_region": "r", "shared_memory_offset": -1})]},
            SIMPLE,
            "Unable to parse 'shared_memory_offset'",
        ),
    ],
)
def test_request_errors(doc, signature, message):
    error = refused(doc, signature)
    assert error.status == 400
    assert message in error.message, error.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xc1", "failed to parse the request msgpack buffer"),
        (msgpack.packb({"inputs": []}) + b"\x00", "failed to parse the request msgpack buffer"),
        (b"\xdd\xff\xff\xff\xff", "failed to parse the request msgpack buffer"),
        (b"\x81\x01\x01", "failed to parse the request msgpack buffer"),
        (b"\xa2\xff\xfe", "failed to parse the request msgpack buffer"),
        (b"\x91" * 5000 + b"\x00", "failed to parse the request msgpack buffer"),
        (msgpack.packb([1]), "expected an object at the top level"),
        (msgpack.packb({"inputs": [], "parameters": {b"k": 1}}), "Unable to parse 'parameters': keys must be strings"),
        (
            msgpack.packb({"inputs": [_input(data=b"\x00" * 60), _input("INPUT1", data=b"\x00" * 64)]}),
            "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 60",
        ),
        (
            msgpack.packb({"inputs": [_input(data=[msgpack.ExtType(1, b"x")] * 16), _input("INPUT1", data=[1] * 16)]}),
            "takes integers, got ExtType",
        ),
    ],
)
def test_msgpack_errors(body, message):
    error = refused(body, msgpack=True)
    assert error.status == 400
    assert message in error.message


# ---------------------------------------------------------------------------------------------
# Reply encoding


def _simple_request(**doc) -> InferRequest:
    return decode({"inputs": simple_inputs(), **doc})


def _formats(reply) -> dict[str, str]:
    head_length = dict(reply.headers).get("Inference-Header-Content-Length")
    body = joined(reply)
    document = orjson.loads(body[: int(head_length)] if head_length else body)
    formats = {}
    for output in document["outputs"]:
        formats[output["name"]] = "binary" if "binary_data_size" in output.get("parameters", {}) else "json"
        assert ("data" in output) == (formats[output["name"]] == "json")
    return formats


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({}, {"OUTPUT0": "json", "OUTPUT1": "json"}),
        ({"parameters": {"binary_data_output": True}}, {"OUTPUT0": "binary", "OUTPUT1": "binary"}),
        (
            {"outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}]},
            {"OUTPUT0": "binary", "OUTPUT1": "json"},
        ),
        # qa L0_http: binary_data_output does not apply to listed outputs.
        (
            {
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}, {"name": "OUTPUT1"}],
            },
            {"OUTPUT0": "json", "OUTPUT1": "json"},
        ),
        ({"outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": True}}]}, {"OUTPUT1": "binary"}),
    ],
)
def test_output_selection_follows_triton(doc, expected):
    req = _simple_request(**doc)
    reply = encode_infer_response(simple_response(req), req)
    assert _formats(reply) == expected
    headers = dict(reply.headers)
    if "binary" in expected.values():
        assert headers["Content-Type"] == "application/octet-stream"
        assert int(headers["Inference-Header-Content-Length"]) == len(reply.buffers[0])
    else:
        assert headers == {"Content-Type": "application/json"}
    result = client_result(reply)
    for name in expected:
        assert result.as_numpy(name).shape == (1, 16)


def test_reply_head_fields():
    req = _simple_request(id="req-7")
    resp = simple_response(req, parameters={"flag": True, "n": np.int64(3), "s": "x", "f": 0.5})
    document = orjson.loads(joined(encode_infer_response(resp, req)))
    assert list(document) == ["id", "model_name", "model_version", "parameters", "outputs"]
    assert document["id"] == "req-7" and document["model_version"] == "1"
    assert document["parameters"] == {"flag": True, "n": 3, "s": "x", "f": 0.5}
    assert document["outputs"][0]["data"] == [i + 1 for i in range(16)]
    req.id = ""
    resp.id = ""
    document = orjson.loads(joined(encode_infer_response(resp, req)))
    assert "id" not in document and "parameters" in document


def test_response_parameter_of_bytes_is_501():
    req = _simple_request()
    with pytest.raises(ProtocolError) as info:
        encode_infer_response(simple_response(req, parameters={"b": b"x"}), req)
    assert info.value.status == 501


def test_zero_byte_binary_outputs_add_no_bytes():
    req = InferRequest("m", "1", binary_data_output=True)
    outputs = [
        OutputTensor("empty", "FP32", (0, 3), np.zeros((0, 3), np.float32)),
        OutputTensor("strings", "BYTES", (0,), np.zeros(0, dtype=object)),
        OutputTensor("one", "UINT8", (1,), np.array([9], np.uint8)),
    ]
    reply = encode_infer_response(InferResponse("m", "1", outputs=outputs), req)
    head_length = int(dict(reply.headers)["Inference-Header-Content-Length"])
    assert len(joined(reply)) == head_length + 1
    result = client_result(reply)
    assert result.as_numpy("empty").size == 0 and result.as_numpy("one").tolist() == [9]
    sizes = [o["parameters"]["binary_data_size"] for o in result.get_response()["outputs"]]
    assert sizes == [0, 0, 1]


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_precision_outputs_cannot_be_json(datatype):
    req = InferRequest("m", "1")
    resp = InferResponse("m", "1", outputs=[OutputTensor("o", datatype, (1,), np.zeros(1, numpy_dtype(datatype)))])
    with pytest.raises(ProtocolError) as info:
        encode_infer_response(resp, req)
    assert info.value.status == 400
    assert info.value.message == (
        f"sending {datatype} data via JSON is not supported. Please use the binary data format for output"
    )


def test_non_utf8_bytes_output_needs_binary():
    array = np.array([b"\xff\xfe"], dtype=object)
    resp = InferResponse("m", "1", outputs=[OutputTensor("o", "BYTES", (1,), array)])
    with pytest.raises(ProtocolError) as info:
        encode_infer_response(resp, InferRequest("m", "1"))
    assert info.value.status == 400 and "binary_data=true" in info.value.message
    reply = encode_infer_response(resp, InferRequest("m", "1", binary_data_output=True))
    assert client_result(reply).as_numpy("o").tolist() == [b"\xff\xfe"]


def test_str_elements_in_bytes_outputs():
    array = np.array(["é", b"x"], dtype=object)
    resp = InferResponse("m", "1", outputs=[OutputTensor("o", "BYTES", (2,), array)])
    assert orjson.loads(joined(encode_infer_response(resp, InferRequest("m", "1"))))["outputs"][0]["data"] == ["é", "x"]


def test_nan_and_infinity_are_written_as_tokens_clients_read():
    values = np.array([1.5, np.nan, np.inf, -np.inf, 0.0], dtype=np.float32)
    resp = InferResponse(
        "m", "1", outputs=[OutputTensor("o", "FP32", (5,), values), OutputTensor("d", "FP64", (1,), np.array([np.nan]))]
    )
    body = joined(encode_infer_response(resp, InferRequest("m", "1")))
    assert b'"data":[1.5,NaN,Infinity,-Infinity,0.0]' in body
    for document in (json.loads(body), rapidjson.loads(body)):
        data = document["outputs"][0]["data"]
        assert data[0] == 1.5 and math.isnan(data[1]) and data[2] == math.inf and data[3] == -math.inf
    back = client_result(encode_infer_response(resp, InferRequest("m", "1"))).as_numpy("o")
    np.testing.assert_array_equal(back, values)


def test_output_arrays_in_any_layout_are_sent_little_endian_and_contiguous():
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    outputs = [
        OutputTensor("transposed", "FP64", (4, 3), base.T),
        OutputTensor("big_endian", "INT32", (3,), np.array([1, 2, 3], dtype=">i4")),
        OutputTensor("widened", "FP32", (3, 4), base),
        OutputTensor("listed", "INT16", (2,), [5, 6]),
    ]
    req = InferRequest("m", "1", binary_data_output=True)
    result = client_result(encode_infer_response(InferResponse("m", "1", outputs=outputs), req))
    assert result.as_numpy("transposed").reshape(4, 3).tolist() == base.T.tolist()
    assert result.as_numpy("big_endian").tolist() == [1, 2, 3]
    assert result.as_numpy("widened").dtype == np.float32
    assert result.as_numpy("listed").tolist() == [5, 6]
    json_body = joined(encode_infer_response(InferResponse("m", "1", outputs=outputs), InferRequest("m", "1")))
    assert orjson.loads(json_body)["outputs"][1]["data"] == [1, 2, 3]


def test_output_data_that_does_not_fit_its_shape_is_a_server_error():
    resp = InferResponse("m", "1", outputs=[OutputTensor("o", "FP32", (2, 2), np.zeros(3, np.float32))])
    with pytest.raises(ProtocolError) as info:
        encode_infer_response(resp, InferRequest("m", "1"))
    assert info.value.status == 500


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_reply_keeps_the_uncompressed_header_length(encoding):
    req = _simple_request(parameters={"binary_data_output": True})
    plain = encode_infer_response(simple_response(req), req)
    packed = encode_infer_response(simple_response(req), req, accept_encoding=f"{encoding}, identity;q=0.5")
    headers = dict(packed.headers)
    assert headers["Content-Encoding"] == encoding
    assert headers["Inference-Header-Content-Length"] == dict(plain.headers)["Inference-Header-Content-Length"]
    inflate = gzip.decompress if encoding == "gzip" else zlib.decompress
    assert inflate(joined(packed)) == joined(plain)
    assert client_result(packed).as_numpy("OUTPUT0").tolist() == [[i + 1 for i in range(16)]]


def test_identity_accept_encoding_sends_plain_reply():
    req = _simple_request()
    reply = encode_infer_response(simple_response(req), req, accept_encoding="gzip;q=0, identity")
    assert "Content-Encoding" not in dict(reply.headers)


def test_deflate_reply_through_tritonclient():
    req = _simple_request()
    reply = encode_infer_response(simple_response(req), req, accept_encoding="deflate")
    assert client_result(reply).as_numpy("OUTPUT1").tolist() == [[i - 1 for i in range(16)]]


# ---------------------------------------------------------------------------------------------
# Classification


def test_classification_unbatched_with_labels_and_tritonclient():
    scores = np.array([0.1, 0.7, 0.2, 0.7], dtype=np.float32)
    req = InferRequest("m", "1", outputs=[RequestedOutput("probs", binary=True, classification=3)])
    resp = InferResponse("m", "1", outputs=[OutputTensor("probs", "FP32", (4,), scores)])
    reply = encode_infer_response(resp, req, labels={"probs": ["cat", "dog", "eel"]})
    result = client_result(reply)
    output = result.get_output("probs")
    assert output["datatype"] == "BYTES" and output["shape"] == [3]
    assert result.as_numpy("probs").tolist() == [b"0.700000:1:dog", b"0.700000:3", b"0.200000:2:eel"]


def test_classification_batched_rows_and_json():
    scores = np.array([[1, 5, 3], [9, 2, 4]], dtype=np.int32)
    req = InferRequest("m", "1", outputs=[RequestedOutput("s", binary=False, classification=5)])
    reply = encode_infer_response(
        InferResponse("m", "1", outputs=[OutputTensor("s", "INT32", (2, 3), scores)]), req, batched=True
    )
    output = orjson.loads(joined(reply))["outputs"][0]
    assert output["shape"] == [2, 3]
    assert output["data"] == ["5:1", "3:2", "1:0", "9:0", "4:2", "2:1"]
    # Without batching the whole tensor is one list of classes.
    reply = encode_infer_response(InferResponse("m", "1", outputs=[OutputTensor("s", "INT32", (2, 3), scores)]), req)
    output = orjson.loads(joined(reply))["outputs"][0]
    assert output["shape"] == [5] and output["data"][:2] == ["9:3", "5:1"]


def test_classification_via_tritonclient_class_count():
    tensors = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in tensors:
        tensor.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=2)]
    body, size = InferenceServerClient.generate_request_body(tensors, outputs=outputs)
    req = decode(body, header_length=size)
    reply = encode_infer_response(simple_response(req), req, batched=True)
    assert client_result(reply).as_numpy("OUTPUT0").tolist() == [["30:15", "28:14"]]


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL", "FP16", "BF16"])
def test_classification_of_unsupported_types(datatype):
    req = InferRequest("m", "1", outputs=[RequestedOutput("o", classification=1)])
    data = np.zeros(2, dtype=numpy_dtype(datatype)) if datatype != "BYTES" else np.array([b"a", b"b"], dtype=object)
    with pytest.raises(ProtocolError) as info:
        encode_infer_response(InferResponse("m", "1", outputs=[OutputTensor("o", datatype, (2,), data)]), req)
    assert info.value.message == f"class result not available for output due to unsupported type '{datatype}'"


def test_classification_size_guard():
    req = InferRequest("m", "1", outputs=[RequestedOutput("o", classification=1)])
    data = np.zeros(1_000_001, dtype=np.uint8)
    with pytest.raises(ProtocolError, match="classification output tensor too large"):
        encode_infer_response(InferResponse("m", "1", outputs=[OutputTensor("o", "UINT8", data.shape, data)]), req)


def test_wide_floats_for_an_fp32_output_overflow_to_inf_quietly():
    resp = InferResponse("m", "1", outputs=[OutputTensor("o", "FP32", (2,), np.array([1e300, 2.0]))])
    reply = encode_infer_response(resp, InferRequest("m", "1", binary_data_output=True))
    assert client_result(reply).as_numpy("o").tolist() == [math.inf, 2.0]


def test_msgpack_head_with_binary_sections():
    head = msgpack.packb(
        {
            "inputs": [
                {"name": n, "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}
                for n in ("INPUT0", "INPUT1")
            ]
        }
    )
    tensors = np.arange(32, dtype=np.int32)
    req = decode(bytearray(head + tensors.tobytes()), header_length=len(head), msgpack=True)
    assert req.inputs[1].data.tolist() == [list(range(16, 32))]
