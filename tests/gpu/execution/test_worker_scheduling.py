"""InstanceWorker with priority levels and queue policies, on a fake instance held busy by a gate.

Each test queues requests behind a blocker the instance is executing, so the order in which the
worker takes them, and what it refuses or times out while the instance is busy, is deterministic.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution import device
from evserve.gpu.execution.contract import QUEUE_FULL
from evserve.gpu.execution.queue_policy import TIMEOUT_EXPIRED, LevelPolicy, QueueScheduling
from evserve.gpu.execution.stats import ModelStats
from evserve.gpu.execution.worker import InstanceWorker
from evserve.protocol.errors import ProtocolError, Unavailable
from evserve.protocol.types import InferRequest, InferResponse, InputTensor
from tests.gpu.execution.test_worker import Batching, Job


class OrderedInstance:
    """Records the id of every request it runs, in order; the first execute waits on ``gate``."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.ran: list[str] = []
        self.batches: list[list[str]] = []
        self.started = threading.Event()

    def execute(self, batch: list[Any]) -> None:
        ids = [job.request.id for job in batch]
        self.batches.append(ids)
        self.ran.extend(ids)
        self.started.set()
        self.gate.wait(10)
        for job in batch:
            job.finish(InferResponse("m", "1", job.request.id))

    def finalize(self) -> None:
        pass


def job(name: str, **parameters: Any) -> Job:
    data = np.zeros((1, 2), dtype=np.float32)
    inputs = [InputTensor("IN", "FP32", data.shape, data)]
    return Job(InferRequest("m", "1", id=name, parameters=parameters, inputs=inputs))


def level(*, delay: bool = False, timeout_ms: float = 0, override: bool = False, max_size: int = 0) -> LevelPolicy:
    return LevelPolicy(delay, int(timeout_ms * 1_000_000), override, max_size)


def busy_worker(scheduling: QueueScheduling, *, capacity: int = 64, max_batch_size: int = 0,
                stats: ModelStats | None = None) -> tuple[InstanceWorker, OrderedInstance, threading.Event, Job]:
    """A started worker whose instance is executing a blocker until the returned gate is set."""
    gate = threading.Event()
    instance = OrderedInstance(gate)
    w = InstanceWorker("m", instance, capacity, Batching() if max_batch_size else None, device.KIND_CPU, 0,
                       max_batch_size=max_batch_size, stats=stats, scheduling=scheduling)
    w.start()
    blocker = job("blocker")
    w.submit(blocker)
    assert instance.started.wait(5)
    return w, instance, gate, blocker


def test_higher_priority_requests_run_first_and_out_of_range_is_the_default_level() -> None:
    w, instance, gate, blocker = busy_worker(QueueScheduling((level(), level(), level()), 1))
    jobs = [job("low1", priority=3), job("low2", priority=3), job("high1", priority=1),
            job("default0", priority=0), job("beyond", priority=10), job("high2", priority=1), job("plain")]
    for each in jobs:
        w.submit(each)
    gate.set()
    for each in jobs:
        assert isinstance(each.wait(), InferResponse)
    assert instance.ran == ["blocker", "high1", "high2", "default0", "beyond", "plain", "low1", "low2"]
    assert w.stop(2.0)


def test_a_batch_is_cut_from_the_head_in_priority_order() -> None:
    w, instance, gate, _ = busy_worker(QueueScheduling((level(), level()), 1), max_batch_size=3)
    jobs = [job("low1", priority=2), job("low2", priority=2), job("high1", priority=1), job("high2", priority=1)]
    for each in jobs:
        w.submit(each)
    gate.set()
    for each in jobs:
        each.wait()
    assert instance.batches == [["blocker"], ["high1", "high2", "low1"], ["low2"]]
    assert w.stop(2.0)


def test_REJECT_timeout_answers_while_the_instance_is_still_busy() -> None:
    stats = ModelStats()
    w, instance, gate, blocker = busy_worker(QueueScheduling((level(timeout_ms=20),), 0), stats=stats)
    victim = job("victim")
    w.submit(victim)
    # Answered by the reaper while the blocker still holds the instance (the gate is still shut).
    result = victim.wait(5)
    assert not gate.is_set()
    assert isinstance(result, Unavailable) and result.status == 503 and result.message == TIMEOUT_EXPIRED
    assert w.queued == 0
    gate.set()
    blocker.wait()
    assert w.stop(2.0)
    assert instance.ran == ["blocker"]
    snapshot = stats.snapshot()["inference_stats"]
    assert snapshot["fail"]["count"] == 1 and snapshot["success"]["count"] == 1
    assert snapshot["queue"]["count"] == 1  # the rejected request never left the queue: not counted there
    assert stats.failure_counts()["REJECTED"] == 1


def test_timeout_override_shortens_the_level_timeout() -> None:
    w, instance, gate, _ = busy_worker(QueueScheduling((level(timeout_ms=60_000, override=True),), 0))
    short, long = job("short", timeout=20_000), job("long", timeout=120_000_000)
    w.submit(short)
    w.submit(long)
    assert isinstance(short.wait(5), Unavailable)
    assert not long.completed.is_set()
    gate.set()
    assert isinstance(long.wait(), InferResponse)
    assert instance.ran == ["blocker", "long"]
    assert w.stop(2.0)


def test_DELAY_timeout_keeps_the_request_behind_fresh_ones_of_its_level_and_ahead_of_lower_levels() -> None:
    # Level 1 delays after 60 s, which a request may shorten; `delayed` asks for 1 ms.
    scheduling = QueueScheduling((level(delay=True, timeout_ms=60_000, override=True), level()), 1)
    w, instance, gate, _ = busy_worker(scheduling)
    delayed, lower, fresh = job("delayed", priority=1, timeout=1000), job("lower", priority=2), job("fresh", priority=1)
    for each in (delayed, lower, fresh):
        w.submit(each)
    time.sleep(0.01)  # past `delayed`'s deadline, far from the others'
    gate.set()
    for each in (delayed, lower, fresh):
        assert isinstance(each.wait(), InferResponse)  # DELAY never fails a request
    assert instance.ran == ["blocker", "fresh", "delayed", "lower"]
    assert w.stop(2.0)


def test_max_queue_size_is_per_level() -> None:
    stats = ModelStats()
    w, instance, gate, _ = busy_worker(QueueScheduling((level(max_size=1), level()), 1), stats=stats)
    high = job("high", priority=1)
    w.submit(high)
    with pytest.raises(Unavailable) as info:
        w.submit(job("refused", priority=1))
    assert info.value.status == 503 and info.value.message == QUEUE_FULL
    lows = [job(f"low{i}", priority=2) for i in range(3)]
    for each in lows:
        w.submit(each)
    gate.set()
    for each in (high, *lows):
        assert isinstance(each.wait(), InferResponse)
    # Once the queued one has run, the level takes another.
    again = job("again", priority=1)
    w.submit(again)
    assert isinstance(again.wait(), InferResponse)
    assert w.stop(2.0)


def test_server_queue_capacity_still_bounds_all_levels_together() -> None:
    w, _, gate, _ = busy_worker(QueueScheduling((level(), level()), 1), capacity=2)
    w.submit(job("a", priority=1))
    w.submit(job("b", priority=2))
    with pytest.raises(Unavailable):
        w.submit(job("c", priority=1))
    gate.set()
    assert w.stop(2.0)


def test_stop_drops_queued_requests_once_even_with_timeouts_pending() -> None:
    w, instance, gate, blocker = busy_worker(QueueScheduling((level(timeout_ms=60_000),), 0))
    queued = [job(f"q{i}") for i in range(3)]
    for each in queued:
        w.submit(each)
    assert not w.stop(0.05)  # the blocker is still running: the queued ones are dropped
    for each in queued:
        result = each.wait()
        assert isinstance(result, ProtocolError) and result.status == 503
        assert len(each.results) == 1
    assert w.queued == 0
    gate.set()
    blocker.wait()
    assert instance.ran == ["blocker"]


def test_a_started_request_is_not_rejected_by_its_late_deadline() -> None:
    # The timeout (20 ms) passes while the request executes: it must finish normally, once.
    gate = threading.Event()
    instance = OrderedInstance(gate)
    scheduling = QueueScheduling((level(timeout_ms=20),), 0)
    w = InstanceWorker("m", instance, 8, None, device.KIND_CPU, 0, scheduling=scheduling)
    w.start()
    running = job("running")
    w.submit(running)
    assert instance.started.wait(5)
    time.sleep(0.05)
    gate.set()
    assert isinstance(running.wait(), InferResponse)
    assert len(running.results) == 1
    assert w.stop(2.0)


class TimedInstance:
    """Runs each batch for a moment and records which jobs it ran."""

    def __init__(self) -> None:
        self.ran: set[int] = set()

    def execute(self, batch: list[Any]) -> None:
        time.sleep(0.0002)
        for each in batch:
            self.ran.add(id(each))
            each.finish(InferResponse("m", "1", each.request.id))

    def finalize(self) -> None:
        pass


def test_threaded_stress_every_job_answered_once_and_timed_out_ones_never_run() -> None:
    # Timeouts about as long as the queue wait, so the reaper and the worker race for the same jobs.
    scheduling = QueueScheduling((level(timeout_ms=2, override=True), level(max_size=8)), 1)
    instance = TimedInstance()
    w = InstanceWorker("m", instance, 10_000, Batching(), device.KIND_CPU, 0, max_batch_size=4,
                       scheduling=scheduling)
    w.start()
    jobs: list[Job] = []
    lock = threading.Lock()

    def submit_many(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(300):
            each = job(f"{seed}-{i}", priority=int(rng.integers(0, 3)), timeout=int(rng.integers(1, 3000)))
            try:
                w.submit(each)
            except Unavailable:
                continue
            with lock:
                jobs.append(each)

    threads = [threading.Thread(target=submit_many, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = {"ran": 0, "timed out": 0}
    for each in jobs:
        result = each.wait(10)
        assert len(each.results) == 1
        if isinstance(result, Unavailable):
            assert result.message == TIMEOUT_EXPIRED and id(each) not in instance.ran
            outcomes["timed out"] += 1
        else:
            assert id(each) in instance.ran
            outcomes["ran"] += 1
    assert all(outcomes.values()), outcomes  # both sides of the race were exercised
    assert w.stop(5.0)
    assert w.queued == 0 and w.in_flight == 0
