"""Priority levels and queue policies, without threads: the level a request gets, the order of the
queue, timeouts that reject or delay, and the reaper that answers REJECT timeouts on time."""

from __future__ import annotations

import ast
import threading
import time
from dataclasses import dataclass

import pytest

from evserve.gpu.execution.batching import BatchGatherer
from evserve.gpu.execution.queue_policy import (
    DeadlineReaper,
    LevelPolicy,
    QueueScheduling,
    ScheduledQueue,
)
from evserve.gpu.repository.model_config import DynamicBatching


def batching(text: str) -> DynamicBatching:
    """A DynamicBatching from a dict like the completed config's ``dynamic_batching``."""
    return DynamicBatching.from_json(ast.literal_eval(text))


@dataclass
class Entry:
    name: str
    level: int = 0
    deadline: int = 0
    rows: int = 1
    t_submit: int = 0


def policy(*, delay: bool = False, timeout_ns: int = 0, override: bool = False, max_size: int = 0) -> LevelPolicy:
    return LevelPolicy(delay, timeout_ns, override, max_size)


def names(queue: ScheduledQueue) -> list[str]:
    return [entry.name for entry in queue]


# ---- QueueScheduling: from the config, and a request's level and timeout ----------------------


def test_QueueScheduling_is_none_for_a_plain_fifo() -> None:
    assert QueueScheduling.from_settings(None) is None
    assert QueueScheduling.from_settings(batching("{'max_queue_delay_microseconds': 100}")) is None
    # A bound alone is the worker's capacity, not a scheduling matter.
    assert QueueScheduling.from_settings(batching("{'default_queue_policy': {'max_queue_size': 3}}")) is None


def test_QueueScheduling_one_level_when_only_a_default_timeout_is_set() -> None:
    scheduling = QueueScheduling.from_settings(
        batching("{'default_queue_policy': {'default_timeout_microseconds': 300, 'max_queue_size': 2}}")
    )
    assert scheduling == QueueScheduling((policy(timeout_ns=300_000, max_size=2),), 0)


def test_QueueScheduling_levels_take_their_own_policy_or_the_default() -> None:
    scheduling = QueueScheduling.from_settings(batching(
        "{'priority_levels': 3, 'default_priority_level': 2,"
        " 'default_queue_policy': {'max_queue_size': 4},"
        " 'priority_queue_policy': {'1': {'timeout_action': 'DELAY', 'default_timeout_microseconds': 5}}}"
    ))
    assert scheduling is not None
    assert scheduling.levels == (policy(delay=True, timeout_ns=5000), policy(max_size=4), policy(max_size=4))
    assert scheduling.default_index == 1


@pytest.mark.parametrize(("priority", "index"), [(1, 0), (2, 1), (3, 2), (0, 1), (4, 1), (10**9, 1)])
def test_QueueScheduling_priority_0_or_out_of_range_is_the_default_level(priority: int, index: int) -> None:
    scheduling = QueueScheduling((policy(), policy(), policy()), 1)
    assert scheduling.place({"priority": priority}) == (index, 0)
    assert scheduling.place({}) == (1, 0)


def test_QueueScheduling_timeout_override_only_shortens_an_existing_timeout() -> None:
    allowed = QueueScheduling((policy(timeout_ns=2_000_000, override=True),), 0)
    assert allowed.place({"timeout": 100}) == (0, 100_000)
    assert allowed.place({"timeout": 5_000}) == (0, 2_000_000)  # longer than the level's: ignored
    assert allowed.place({"timeout": 0}) == (0, 2_000_000)
    # Triton ignores an override where the level has no timeout of its own, and where it is not allowed.
    assert QueueScheduling((policy(override=True),), 0).place({"timeout": 100}) == (0, 0)
    assert QueueScheduling((policy(timeout_ns=2_000_000),), 0).place({"timeout": 100}) == (0, 2_000_000)


# ---- ScheduledQueue: dispatch order and expiry ------------------------------------------------


def test_ScheduledQueue_serves_higher_levels_first_and_each_level_in_arrival_order() -> None:
    queue = ScheduledQueue(QueueScheduling((policy(), policy(), policy()), 1))
    for name, level in [("low1", 2), ("mid1", 1), ("high1", 0), ("low2", 2), ("high2", 0), ("mid2", 1)]:
        queue.append(Entry(name, level))
    assert len(queue) == 6
    assert names(queue) == ["high1", "high2", "mid1", "mid2", "low1", "low2"]
    assert queue[0].name == "high1" and queue[3].name == "mid2" and queue[-1].name == "low2"
    assert [queue.popleft().name for _ in range(6)] == ["high1", "high2", "mid1", "mid2", "low1", "low2"]
    assert not queue
    with pytest.raises(IndexError):
        queue.popleft()
    with pytest.raises(IndexError):
        queue[0]


def test_ScheduledQueue_expire_takes_out_timed_out_REJECT_entries() -> None:
    queue = ScheduledQueue(QueueScheduling((policy(timeout_ns=10),), 0))
    queue.append(Entry("a", deadline=100))
    queue.append(Entry("b", deadline=300))
    queue.append(Entry("c"))  # no deadline
    queue.append(Entry("d", deadline=200))
    assert queue.expire(99) == []
    assert [e.name for e in queue.expire(250)] == ["a", "d"]
    assert names(queue) == ["b", "c"] and len(queue) == 2
    assert [e.name for e in queue.expire(300)] == ["b"]
    assert queue.expire(10**12) == []
    assert names(queue) == ["c"]


def test_ScheduledQueue_expire_moves_DELAY_entries_behind_their_level_but_ahead_of_lower_levels() -> None:
    queue = ScheduledQueue(QueueScheduling((policy(delay=True, timeout_ns=10), policy()), 1))
    queue.append(Entry("p1", level=0, deadline=100))
    queue.append(Entry("p2", level=1))
    queue.append(Entry("p1b", level=0, deadline=500))
    assert queue.expire(200) == []
    # Triton's order: the level's fresh requests, then its delayed ones, then the next level.
    assert names(queue) == ["p1b", "p1", "p2"]
    assert queue.expire(600) == []
    assert names(queue) == ["p1", "p1b", "p2"]  # delayed in the order they timed out
    assert len(queue) == 3


def test_ScheduledQueue_works_under_the_batch_gatherer() -> None:
    queue = ScheduledQueue(QueueScheduling((policy(), policy()), 1))
    for name, level, rows in [("l1", 1, 2), ("h1", 0, 1), ("h2", 0, 2), ("l2", 1, 1)]:
        queue.append(Entry(name, level, rows=rows, t_submit=len(queue)))

    @dataclass
    class Batching:
        max_queue_delay_us: int = 0
        preferred_batch_sizes: tuple[int, ...] = ()

    gatherer = BatchGatherer(Batching(), max_batch_size=4)
    # h1 (1) + h2 (2) fit; l1 (2) would make 5: the batch is the two high-priority requests.
    assert gatherer.choose(queue) == 2
    assert gatherer.deadline(queue) == queue[0].t_submit


# ---- DeadlineReaper -----------------------------------------------------------------------------


def test_DeadlineReaper_calls_back_in_deadline_order() -> None:
    reaper = DeadlineReaper(name="test-reaper")
    called: list[str] = []
    done = threading.Event()

    def expire(item: str) -> None:
        called.append(item)
        if len(called) == 3:
            done.set()

    now = time.monotonic_ns()
    reaper.watch(now + 30_000_000, expire, "third")
    reaper.watch(now + 10_000_000, expire, "first")
    reaper.watch(now - 1, expire, "already due")
    assert done.wait(5)
    assert called == ["already due", "first", "third"]


def test_DeadlineReaper_forgotten_entries_are_not_called_and_hold_nothing() -> None:
    reaper = DeadlineReaper(name="test-reaper")
    called: list[str] = []
    done = threading.Event()
    entry = reaper.watch(time.monotonic_ns() + 20_000_000, called.append, "forgotten")
    reaper.watch(time.monotonic_ns() + 40_000_000, lambda item: done.set(), "marker")
    DeadlineReaper.forget(entry)
    assert entry[2] is None and entry[3] is None
    assert done.wait(5)
    assert called == []
    assert reaper.pending() == 0


def test_DeadlineReaper_survives_a_failing_callback() -> None:
    reaper = DeadlineReaper(name="test-reaper")
    done = threading.Event()

    def fail(item: object) -> None:
        raise RuntimeError("boom")

    reaper.watch(time.monotonic_ns(), fail, None)
    reaper.watch(time.monotonic_ns(), lambda item: done.set(), "after")
    assert done.wait(5)
