"""The job contract: exactly one terminal call, whoever makes it and from whichever thread."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution.contract import ExecRequest
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, InferResponse, InputTensor


def request() -> InferRequest:
    data = np.zeros((1, 2), dtype=np.float32)
    return InferRequest("m", "1", inputs=[InputTensor("IN", "FP32", data.shape, data)])


def test_ExecRequest_finish_delivers_once_and_reports_who_won() -> None:
    results: list[Any] = []
    job = ExecRequest(request(), results.append)
    first, second = InferResponse("m", "1"), ProtocolError("late", 500)
    assert job.finish(first) is True
    assert job.finish(second) is False
    assert results == [first] and job.done


def test_ExecRequest_finish_threaded_race_has_one_winner() -> None:
    for _ in range(200):
        results: list[Any] = []
        job = ExecRequest(request(), results.append)
        start = threading.Barrier(4)
        wins: list[bool] = []

        def race(value: int, job: ExecRequest = job, start: threading.Barrier = start, wins: list[bool] = wins) -> None:
            start.wait()
            wins.append(job.finish(InferResponse("m", str(value))))

        threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wins.count(True) == 1 and len(results) == 1


def test_ExecRequest_on_finish_runs_once_before_delivery() -> None:
    order: list[str] = []
    job = ExecRequest(request(), lambda result: order.append("complete"))
    job.on_finish = lambda result: order.append("account")
    job.finish(InferResponse("m", "1"))
    job.finish(InferResponse("m", "1"))
    assert order == ["account", "complete"]


def test_ExecRequest_stream_gets_parts_then_one_final_call() -> None:
    calls: list[tuple[Any, bool]] = []
    completed: list[Any] = []
    job = ExecRequest(request(), completed.append, stream=lambda result, final: calls.append((result, final)))
    part = InferResponse("m", "1")
    job.send(part)
    job.finish(None)
    job.send(part)  # after the final call: dropped
    job.finish(part)
    assert calls == [(part, False), (None, True)] and completed == []


def test_ExecRequest_send_without_stream_is_ignored() -> None:
    completed: list[Any] = []
    job = ExecRequest(request(), completed.append)
    job.send(InferResponse("m", "1"))
    assert completed == [] and not job.done


def test_ExecRequest_failing_callback_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def explode(result: Any) -> None:
        raise RuntimeError("callback bug")

    job = ExecRequest(request(), explode)
    with caplog.at_level("ERROR"):
        assert job.finish(InferResponse("m", "1")) is True
    assert "completion callback failed" in caplog.text and job.done


def test_ExecRequest_cancelled_defaults_to_false() -> None:
    assert ExecRequest(request(), lambda result: None).cancelled() is False
