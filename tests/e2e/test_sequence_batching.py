"""Sequence batching against a real server, through tritonclient's ``infer(sequence_id=...)``.

The bundled ``simple_sequence`` (what Triton's sequence example client calls) and
``sequence_accumulator`` (a running total the model keeps per sequence, two instances) run with
concurrent sequences, integer and string IDs; a one-slot model with a short idle time shows the
backlog and the idle release; a probe model shows the control tensors the model receives.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from tests.e2e.conftest import post_json
from tests.evserve_process import EvserveProcess

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

PROBE_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }} ]
"""
# Answers what it saw: each control tensor's shape, dtype and values, the request's correlation ID and flags.
PROBE_MODEL = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {"corr": request.correlation_id(), "flags": request.flags()}
            for name in ("START", "END", "READY", "CORRID"):
                array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                values = [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
                seen[name] = [list(array.shape), str(array.dtype), values]
            shape = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().shape
            info = np.full(shape, json.dumps(seen).encode(), dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("INFO", info)]))
        return responses
"""


# A running total kept by the server as implicit state: INPUT_STATE in, OUTPUT_STATE out.
STATE_CONFIG = """
name: "implicit_total"
backend: "python"
max_batch_size: 4
sequence_batching {
  control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]
  state [ { input_name: "INPUT_STATE" output_name: "OUTPUT_STATE" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" } } ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
STATE_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            total = (pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
                     + pb_utils.get_input_tensor_by_name(request, "INPUT_STATE").as_numpy())
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", total),
                                                         pb_utils.Tensor("OUTPUT_STATE", total)]))
        return responses
"""


def _write_probe(repository: Path, name: str, *, max_batch_size: int, idle_us: int, corrid: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(
        PROBE_CONFIG.format(name=name, max_batch_size=max_batch_size, idle_us=idle_us, corrid=corrid))
    (repository / name / "1" / "model.py").write_text(PROBE_MODEL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvserveProcess]:
    repository = tmp_path_factory.mktemp("sequence-models")
    for name in ("simple_sequence", "sequence_accumulator"):
        shutil.copytree(Path(EXAMPLE_REPOSITORY) / name, repository / name)
    _write_probe(repository, "probe", max_batch_size=8, idle_us=5_000_000, corrid="TYPE_UINT64")
    _write_probe(repository, "one_slot", max_batch_size=0, idle_us=1_000_000, corrid="TYPE_STRING")
    (repository / "implicit_total" / "1").mkdir(parents=True)
    (repository / "implicit_total" / "config.pbtxt").write_text(STATE_CONFIG)
    (repository / "implicit_total" / "1" / "model.py").write_text(STATE_MODEL)
    with EvserveProcess("--model-repository", str(repository)) as proc:
        yield proc


@pytest.fixture
def client(server: EvserveProcess) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(server.url)
    yield client
    client.close()


def _int_input(name: str, value: int, dtype: Any, shape: list[int]) -> Any:
    tensor = httpclient.InferInput(name, shape, "INT32" if dtype == np.int32 else "INT64")
    tensor.set_data_from_numpy(np.full(shape, value, dtype=dtype))
    return tensor


def _send(client: Any, model: str, value: int, sequence_id: int | str, *, start: bool = False,
          end: bool = False) -> Any:
    if model == "sequence_accumulator":
        inputs = [_int_input("INPUT", value, np.int64, [1, 1])]
    else:
        inputs = [_int_input("INPUT", value, np.int32, [1, 1] if model != "one_slot" else [1])]
    return client.infer(model, inputs, sequence_id=sequence_id, sequence_start=start, sequence_end=end)


def test_simple_sequence_answers_as_tritons_sequence_client_expects(client: Any) -> None:
    values = [0, 11, 7, 5, 3, 2, 0, 1]
    answers = [_send(client, "simple_sequence", v, 1000, start=i == 0, end=i == len(values) - 1).as_numpy("OUTPUT")
               for i, v in enumerate(values)]
    assert [int(a[0][0]) for a in answers] == [1, 11, 7, 5, 3, 2, 0, 1]


def test_concurrent_sequences_keep_their_own_totals(server: EvserveProcess) -> None:
    """Eight sequences at once over two instances: each total is right only if its requests stayed together.

    One client per thread: tritonclient's HTTP client is built on gevent and must stay on one thread.
    """
    ids: list[int | str] = [1, 2, 3, 4, "alpha", "beta", "gamma", "delta"]
    totals: dict[int | str, list[int]] = {}
    errors: list[BaseException] = []

    def run(sequence_id: int | str, step: int) -> None:
        client = httpclient.InferenceServerClient(server.url)
        try:
            got = []
            for i in range(6):
                reply = _send(client, "sequence_accumulator", step, sequence_id, start=i == 0, end=i == 5)
                got.append(int(reply.as_numpy("TOTAL")[0][0]))
            totals[sequence_id] = got
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(sid, n + 1)) for n, sid in enumerate(ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for n, sid in enumerate(ids):
        step = n + 1
        assert totals[sid] == [step * (i + 1) for i in range(6)], sid


def test_a_request_after_end_needs_a_new_start(client: Any) -> None:
    _send(client, "sequence_accumulator", 5, 77, start=True, end=True)
    with pytest.raises(InferenceServerException) as caught:
        _send(client, "sequence_accumulator", 5, 77)
    assert caught.value.status() == "400"
    assert caught.value.message() == ("inference request for sequence 77 to model 'sequence_accumulator' must "
                                      "specify the START flag on the first request of the sequence")


def test_requests_without_a_sequence_are_refused(server: EvserveProcess) -> None:
    body = {"inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [1, 1], "data": [1]}]}
    reply = post_json(server.port, "/v2/models/simple_sequence/infer", body)
    assert reply.status == 400
    assert reply.json() == {"error": "inference request to model 'simple_sequence' must specify a non-zero or "
                                     "non-empty correlation ID"}
    body = {"inputs": [{"name": "INPUT", "datatype": "INT32", "shape": [2, 1], "data": [1, 2]}],
            "parameters": {"sequence_id": 5, "sequence_start": True}}
    reply = post_json(server.port, "/v2/models/simple_sequence/infer", body)
    assert reply.status == 400
    assert reply.json() == {"error": "inference request to model 'simple_sequence' must specify batch-size 1 due "
                                     "to requirements of sequence batcher"}


def test_the_model_sees_the_control_tensors(client: Any) -> None:
    first = json.loads(_send(client, "probe", 1, 4242, start=True).as_numpy("INFO")[0][0])
    last = json.loads(_send(client, "probe", 1, 4242, end=True).as_numpy("INFO")[0][0])
    assert first == {"corr": 4242, "flags": 1, "START": [[1, 1], "int32", [1]], "END": [[1, 1], "float32", [0.0]],
                     "READY": [[1, 1], "bool", [True]], "CORRID": [[1, 1], "uint64", [4242]]}
    assert last["flags"] == 2 and last["START"][2] == [0] and last["END"][2] == [1.0]


def test_string_ids_reach_a_string_corrid(client: Any) -> None:
    seen = json.loads(_send(client, "one_slot", 1, "chat-9", start=True, end=True).as_numpy("INFO")[0])
    assert seen["corr"] == "chat-9"
    assert seen["CORRID"] == [[1], "object", ["chat-9"]]


def test_a_second_sequence_waits_for_the_slot_until_the_first_goes_idle(client: Any) -> None:
    """one_slot has one slot: B's START can only run once A is released (idle after 1 s)."""
    _send(client, "one_slot", 1, "A", start=True)
    _send(client, "one_slot", 1, "B", start=True)  # returns once A has gone idle
    with pytest.raises(InferenceServerException) as caught:
        _send(client, "one_slot", 1, "A")
    assert "inference request for sequence A to model 'one_slot' must specify the START flag" in caught.value.message()
    _send(client, "one_slot", 1, "B", end=True)


def test_implicit_state_carries_from_request_to_request(client: Any) -> None:
    """The server keeps OUTPUT_STATE and feeds it back as INPUT_STATE; the client never sees it."""
    totals = []
    for i, value in enumerate((5, 7, 1)):
        reply = _send(client, "implicit_total", value, 31, start=i == 0, end=i == 2)
        totals.append(int(reply.as_numpy("OUTPUT")[0][0]))
        assert reply.as_numpy("OUTPUT_STATE") is None
    assert totals == [5, 12, 13]
    restart = _send(client, "implicit_total", 4, 31, start=True, end=True)
    assert int(restart.as_numpy("OUTPUT")[0][0]) == 4  # START begins again from the initial state
