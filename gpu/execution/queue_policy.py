"""Priority levels and queue policies: which queued request runs next, and which may not run at all.

Triton's ``dynamic_batching`` can split a model's queue into ``priority_levels`` (1 is the
highest) and give each level a ``ModelQueuePolicy``: a queue timeout (``default_timeout_microseconds``,
which a request's ``timeout`` parameter may shorten when ``allow_timeout_override`` is set), what
happens when it expires before the request starts (``REJECT``: answered 503 "Request timeout
expired"; ``DELAY``: it stays queued, behind the level's requests that have not timed out), and a
``max_queue_size``. A request's ``priority`` parameter picks its level; 0, or a level the model
does not have, means ``default_priority_level``.

Three pieces, so that a model without any of this pays nothing for it:

* :class:`QueueScheduling` is the model's settings, read once at load (``None`` for a plain FIFO).
* :class:`ScheduledQueue` replaces an instance worker's FIFO: one FIFO per level and one for its
  delayed requests, walked in that order. Like the FIFO it replaces, only the worker thread touches
  it, so it needs no lock.
* :class:`DeadlineReaper` answers REJECT timeouts on time. The worker cannot: while it is inside
  ``execute`` nothing looks at its queue (Triton's scheduler notices expired requests only when it
  next looks, up to half a second late). One thread serves the whole process; it only hands an
  expired request back to its worker, which decides under its own lock whether the request is
  still queued (then it is answered) or already running (then nothing happens).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

_log = logging.getLogger(__name__)

TIMEOUT_EXPIRED = "Request timeout expired"

_NO_DEADLINE = 1 << 62


class QueuePolicySettings(Protocol):
    """What is read of one ``ModelQueuePolicy`` (:class:`evserve.gpu.repository.model_config.QueuePolicy`)."""

    timeout_action: str
    default_timeout_us: int
    allow_timeout_override: bool
    max_queue_size: int


class PrioritySettings(Protocol):
    """What is read of ``dynamic_batching`` (:class:`evserve.gpu.repository.model_config.DynamicBatching`)."""

    priority_levels: int
    default_priority_level: int
    default_queue_policy: QueuePolicySettings
    priority_queue_policies: dict[int, QueuePolicySettings]


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """One priority level's queue policy, in the units the worker uses (ns; 0 = no limit)."""

    delay: bool
    timeout_ns: int
    allow_override: bool
    max_size: int

    @classmethod
    def from_settings(cls, policy: QueuePolicySettings) -> LevelPolicy:
        return cls(
            delay=policy.timeout_action == "DELAY",
            timeout_ns=int(policy.default_timeout_us) * 1000,
            allow_override=bool(policy.allow_timeout_override),
            max_size=int(policy.max_queue_size),
        )


@dataclass(frozen=True, slots=True)
class QueueScheduling:
    """A model's priority levels (index 0 is level 1, the highest) and the level of an unprioritised request."""

    levels: tuple[LevelPolicy, ...]
    default_index: int

    @classmethod
    def from_settings(cls, batching: PrioritySettings | None) -> QueueScheduling | None:
        """The scheduling ``batching`` asks for, or None when a plain FIFO does it.

        A model with no priority levels and no queue timeout needs nothing here: its
        ``max_queue_size`` is the worker's queue capacity, as before.
        """
        if batching is None:
            return None
        default = LevelPolicy.from_settings(batching.default_queue_policy)
        count = int(batching.priority_levels)
        if count <= 0:
            return cls((default,), 0) if default.timeout_ns else None
        policies = batching.priority_queue_policies
        levels = tuple(
            LevelPolicy.from_settings(policies[level]) if level in policies else default
            for level in range(1, count + 1)
        )
        return cls(levels, max(1, min(count, int(batching.default_priority_level))) - 1)

    def place(self, parameters: dict[str, Any]) -> tuple[int, int]:
        """(level index, queue timeout in ns; 0 for none) of a request with these parameters.

        Triton's rules: a ``priority`` of 0 or above the model's levels means the default level;
        a ``timeout`` (µs) counts only where the level allows an override, and only to shorten a
        timeout the level already has.
        """
        index = self.default_index
        priority = parameters.get("priority", 0) if parameters else 0
        if type(priority) is int and 0 < priority <= len(self.levels):
            index = priority - 1
        policy = self.levels[index]
        timeout_ns = policy.timeout_ns
        if policy.allow_override and timeout_ns and parameters:
            override = parameters.get("timeout", 0)
            if type(override) is int and 0 < override * 1000 < timeout_ns:
                timeout_ns = override * 1000
        return index, timeout_ns


class Scheduled(Protocol):
    """What the queue reads of a queued request (the worker's admitted job)."""

    level: int
    deadline: int  # monotonic ns; 0 = never times out


class ScheduledQueue:
    """One worker's queue in dispatch order: per level, its fresh requests, then its delayed ones.

    It stands in for the worker's ``deque`` (``append``, ``popleft``, ``len``, indexing and
    iteration in dispatch order, which is what the batch gatherer reads). Owned by the worker
    thread: nothing here is shared.
    """

    __slots__ = ("_fresh", "_delayed", "_delays", "_size", "_next_deadline")

    def __init__(self, scheduling: QueueScheduling) -> None:
        self._fresh: list[deque[Any]] = [deque() for _ in scheduling.levels]
        self._delayed: list[deque[Any]] = [deque() for _ in scheduling.levels]
        self._delays = tuple(level.delay for level in scheduling.levels)
        self._size = 0
        self._next_deadline = _NO_DEADLINE  # no queued request can time out before this

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def _queues(self) -> Iterator[deque[Any]]:
        for fresh, delayed in zip(self._fresh, self._delayed, strict=True):
            yield fresh
            yield delayed

    def __iter__(self) -> Iterator[Any]:
        for queue in self._queues():
            yield from queue

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += self._size
        for queue in self._queues():
            if index < len(queue):
                return queue[index]
            index -= len(queue)
        raise IndexError("ScheduledQueue index out of range")

    def append(self, item: Scheduled) -> None:
        self._fresh[item.level].append(item)
        self._size += 1
        deadline = item.deadline
        if deadline and deadline < self._next_deadline:
            self._next_deadline = deadline

    def popleft(self) -> Any:
        for queue in self._queues():
            if queue:
                self._size -= 1
                return queue.popleft()
        raise IndexError("pop from an empty ScheduledQueue")

    def expire(self, now: int) -> list[Any]:
        """Apply the queue policies at ``now`` (monotonic ns); returns the REJECT requests taken out.

        A timed-out request of a DELAY level moves behind its level's fresh requests (and ahead of
        lower levels), where it no longer times out. O(1) until the earliest deadline has passed.
        """
        if now < self._next_deadline:
            return []
        rejected: list[Any] = []
        next_deadline = _NO_DEADLINE
        for index, fresh in enumerate(self._fresh):
            kept: deque[Any] = deque()
            for item in fresh:
                deadline = item.deadline
                if not deadline:
                    kept.append(item)
                elif deadline <= now:
                    item.deadline = 0
                    if self._delays[index]:
                        self._delayed[index].append(item)
                    else:
                        rejected.append(item)
                else:
                    kept.append(item)
                    next_deadline = min(next_deadline, deadline)
            self._fresh[index] = kept
        self._size -= len(rejected)
        self._next_deadline = next_deadline
        return rejected


class DeadlineReaper:
    """One thread that calls ``expire(item)`` for each watched item once its deadline has passed.

    :meth:`watch` returns the heap entry; a caller that no longer needs the call (the request
    started) may :meth:`forget` it, which drops the entry's references at once so that a long
    timeout does not keep a finished request's tensors alive until it expires. The thread starts
    with the first watch and is a daemon: it holds no state worth a shutdown.
    """

    def __init__(self, name: str = "evserve-queue-deadlines") -> None:
        self._name = name
        self._heap: list[list[Any]] = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline_ns: int, expire: Callable[[Any], None], item: Any) -> list[Any]:
        """Call ``expire(item)`` on the reaper's thread at ``deadline_ns`` (monotonic) unless forgotten first."""
        with self._cond:
            entry = [deadline_ns, next(self._seq), expire, item]
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if self._heap[0] is entry:
                self._cond.notify()
        return entry

    @staticmethod
    def forget(entry: list[Any]) -> None:
        """Drop the entry's call; its slot leaves the heap when its deadline comes."""
        entry[2] = entry[3] = None

    def pending(self) -> int:
        """Entries not yet due (forgotten ones included): for tests and diagnostics."""
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        heap, cond = self._heap, self._cond
        while True:
            with cond:
                while True:
                    if not heap:
                        cond.wait()
                        continue
                    wait_ns = heap[0][0] - time.monotonic_ns()
                    if wait_ns <= 0:
                        entry = heapq.heappop(heap)
                        break
                    cond.wait(wait_ns / 1e9)
            expire, item = entry[2], entry[3]
            if expire is not None and item is not None:
                try:
                    expire(item)
                except Exception:
                    _log.exception("queue timeout handling failed")


_reaper: DeadlineReaper | None = None
_reaper_lock = threading.Lock()


def reaper() -> DeadlineReaper:
    """The process's reaper, made on first use."""
    global _reaper
    if _reaper is None:
        with _reaper_lock:
            if _reaper is None:
                _reaper = DeadlineReaper()
    return _reaper
