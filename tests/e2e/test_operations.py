"""Operations flags against a real server: restricted APIs, header forwarding, start-up errors.

Texts and statuses are Triton's (PROTOCOL.md 1.1): a restricted group without its header is 403
``This API is restricted, expecting header '<key>'``, header names match case-insensitively and
values exactly, the check comes before the method check, and the metrics port is never restricted.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import SIMPLE_INPUTS, call, copy_simple, wait_for
from tests.evserve_process import SERVER_COMMAND, EvserveProcess

ECHO_CONFIG = """
name: "echo_params"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "PARAMS" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
ECHO_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "PARAMS", np.array([r.parameters().encode()], dtype=np.object_))]) for r in requests]
"""
ECHO_BODY = json.dumps({
    "inputs": [{"name": "IN", "datatype": "INT32", "shape": [1], "data": [1]}],
    "parameters": {"own": "kept"},
}).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvserveProcess]:
    repo = tmp_path_factory.mktemp("ops-repo")
    copy_simple(repo)
    (repo / "echo_params" / "1").mkdir(parents=True)
    (repo / "echo_params" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repo / "echo_params" / "1" / "model.py").write_text(ECHO_MODEL)
    with EvserveProcess(
        "--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "*",
        "--http-restricted-api", "model-repository,statistics:admin-key=admin-value",
        "--http-restricted-api", "inference:Infer-Key=s3cret",
        "--http-header-forward-pattern", "^x-forward-",
    ) as proc:
        yield proc


def _infer_params(server: EvserveProcess, headers: dict[str, str]) -> dict[str, object]:
    reply = call(server.port, "POST", "/v2/models/echo_params/infer", ECHO_BODY, {"Infer-Key": "s3cret", **headers})
    assert reply.status == 200, reply.body
    return json.loads(reply.json()["outputs"][0]["data"][0])


def test_restricted_groups_need_their_header(server: EvserveProcess) -> None:
    admin = "This API is restricted, expecting header 'admin-key'"
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/v2/models/simple/stats"),
                         ("GET", "/v2/models/stats"), ("POST", "/v2/repository/models/simple/load")):
        reply = call(server.port, method, path, b"" if method == "POST" else None)
        assert (reply.status, reply.error) == (403, admin), path
        reply = call(server.port, method, path, b"" if method == "POST" else None, {"ADMIN-KEY": "admin-value"})
        assert reply.status == 200, (path, reply.body)
    reply = call(server.port, "POST", "/v2/repository/index", b"", {"admin-key": "Admin-Value"})
    assert reply.status == 403, "values match exactly"


def test_restriction_comes_before_the_method_check(server: EvserveProcess) -> None:
    reply = call(server.port, "GET", "/v2/repository/index")
    assert reply.status == 403
    assert call(server.port, "GET", "/v2/repository/index", headers={"admin-key": "admin-value"}).status == 405


def test_unrestricted_groups_and_the_metrics_port_stay_open(server: EvserveProcess) -> None:
    for path in ("/v2/health/ready", "/v2", "/v2/models/simple", "/v2/models/simple/config",
                 "/v2/models/simple/ready", "/v2/systemsharedmemory/status"):
        assert call(server.port, "GET", path).status == 200, path
    assert call(server.metrics_port, "GET", "/metrics").status == 200


def test_inference_group_covers_infer_and_generate(server: EvserveProcess) -> None:
    body = json.dumps({"inputs": SIMPLE_INPUTS}).encode()
    reply = call(server.port, "POST", "/v2/models/simple/infer", body)
    assert (reply.status, reply.error) == (403, "This API is restricted, expecting header 'Infer-Key'")
    assert call(server.port, "POST", "/v2/models/simple/generate", b"{}").status == 403
    assert call(server.port, "POST", "/v2/models/simple/infer", body, {"infer-key": "s3cret"}).status == 200


def test_matching_headers_reach_the_model_as_parameters(server: EvserveProcess) -> None:
    params = _infer_params(server, {"X-Forward-Tenant": "acme", "X-Forward-Trace": "t-1", "X-Other": "no"})
    assert params == {"own": "kept", "x-forward-tenant": "acme", "x-forward-trace": "t-1"}
    assert _infer_params(server, {}) == {"own": "kept"}


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("health,healthz:k=v", "unknown restricted api 'healthz'"),
        ("no-separator", "expects <api>[,<api>...]:<key>=<value>"),
    ],
)
def test_bad_restrictions_stop_the_start(flag: str, message: str) -> None:
    done = subprocess.run([*SERVER_COMMAND, "--http-restricted-api", flag], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and message in done.stderr


def test_one_group_in_two_restrictions_stops_the_start(tmp_path: Path) -> None:
    done = subprocess.run([*SERVER_COMMAND, "--http-restricted-api", "health:a=b", "--http-restricted-api",
                           "metadata,health:c=d"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "restricted api 'health' can not be specified in multiple config groups" in done.stderr


# ------------------------------------------------------------------------------------ logging


@pytest.fixture()
def logged(tmp_path: Path) -> Iterator[tuple[EvserveProcess, Path]]:
    repo = tmp_path / "repo"
    copy_simple(repo)
    log_file = tmp_path / "server.log"
    with EvserveProcess("--model-repository", str(repo), "--log-file", str(log_file)) as proc:
        yield proc, log_file


def _post_logging(server: EvserveProcess, body: object) -> tuple[int, dict[str, object]]:
    reply = call(server.port, "POST", "/v2/logging", json.dumps(body).encode())
    return reply.status, reply.json()


def test_logging_settings_read_and_change_live(logged: tuple[EvserveProcess, Path]) -> None:
    server, log_file = logged
    defaults = {"log_file": str(log_file), "log_info": True, "log_warning": True, "log_error": True,
                "log_verbose_level": 0, "log_format": "default"}
    assert call(server.port, "GET", "/v2/logging").json() == defaults
    assert "/v2/health/ready" not in log_file.read_text(), "no access log at level 0"

    status, settings = _post_logging(server, {"log_verbose_level": 1, "log_format": "ISO8601", "unknown": 1})
    assert status == 200 and settings == {**defaults, "log_verbose_level": 1, "log_format": "ISO8601"}
    assert call(server.port, "GET", "/v2/models/simple").status == 200
    # The access line is written right after the reply: wait for it rather than race it.
    wait_for(lambda: '"GET /v2/models/simple HTTP/1.1" 200' in log_file.read_text(), 5, "the access line")
    access = [line for line in log_file.read_text().splitlines() if '"GET /v2/models/simple HTTP/1.1" 200' in line]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ ", access[-1]), access

    _post_logging(server, {"log_verbose_level": 0, "log_format": "default"})
    before = log_file.read_text()
    call(server.port, "GET", "/v2/models/simple")
    call(server.port, "GET", "/v2/logging")  # a later request: had the first been logged, it would be by now
    assert log_file.read_text().count('"GET /v2/models/simple') == before.count('"GET /v2/models/simple')


def test_logging_refuses_the_file_and_bad_values(logged: tuple[EvserveProcess, Path]) -> None:
    server, _ = logged
    for body, status, message in (
        ({"log_file": "/tmp/elsewhere"}, 501, "log file location can not be updated through network protocol"),
        ({"log_info": "yes"}, 400, "attempt to access JSON non-boolean as boolean"),
        ({"log_verbose_level": -1}, 400, "non-unsigned-integer"),
        ({"log_format": "bogus"}, 400, "invalid argument for --log_format, got: bogus"),
    ):
        reply = call(server.port, "POST", "/v2/logging", json.dumps(body).encode())
        assert reply.status == status and message in reply.error, (body, reply.body)
    assert call(server.port, "GET", "/v2/logging").json()["log_info"] is True


def test_verbose_output_has_its_own_switch(logged: tuple[EvserveProcess, Path]) -> None:
    """As Triton's LOG_VERBOSE: the verbose level, not log_info, decides the per-request lines."""
    server, log_file = logged
    _post_logging(server, {"log_info": False, "log_verbose_level": 1})
    call(server.port, "GET", "/v2/models/simple/config")
    wait_for(lambda: '"GET /v2/models/simple/config HTTP/1.1" 200' in log_file.read_text(), 5, "the access line")


# ------------------------------------------------------------------------------------ metrics

METERED_CONFIG = """
name: "metered"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
METERED_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.requests = pb_utils.MetricFamily(
            "metered_requests", "requests seen by the model", pb_utils.MetricFamily.COUNTER)
        self.last = pb_utils.MetricFamily("metered_last_value", "last input", pb_utils.MetricFamily.GAUGE)
        self.sizes = pb_utils.MetricFamily("metered_value", "input values", pb_utils.MetricFamily.HISTOGRAM)
        self.counter = self.requests.Metric(labels={"model": "metered", "kind": "all"})
        self.gauge = self.last.Metric(labels={"model": "metered"})
        self.histogram = self.sizes.Metric(labels={"model": "metered"}, buckets=[1.0, 10.0])

    def execute(self, requests):
        out = []
        for request in requests:
            value = float(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            self.counter.increment(1)
            self.gauge.set(value)
            self.histogram.observe(value)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.float32))]))
        return out
"""


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_custom_and_triton_metrics_parse_with_prometheus_client(tmp_path: Path, isolation: str) -> None:
    """Custom metrics show on /metrics whether the model runs in the server or in a child process."""
    parser = pytest.importorskip("prometheus_client.parser")
    copy_simple(tmp_path)
    (tmp_path / "metered" / "1").mkdir(parents=True)
    (tmp_path / "metered" / "config.pbtxt").write_text(METERED_CONFIG)
    (tmp_path / "metered" / "1" / "model.py").write_text(METERED_MODEL)
    with EvserveProcess("--model-repository", str(tmp_path), "--model-isolation", isolation) as server:
        for value in (0.5, 5.0, 50.0):
            body = json.dumps({"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1], "data": [value]}]})
            assert call(server.port, "POST", "/v2/models/metered/infer", body.encode()).status == 200
        assert call(server.port, "POST", "/v2/models/simple/infer", json.dumps({"inputs": SIMPLE_INPUTS}).encode(),
                    ).status == 200
        text = call(server.metrics_port, "GET", "/metrics").body.decode()
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}

    def sample(family: str, name: str, **labels: str) -> float:
        # prometheus_client's parser names a counter's samples <family>_total.
        names = {name, name + "_total"}
        return next(s.value for s in families[family].samples
                    if s.name in names and all(s.labels.get(k) == v for k, v in labels.items()))

    assert sample("metered_requests", "metered_requests", model="metered", kind="all") == 3
    assert sample("metered_last_value", "metered_last_value") == 50.0
    assert families["metered_value"].type == "histogram"
    assert sample("metered_value", "metered_value_bucket", le="1.0") == 1
    assert sample("metered_value", "metered_value_bucket", le="10.0") == 2
    assert sample("metered_value", "metered_value_bucket", le="+Inf") == 3
    assert sample("metered_value", "metered_value_sum") == 55.5
    for name in ("nv_inference_compute_input_duration_us", "nv_inference_compute_output_duration_us",
                 "nv_inference_compute_infer_duration_us"):
        assert sample(name, name, model="simple", version="1") > 0, name
    assert 0.0 <= sample("nv_cpu_utilization", "nv_cpu_utilization") <= 1.0
    assert sample("nv_cpu_memory_used_bytes", "nv_cpu_memory_used_bytes") > 0
    assert sample("nv_cpu_memory_total_bytes", "nv_cpu_memory_total_bytes") >= sample(
        "nv_cpu_memory_used_bytes", "nv_cpu_memory_used_bytes")


def test_metrics_config_switches_latency_families(tmp_path: Path) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    copy_simple(tmp_path)
    with EvserveProcess("--model-repository", str(tmp_path), "--metrics-config", "summary_latencies=true",
                        "--metrics-config", "histogram_latencies=true", "--metrics-config", "counter_latencies=false",
                        "--metrics-config", "summary_quantiles=0.5:0.05,0.99:0.001",
                        "--metrics-interval-ms", "1000") as server:
        for _ in range(4):
            assert call(server.port, "POST", "/v2/models/simple/infer", json.dumps({"inputs": SIMPLE_INPUTS}).encode(),
                        ).status == 200
        text = call(server.metrics_port, "GET", "/metrics").body.decode()
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}
    assert "nv_inference_request_duration_us" not in families, "counter_latencies=false drops the counters"
    summary = families["nv_inference_request_summary_us"]
    assert summary.type == "summary"
    quantiles = {s.labels["quantile"]: s.value for s in summary.samples if "quantile" in s.labels}
    assert set(quantiles) == {"0.5", "0.99"} and 0 < quantiles["0.5"] <= quantiles["0.99"]
    assert next(s.value for s in summary.samples if s.name.endswith("_count")) == 4
    for name in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert f"nv_inference_{name}_summary_us" in families
    histogram = families["nv_inference_first_response_histogram_ms"]
    assert histogram.type == "histogram"
    assert next(s.value for s in histogram.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf") == 4


def test_bad_metrics_config_stops_the_start() -> None:
    done = subprocess.run([*SERVER_COMMAND, "--metrics-config", "colour=blue"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "unknown key 'colour'" in done.stderr
