"""Dynamic batching: which queued requests one ``execute`` takes, and how long to wait for more.

Triton's ``dynamic_batching`` as the python backend sees it: when an instance is free it takes
as many queued requests as fit in ``max_batch_size`` rows, prefers the configured preferred
batch sizes, and waits at most ``max_queue_delay_microseconds`` (counted from the oldest
request's arrival) for a fuller batch. The python backend receives a batch as a list of
separate requests, so no tensors are concatenated here.

The gatherer is pure bookkeeping over the worker's queue; the worker calls it with its own
lock held and does the waiting, so every queue access stays under that one lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from evserve.protocol.types import InferRequest


class BatchingPolicy(Protocol):
    """The parts of :class:`evserve.gpu.repository.model_config.DynamicBatching` the gatherer reads."""

    max_queue_delay_us: int
    preferred_batch_sizes: Sequence[int]


class Queued(Protocol):
    """What the gatherer reads of a queued request."""

    rows: int
    t_submit: int


def request_rows(request: InferRequest, max_batch_size: int) -> int:
    """Batch rows a request contributes: its leading dimension when the model batches, else 1."""
    if max_batch_size <= 0 or not request.inputs:
        return 1
    shape = request.inputs[0].shape
    return max(1, int(shape[0])) if shape else 1


class BatchGatherer:
    """Decides the size of the next batch from the queue's row counts and arrival times."""

    __slots__ = ("max_batch_size", "delay_ns", "_preferred", "_max_preferred")

    def __init__(self, policy: BatchingPolicy, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.delay_ns = int(policy.max_queue_delay_us) * 1000
        self._preferred = frozenset(policy.preferred_batch_sizes)
        self._max_preferred = max(self._preferred, default=0)

    def deadline(self, queue: Sequence[Queued]) -> int:
        """When the oldest queued request has waited long enough (monotonic ns)."""
        return queue[0].t_submit + self.delay_ns

    def ready(self, queue: Sequence[Queued]) -> bool:
        """Whether a batch is worth sending without waiting: full, or at the largest preferred size."""
        count, rows, _ = self._fitting_prefix(queue)
        return count < len(queue) or rows >= self.max_batch_size or rows == self._max_preferred

    def choose(self, queue: Sequence[Queued]) -> int:
        """How many requests from the head of the queue make the batch (at least one)."""
        count, rows, sums = self._fitting_prefix(queue)
        if self._preferred and rows not in self._preferred:
            best = [i + 1 for i, total in enumerate(sums) if total in self._preferred]
            if best:
                count = best[-1]
        return count

    def _fitting_prefix(self, queue: Sequence[Queued]) -> tuple[int, int, list[int]]:
        """(requests, rows) of the longest queue prefix within max_batch_size, plus prefix row sums."""
        rows, sums = 0, []
        for queued in queue:
            if sums and rows + queued.rows > self.max_batch_size:
                break
            rows += queued.rows
            sums.append(rows)
        return len(sums), rows, sums
