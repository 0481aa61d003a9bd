"""BLS against a real server: a model's InferenceRequest.exec() runs other served models.

Models call ``simple`` (plain), ``repeat_int32`` (decoupled) and themselves, synchronously and
from ``async def execute``; errors must come back as ``has_error()`` responses, waits must be
bounded, and the callee's statistics must count the calls (the same scheduling as HTTP).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from tests.e2e.conftest import call
from tests.evserve_process import EvserveProcess

CALLER_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "MODE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "RESULT" data_type: TYPE_STRING dims: [ 1 ] }} ]
{extra}
"""
CALLER_MODEL = """
import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils


def simple_request(**kwargs):
    a = pb_utils.Tensor("INPUT0", np.arange(16, dtype=np.int32).reshape(1, 16))
    b = pb_utils.Tensor("INPUT1", np.ones((1, 16), dtype=np.int32))
    return pb_utils.InferenceRequest(model_name="simple", inputs=[a, b], requested_output_names=["OUTPUT0"], **kwargs)


def run(mode):
    if mode == "simple":
        response = simple_request().exec()
        if response.has_error():
            return {"error": response.error().message()}
        out = pb_utils.get_output_tensor_by_name(response, "OUTPUT0").as_numpy()
        return {"sum": out.reshape(-1).tolist(), "outputs": [t.name() for t in response.output_tensors()]}
    if mode == "repeat":
        request = pb_utils.InferenceRequest(model_name="repeat_int32", requested_output_names=["OUT"],
                                            inputs=[pb_utils.Tensor("IN", np.array([4, 5, 6], np.int32))])
        values = []
        for response in request.exec(decoupled=True):
            if response.has_error():
                return {"error": response.error().message()}
            out = pb_utils.get_output_tensor_by_name(response, "OUT")
            if out is not None:
                values.append(int(out.as_numpy()[0]))
        return {"values": values}
    if mode == "repeat_not_decoupled":
        request = pb_utils.InferenceRequest(model_name="repeat_int32", requested_output_names=["OUT"],
                                            inputs=[pb_utils.Tensor("IN", np.array([1], np.int32))])
        return {"error": request.exec().error().message()}
    if mode == "unknown":
        response = pb_utils.InferenceRequest(model_name="nope", inputs=[], requested_output_names=[]).exec()
        return {"error": response.error().message()}
    if mode == "bad_input":
        bad = pb_utils.Tensor("INPUT0", np.zeros((1, 3), dtype=np.int32))
        response = pb_utils.InferenceRequest(model_name="simple", inputs=[bad], requested_output_names=[]).exec()
        return {"error": response.error().message()}
    if mode == "self":
        me = pb_utils.Tensor("MODE", np.array([b"simple"], dtype=np.object_))
        response = pb_utils.InferenceRequest(model_name="{name}", inputs=[me], requested_output_names=[]).exec()
        return {"error": response.error().message()} if response.has_error() else {"ok": True}
    if mode == "slow":
        me = pb_utils.Tensor("MODE", np.array([b"sleep"], dtype=np.object_))
        response = pb_utils.InferenceRequest(model_name="sleeper", inputs=[me], requested_output_names=[],
                                             timeout=200_000).exec()
        return {"error": response.error().message()}
    if mode == "sequence":
        totals = []
        for step, flags in ((2, pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START), (3, 0),
                            (4, pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)):
            value = pb_utils.Tensor("INPUT", np.array([[step]], dtype=np.int64))
            response = pb_utils.InferenceRequest(model_name="sequence_accumulator", inputs=[value], flags=flags,
                                                 correlation_id="bls-1", requested_output_names=["TOTAL"]).exec()
            if response.has_error():
                return {"error": response.error().message()}
            totals.append(int(pb_utils.get_output_tensor_by_name(response, "TOTAL").as_numpy()[0][0]))
        return {"totals": totals}
    raise ValueError(mode)


class TritonPythonModel:
    {execute}
"""
SYNC_EXECUTE = """def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy().reshape(-1)[0].decode()
            result = json.dumps(run(mode)).encode()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", np.array([result], dtype=np.object_))]))
        return out"""
ASYNC_EXECUTE = """async def execute(self, requests):
        out = []
        for request in requests:
            response = await simple_request().async_exec()
            total = pb_utils.get_output_tensor_by_name(response, "OUTPUT0").as_numpy().reshape(-1).tolist()
            values = []
            repeat = pb_utils.InferenceRequest(model_name="repeat_int32", requested_output_names=["OUT"],
                                               inputs=[pb_utils.Tensor("IN", np.array([7, 8], np.int32))])
            for each in await repeat.async_exec(decoupled=True):
                tensor = pb_utils.get_output_tensor_by_name(each, "OUT")
                if tensor is not None:
                    values.append(int(tensor.as_numpy()[0]))
            result = json.dumps({"sum": total, "values": values}).encode()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", np.array([result], dtype=np.object_))]))
        return out"""
SLEEPER_EXECUTE = """def execute(self, requests):
        import time
        time.sleep(2)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("RESULT", np.array([b"late"], dtype=np.object_))])
                for _ in requests]"""


def _write(repository: Path, name: str, execute: str, extra: str = "") -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(CALLER_CONFIG.format(name=name, extra=extra))
    (repository / name / "1" / "model.py").write_text(
        CALLER_MODEL.replace("{name}", name).replace("{execute}", execute))


@pytest.fixture(scope="module", params=["thread", "process"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvserveProcess]:
    """Every test runs twice: models in the server's process, and each instance in a child process
    (whose BLS calls travel to the server over the instance's socket)."""
    repository = tmp_path_factory.mktemp("bls-repo")
    for name in ("simple", "repeat_int32", "sequence_accumulator"):
        shutil.copytree(Path(EXAMPLE_REPOSITORY) / name, repository / name)
    _write(repository, "caller", SYNC_EXECUTE)
    _write(repository, "async_caller", ASYNC_EXECUTE)
    _write(repository, "sleeper", SLEEPER_EXECUTE)
    with EvserveProcess("--model-repository", str(repository), "--model-isolation", request.param) as proc:
        yield proc


def run(server: EvserveProcess, mode: str, model: str = "caller") -> dict[str, object]:
    body = json.dumps({"inputs": [{"name": "MODE", "datatype": "BYTES", "shape": [1], "data": [mode]}]}).encode()
    reply = call(server.port, "POST", f"/v2/models/{model}/infer", body, timeout=30)
    assert reply.status == 200, reply.body
    return json.loads(reply.json()["outputs"][0]["data"][0])


def _simple_successes(server: EvserveProcess) -> int:
    stats = call(server.port, "GET", "/v2/models/simple/stats").json()["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_exec_runs_another_model_through_its_queue(server: EvserveProcess) -> None:
    before = _simple_successes(server)
    assert run(server, "simple") == {"sum": [i + 1 for i in range(16)], "outputs": ["OUTPUT0"]}
    assert _simple_successes(server) == before + 1, "the BLS call is counted like an HTTP request"


def test_exec_decoupled_iterates_the_responses(server: EvserveProcess) -> None:
    assert run(server, "repeat") == {"values": [4, 5, 6]}


def test_async_exec_from_async_execute(server: EvserveProcess) -> None:
    assert run(server, "", model="async_caller") == {"sum": [i + 1 for i in range(16)], "values": [7, 8]}


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("unknown", "Request for unknown model: 'nope' is not found"),
        ("bad_input", "expected 2 inputs but got 1 inputs for model 'simple'"),
        ("repeat_not_decoupled", "model 'repeat_int32' is decoupled: call exec(decoupled=True)"),
        ("self", "would wait on itself"),
        ("slow", "BLS request to model 'sleeper' timed out after 0.2 s"),
    ],
)
def test_errors_come_back_as_responses(server: EvserveProcess, mode: str, message: str) -> None:
    assert message in str(run(server, mode).get("error")), run(server, mode)


def test_a_sequence_runs_through_bls_with_its_correlation_id_and_flags(server: EvserveProcess) -> None:
    assert run(server, "sequence") == {"totals": [2, 5, 9]}
