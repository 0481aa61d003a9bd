"""Ensembles against a real server: chains, fan-out/fan-in, errors, statistics and model control.

The expected bodies, texts and dependency rules are what tritonserver 2.51 answers for the same
repository (checked side by side): outputs sorted by name, a step's error as ``in ensemble 'e',
<message>`` with the step's status, loading an ensemble loads its step models, unloading a step
model unloads the ensembles that run it, and ``unload_dependents`` keeps step models that another
loaded ensemble still runs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from tests.e2e.conftest import call, index, post_json, tritonclient_http, wait_for
from tests.evserve_process import EvserveProcess

A = list(range(16))
B = [1] * 16
BODY = {"inputs": [{"name": "A", "datatype": "INT32", "shape": [1, 16], "data": A},
                   {"name": "B", "datatype": "INT32", "shape": [1, 16], "data": B}]}

STEP_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            {answer}
        return responses
"""
DOUBLE = 'responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))'
FAIL = 'responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("failer says no")))'
STEP_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_INT32 dims: [ 16 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT32 dims: [ 16 ] }} ]
"""
ENSEMBLE_IO = """
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "A" data_type: TYPE_INT32 dims: [ 16 ] }}, {{ name: "B" data_type: TYPE_INT32 dims: [ 16 ] }} ]
output [ {{ name: "{out0}" data_type: TYPE_INT32 dims: [ 16 ] }},
         {{ name: "{out1}" data_type: TYPE_INT32 dims: [ 16 ] }} ]
"""
# add_sub(A, B) -> sum, DIFF; then <second>(sum) -> DOUBLED_SUM.
CHAIN_STEPS = """
ensemble_scheduling {{ step [
  {{ model_name: "simple" model_version: -1
     input_map {{ key: "INPUT0" value: "A" }} input_map {{ key: "INPUT1" value: "B" }}
     output_map {{ key: "OUTPUT0" value: "sum" }} output_map {{ key: "OUTPUT1" value: "DIFF" }} }},
  {{ model_name: "{second}" model_version: -1
     input_map {{ key: "X" value: "{middle}" }} output_map {{ key: "Y" value: "DOUBLED_SUM" }} }}
] }}
"""
# simple(A, B) -> s, d; scale(s) -> s2 and scale(d) -> d2 in parallel; simple(s2, d2) -> OUT_SUM, OUT_DIFF.
FAN_STEPS = """
ensemble_scheduling { step [
  { model_name: "simple" model_version: -1
    input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
    output_map { key: "OUTPUT0" value: "s" } output_map { key: "OUTPUT1" value: "d" } },
  { model_name: "scale" model_version: 1 input_map { key: "X" value: "s" } output_map { key: "Y" value: "s2" } },
  { model_name: "scale" model_version: -1 input_map { key: "X" value: "d" } output_map { key: "Y" value: "d2" } },
  { model_name: "simple" model_version: -1
    input_map { key: "INPUT0" value: "s2" } input_map { key: "INPUT1" value: "d2" }
    output_map { key: "OUTPUT0" value: "OUT_SUM" } output_map { key: "OUTPUT1" value: "OUT_DIFF" } }
] }
"""


# repeat_int32 (decoupled: one response per element) between two plain steps; the ensemble streams.
STREAM_CONFIG = """
name: "ens_stream"
platform: "ensemble"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "NUMS" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "DOUBLED" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "halve" model_version: -1
    input_map { key: "X" value: "NUMS" } output_map { key: "Y" value: "half" } },
  { model_name: "repeat_int32" model_version: -1
    input_map { key: "IN" value: "half" } output_map { key: "OUT" value: "one" } },
  { model_name: "double" model_version: -1
    input_map { key: "X" value: "one" } output_map { key: "Y" value: "DOUBLED" } }
] }
"""
SCALAR_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_INT32 dims: [ -1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT32 dims: [ -1 ] }} ]
"""


def _model(repository: Path, name: str, config: str, model: str | None = None) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config)
    if model is not None:
        (repository / name / "1" / "model.py").write_text(model)


def _repository(root: Path) -> Path:
    repository = root / "ensembles"
    for name in ("simple", "simple_ensemble", "repeat_int32"):
        shutil.copytree(Path(EXAMPLE_REPOSITORY) / name, repository / name)
    _model(repository, "halve", SCALAR_CONFIG.format(name="halve"),
           STEP_MODEL.replace("{answer}", DOUBLE).replace("x * 2", "x // 2"))
    _model(repository, "double", SCALAR_CONFIG.format(name="double"), STEP_MODEL.replace("{answer}", DOUBLE))
    _model(repository, "ens_stream", STREAM_CONFIG)
    _model(repository, "ens_not_streaming", STREAM_CONFIG.replace('"ens_stream"', '"ens_not_streaming"').replace(
        "model_transaction_policy { decoupled: true }", ""))
    _model(repository, "scale", STEP_CONFIG.format(name="scale"), STEP_MODEL.replace("{answer}", DOUBLE))
    _model(repository, "failer", STEP_CONFIG.format(name="failer"), STEP_MODEL.replace("{answer}", FAIL))
    chain = ENSEMBLE_IO.replace("{out0}", "DOUBLED_SUM").replace("{out1}", "DIFF")
    _model(repository, "ens_chain", chain.format(name="ens_chain") + CHAIN_STEPS.format(second="scale", middle="sum"))
    _model(repository, "ens_fail", chain.format(name="ens_fail") + CHAIN_STEPS.format(second="failer", middle="sum"))
    _model(repository, "ens_missing",
           chain.format(name="ens_missing") + CHAIN_STEPS.format(second="nonexistent", middle="sum"))
    _model(repository, "ens_badmap",
           chain.format(name="ens_badmap") + CHAIN_STEPS.format(second="scale", middle="nosuch"))
    _model(repository, "ens_cached", chain.format(name="ens_cached") + CHAIN_STEPS.format(second="scale", middle="sum")
           + "response_cache { enable: true }\n")
    fan = ENSEMBLE_IO.replace("{out0}", "OUT_SUM").replace("{out1}", "OUT_DIFF")
    _model(repository, "ens_fan", fan.format(name="ens_fan") + FAN_STEPS)
    return repository


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvserveProcess]:
    repository = _repository(tmp_path_factory.mktemp("ensemble-repo"))
    with EvserveProcess("--model-repository", str(repository), "--exit-on-error=false",
                        "--strict-readiness=false", "--cache-config", "local,size=1048576") as proc:
        yield proc


def _infer(server: EvserveProcess, model: str, body: dict[str, Any] = BODY) -> Any:
    return post_json(server.port, f"/v2/models/{model}/infer", body)


def test_the_bundled_ensemble_runs_through_tritonclient(server: EvserveProcess) -> None:
    httpclient = tritonclient_http()
    client = httpclient.InferenceServerClient(server.url)
    try:
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        b = np.full((1, 16), 3, dtype=np.int32)
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("simple_ensemble", inputs)
        assert (result.as_numpy("TWICE0") == 2 * a).all()
        assert (result.as_numpy("TWICE1") == 2 * b).all()
    finally:
        client.close()


def test_a_chain_answers_its_outputs_sorted_by_name(server: EvserveProcess) -> None:
    reply = _infer(server, "ens_chain")
    assert reply.status == 200, reply.body
    assert reply.json() == {
        "model_name": "ens_chain", "model_version": "1",
        "parameters": {"sequence_id": 0, "sequence_start": False, "sequence_end": False},
        "outputs": [
            {"name": "DIFF", "datatype": "INT32", "shape": [1, 16], "data": [a - 1 for a in A]},
            {"name": "DOUBLED_SUM", "datatype": "INT32", "shape": [1, 16], "data": [2 * (a + 1) for a in A]},
        ],
    }
    one = _infer(server, "ens_chain", {**BODY, "outputs": [{"name": "DIFF"}]})
    assert [out["name"] for out in one.json()["outputs"]] == ["DIFF"]


def test_fan_out_and_fan_in(server: EvserveProcess) -> None:
    outputs = {out["name"]: out["data"] for out in _infer(server, "ens_fan").json()["outputs"]}
    # s = a + 1, d = a - 1; s2 = 2s, d2 = 2d; OUT_SUM = s2 + d2 = 4a, OUT_DIFF = s2 - d2 = 4.
    assert outputs == {"OUT_SUM": [4 * a for a in A], "OUT_DIFF": [4] * 16}


def test_a_failing_step_fails_the_request_with_its_status_and_message(server: EvserveProcess) -> None:
    reply = _infer(server, "ens_fail")
    assert reply.status == 500
    assert reply.json() == {"error": "in ensemble 'ens_fail', failer says no"}


def test_bad_inputs_are_checked_against_the_ensemble(server: EvserveProcess) -> None:
    reply = _infer(server, "ens_chain", {"inputs": BODY["inputs"][:1]})
    assert reply.status == 400
    assert "expected 2 inputs but got 1 inputs for model 'ens_chain'" in reply.json()["error"]


def test_ensembles_that_cannot_run_do_not_load(server: EvserveProcess) -> None:
    rows = index(server.port)
    assert rows["ens_missing"]["reason"] == (
        "ensemble ens_missing contains models that are not available or ambiguous: nonexistent")
    assert rows["ens_badmap"]["reason"] == (
        "output 'DOUBLED_SUM' for ensemble 'ens_badmap' is not written: at least one of its depending tensors, "
        "'nosuch', is not connected")
    assert _infer(server, "ens_missing").status == 404


def test_metadata_config_and_ready_describe_the_ensemble(server: EvserveProcess) -> None:
    metadata = call(server.port, "GET", "/v2/models/ens_chain").json()
    assert metadata == {
        "name": "ens_chain", "versions": ["1"], "platform": "ensemble",
        "inputs": [{"name": "A", "datatype": "INT32", "shape": [-1, 16]},
                   {"name": "B", "datatype": "INT32", "shape": [-1, 16]}],
        "outputs": [{"name": "DOUBLED_SUM", "datatype": "INT32", "shape": [-1, 16]},
                    {"name": "DIFF", "datatype": "INT32", "shape": [-1, 16]}],
    }
    config = call(server.port, "GET", "/v2/models/ens_chain/config").json()
    assert config["platform"] == "ensemble" and config["instance_group"] == []
    assert config["model_transaction_policy"] == {"decoupled": False}
    assert [step["model_name"] for step in config["ensemble_scheduling"]["step"]] == ["simple", "scale"]
    assert call(server.port, "GET", "/v2/models/ens_chain/ready").status == 200


def test_statistics_count_the_ensemble_and_each_step_model(server: EvserveProcess) -> None:
    def stats(model: str) -> dict[str, Any]:
        return call(server.port, "GET", f"/v2/models/{model}/stats").json()["model_stats"][0]

    before_ensemble, before_scale = stats("ens_chain"), stats("scale")
    for _ in range(3):
        assert _infer(server, "ens_chain").status == 200
    ensemble, scale = stats("ens_chain"), stats("scale")
    assert ensemble["inference_count"] - before_ensemble["inference_count"] == 3
    assert ensemble["execution_count"] - before_ensemble["execution_count"] == 3
    assert scale["inference_count"] - before_scale["inference_count"] == 3
    success = ensemble["inference_stats"]["success"]
    parts = sum(ensemble["inference_stats"][key]["ns"] for key in ("queue", "compute_input", "compute_infer",
                                                                    "compute_output"))
    assert 0 < parts <= success["ns"]
    assert ensemble["response_stats"] == {}


def test_model_control_follows_the_dependencies(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    with EvserveProcess("--model-repository", str(repository), "--model-control-mode", "explicit") as server:
        def states() -> dict[str, str]:
            return {name: row.get("state", "") for name, row in index(server.port).items()}

        def control(model: str, action: str, body: dict[str, Any] | None = None) -> int:
            return post_json(server.port, f"/v2/repository/models/{model}/{action}", body or {}).status

        assert control("ens_chain", "load") == 200  # loads simple and scale too
        assert {k: v for k, v in states().items() if v} == {"ens_chain": "READY", "simple": "READY", "scale": "READY"}
        assert control("simple", "unload") == 200  # the ensemble that runs it goes too
        wait_for(lambda: states()["ens_chain"] == "UNAVAILABLE", 30, "ens_chain to be unloaded")
        assert _infer(server, "ens_chain").status == 404
        assert control("ens_chain", "load") == 200
        assert control("ens_fan", "load") == 200
        assert control("ens_chain", "unload", {"parameters": {"unload_dependents": True}}) == 200
        wait_for(lambda: states()["ens_chain"] == "UNAVAILABLE", 30, "ens_chain to be unloaded")
        deadline = time.monotonic() + 1.0  # an unload of a step model would show within this
        while time.monotonic() < deadline:
            after = states()
            assert after["simple"] == "READY" and after["scale"] == "READY"  # ens_fan still runs them
        assert control("ens_fan", "unload", {"parameters": {"unload_dependents": True}}) == 200
        # The reply comes once the ensemble's unload has started (Triton's rule); its steps follow.
        wait_for(lambda: states()["simple"] == "UNAVAILABLE" and states()["scale"] == "UNAVAILABLE", 30,
                 "the step models to be unloaded")
        reply = post_json(server.port, "/v2/repository/models/ens_missing/load", {})
        assert reply.status == 400
        assert reply.json() == {"error": "load failed for model 'ens_missing': ensemble ens_missing contains models "
                                         "that are not available or ambiguous: nonexistent"}


def test_an_ensemble_with_response_cache_answers_repeats_without_its_steps(server: EvserveProcess) -> None:
    def stats(model: str) -> dict[str, Any]:
        return call(server.port, "GET", f"/v2/models/{model}/stats").json()["model_stats"][0]

    first = _infer(server, "ens_cached")
    scale_before = stats("scale")["inference_count"]
    again = _infer(server, "ens_cached")
    assert again.status == 200 and again.json()["outputs"] == first.json()["outputs"]
    assert stats("scale")["inference_count"] == scale_before  # no step ran for the repeat
    assert stats("ens_cached")["inference_stats"]["cache_hit"]["count"] == 1


def test_a_decoupled_step_streams_through_the_steps_after_it(server: EvserveProcess) -> None:
    """halve([8, 10, 12]) → repeat_int32 sends 4, 5, 6 one by one → each doubled: three events, then the end."""
    reply = call(server.port, "POST", "/v2/models/ens_stream/generate_stream", b'{"NUMS": [8, 10, 12]}')
    assert reply.status == 200, reply.body
    events = [json.loads(line[len(b"data: "):]) for line in reply.body.split(b"\n") if line.startswith(b"data: ")]
    assert sorted(event["DOUBLED"] for event in events) == [8, 10, 12]
    assert all(event["model_name"] == "ens_stream" for event in events)


def test_an_ensemble_that_runs_a_decoupled_model_is_decoupled(server: EvserveProcess) -> None:
    """As Triton: the config says decoupled, and the ensemble streams, though its file does not say so."""
    config = call(server.port, "GET", "/v2/models/ens_not_streaming/config").json()
    assert config["model_transaction_policy"] == {"decoupled": True}
    reply = call(server.port, "POST", "/v2/models/ens_not_streaming/generate_stream", b'{"NUMS": [8, 10]}')
    events = [json.loads(line[len(b"data: "):]) for line in reply.body.split(b"\n") if line.startswith(b"data: ")]
    assert sorted(event["DOUBLED"] for event in events) == [8, 10]
