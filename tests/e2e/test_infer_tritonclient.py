"""Inference through the real tritonclient (http and http.aio) against a real evserve process."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.evserve_process import EvserveProcess

# Every datatype of the protocol, with a NumPy dtype tritonclient accepts for it.
DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@pytest.fixture(scope="module")
def server() -> Iterator[EvserveProcess]:
    with EvserveProcess("--threads", "2", "--server-name", "triton") as proc:
        yield proc


@pytest.fixture()
def client(server: EvserveProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def _sample(datatype: str, count: int = 6) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        return rng.integers(0, 2, count).astype(np.bool_)
    if datatype == "BYTES":
        return np.array([f"s{i}-é".encode() for i in range(count)], dtype=np.object_)
    dtype = np.dtype(DATATYPES[datatype])
    if dtype.kind == "f":
        return rng.standard_normal(count).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)


def _identity(client: httpclient.InferenceServerClient, datatype: str, *, binary: bool, **kwargs: object) -> None:
    data = _sample(datatype)
    inp = httpclient.InferInput(f"INPUT_{datatype}", list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput(f"OUTPUT_{datatype}", binary_data=binary)
    result = client.infer("identity_all", [inp], outputs=[out], **kwargs)
    got = result.as_numpy(f"OUTPUT_{datatype}")
    assert got.shape == data.shape
    if datatype == "BYTES":
        # tritonclient hands JSON BYTES back as str and binary BYTES as bytes, as against Triton.
        assert [x.encode() if isinstance(x, str) else x for x in got] == list(data)
    else:
        np.testing.assert_array_equal(got, data)


JSON_TYPES = [d for d in DATATYPES if d != "FP16"]  # FP16 cannot travel as JSON (Triton's rule)


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_identity_binary_round_trip(client: httpclient.InferenceServerClient, datatype: str) -> None:
    _identity(client, datatype, binary=True)


@pytest.mark.parametrize("datatype", JSON_TYPES)
def test_identity_json_round_trip(client: httpclient.InferenceServerClient, datatype: str) -> None:
    _identity(client, datatype, binary=False)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("datatype", ["INT32", "FP64", "BYTES"])
@pytest.mark.parametrize("binary", [True, False])
def test_identity_compressed(client: httpclient.InferenceServerClient, datatype: str, algorithm: str,
                             binary: bool) -> None:
    _identity(client, datatype, binary=binary, request_compression_algorithm=algorithm,
              response_compression_algorithm=algorithm)


def test_fp16_as_json_is_refused(client: httpclient.InferenceServerClient) -> None:
    data = np.ones(4, dtype=np.float16)
    inp = httpclient.InferInput("INPUT_FP16", [4], "FP16")
    inp.set_data_from_numpy(data, binary_data=True)
    with pytest.raises(InferenceServerException, match="FP16"):
        client.infer("identity_all", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT_FP16", binary_data=False)])


def _simple_inputs(binary: bool = True) -> list[httpclient.InferInput]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def test_simple_add_sub(client: httpclient.InferenceServerClient) -> None:
    result = client.infer("simple", _simple_inputs(), request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.arange(16).reshape(1, 16) + 1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.arange(16).reshape(1, 16) - 1)
    assert result.get_response()["id"] == "req-7"
    assert result.get_response()["model_version"] == "1"


def test_requested_output_subset(client: httpclient.InferenceServerClient) -> None:
    result = client.infer("simple", _simple_inputs(False), outputs=[httpclient.InferRequestedOutput("OUTPUT1",
                                                                                                     binary_data=False)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None


def test_string_model(client: httpclient.InferenceServerClient) -> None:
    a = np.array([str(i).encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
    b = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple_string", inputs)
    assert [int(x) for x in result.as_numpy("OUTPUT0").ravel()] == [i + 1 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1").ravel()] == [i - 1 for i in range(16)]


def test_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("simple")
    assert meta["platform"] == "python" and meta["versions"] == ["1"]
    assert meta["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_INT32" and config["input"][0]["dims"] == [16]
    assert client.is_model_ready("simple") and client.is_server_ready() and client.is_server_live()
    assert client.get_server_metadata()["name"] == "triton"


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda c: c.get_model_metadata("nope"), "404", "Request for unknown model: 'nope' is not found"),
        (lambda c: c.get_model_metadata("simple", model_version="9"), "404", "version 9"),
        (lambda c: c.infer("nope", _simple_inputs()), "404", "Request for unknown model"),
    ],
)
def test_unknown_model_and_version(client: httpclient.InferenceServerClient, call: object, status: str,
                                   message: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(client)  # type: ignore[operator]
    assert info.value.status() == status
    assert message in info.value.message()


def test_infer_errors(client: httpclient.InferenceServerClient) -> None:
    bad_type = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    bad_type.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="data-type is 'FP32', but model 'simple' expects 'INT32'"):
        client.infer("simple", [bad_type, _simple_inputs()[1]])
    with pytest.raises(InferenceServerException, match="expected 2 inputs but got 1"):
        client.infer("simple", _simple_inputs()[:1])
    big = [httpclient.InferInput(n, [9, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in big:
        inp.set_data_from_numpy(np.zeros((9, 16), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
        client.infer("simple", big)
    short = [httpclient.InferInput(n, [1, 15], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in short:
        inp.set_data_from_numpy(np.zeros((1, 15), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="unexpected shape for input 'INPUT0'") as info:
        client.infer("simple", short)
    assert info.value.status() == "400"
    assert client.is_server_live()


def test_two_hundred_concurrent_async_requests(server: EvserveProcess) -> None:
    async def run() -> None:
        async with aioclient.InferenceServerClient(server.url, conn_limit=200) as c:
            async def one(i: int) -> None:
                a = np.full((1, 16), i, dtype=np.int32)
                b = np.arange(16, dtype=np.int32).reshape(1, 16)
                inputs = [aioclient.InferInput("INPUT0", [1, 16], "INT32"),
                          aioclient.InferInput("INPUT1", [1, 16], "INT32")]
                inputs[0].set_data_from_numpy(a)
                inputs[1].set_data_from_numpy(b)
                result = await c.infer("simple", inputs, request_id=str(i))
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
                assert result.get_response()["id"] == str(i)

            await asyncio.gather(*(one(i) for i in range(200)))

    asyncio.run(run())


def test_decoupled_model_on_infer_is_501(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("IN", [3], "INT32")
    inp.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("repeat_int32", [inp])
    assert info.value.status() == "501"
    assert "decoupled transaction policy" in info.value.message()


def _post(server: EvserveProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def test_msgpack_round_trip(server: EvserveProcess) -> None:
    """Our extension: the same v2 object in msgpack, tensor data as raw little-endian bytes."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 2, dtype=np.int32)
    body = msgpack.packb({
        "id": "mp",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a.tobytes()},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b.tobytes()},
        ],
    })
    status, headers, data = _post(server, "/v2/models/simple/infer", body, {"Content-Type": "application/msgpack"})
    assert status == 200, data
    assert headers["content-type"] == "application/msgpack"
    reply = msgpack.unpackb(data)
    assert reply["id"] == "mp" and reply["model_name"] == "simple"
    outputs = {o["name"]: o for o in reply["outputs"]}
    np.testing.assert_array_equal(np.frombuffer(outputs["OUTPUT0"]["data"], dtype="<i4").reshape(1, 16), a + b)
    np.testing.assert_array_equal(np.frombuffer(outputs["OUTPUT1"]["data"], dtype="<i4").reshape(1, 16), a - b)


def test_raw_binary_request(server: EvserveProcess) -> None:
    """Inference-Header-Content-Length: 0 — the body is the single input; outputs come back binary."""
    data = np.linspace(-1, 1, 1024, dtype=np.float32)
    status, headers, body = _post(server, "/v2/models/identity_fp32/infer", data.tobytes(),
                                  {"Inference-Header-Content-Length": "0"})
    assert status == 200, body
    head_len = int(headers["inference-header-content-length"])
    head = json.loads(body[:head_len])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == data.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[head_len:], dtype="<f4"), data)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, ""),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [NaN]}]}', 400, ""),
        (b'{"inputs": [], "parameters": {"triton_x": 1}}', 400, "reserved for Triton usage"),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [4611686018427387904, 16], "data": [1]}]}',
         400, ""),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, -16], "data": [1]}]}', 400, ""),
        (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": ' + b"[" * 150
         + b"1" + b"]" * 150 + b'}, {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": '
         + json.dumps(list(range(16))).encode() + b"}]}", 400, "nesting"),
    ],
)
def test_hostile_json_is_4xx(server: EvserveProcess, body: bytes, status: int, needle: str) -> None:
    got, _, data = _post(server, "/v2/models/simple/infer", body, {})
    assert got == status, data
    assert needle in json.loads(data)["error"]


@pytest.mark.parametrize(("binary", "compression"), [(False, None), (True, "gzip"), (False, "deflate")])
def test_large_bodies_take_the_offload_path(client: httpclient.InferenceServerClient, binary: bool,
                                            compression: str | None) -> None:
    """Bodies over 256 KiB that are compressed or mostly JSON are decoded off the loop thread."""
    data = np.random.default_rng(3).standard_normal(200_000).astype(np.float32)
    inp = httpclient.InferInput("INPUT0", [data.size], "FP32")
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
    result = client.infer("identity_fp32", [inp], outputs=[out], request_compression_algorithm=compression)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_large_body_decode_errors_come_back_through_the_ticket(server: EvserveProcess) -> None:
    import gzip

    body = gzip.compress(b'{"inputs": [' + b" " * 400_000 + b"oops")
    status, _, data = _post(server, "/v2/models/identity_fp32/infer", body, {"Content-Encoding": "gzip"})
    assert status == 400
    assert "error" in json.loads(data)
