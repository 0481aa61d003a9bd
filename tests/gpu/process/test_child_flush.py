"""The child's held answers: a burst goes out together, and a long batch cannot hold back the
answers before it (the flusher thread sends them when their time is up).

The child runs in-process here, on a real socketpair, with a flush window long enough to tell
"sent by the flusher" from "sent when the slow batch ended" without depending on the machine's speed.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evserve.gpu.process import child as child_module
from evserve.gpu.process.arena import CANCEL_FLAGS, Arena, Bump
from evserve.gpu.process.child import Child
from evserve.gpu.process.frames import FrameReader
from evserve.gpu.process.tensors import pack
from evserve.gpu.python_backend import bls
from tests.gpu.process.test_process_instance import SOMETIMES_SLOW, spec

WINDOW_S = 0.3


@pytest.fixture()
def child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(child_module, "FLUSH_AFTER_NS", int(WINDOW_S * 1e9))
    monkeypatch.setattr(bls, "_gateway", bls.gateway())  # a Child installs its own: put it back after
    model = spec(tmp_path, SOMETIMES_SLOW)
    ours, theirs = socket.socketpair()
    arena = Arena(CANCEL_FLAGS + (1 << 20))
    instance = Child(theirs, arena)
    instance.init({"op": "init", "model_dir": model.model_dir, "name": "m", "version": 1, "config": model.config,
                   "kind": "CPU", "device_id": 0, "instance_name": "m_0", "repository_dir": model.model_dir})
    reader = FrameReader(ours)
    assert reader.read()["op"] == "ready"  # type: ignore[index]
    yield instance, reader, arena
    ours.close()
    theirs.close()


def round_of(arena: Arena, values: list[float]) -> dict[str, Any]:
    bump = Bump(arena, CANCEL_FLAGS)
    batches = [[[rid, "m", "1", "", {}, [pack("IN", "FP32", (1,), np.array([v], np.float32), bump)], ["OUT"], False]]
               for rid, v in enumerate(values, 1)]
    return {"op": "execute", "inputs_end": bump.top, "batches": batches}


def arrivals(reader: FrameReader, count: int, start: float) -> dict[int, float]:
    """Seconds from ``start`` at which each request's answer arrived, until ``count`` batches are done."""
    seen: dict[int, float] = {}
    done = 0
    while done < count:
        message = reader.read()
        assert message is not None
        if message["op"] == "answers":
            for rid, *_ in message["items"]:
                seen[rid] = time.monotonic() - start
            done += message["done"]
    return seen


def test_a_burst_goes_out_together(child: Any) -> None:
    instance, reader, arena = child
    instance._sent_at = time.monotonic_ns()  # just sent: the window is open
    start = time.monotonic()
    instance.execute(round_of(arena, [1.0, 2.0, 3.0]))
    seen = arrivals(reader, 3, start)
    assert sorted(seen) == [1, 2, 3]


def test_a_slow_batch_does_not_hold_back_the_answers_before_it(child: Any) -> None:
    instance, reader, arena = child
    instance._sent_at = time.monotonic_ns()  # the fast answers are held when the slow batch starts
    start = time.monotonic()
    runner = threading.Thread(target=instance.execute, args=(round_of(arena, [1.0, 2.0, 150.0]),))
    runner.start()  # 150: a batch of 1.5 s
    seen = arrivals(reader, 3, start)
    runner.join()
    assert seen[1] < 1.0 and seen[2] < 1.0  # the flusher sent them once the window passed
    assert seen[1] >= WINDOW_S * 0.9  # held for the window, not sent one by one
    assert seen[3] >= 1.5


@pytest.mark.parametrize(("cores", "window_ns"), [(1, child_module.FLUSH_ALONE_NS), (2, child_module.FLUSH_AFTER_NS)])
def test_the_window_is_a_round_when_the_child_has_no_other_core(
    cores: int, window_ns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(child_module, "_usable_cores", lambda: cores)
    monkeypatch.setattr(bls, "_gateway", bls.gateway())
    ours, theirs = socket.socketpair()
    try:
        assert Child(theirs, Arena(CANCEL_FLAGS + 4096))._flush_after_ns == window_ns
    finally:
        ours.close()
        theirs.close()
