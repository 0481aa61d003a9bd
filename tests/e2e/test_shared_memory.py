"""Client shared memory against a real server, with tritonclient's own shm helpers and raw HTTP for hostile input.

The flows are those of Triton's example clients and qa/L0_shared_memory: regions created with
``tritonclient.utils.shared_memory``, registered, used for inputs and outputs (binary and JSON
requests, mixed with inline tensors, BYTES in Triton's length-prefixed form), listed and
unregistered. The hostile cases: keys that try to leave the shared-memory namespace, ranges
outside the object, an object truncated under its mapping, limits on count and size, and a
region unregistered while a request uses it.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from evserve.gpu import EXAMPLE_REPOSITORY
from tests.e2e.conftest import call, copy_simple, post_json, wait_for
from tests.evserve_process import EvserveProcess

# Writes 99 into the first element of its input in place, then sleeps SLEEP seconds: a client that
# then reads its input region sees the model wrote into the very bytes the client shared.
TOUCH_CONFIG = """
name: "touch"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 4 ] }, { name: "SLEEP" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 4 ] } ]
"""
TOUCH_MODEL = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils

KEPT = []


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if data.flags.writeable:
                data[0] = 99
            KEPT.append(data)  # held past the request, as a careless model might
            time.sleep(float(pb_utils.get_input_tensor_by_name(request, "SLEEP").as_numpy()[0]))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", data.copy())]))
        return responses
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("shm-repo")
    copy_simple(repo)
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "simple_string", repo / "simple_string")
    (repo / "touch" / "1").mkdir(parents=True)
    (repo / "touch" / "config.pbtxt").write_text(TOUCH_CONFIG)
    (repo / "touch" / "1" / "model.py").write_text(TOUCH_MODEL)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[EvserveProcess]:
    with EvserveProcess("--model-repository", str(repository), "--allow-client-shm=true",
                        "--client-shm-max-regions", "8", "--client-shm-max-region-size", str(1 << 20)) as proc:
        yield proc


@pytest.fixture()
def client(server: EvserveProcess) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server.url)
    triton.unregister_system_shared_memory()
    yield triton
    triton.unregister_system_shared_memory()
    triton.close()


class Regions:
    """Shared-memory objects made with tritonclient's helpers, destroyed at the end of the test."""

    def __init__(self) -> None:
        self.handles: list[object] = []

    def create(self, key: str, size: int) -> object:
        handle = shm.create_shared_memory_region(key.strip("/") + str(os.getpid()), key + str(os.getpid()), size)
        self.handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture()
def regions() -> Iterator[Regions]:
    made = Regions()
    yield made
    made.close()


def key(name: str) -> str:
    return name + str(os.getpid())


A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)


def _simple_through_shm(client: httpclient.InferenceServerClient, regions: Regions, *, binary: bool) -> None:
    inputs_handle = regions.create("/ev_in", 128)
    outputs_handle = regions.create("/ev_out", 128)
    shm.set_shared_memory_region(inputs_handle, [A])
    shm.set_shared_memory_region(inputs_handle, [B], offset=64)
    client.register_system_shared_memory("input_data", key("/ev_in"), 128)
    client.register_system_shared_memory("output_data", key("/ev_out"), 128)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("input_data", 64)
    inputs[1].set_shared_memory("input_data", 64, offset=64)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    outputs[0].set_shared_memory("output_data", 64)
    outputs[1].set_shared_memory("output_data", 64, offset=64)
    result = client.infer("simple", inputs, outputs=outputs)
    for name, offset, want in (("OUTPUT0", 0, A + B), ("OUTPUT1", 64, A - B)):
        output = result.get_output(name)
        assert output is not None and "data" not in output and output["shape"] == [1, 16]
        got = shm.get_contents_as_numpy(outputs_handle, np.int32, [1, 16], offset=offset)
        np.testing.assert_array_equal(got, want)


def test_simple_through_shared_memory_binary(client: httpclient.InferenceServerClient, regions: Regions) -> None:
    _simple_through_shm(client, regions, binary=True)


def test_simple_through_shared_memory_json(client: httpclient.InferenceServerClient, regions: Regions) -> None:
    _simple_through_shm(client, regions, binary=False)


def test_status_lists_what_is_registered(client: httpclient.InferenceServerClient, regions: Regions) -> None:
    regions.create("/ev_status", 64)
    client.register_system_shared_memory("status_region", key("/ev_status"), 32, offset=8)
    assert client.get_system_shared_memory_status() == [
        {"name": "status_region", "key": key("/ev_status"), "offset": 8, "byte_size": 32}]
    assert client.get_system_shared_memory_status("status_region")[0]["byte_size"] == 32
    with pytest.raises(InferenceServerException, match="Unable to find system shared memory region: 'nope'"):
        client.get_system_shared_memory_status("nope")
    with pytest.raises(InferenceServerException, match="already in manager"):
        client.register_system_shared_memory("status_region", key("/ev_status"), 32)
    client.unregister_system_shared_memory("status_region")
    client.unregister_system_shared_memory("never_registered")  # 200, as Triton
    assert client.get_system_shared_memory_status() == []
    assert client.get_cuda_shared_memory_status() == []


def test_mixed_shared_memory_and_inline_inputs(client: httpclient.InferenceServerClient, regions: Regions) -> None:
    handle = regions.create("/ev_mixed", 64)
    shm.set_shared_memory_region(handle, [A])
    client.register_system_shared_memory("mixed", key("/ev_mixed"), 64)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("mixed", 64)
    inputs[1].set_data_from_numpy(B, binary_data=False)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


def test_bytes_tensors_in_shared_memory(client: httpclient.InferenceServerClient, regions: Regions) -> None:
    """simple_string through shm, as simple_http_shm_string_client does it."""
    a = np.array([str(i).encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
    b = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    wire_a, wire_b = serialize_byte_tensor(a), serialize_byte_tensor(b)
    size_a, size_b = serialized_byte_size(wire_a), serialized_byte_size(wire_b)
    inputs_handle = regions.create("/ev_str_in", size_a + size_b)
    outputs_handle = regions.create("/ev_str_out", 1024)
    shm.set_shared_memory_region(inputs_handle, [wire_a])
    shm.set_shared_memory_region(inputs_handle, [wire_b], offset=size_a)
    client.register_system_shared_memory("str_in", key("/ev_str_in"), size_a + size_b)
    client.register_system_shared_memory("str_out", key("/ev_str_out"), 1024)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"), httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_shared_memory("str_in", size_a)
    inputs[1].set_shared_memory("str_in", size_b, offset=size_a)
    output = httpclient.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("str_out", 512)
    result = client.infer("simple_string", inputs, outputs=[output])
    assert result.get_output("OUTPUT0")["datatype"] == "BYTES"
    got = shm.get_contents_as_numpy(outputs_handle, np.object_, [1, 16])
    assert [int(x) for x in got.reshape(-1)] == [i + 1 for i in range(16)]


def _touch_inputs(region: str, sleep: float) -> list[httpclient.InferInput]:
    data = httpclient.InferInput("IN", [4], "INT32")
    data.set_shared_memory(region, 16)
    pause = httpclient.InferInput("SLEEP", [1], "FP32")
    pause.set_data_from_numpy(np.array([sleep], np.float32))
    return [data, pause]


def test_inputs_are_the_clients_own_bytes(client: httpclient.InferenceServerClient, regions: Regions) -> None:
    """No copy: the model writes into its input and the client sees it in its region."""
    handle = regions.create("/ev_touch", 16)
    shm.set_shared_memory_region(handle, [np.array([1, 2, 3, 4], np.int32)])
    client.register_system_shared_memory("touch_in", key("/ev_touch"), 16)
    client.infer("touch", _touch_inputs("touch_in", 0))
    assert shm.get_contents_as_numpy(handle, np.int32, [4]).tolist() == [99, 2, 3, 4]


def test_an_offset_that_is_not_page_aligned_works(client: httpclient.InferenceServerClient, regions: Regions) -> None:
    """Triton fails this register with EINVAL (mmap wants page-aligned offsets); evserve maps from 0."""
    handle = regions.create("/ev_odd", 200)
    shm.set_shared_memory_region(handle, [A], offset=4)
    shm.set_shared_memory_region(handle, [B], offset=68)
    client.register_system_shared_memory("odd", key("/ev_odd"), 128, offset=4)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory("odd", 64)
    inputs[1].set_shared_memory("odd", 64, offset=64)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT1"), A - B)


def test_unregister_while_in_use_waits_for_the_request(client: httpclient.InferenceServerClient,
                                                       regions: Regions, server: EvserveProcess) -> None:
    handle = regions.create("/ev_busy", 16)
    shm.set_shared_memory_region(handle, [np.array([5, 6, 7, 8], np.int32)])
    client.register_system_shared_memory("busy", key("/ev_busy"), 16)
    results: list[object] = []

    def infer_slowly() -> None:  # tritonclient's gevent client belongs to the thread that made it
        with httpclient.InferenceServerClient(server.url) as own:
            results.append(own.infer("touch", _touch_inputs("busy", 1.0)))

    worker = threading.Thread(target=infer_slowly)
    worker.start()
    # touch writes 99 into its input as it starts: from then on the request holds the region.
    wait_for(lambda: int(shm.get_contents_as_numpy(handle, np.int32, [4])[0]) == 99, 10, "the model to start")
    assert call(server.port, "POST", "/v2/systemsharedmemory/region/busy/unregister").status == 200
    # Still listed while the request holds it (Triton since PR #7743) ...
    assert [r["name"] for r in client.get_system_shared_memory_status()] == ["busy"]
    worker.join(10)
    assert results and results[0].as_numpy("OUT").tolist() == [99, 6, 7, 8]  # type: ignore[attr-defined]
    # ... and gone once it finished.
    assert client.get_system_shared_memory_status() == []


def test_a_model_that_keeps_an_input_past_unregister_and_destroy(client: httpclient.InferenceServerClient,
                                                                 server: EvserveProcess) -> None:
    """touch keeps every input array; unregistering and destroying the object must not crash anything."""
    handle = shm.create_shared_memory_region("ev_kept", key("/ev_kept"), 16)
    try:
        client.register_system_shared_memory("kept", key("/ev_kept"), 16)
        client.infer("touch", _touch_inputs("kept", 0))
        client.unregister_system_shared_memory("kept")
    finally:
        shm.destroy_shared_memory_region(handle)
    assert call(server.port, "GET", "/v2/health/live").status == 200
    assert client.infer("simple", _inline_inputs()).as_numpy("OUTPUT0").tolist() == (A + B).tolist()


def _inline_inputs() -> list[httpclient.InferInput]:
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_data_from_numpy(B)
    return inputs


# ------------------------------------------------------------------------------------ hostile input


def register(port: int, region: str, body: object) -> tuple[int, str]:
    reply = post_json(port, f"/v2/systemsharedmemory/region/{region}/register", body)
    return reply.status, (reply.error if reply.body else "")


@pytest.mark.parametrize(
    ("bad_key", "message"),
    [
        ("/../../etc/passwd", "invalid key"),
        ("a/b", "invalid key"),
        ("..", "invalid key"),
        ("///", "invalid key"),
        ("", "invalid key"),
        ("/" + "x" * 300, "invalid key"),
        ("/triton_python_backend_shm_region_1", "contains the reserved prefix 'triton_python_backend_shm_region_'"),
        ("/ev_does_not_exist", "Unable to open shared memory region"),
    ],
)
def test_keys_outside_the_shm_namespace_are_refused(server: EvserveProcess, bad_key: str, message: str) -> None:
    status, error = register(server.port, "bad", {"key": bad_key, "byte_size": 8})
    assert status == 400 and message in error


def test_ranges_outside_the_object_and_bad_fields(server: EvserveProcess, regions: Regions) -> None:
    regions.create("/ev_small", 64)
    cases = [
        ({"key": key("/ev_small"), "byte_size": 65}, "failed to register shared memory region 'r': invalid args"),
        ({"key": key("/ev_small"), "offset": 60, "byte_size": 8}, "invalid args"),
        ({"key": key("/ev_small"), "offset": 65, "byte_size": 0}, "invalid args"),
        ({"key": key("/ev_small")}, "has no 'byte_size' field"),
        ({"byte_size": 8}, "has no 'key' field"),
        ({"key": key("/ev_small"), "byte_size": -1}, "Unable to parse 'byte_size'"),
        ({"key": key("/ev_small"), "byte_size": 8, "offset": "0"}, "Unable to parse 'offset'"),
        ([1], "must be a JSON object"),
    ]
    for body, message in cases:
        status, error = register(server.port, "r", body)
        assert status == 400 and message in error, (body, error)
    assert call(server.port, "GET", "/v2/systemsharedmemory/status").json() == []


def test_region_count_and_size_limits(client: httpclient.InferenceServerClient, regions: Regions,
                                      server: EvserveProcess) -> None:
    regions.create("/ev_big", 2 << 20)
    status, error = register(server.port, "big", {"key": key("/ev_big"), "byte_size": 2 << 20})
    assert status == 400 and "exceeds the limit of 1048576 bytes (--client-shm-max-region-size)" in error
    regions.create("/ev_many", 8)
    for i in range(8):
        client.register_system_shared_memory(f"many{i}", key("/ev_many"), 8)
    status, error = register(server.port, "many8", {"key": key("/ev_many"), "byte_size": 8})
    assert status == 400 and "its limit (--client-shm-max-regions)" in error


def _shm_input_body(region: str, size: int, offset: int = 0) -> dict[str, object]:
    params = {"shared_memory_region": region, "shared_memory_byte_size": size, "shared_memory_offset": offset}
    return {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "parameters": params},
                       {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}


def test_inference_ranges_are_checked(client: httpclient.InferenceServerClient, regions: Regions,
                                      server: EvserveProcess) -> None:
    regions.create("/ev_range", 128)
    client.register_system_shared_memory("range", key("/ev_range"), 64, offset=64)
    for body, status, message in (
        (_shm_input_body("nope", 64), 404, "Unable to find shared memory region: 'nope'"),
        (_shm_input_body("range", 64, 64), 400, "Invalid offset for shared memory region: 'range'"),
        (_shm_input_body("range", 64, 8), 400, "Invalid offset + byte size for shared memory region: 'range'"),
        (_shm_input_body("range", 32), 400, "input byte size mismatch for input 'INPUT0' for model 'simple'"),
    ):
        reply = post_json(server.port, "/v2/models/simple/infer", body)
        assert (reply.status, message in reply.error) == (status, True), reply.error


def test_outputs_never_write_outside_the_registered_range(client: httpclient.InferenceServerClient,
                                                          regions: Regions, server: EvserveProcess) -> None:
    handle = regions.create("/ev_fence", 192)
    shm.set_shared_memory_region(handle, [np.full(48, -7, np.int32)])
    client.register_system_shared_memory("fence", key("/ev_fence"), 64, offset=64)
    to_fence = {"shared_memory_region": "fence", "shared_memory_byte_size": 64}
    body = {"inputs": _shm_input_body("x", 0)["inputs"][1:] + [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}],
        "outputs": [{"name": "OUTPUT0", "parameters": to_fence}]}
    assert post_json(server.port, "/v2/models/simple/infer", body).status == 200
    contents = shm.get_contents_as_numpy(handle, np.int32, [48]).tolist()
    assert contents == [-7] * 16 + [i + 1 for i in range(16)] + [-7] * 16
    body["outputs"][0]["parameters"]["shared_memory_byte_size"] = 32  # type: ignore[index]
    reply = post_json(server.port, "/v2/models/simple/infer", body)
    assert reply.status == 400 and "should be at least 64 bytes to hold the results" in reply.error
    body["outputs"][0]["parameters"]["shared_memory_offset"] = 40  # type: ignore[index]
    reply = post_json(server.port, "/v2/models/simple/infer", body)
    assert reply.status == 400 and "Invalid offset + byte size for shared memory region: 'fence'" in reply.error


def test_an_object_truncated_under_its_mapping_is_refused_not_a_crash(client: httpclient.InferenceServerClient,
                                                                      regions: Regions,
                                                                      server: EvserveProcess) -> None:
    regions.create("/ev_shrink", 128)
    client.register_system_shared_memory("shrink", key("/ev_shrink"), 128)
    os.truncate(f"/dev/shm/{key('ev_shrink')}", 16)
    reply = post_json(server.port, "/v2/models/simple/infer", _shm_input_body("shrink", 64))
    assert reply.status == 400 and "was truncated below its registered size" in reply.error
    assert call(server.port, "GET", "/v2/health/live").status == 200


def test_without_allow_client_shm_register_is_501(repository: Path) -> None:
    with EvserveProcess("--model-repository", str(repository)) as server:
        disabled = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
        reply = post_json(server.port, "/v2/systemsharedmemory/region/r/register", {"key": "/x", "byte_size": 8})
        assert (reply.status, reply.error) == (501, disabled)
        assert call(server.port, "POST", "/v2/cudasharedmemory/unregister").status == 501
        assert call(server.port, "GET", "/v2/systemsharedmemory/status").json() == []
        reply = post_json(server.port, "/v2/models/simple/infer", _shm_input_body("r", 64))
        assert (reply.status, reply.error) == (404, "Unable to find shared memory region: 'r'")


def test_cuda_regions_without_a_gpu(server: EvserveProcess) -> None:
    reply = post_json(server.port, "/v2/cudasharedmemory/region/c/register",
                      {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64})
    assert (reply.status, reply.error) == (400, "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
    handle = base64.b64encode(bytes(64)).decode()
    reply = post_json(server.port, "/v2/cudasharedmemory/region/c/register",
                      {"raw_handle": {"b64": handle}, "device_id": 0, "byte_size": 64})
    assert reply.status == 400 and "failed to register CUDA shared memory region 'c'" in reply.error
    assert call(server.port, "GET", "/v2/cudasharedmemory/status").json() == []
    assert call(server.port, "POST", "/v2/cudasharedmemory/unregister").status == 200
    assert call(server.port, "GET", "/v2/systemsharedmemory/nonsense").status == 404
    assert call(server.port, "GET", "/v2/systemsharedmemory/region/r/register").status == 405


def test_process_instances_read_and_write_regions(repository: Path, regions: Regions) -> None:
    """With instances in child processes the inputs are copied once, into the instance's arena."""
    with EvserveProcess("--model-repository", str(repository), "--allow-client-shm=true",
                        "--model-isolation", "process") as server, \
            httpclient.InferenceServerClient(server.url) as client:
        _simple_through_shm(client, regions, binary=True)
