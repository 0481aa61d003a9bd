"""Priority levels and queue policies through a real server, with tritonclient and raw HTTP.

The test model holds its instance while a request's ``hold`` file is missing, so a test can keep
the one instance busy, queue requests behind it one by one (watching the pending-request gauge),
and then let them run: ORDER says in which order the model ran them. The behaviours match what
tritonserver 2.51 answers for the same models and requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import call, metric, post_json, tritonclient_http, wait_for
from tests.evserve_process import EvserveProcess

MODEL = """
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.count = 0

    def execute(self, requests):
        responses = []
        for request in requests:
            hold = json.loads(request.parameters()).get("hold")
            if hold:
                open(hold + ".started", "w").close()
                deadline = time.monotonic() + 30
                while not os.path.exists(hold) and time.monotonic() < deadline:
                    time.sleep(0.005)
            self.count += 1
            data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            order = np.array([self.count], dtype=np.int32)
            outputs = [pb_utils.Tensor("OUT", data), pb_utils.Tensor("ORDER", order)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
"""

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "ORDER" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ {batching} }}
"""

MODELS = {
    # Three levels, 2 the default.
    "levels": "priority_levels: 3 default_priority_level: 2",
    # A 30 s queue timeout that a request may shorten; REJECT.
    "reject": "default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 30000000 "
              "allow_timeout_override: true }",
    # Level 1 delays after 30 s (a request may shorten it); level 2 has no timeout.
    "delay": "priority_levels: 2 default_priority_level: 2 priority_queue_policy { key: 1 value: { "
             "timeout_action: DELAY default_timeout_microseconds: 30000000 allow_timeout_override: true } }",
    # Level 1 holds one queued request; level 2 is unbounded.
    "bounded": "priority_levels: 2 default_priority_level: 2 "
               "priority_queue_policy { key: 1 value: { max_queue_size: 1 } }",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvserveProcess]:
    repository = tmp_path_factory.mktemp("scheduling-repo")
    for name, batching in MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(CONFIG.format(name=name, batching=batching))
        (repository / name / "1" / "model.py").write_text(MODEL)
    with EvserveProcess("--model-repository", str(repository)) as proc:
        yield proc


def pending(server: EvserveProcess, model: str) -> float:
    """The model's queued requests, as /metrics reports them."""
    return metric(server.metrics_port, "nv_inference_pending_request_count", model)


def rejected(server: EvserveProcess, model: str) -> float:
    return metric(server.metrics_port, "nv_inference_request_failure", model, reason="REJECTED")


class Held:
    """A request that keeps the model's instance busy until :meth:`release`."""

    def __init__(self, server: EvserveProcess, model: str, folder: Path) -> None:
        self.gate = folder / f"{model}-gate"
        self.reply: Any = None
        self.thread = threading.Thread(target=self._run, args=(server, model))
        self.thread.start()
        wait_for(lambda: Path(str(self.gate) + ".started").exists(), 10, "the held request to start")

    def _run(self, server: EvserveProcess, model: str) -> None:
        self.reply = infer_raw(server, model, hold=str(self.gate))

    def release(self) -> None:
        self.gate.touch()
        self.thread.join(30)


def infer_raw(server: EvserveProcess, model: str, **parameters: Any) -> Any:
    body = {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1], "data": [1.0]}], "parameters": parameters}
    return post_json(server.port, f"/v2/models/{model}/infer", body)


def queue_in_order(server: EvserveProcess, model: str, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Send each (name, parameters) request once the previous one is queued; returns name → reply."""
    replies: dict[str, Any] = {}
    threads = []
    for count, (name, parameters) in enumerate(requests, start=1):
        def run(name: str = name, parameters: dict[str, Any] = parameters) -> None:
            replies[name] = infer_raw(server, model, **parameters)

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        wait_for(lambda count=count: pending(server, model) == count
                 or len(replies) >= count, 10, f"request {name} to queue")
    replies["_threads"] = threads
    return replies


def join(replies: dict[str, Any]) -> dict[str, Any]:
    for thread in replies.pop("_threads"):
        thread.join(30)
    return replies


def order_of(reply: Any) -> int:
    assert reply.status == 200, reply.body
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    return int(outputs["ORDER"][0])


def test_higher_priority_runs_first_and_0_or_out_of_range_is_the_default_level(
        server: EvserveProcess, tmp_path: Path) -> None:
    held = Held(server, "levels", tmp_path)
    replies = queue_in_order(server, "levels", [
        ("low1", {"priority": 3}), ("low2", {"priority": 3}), ("high1", {"priority": 1}),
        ("zero", {"priority": 0}), ("beyond", {"priority": 10}), ("high2", {"priority": 1}), ("plain", {}),
    ])
    held.release()
    orders = {name: order_of(reply) for name, reply in join(replies).items()}
    assert sorted(orders, key=orders.__getitem__) == ["high1", "high2", "zero", "beyond", "plain", "low1", "low2"]


def test_tritonclient_priority_argument(server: EvserveProcess, tmp_path: Path) -> None:
    httpclient = tritonclient_http()
    client = httpclient.InferenceServerClient(server.url, concurrency=4)
    data = httpclient.InferInput("IN", [1], "FP32")
    data.set_data_from_numpy(np.array([2.0], dtype=np.float32))
    held = Held(server, "levels", tmp_path)
    low = client.async_infer("levels", [data], priority=3)
    wait_for(lambda: pending(server, "levels") == 1, 10, "low to queue")
    high = client.async_infer("levels", [data], priority=1)
    wait_for(lambda: pending(server, "levels") == 2, 10, "high to queue")
    held.release()
    low_order = int(low.get_result().as_numpy("ORDER")[0])
    high_order = int(high.get_result().as_numpy("ORDER")[0])
    assert high_order < low_order
    client.close()


def test_queue_timeout_REJECT_answers_503_while_the_instance_is_busy(server: EvserveProcess, tmp_path: Path) -> None:
    httpclient = tritonclient_http()
    client = httpclient.InferenceServerClient(server.url)
    data = httpclient.InferInput("IN", [1], "FP32")
    data.set_data_from_numpy(np.array([2.0], dtype=np.float32))
    rejected_before = rejected(server, "reject")
    fails_before = call(server.port, "GET", "/v2/models/reject/stats").json()["model_stats"][0]
    held = Held(server, "reject", tmp_path)
    with pytest.raises(InferenceServerException) as info:
        client.infer("reject", [data], timeout=50_000)  # µs, shorter than the model's 30 s
    assert info.value.status() == "503" and "Request timeout expired" in info.value.message()
    reply = infer_raw(server, "reject", timeout=50_000)
    assert (reply.status, reply.error) == (503, "Request timeout expired")
    assert held.thread.is_alive()  # answered while the instance was still busy
    held.release()
    assert held.reply.status == 200
    assert rejected(server, "reject") == rejected_before + 2
    stats = call(server.port, "GET", "/v2/models/reject/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == fails_before["inference_stats"]["fail"]["count"] + 2
    client.close()


def test_a_longer_timeout_than_the_policy_does_not_extend_it(server: EvserveProcess, tmp_path: Path) -> None:
    held = Held(server, "reject", tmp_path)
    replies = queue_in_order(server, "reject", [("patient", {"timeout": 100_000_000})])
    held.release()
    assert join(replies)["patient"].status == 200


def test_queue_timeout_DELAY_runs_the_request_after_fresh_ones_of_its_level(
        server: EvserveProcess, tmp_path: Path) -> None:
    held = Held(server, "delay", tmp_path)
    replies = queue_in_order(server, "delay", [
        ("delayed", {"priority": 1, "timeout": 1000}), ("lower", {"priority": 2}), ("fresh", {"priority": 1}),
    ])
    held.release()
    orders = {name: order_of(reply) for name, reply in join(replies).items()}
    assert sorted(orders, key=orders.__getitem__) == ["fresh", "delayed", "lower"]


def test_max_queue_size_per_level_refuses_with_503(server: EvserveProcess, tmp_path: Path) -> None:
    held = Held(server, "bounded", tmp_path)
    # Level 1 holds one; level 2, unbounded, takes more while level 1 is full.
    replies = queue_in_order(server, "bounded", [
        ("first", {"priority": 1}), ("lower1", {"priority": 2}), ("lower2", {"priority": 2}),
    ])
    refused = infer_raw(server, "bounded", priority=1)
    assert (refused.status, refused.error) == (503, "Exceeds maximum queue size")
    held.release()
    assert all(reply.status == 200 for reply in join(replies).values())
    assert infer_raw(server, "bounded", priority=1).status == 200


def test_load_logs_no_unenforced_warning(server: EvserveProcess) -> None:
    assert "not enforced" not in server.output()
