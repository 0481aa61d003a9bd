"""Model load/unload must never starve the loop threads (Triton issues 8635, 8958, 8117).

evserve runs with two loop threads and explicit model control. Three models whose
``initialize`` (then ``finalize``) sleeps 5 s are loaded (then unloaded) concurrently; while
that work is in flight, health, inference and the repository index are probed from
keep-alive connections opened before the loads and from connections opened during them, and
each must answer in under 200 ms. A fourth control request beyond
``--model-load-thread-count`` gets 503 at once, and every accepted load succeeds.

An unload replies as soon as it has started (Triton's rule), so for unloads "in flight" means
the models are still UNLOADING, finalizing on the control executor, while the probes run.

The same scenario against the server's synchronous path (``--sync-model-control``, which
runs the work on the loop thread as Triton does) must show the stall: that proves this test
can fail.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from tests.evserve_process import EvserveProcess

pytestmark = pytest.mark.slow

SLEEP_S = 5.0
PROBE_LIMIT_S = 0.2
SLOW_MODELS = ("slow_a", "slow_b", "slow_c")

SLOW_MODEL_PY = f"""
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({SLEEP_S})

    def execute(self, requests):
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return out

    def finalize(self):
        time.sleep({SLEEP_S})
"""

SLOW_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
"""

SIMPLE_INFER = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
).encode()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "simple", root / "simple")
    for name in (*SLOW_MODELS, "slow_d"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(SLOW_CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(SLOW_MODEL_PY)
    return root


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    conn.request(method, path, body=body)
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - started


PROBES = (
    ("GET", "/v2/health/live", None),
    ("POST", "/v2/models/simple/infer", SIMPLE_INFER),
    ("POST", "/v2/repository/index", b""),
)


def _probe_all(conns: list[http.client.HTTPConnection]) -> list[float]:
    latencies = []
    for conn in conns:
        for method, path, body in PROBES:
            status, elapsed = _request(conn, method, path, body)
            assert status == 200, (method, path, status)
            latencies.append(elapsed)
    return latencies


def _control_storm(server: EvserveProcess, action: str) -> dict[str, object]:
    """Start the three slow control requests, probe while they run, then try one too many."""
    port = server.port
    before = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
    _probe_all(before)  # connections are now adopted by both loop threads

    results: dict[str, int] = {}

    def control(name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        results[name], _ = _request(conn, "POST", f"/v2/repository/models/{name}/{action}", b"")
        conn.close()

    threads = [threading.Thread(target=control, args=(name,)) for name in SLOW_MODELS]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # every control request is now inside initialize/finalize

    extra = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        extra_status, extra_elapsed = _request(extra, "POST", f"/v2/repository/models/slow_d/{action}", b"")
    except (TimeoutError, OSError):
        extra_status, extra_elapsed = -1, 30.0
    latencies = _probe_all(before)
    after = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
    latencies += _probe_all(after)
    if action == "load":
        # A load replies when the model is ready, so the requests themselves are still open.
        in_flight = all(thread.is_alive() for thread in threads)
    else:
        # An unload replies once it has started (Triton's rule); finalize is still running.
        states = _index_states(port)
        in_flight = all(states[name] == "UNLOADING" for name in SLOW_MODELS)
    for thread in threads:
        thread.join(60)
    for conn in (*before, *after, extra):
        conn.close()
    return {
        "latencies": latencies,
        "in_flight_while_probing": in_flight,
        "extra_status": extra_status,
        "extra_elapsed": extra_elapsed,
        "results": results,
    }


def _index_states(port: int) -> dict[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v2/repository/index", body=b"")
    entries = json.loads(conn.getresponse().read())
    conn.close()
    return {entry["name"]: entry.get("state", "") for entry in entries}


def _server(repository: Path, *extra: str) -> EvserveProcess:
    return EvserveProcess(
        "--threads", "2",
        "--model-control-mode", "explicit",
        "--load-model", "simple",
        "--model-load-thread-count", "3",
        "--model-repository", str(repository),
        *extra,
    )


def test_model_control_never_starves_loop_threads(repository: Path) -> None:
    with _server(repository) as server:
        loads = _control_storm(server, "load")
        assert loads["in_flight_while_probing"], "the probes must run while the loads are in flight"
        assert max(loads["latencies"]) < PROBE_LIMIT_S, loads["latencies"]
        assert loads["extra_status"] == 503 and loads["extra_elapsed"] < PROBE_LIMIT_S, loads
        assert loads["results"] == {name: 200 for name in SLOW_MODELS}
        states = _index_states(server.port)
        assert all(states[name] == "READY" for name in SLOW_MODELS), states

        unloads = _control_storm(server, "unload")
        assert unloads["in_flight_while_probing"], "the probes must run while the unloads are in flight"
        assert max(unloads["latencies"]) < PROBE_LIMIT_S, unloads["latencies"]
        assert unloads["extra_status"] == 503 and unloads["extra_elapsed"] < PROBE_LIMIT_S, unloads
        assert unloads["results"] == {name: 200 for name in SLOW_MODELS}
        deadline = time.monotonic() + 2 * SLEEP_S
        while time.monotonic() < deadline and set(_index_states(server.port).values()) & {"UNLOADING"}:
            time.sleep(0.1)
        states = _index_states(server.port)
        assert all(states[name] == "UNAVAILABLE" for name in SLOW_MODELS), states


def test_synchronous_model_control_is_caught(repository: Path) -> None:
    """The same probes against loads run on the loop thread (Triton's way) see multi-second stalls."""
    with _server(repository, "--sync-model-control") as server:
        port = server.port
        before = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
        _probe_all(before)
        threads = [
            threading.Thread(
                target=lambda n=name: _request(http.client.HTTPConnection("127.0.0.1", port, timeout=60),
                                               "POST", f"/v2/repository/models/{n}/load", b""),
            )
            for name in SLOW_MODELS
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        latencies = _probe_all(before)
        for thread in threads:
            thread.join(60)
        for conn in before:
            conn.close()
    assert max(latencies) > 1.0, f"the synchronous path should stall the probes: {latencies}"
