"""InstanceWorker and ModelVersion with fake instances: admission, batching, cancellation, drain.

The fakes stand in for the python backend so these tests pin the worker's own contract: a bounded
queue that answers 503 at once, batches gathered by rows / preferred sizes / queue delay, every
job completed exactly once whatever the model does, and a bounded stop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution import device
from evserve.gpu.execution.contract import CANCELLED, QUEUE_FULL, ExecRequest
from evserve.gpu.execution.stats import ModelStats
from evserve.gpu.execution.version import ModelVersion
from evserve.gpu.execution.worker import InstanceWorker
from evserve.protocol.errors import ProtocolError, Unavailable
from evserve.protocol.types import InferRequest, InferResponse, InputTensor, ModelSignature, TensorSpec


class Job(ExecRequest):
    """A real ExecRequest that records what it was completed with, and can be cancelled."""

    def __init__(self, request: InferRequest, is_cancelled: bool = False) -> None:
        super().__init__(request, self._record, lambda: self.is_cancelled)
        self.is_cancelled = is_cancelled
        self.results: list[Any] = []
        self.completed = threading.Event()

    def _record(self, result: Any) -> None:
        self.results.append(result)
        self.completed.set()

    def wait(self, timeout: float = 5.0) -> Any:
        assert self.completed.wait(timeout), "job never completed"
        return self.results[0]


def make_job(rows: int = 1, cancelled: bool = False) -> Job:
    data = np.zeros((rows, 2), dtype=np.float32)
    request = InferRequest("m", "1", inputs=[InputTensor("IN", "FP32", data.shape, data)])
    return Job(request, cancelled)


@dataclass
class Batching:
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


class FakeInstance:
    """Completes every job; can block on a gate, sleep, raise, or forget to answer."""

    def __init__(
        self,
        *,
        gate: threading.Event | None = None,
        delay: float = 0.0,
        error: BaseException | None = None,
        answer: bool = True,
    ) -> None:
        self.gate = gate
        self.delay = delay
        self.error = error
        self.answer = answer
        self.batches: list[int] = []
        self.started = threading.Event()
        self.finalized = False

    def execute(self, batch: list[Any]) -> None:
        self.batches.append(len(batch))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if self.answer:
            for job in batch:
                job.finish(InferResponse("m", "1"))

    def finalize(self) -> None:
        self.finalized = True


def worker(
    instance: FakeInstance,
    capacity: int = 16,
    batching: Batching | None = None,
    max_batch_size: int = 0,
    stats: ModelStats | None = None,
) -> InstanceWorker:
    w = InstanceWorker(
        "m", instance, capacity, batching, device.KIND_CPU, 0, max_batch_size=max_batch_size, stats=stats
    )
    w.start()
    return w


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def batches_behind_a_blocker(
    jobs: list[Job], batching: Batching, max_batch_size: int, stats: ModelStats | None = None
) -> list[int]:
    """Hold the instance on a one-row job while ``jobs`` queue up, then release it: the batch sizes it ran."""
    gate = threading.Event()
    instance = FakeInstance(gate=gate)
    w = worker(instance, batching=batching, max_batch_size=max_batch_size, stats=stats)
    w.submit(make_job())
    assert instance.started.wait(2)
    for job in jobs:
        w.submit(job)
    gate.set()
    for job in jobs:
        job.wait()
    w.stop(2.0)
    return instance.batches


def test_executes_and_completes_each_job_once() -> None:
    w = worker(FakeInstance(), capacity=32)
    jobs = [make_job() for _ in range(20)]
    for job in jobs:
        w.submit(job)
    for job in jobs:
        assert isinstance(job.wait(), InferResponse)
    assert w.stop(2.0)
    assert all(len(job.results) == 1 for job in jobs)
    assert w.executions == 20 and w.inferences == 20


def test_full_queue_refuses_at_once_with_503() -> None:
    gate = threading.Event()
    instance = FakeInstance(gate=gate)
    w = worker(instance, capacity=2)
    first = make_job()
    w.submit(first)
    assert instance.started.wait(2)
    queued = [make_job(), make_job()]
    for job in queued:
        w.submit(job)
    started = time.monotonic()
    with pytest.raises(Unavailable) as info:
        w.submit(make_job())
    assert time.monotonic() - started < 0.1
    assert info.value.status == 503 and info.value.message == QUEUE_FULL
    gate.set()
    for job in [first, *queued]:
        assert isinstance(job.wait(), InferResponse)
    w.stop(2.0)


def test_cancelled_job_is_not_executed() -> None:
    gate = threading.Event()
    instance = FakeInstance(gate=gate)
    w = worker(instance)
    blocker, victim, other = make_job(), make_job(), make_job()
    w.submit(blocker)
    assert instance.started.wait(2)
    w.submit(victim)
    w.submit(other)
    victim.is_cancelled = True
    gate.set()
    result = victim.wait()
    assert isinstance(result, ProtocolError) and result.message == CANCELLED and result.status == 400
    assert isinstance(other.wait(), InferResponse)
    w.stop(2.0)
    assert instance.batches == [1, 1]


def test_dynamic_batching_gathers_queued_requests() -> None:
    jobs = [make_job() for _ in range(5)]
    assert batches_behind_a_blocker(jobs, Batching(), max_batch_size=8) == [1, 5]


def test_batch_respects_max_batch_size_in_rows() -> None:
    stats = ModelStats()
    jobs = [make_job(rows=3) for _ in range(3)]
    assert batches_behind_a_blocker(jobs, Batching(), max_batch_size=4, stats=stats) == [1, 1, 1, 1]
    snapshot = stats.snapshot()
    assert snapshot["inference_count"] == 10
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in snapshot["batch_stats"]} == {1: 1, 3: 3}


def test_preferred_batch_size_is_cut_from_a_larger_queue() -> None:
    jobs = [make_job() for _ in range(6)]
    assert batches_behind_a_blocker(jobs, Batching(preferred_batch_sizes=(4,)), max_batch_size=8) == [1, 4, 2]


def test_queue_delay_waits_for_more_requests() -> None:
    instance = FakeInstance()
    w = worker(instance, batching=Batching(max_queue_delay_us=300_000), max_batch_size=8)
    first, second = make_job(), make_job()
    w.submit(first)
    time.sleep(0.05)
    w.submit(second)
    second.wait()
    first.wait()
    w.stop(2.0)
    assert instance.batches == [2]


def test_full_batch_is_sent_without_waiting_for_the_delay() -> None:
    instance = FakeInstance()
    w = worker(instance, batching=Batching(max_queue_delay_us=5_000_000), max_batch_size=2)
    started = time.monotonic()
    jobs = [make_job(), make_job()]
    for job in jobs:
        w.submit(job)
    for job in jobs:
        job.wait()
    assert time.monotonic() - started < 2.0
    w.stop(2.0)


def test_model_exception_fails_the_batch_and_worker_survives() -> None:
    instance = FakeInstance(error=RuntimeError("boom"))
    w = worker(instance)
    job = make_job()
    w.submit(job)
    result = job.wait()
    assert isinstance(result, ProtocolError) and result.status == 500 and "boom" in result.message
    instance.error = SystemExit(3)
    job = make_job()
    w.submit(job)
    assert isinstance(job.wait(), ProtocolError)
    instance.error = None
    job = make_job()
    w.submit(job)
    assert isinstance(job.wait(), InferResponse)
    assert w.alive
    w.stop(2.0)


def test_raising_after_partial_answers_fails_only_the_unanswered() -> None:
    class AnswerFirstThenRaise(FakeInstance):
        def execute(self, batch: list[Any]) -> None:
            batch[0].finish(InferResponse("m", "1"))
            raise RuntimeError("half done")

    gate = threading.Event()
    blocker = FakeInstance(gate=gate)
    w = worker(blocker, batching=Batching(), max_batch_size=4)
    w.submit(make_job())
    assert blocker.started.wait(2)
    w.instance = AnswerFirstThenRaise()
    first, second = make_job(), make_job()
    w.submit(first)
    w.submit(second)
    gate.set()
    assert isinstance(first.wait(), InferResponse)
    result = second.wait()
    assert isinstance(result, ProtocolError) and result.status == 500 and "half done" in result.message
    w.stop(2.0)


def test_streaming_job_gets_one_final_call() -> None:
    class Streams(FakeInstance):
        def execute(self, batch: list[Any]) -> None:
            for job in batch:
                job.send(InferResponse("m", "1"))
                job.finish(None)
                job.finish(InferResponse("m", "1"))

    calls: list[tuple[Any, bool]] = []
    job = make_job()
    job.stream = lambda result, final: calls.append((result, final))
    w = worker(Streams())
    w.submit(job)
    wait_for(lambda: len(calls) >= 2)
    w.stop(2.0)
    assert [final for _, final in calls] == [False, True] and calls[1][0] is None
    assert job.results == []


def test_second_completion_is_dropped() -> None:
    class Twice(FakeInstance):
        def execute(self, batch: list[Any]) -> None:
            for job in batch:
                job.finish(InferResponse("m", "1"))
                job.finish(InferResponse("m", "2"))

    w = worker(Twice())
    job = make_job()
    w.submit(job)
    job.wait()
    w.stop(2.0)
    assert len(job.results) == 1 and job.results[0].model_version == "1"


def test_stop_drains_queued_work_then_refuses() -> None:
    instance = FakeInstance(delay=0.05)
    w = worker(instance)
    jobs = [make_job() for _ in range(4)]
    for job in jobs:
        w.submit(job)
    assert w.stop(5.0)
    assert all(isinstance(job.results[0], InferResponse) for job in jobs)
    with pytest.raises(Unavailable):
        w.submit(make_job())


def test_stop_is_bounded_and_drops_what_cannot_run() -> None:
    gate = threading.Event()
    instance = FakeInstance(gate=gate)
    w = worker(instance)
    running, queued = make_job(), make_job()
    w.submit(running)
    assert instance.started.wait(2)
    w.submit(queued)
    started = time.monotonic()
    assert not w.stop(0.2)
    assert time.monotonic() - started < 1.0
    result = queued.wait()
    assert isinstance(result, Unavailable)
    gate.set()
    assert isinstance(running.wait(), InferResponse)
    wait_for(lambda: not w.alive)


def test_stats_count_success_failure_and_queue_time() -> None:
    stats = ModelStats()
    instance = FakeInstance()
    w = worker(instance, stats=stats)
    ok = make_job()
    w.submit(ok)
    ok.wait()
    instance.error = ValueError("bad")
    bad = make_job()
    w.submit(bad)
    bad.wait()
    w.stop(2.0)
    snap = stats.snapshot()
    assert snap["inference_stats"]["success"]["count"] == 1
    assert snap["inference_stats"]["fail"]["count"] == 1
    assert snap["inference_stats"]["queue"]["count"] == 2
    assert snap["execution_count"] == 2 and stats.failure_counts()["BACKEND"] == 1
    assert snap["last_inference"] > 0


SIGNATURE = ModelSignature("m", "1", 0, (TensorSpec("IN", "FP32", (2,)),), (TensorSpec("OUT", "FP32", (2,)),))


def version_with(instances: list[FakeInstance], capacity: int = 1) -> ModelVersion:
    stats = ModelStats()
    workers = [InstanceWorker("m", i, capacity, None, device.KIND_CPU, 0, stats=stats) for i in instances]
    version = ModelVersion("m", 1, None, workers, stats, SIGNATURE)
    version.start()
    return version


def test_version_routes_to_least_backlog_and_refuses_when_all_full() -> None:
    gate = threading.Event()
    a, b = FakeInstance(gate=gate), FakeInstance(gate=gate)
    version = version_with([a, b])
    jobs = [make_job() for _ in range(2)]
    for job in jobs:
        version.submit(job)
    assert a.started.wait(2) and b.started.wait(2)  # one each: least backlog
    for _ in range(2):
        version.submit(make_job())  # one queued on each
    with pytest.raises(Unavailable) as info:
        version.submit(make_job())
    assert info.value.message == QUEUE_FULL
    assert version.stats.failure_counts()["REJECTED"] == 1
    assert version.stats_entry()["name"] == "m" and version.stats_entry()["version"] == "1"
    gate.set()
    assert version.drain(5.0)
    assert version.finalize() == [] and a.finalized and b.finalized


def test_closed_version_forwards_to_its_successor() -> None:
    old_instance, new_instance = FakeInstance(), FakeInstance()
    old, new = version_with([old_instance]), version_with([new_instance])
    old.successor = new
    old.close()
    job = make_job()
    old.submit(job)
    job.wait()
    assert new_instance.batches == [1] and old_instance.batches == []
    old.successor = None
    with pytest.raises(Unavailable, match="not at ready state"):
        old.submit(make_job())
    for version in (old, new):
        version.drain(2.0)


def test_cpu_device_context_is_a_no_op() -> None:
    assert device.backend_name() in ("cupy", "numpy")
    assert device.gpu_count() >= 0
    with device.DeviceContext(device.KIND_CPU, 0) as ctx:
        assert ctx.stream is None and not ctx.on_gpu


@pytest.mark.gpu
def test_gpu_device_context_makes_a_private_stream_current() -> None:
    if not device.gpu_available():
        pytest.skip("needs CuPy and a CUDA device")
    cupy = device.cupy_module()
    assert cupy is not None
    with device.DeviceContext(device.KIND_GPU, 0) as ctx:
        assert ctx.stream is not None and ctx.on_gpu
        assert cupy.cuda.get_current_stream() == ctx.stream
        assert cupy.cuda.Device().id == 0
