"""The response cache through a real server: --cache-config, response_cache { enable: true }, hits
and misses in /stats and /metrics, and the refusals, as tritonserver 2.51 reports them.

The cached model counts its executions in RUNS, so a reply says whether the model ran for it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import call, index, metric, post_json, tritonclient_http
from tests.evserve_process import SERVER_COMMAND, EvserveProcess

MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.runs = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            self.runs += 1
            data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            if (data < 0).any():
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("negative input")))
                continue
            runs = np.array([self.runs], dtype=np.int32)
            outputs = [pb_utils.Tensor("OUT", data * 2), pb_utils.Tensor("RUNS", runs)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }}, {{ name: "RUNS" data_type: TYPE_INT32 dims: [ 1 ] }} ]
{extra}
"""


def write_model(repository: Path, name: str, extra: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(CONFIG.format(name=name, extra=extra))
    (repository / name / "1" / "model.py").write_text(MODEL)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("cache-repo")
    write_model(repository, "cached", "response_cache { enable: true }")
    write_model(repository, "plain", "")
    return repository


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[EvserveProcess]:
    with EvserveProcess("--model-repository", str(repository), "--cache-config", "local,size=1048576") as proc:
        yield proc


def infer(server: EvserveProcess, model: str, values: list[float], **extra: Any) -> Any:
    body = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [len(values)], "data": values}], **extra}
    return post_json(server.port, f"/v2/models/{model}/infer", body)


def outputs(reply: Any) -> dict[str, list[Any]]:
    assert reply.status == 200, reply.body
    return {o["name"]: o["data"] for o in reply.json()["outputs"]}


def stats(server: EvserveProcess, model: str) -> dict[str, Any]:
    return call(server.port, "GET", f"/v2/models/{model}/stats").json()["model_stats"][0]


def test_identical_requests_are_answered_from_the_cache(server: EvserveProcess) -> None:
    before = stats(server, "cached")
    first = outputs(infer(server, "cached", [1.0, 2.0]))
    second = infer(server, "cached", [1.0, 2.0], id="again")
    assert outputs(second) == first and first["OUT"] == [2.0, 4.0]
    assert second.json()["id"] == "again"
    other = outputs(infer(server, "cached", [3.0]))
    assert other["RUNS"][0] == first["RUNS"][0] + 1  # a new input runs the model
    after = stats(server, "cached")
    inference, previous = after["inference_stats"], before["inference_stats"]
    assert inference["cache_hit"]["count"] == previous["cache_hit"]["count"] + 1
    assert inference["cache_miss"]["count"] == previous["cache_miss"]["count"] + 2
    assert inference["cache_hit"]["ns"] > previous["cache_hit"]["ns"]
    # As on Triton: a hit is a success with queue time, but no compute, inference or execution.
    assert inference["success"]["count"] == previous["success"]["count"] + 3
    assert inference["queue"]["count"] == previous["queue"]["count"] + 3
    assert inference["compute_infer"]["count"] == previous["compute_infer"]["count"] + 2
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["execution_count"] == before["execution_count"] + 2


def test_the_key_covers_shape_requested_outputs_and_parameters(server: EvserveProcess) -> None:
    base = outputs(infer(server, "cached", [5.0, 6.0, 7.0, 8.0]))["RUNS"][0]
    runs = [
        outputs(reply)["RUNS"][0] if "RUNS" in outputs(reply) else None
        for reply in (
            infer(server, "cached", [5.0, 6.0, 7.0, 8.0], outputs=[{"name": "OUT"}]),
            infer(server, "cached", [5.0, 6.0, 7.0, 8.0], parameters={"mode": "other"}),
            infer(server, "cached", [5.0, 6.0, 7.0, 8.0], parameters={"priority": 1}),  # not for the model
        )
    ]
    assert runs == [None, base + 2, base]
    assert outputs(infer(server, "cached", [5.0, 6.0, 7.0, 8.0], outputs=[{"name": "OUT"}])) == {
        "OUT": [10.0, 12.0, 14.0, 16.0]}


def test_binary_tritonclient_request_hits_what_a_JSON_request_stored(server: EvserveProcess) -> None:
    httpclient = tritonclient_http()
    stored = outputs(infer(server, "cached", [9.0, 9.5]))
    client = httpclient.InferenceServerClient(server.url)
    data = httpclient.InferInput("IN", [2], "FP32")
    data.set_data_from_numpy(np.array([9.0, 9.5], dtype=np.float32), binary_data=True)
    result = client.infer("cached", [data], request_id="binary")
    assert result.as_numpy("RUNS").tolist() == stored["RUNS"]
    assert result.as_numpy("OUT").tolist() == [18.0, 19.0]
    assert result.get_response()["id"] == "binary"
    client.close()


def test_errors_are_not_cached(server: EvserveProcess) -> None:
    before = stats(server, "cached")["inference_stats"]
    for _ in range(2):
        reply = infer(server, "cached", [-1.0])
        assert reply.status == 500 and reply.error == "negative input"
    after = stats(server, "cached")["inference_stats"]
    assert after["fail"]["count"] == before["fail"]["count"] + 2
    assert after["cache_hit"]["count"] == before["cache_hit"]["count"]


def test_metrics_carry_Triton_cache_families(server: EvserveProcess) -> None:
    infer(server, "cached", [42.0])
    infer(server, "cached", [42.0])
    snapshot = stats(server, "cached")["inference_stats"]
    port = server.metrics_port
    assert metric(port, "nv_cache_num_hits_per_model", "cached") == snapshot["cache_hit"]["count"]
    assert metric(port, "nv_cache_num_misses_per_model", "cached") == snapshot["cache_miss"]["count"]
    assert metric(port, "nv_cache_hit_duration_per_model", "cached") == snapshot["cache_hit"]["ns"] // 1000
    assert metric(port, "nv_cache_miss_duration_per_model", "cached") == snapshot["cache_miss"]["ns"] // 1000
    text = call(server.metrics_port, "GET", "/metrics").body.decode()
    assert 'nv_cache_num_hits_per_model{model="plain"' not in text  # only models that enable the cache
    gauges = dict(line.split(" ") for line in text.splitlines() if line.startswith("nv_cache_num_"))
    assert int(gauges["nv_cache_num_entries"]) >= 1 and int(gauges["nv_cache_num_hits"]) >= 1
    assert int(gauges["nv_cache_num_lookups"]) == int(gauges["nv_cache_num_hits"]) + int(gauges["nv_cache_num_misses"])
    assert "# TYPE nv_cache_util gauge" in text


def test_plain_models_are_not_cached(server: EvserveProcess) -> None:
    first = outputs(infer(server, "plain", [1.0]))["RUNS"][0]
    assert outputs(infer(server, "plain", [1.0]))["RUNS"][0] == first + 1
    assert stats(server, "plain")["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}


def test_small_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    write_model(tmp_path, "cached", "response_cache { enable: true }")
    values = [float(i) for i in range(500)]  # 2 KB of output: one entry fits a 3000-byte cache, two do not
    with EvserveProcess("--model-repository", str(tmp_path), "--cache-config", "local,size=3000") as proc:
        first = outputs(infer(proc, "cached", values))["RUNS"][0]
        assert outputs(infer(proc, "cached", values))["RUNS"][0] == first  # a hit
        infer(proc, "cached", [v + 1 for v in values])                      # evicts the first
        assert outputs(infer(proc, "cached", values))["RUNS"][0] == first + 2
        text = call(proc.metrics_port, "GET", "/metrics").body.decode()
        assert "nv_cache_num_evictions 2" in text


def test_without_a_server_cache_the_model_runs_uncached(repository: Path) -> None:
    with EvserveProcess("--model-repository", str(repository)) as proc:
        first = outputs(infer(proc, "cached", [1.0]))["RUNS"][0]
        assert outputs(infer(proc, "cached", [1.0]))["RUNS"][0] == first + 1
        assert metric(proc.metrics_port, "nv_cache_num_hits_per_model", "cached") == 0  # Triton lists it, at zero
        assert "nv_cache_num_entries" not in call(proc.metrics_port, "GET", "/metrics").body.decode()
        assert "response_cache is enabled but the server has no cache" in proc.output()


def test_deprecated_byte_size_flag_and_decoupled_refusal(tmp_path: Path) -> None:
    write_model(tmp_path, "cached", "response_cache { enable: true }")
    write_model(tmp_path, "streamed", "response_cache { enable: true } model_transaction_policy { decoupled: true }")
    with EvserveProcess("--model-repository", str(tmp_path), "--response-cache-byte-size", "1048576",
                        "--exit-on-error=false", "--strict-readiness=false") as proc:
        first = outputs(infer(proc, "cached", [1.0]))["RUNS"][0]
        assert outputs(infer(proc, "cached", [1.0]))["RUNS"][0] == first
        assert "--response-cache-byte-size is deprecated" in proc.output()
        row = index(proc.port)["streamed"]
        assert row["state"] == "UNAVAILABLE"
        assert ("Response Cache does not currently support model streamed with 'decoupled' transaction policy. "
                "Please disable the response cache.") in row["reason"]


@pytest.mark.parametrize("spec", ["redis,size=10", "local,size=0", "local"])
def test_bad_cache_config_stops_the_start(spec: str) -> None:
    done = subprocess.run([*SERVER_COMMAND, "--cache-config", spec, "--http-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--cache-config" in done.stderr


def test_generate_on_a_cached_model_hits_too(server: EvserveProcess) -> None:
    body = json.dumps({"IN": [77.0]}).encode()
    first = call(server.port, "POST", "/v2/models/cached/generate", body)
    second = call(server.port, "POST", "/v2/models/cached/generate", body)
    assert first.status == second.status == 200
    assert first.json()["RUNS"] == second.json()["RUNS"]
