"""LoopThread tests: thread affinity first (DESIGN.md rule 1), then the start/stop lifecycle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import uvloop

from evserve.server import loop_thread as loop_thread_module
from evserve.server.defer import DeferClosed
from evserve.server.loop_thread import LoopThread, OwnershipError, current_loop_thread

# loop_factory_fixture is imported for pytest, which registers it here as the ``loop_factory`` fixture.
from tests.server.loops import WAIT, LoopFactory, loop_factory_fixture  # noqa: F401


@pytest.fixture
def lt(loop_factory: LoopFactory) -> Iterator[LoopThread]:
    thread = LoopThread("evserve-loop-3", 3, loop_factory=loop_factory)
    thread.start()
    yield thread
    assert thread.stop(WAIT)


def test_LoopThread_start_runs_loop_on_its_own_thread(lt: LoopThread) -> None:
    assert lt.loop.is_running()
    assert (lt.name, lt.index) == ("evserve-loop-3", 3)
    assert lt.ident is not None and lt.ident != threading.get_ident()
    assert lt.run_sync(threading.get_ident, timeout=WAIT) == lt.ident
    assert lt.run_sync(lambda: threading.current_thread().name, timeout=WAIT) == "evserve-loop-3"
    assert lt.run_sync(asyncio.get_running_loop, timeout=WAIT) is lt.loop


def test_LoopThread_start_uses_uvloop_by_default() -> None:
    thread = LoopThread("default", 0)
    thread.start()
    try:
        assert isinstance(thread.loop, uvloop.Loop)
    finally:
        assert thread.stop(WAIT)


def test_LoopThread_start_twice_raises(lt: LoopThread) -> None:
    with pytest.raises(RuntimeError, match="twice"):
        lt.start()


def test_LoopThread_start_reraises_loop_factory_error() -> None:
    def broken_factory() -> asyncio.AbstractEventLoop:
        raise ValueError("no loop for you")

    thread = LoopThread("broken", 0, loop_factory=broken_factory)
    with pytest.raises(ValueError, match="no loop for you"):
        thread.start()
    with pytest.raises(DeferClosed):
        thread.defer(print)
    assert thread.stop(WAIT)


def test_LoopThread_loop_before_start_raises() -> None:
    thread = LoopThread("idle", 0)
    assert thread.ident is None
    with pytest.raises(RuntimeError, match="not been started"):
        thread.loop  # noqa: B018
    assert thread.stop(WAIT)


def test_LoopThread_current_loop_thread_is_thread_local(lt: LoopThread) -> None:
    assert current_loop_thread() is None
    assert lt.run_sync(current_loop_thread, timeout=WAIT) is lt


def test_LoopThread_defer_runs_on_owner(lt: LoopThread) -> None:
    seen: list[tuple[bool, LoopThread | None]] = []
    done = threading.Event()
    lt.defer(lambda: seen.append((lt.is_owner(), current_loop_thread())))
    lt.defer(done.set)
    assert done.wait(WAIT)
    assert seen == [(True, lt)]
    assert not lt.is_owner()


def test_LoopThread_is_owner_false_on_a_thread_that_reuses_its_id(
    loop_factory: LoopFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread ids are recycled once a thread ends; ownership must not be inherited with the id.

    (An id comparison failed exactly so: a thread calling stop() got the ended loop thread's id.)
    """
    thread = LoopThread("gone", 0, loop_factory=loop_factory)
    thread.start()
    assert thread.stop(WAIT)
    seen: list[tuple[bool, bool]] = []
    for _ in range(20):
        probe = threading.Thread(target=lambda: seen.append((threading.get_ident() == thread.ident, thread.is_owner())))
        probe.start()
        probe.join()
        if seen[-1][0]:
            break
    assert not any(owner for _, owner in seen)
    if not seen[-1][0]:
        # glibc usually hands the id straight back; where it did not, fake the reuse instead.
        monkeypatch.setattr(threading, "get_ident", lambda: thread.ident)
        owner = thread.is_owner()
        monkeypatch.undo()
        assert not owner


def test_LoopThread_assert_owner_raises_off_thread_when_debugging(
    lt: LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_thread_module, "DEBUG_OWNERSHIP", True)
    with pytest.raises(OwnershipError):
        lt.assert_owner()
    assert issubclass(OwnershipError, RuntimeError)
    assert lt.run_sync(lt.assert_owner, timeout=WAIT) is None


def test_LoopThread_assert_owner_is_silent_without_debugging(lt: LoopThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_thread_module, "DEBUG_OWNERSHIP", False)
    lt.assert_owner()


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [([], {}, "False"), (["-X", "dev"], {}, "True"), ([], {"EVSERVE_DEBUG": "1"}, "True")],
    ids=["default", "dev-mode", "EVSERVE_DEBUG"],
)
def test_LoopThread_DEBUG_OWNERSHIP_follows_dev_mode_and_environment(
    flags: list[str], env: dict[str, str], expected: str
) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("EVSERVE_DEBUG", "PYTHONDEVMODE")}
    code = "import evserve.server.loop_thread as m; print(m.DEBUG_OWNERSHIP)"
    out = subprocess.run(
        [sys.executable, *flags, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_LoopThread_call_soon_on_owner(lt: LoopThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_thread_module, "DEBUG_OWNERSHIP", True)
    done = threading.Event()
    lt.run_sync(lt.call_soon, done.set, timeout=WAIT)
    assert done.wait(WAIT)
    with pytest.raises(OwnershipError):
        lt.call_soon(done.set)


def test_LoopThread_run_sync_returns_result_and_raises_errors(lt: LoopThread) -> None:
    assert lt.run_sync(divmod, 7, 2, timeout=WAIT) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        lt.run_sync(divmod, 1, 0, timeout=WAIT)
    # On the owner it calls directly instead of deadlocking on itself.
    assert lt.run_sync(lambda: lt.run_sync(divmod, 9, 4), timeout=WAIT) == (2, 1)


def test_LoopThread_run_sync_timeout(lt: LoopThread) -> None:
    release = threading.Event()
    with pytest.raises(concurrent.futures.TimeoutError):
        lt.run_sync(release.wait, WAIT, timeout=0.05)
    release.set()


def test_LoopThread_stop_runs_calls_queued_before_it_first(loop_factory: LoopFactory) -> None:
    thread = LoopThread("stopper", 0, loop_factory=loop_factory)
    thread.start()
    loop_running: list[bool] = []
    for _ in range(1000):
        thread.defer(lambda: loop_running.append(thread.loop.is_running()))
    assert thread.stop(WAIT)
    assert loop_running == [True] * 1000


def test_LoopThread_defer_after_stop_raises_DeferClosed(loop_factory: LoopFactory) -> None:
    thread = LoopThread("closed", 0, loop_factory=loop_factory)
    thread.start()
    assert thread.stop(WAIT)
    with pytest.raises(DeferClosed):
        thread.defer(print)
    assert thread.statistics().closed
    assert thread.loop.is_closed()


def test_LoopThread_stop_is_idempotent_and_concurrent(loop_factory: LoopFactory) -> None:
    thread = LoopThread("twice", 0, loop_factory=loop_factory)
    thread.start()
    results: list[bool] = []
    stoppers = [threading.Thread(target=lambda: results.append(thread.stop(WAIT))) for _ in range(4)]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()
    assert results == [True] * 4
    assert thread.stop(WAIT)


def test_LoopThread_stop_before_start() -> None:
    thread = LoopThread("never", 0)
    assert thread.stop(WAIT)
    with pytest.raises(DeferClosed):
        thread.defer(print)
    with pytest.raises(RuntimeError, match="twice"):
        thread.start()


def test_LoopThread_stop_on_owner_thread(loop_factory: LoopFactory) -> None:
    thread = LoopThread("self-stop", 0, loop_factory=loop_factory)
    thread.start()
    from_owner: list[bool] = []
    thread.defer(lambda: from_owner.append(thread.stop()))
    assert thread.stop(WAIT)
    assert from_owner == [False]  # it could not join itself, but the stop still happened


def test_LoopThread_stop_cancels_leftover_tasks(loop_factory: LoopFactory) -> None:
    thread = LoopThread("tasks", 0, loop_factory=loop_factory)
    thread.start()
    outcome: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    thread.run_sync(lambda: thread.loop.create_task(forever()) and None, timeout=WAIT)
    assert thread.stop(WAIT)
    assert outcome == ["cancelled"]


def test_LoopThread_many_producers_every_call_once_on_owner(lt: LoopThread) -> None:
    producers, per_producer = 4, 2000
    record: list[tuple[int, int, bool]] = []

    def produce(producer: int) -> None:
        for seq in range(per_producer):
            lt.defer(lambda p=producer, s=seq: record.append((p, s, lt.is_owner())))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lt.run_sync(lambda: None, timeout=WAIT)  # FIFO: everything deferred above has run
    assert len(record) == producers * per_producer
    assert all(owner for _, _, owner in record)
    for producer in range(producers):
        assert [s for p, s, _ in record if p == producer] == list(range(per_producer))
    assert lt.statistics().jobs_run >= producers * per_producer
