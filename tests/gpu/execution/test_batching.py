"""Dynamic batching decisions over a queue of (rows, arrival) entries, without threads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from evserve.gpu.execution.batching import BatchGatherer, request_rows
from evserve.protocol.types import InferRequest, InputTensor


@dataclass
class Policy:
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass
class Entry:
    rows: int
    t_submit: int = 0


def queue(*rows: int) -> list[Entry]:
    return [Entry(r) for r in rows]


def test_BatchGatherer_takes_the_longest_prefix_that_fits() -> None:
    gatherer = BatchGatherer(Policy(), max_batch_size=4)
    assert gatherer.choose(queue(1, 2, 1, 3)) == 3
    assert gatherer.choose(queue(3, 3)) == 1


def test_BatchGatherer_oversized_first_request_still_runs_alone() -> None:
    assert BatchGatherer(Policy(), max_batch_size=4).choose(queue(6, 1)) == 1


def test_BatchGatherer_prefers_the_largest_preferred_size_within_the_prefix() -> None:
    gatherer = BatchGatherer(Policy(preferred_batch_sizes=(2, 4)), max_batch_size=8)
    assert gatherer.choose(queue(1, 1, 1)) == 2
    assert gatherer.choose(queue(1, 1, 1, 1, 1)) == 4
    assert gatherer.choose(queue(3)) == 1  # no prefix hits a preferred size: take what fits


@pytest.mark.parametrize(("rows", "ready"), [((1,), False), ((1, 1, 1, 1), True), ((2, 3), True), ((2,), False)])
def test_BatchGatherer_ready_when_full_or_at_the_largest_preferred(rows: tuple[int, ...], ready: bool) -> None:
    gatherer = BatchGatherer(Policy(preferred_batch_sizes=(4,)), max_batch_size=4)
    assert gatherer.ready(queue(*rows)) is ready


def test_BatchGatherer_deadline_counts_from_the_oldest_arrival() -> None:
    gatherer = BatchGatherer(Policy(max_queue_delay_us=250), max_batch_size=4)
    assert gatherer.deadline([Entry(1, t_submit=1_000), Entry(1, t_submit=5_000)]) == 251_000


def test_request_rows_is_the_batch_dimension_only_when_the_model_batches() -> None:
    data = np.zeros((3, 2), dtype=np.float32)
    request = InferRequest("m", "1", inputs=[InputTensor("IN", "FP32", data.shape, data)])
    assert request_rows(request, max_batch_size=8) == 3
    assert request_rows(request, max_batch_size=0) == 1
    assert request_rows(InferRequest("m", "1"), max_batch_size=8) == 1
