"""SequenceBatcher with recording workers: slots, order, the backlog, idle release, control tensors.

The workers here only record the jobs handed to them; each test answers them itself, so every
interleaving (a sequence's next request waiting for the previous answer, a backlog sequence
getting the slot an END freed, an idle sweep) is driven step by step and asserted exactly.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution.contract import QUEUE_FULL, ExecRequest
from evserve.gpu.execution.sequence import SequenceBatcher, SequencePolicy
from evserve.protocol.errors import BadRequest, Unavailable
from evserve.protocol.types import InferRequest, InputTensor

CONTROLS = [
    {"name": "START", "control": [{"kind": "CONTROL_SEQUENCE_START", "int32_false_true": [0, 1]}]},
    {"name": "END", "control": [{"kind": "CONTROL_SEQUENCE_END", "fp32_false_true": [0, 1]}]},
    {"name": "READY", "control": [{"kind": "CONTROL_SEQUENCE_READY", "bool_false_true": [False, True]}]},
    {"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_UINT64"}]},
]


class RecordingWorker:
    """Takes every job and keeps it; ``full`` makes it refuse as a full queue does."""

    def __init__(self) -> None:
        self.jobs: list[ExecRequest] = []
        self.full = False

    def submit(self, job: ExecRequest) -> None:
        if self.full:
            raise Unavailable(QUEUE_FULL)
        self.jobs.append(job)


class Job(ExecRequest):
    """A real ExecRequest that keeps what it was answered with."""

    def __init__(self, request: InferRequest) -> None:
        results: list[Any] = []
        super().__init__(request, results.append)
        self.results = results


def job(sequence_id: int | str = 0, *, start: bool = False, end: bool = False, rows: int = 1) -> Job:
    data = np.zeros((rows, 1), dtype=np.int32)
    parameters: dict[str, Any] = {"sequence_id": sequence_id}
    if start:
        parameters["sequence_start"] = True
    if end:
        parameters["sequence_end"] = True
    return Job(InferRequest("acc", "1", parameters=parameters, inputs=[InputTensor("INPUT", "INT32", (rows, 1), data)]))


def batcher(instances: int = 1, max_batch_size: int = 0, idle_us: int = 1_000_000,
            controls: list[dict] | None = None, oldest: dict | None = None, waiting_limit: int = 1024
            ) -> tuple[SequenceBatcher, list[RecordingWorker]]:
    config: dict[str, Any] = {"max_sequence_idle_microseconds": idle_us, "control_input": controls or []}
    if oldest is not None:
        config["oldest"] = oldest
    policy = SequencePolicy.from_config({"sequence_batching": config}, max_batch_size)
    workers = [RecordingWorker() for _ in range(instances)]
    sequencer = SequenceBatcher("acc", policy, workers, max_batch_size, waiting_limit)  # type: ignore[arg-type]
    return sequencer, workers


def answer(done: ExecRequest) -> None:
    done.finish(None)


def test_a_sequence_runs_in_order_one_request_at_a_time() -> None:
    sequencer, [worker] = batcher()
    first, second, third = job(7, start=True), job(7), job(7, end=True)
    for each in (first, second, third):
        sequencer.submit(each)
    assert worker.jobs == [first]  # the others wait for their turn
    answer(first)
    assert worker.jobs == [first, second]
    answer(second)
    assert worker.jobs == [first, second, third]
    answer(third)
    assert sequencer.active == 0


@pytest.mark.parametrize(("parameters", "text"), [
    ({}, "must specify a non-zero or non-empty correlation ID"),
    ({"sequence_id": ""}, "must specify a non-zero or non-empty correlation ID"),
    ({"sequence_id": 5}, "inference request for sequence 5 to model 'acc' must specify the START flag"),
    ({"sequence_id": "abc", "sequence_end": True}, "for sequence abc to model 'acc' must specify the START flag"),
])
def test_requests_outside_a_sequence_are_refused_with_tritons_texts(parameters: dict, text: str) -> None:
    sequencer, [worker] = batcher()
    request = InferRequest("acc", "1", parameters=parameters, inputs=[])
    with pytest.raises(BadRequest, match=text):
        sequencer.submit(Job(request))
    assert worker.jobs == []


def test_a_batching_model_takes_one_row_per_request() -> None:
    sequencer, _ = batcher(max_batch_size=8)
    with pytest.raises(BadRequest, match="must specify batch-size 1 due to requirements of sequence batcher"):
        sequencer.submit(job(1, start=True, rows=2))


def test_after_end_the_sequence_is_gone_and_a_new_start_begins_again() -> None:
    sequencer, [worker] = batcher()
    ending = job(3, start=True, end=True)
    sequencer.submit(ending)
    with pytest.raises(BadRequest):  # END is queued: later requests need a new START
        sequencer.submit(job(3))
    answer(ending)
    restart = job(3, start=True)
    sequencer.submit(restart)
    assert worker.jobs == [ending, restart]


def test_sequences_wait_in_a_backlog_when_every_slot_is_taken() -> None:
    sequencer, [worker] = batcher(max_batch_size=0)  # direct strategy, one slot
    a, b = job(1, start=True), job(2, start=True)
    sequencer.submit(a)
    sequencer.submit(b)
    assert worker.jobs == [a]
    answer(a)
    assert worker.jobs == [a]  # sequence 1 still holds the slot
    end_a = job(1, end=True)
    sequencer.submit(end_a)
    answer(end_a)
    assert worker.jobs == [a, end_a, b]  # END freed the slot for the backlog


def test_an_idle_sequence_is_released_and_must_start_again() -> None:
    sequencer, [worker] = batcher(idle_us=1000)
    a, b = job(1, start=True), job(2, start=True)
    sequencer.submit(a)
    sequencer.submit(b)
    answer(a)
    assert sequencer.sweep(now=time.monotonic_ns() + 10**12) == 1
    assert worker.jobs == [a, b]  # the backlog took the released slot
    with pytest.raises(BadRequest, match="for sequence 1 to model 'acc' must specify the START flag"):
        sequencer.submit(job(1))


def test_sequences_spread_over_instances_and_stay_there() -> None:
    sequencer, workers = batcher(instances=2, max_batch_size=2)
    starts = [job(n, start=True) for n in (1, 2, 3, 4)]
    for each in starts:
        sequencer.submit(each)
    assert [len(w.jobs) for w in workers] == [2, 2]
    home = {each.request.parameters["sequence_id"]: i for i, w in enumerate(workers) for each in w.jobs}
    for each in starts:
        answer(each)
    follow = [job(n) for n in (1, 2, 3, 4)]
    for each in follow:
        sequencer.submit(each)
    for each in follow:
        owner = workers[home[each.request.parameters["sequence_id"]]]
        assert each in owner.jobs


def test_oldest_strategy_slots_are_its_candidate_sequences() -> None:
    sequencer, [worker] = batcher(max_batch_size=2, oldest={"max_candidate_sequences": 3})
    for n in (1, 2, 3, 4):
        sequencer.submit(job(n, start=True))
    assert len(worker.jobs) == 3


def test_control_tensors_carry_the_flags_and_the_correlation_id() -> None:
    sequencer, [worker] = batcher(max_batch_size=4, controls=CONTROLS)
    sequencer.submit(job(42, start=True, end=True))
    inputs = {t.name: t for t in worker.jobs[0].request.inputs}
    assert inputs["START"].data.tolist() == [[1]] and inputs["START"].data.dtype == np.int32
    assert inputs["END"].data.tolist() == [[1.0]] and inputs["END"].data.dtype == np.float32
    assert inputs["READY"].data.tolist() == [[True]] and inputs["READY"].datatype == "BOOL"
    assert inputs["CORRID"].data.tolist() == [[42]] and inputs["CORRID"].datatype == "UINT64"
    assert all(t.shape == (1, 1) for t in inputs.values())


def test_string_and_numeric_ids_meet_the_corrid_type() -> None:
    string_controls = [{"name": "CORRID", "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_STRING"}]}]
    sequencer, [worker] = batcher(controls=string_controls)
    sequencer.submit(job(9, start=True))
    assert worker.jobs[0].request.inputs[-1].data.tolist() == [b"9"]
    sequencer, [worker] = batcher(controls=CONTROLS)
    sequencer.submit(job("12", start=True))  # a numeric string fits an integer CORRID
    assert worker.jobs[0].request.inputs[-1].data.tolist() == [12]
    with pytest.raises(BadRequest, match="is a string, but its CONTROL_SEQUENCE_CORRID input 'CORRID' is UINT64"):
        sequencer.submit(job("abc", start=True))


def test_a_full_queue_refuses_the_request_and_frees_the_turn() -> None:
    sequencer, [worker] = batcher()
    worker.full = True
    with pytest.raises(Unavailable, match=QUEUE_FULL):
        sequencer.submit(job(1, start=True))
    worker.full = False
    following = job(1)
    sequencer.submit(following)  # the sequence started; its turn was given back
    assert worker.jobs == [following]


def test_close_answers_the_waiting_requests_and_refuses_new_ones() -> None:
    sequencer, [worker] = batcher()
    running, waiting = job(1, start=True), job(1)
    sequencer.submit(running)
    sequencer.submit(waiting)
    sequencer.close()
    assert isinstance(waiting.results[0], Unavailable)
    with pytest.raises(Unavailable):
        sequencer.submit(job(2, start=True))
    answer(running)  # the request at the instance still finishes
    assert running.results == [None]


def test_the_jobs_waiting_for_their_turn_are_bounded() -> None:
    sequencer, [worker] = batcher(waiting_limit=2)
    running, waiting = job(1, start=True), job(1)
    sequencer.submit(running)  # went straight to the instance: it does not wait here
    sequencer.submit(waiting)
    sequencer.submit(job(2, start=True))  # no slot free: waits in the backlog
    with pytest.raises(Unavailable, match=QUEUE_FULL):
        sequencer.submit(job(1))
    answer(running)  # the waiting one goes on: room again
    sequencer.submit(job(1))
    assert worker.jobs == [running, waiting]
