"""DeferQueue tests, after trio's run_sync_soon set: FIFO, too late, starvation, threaded stress.

The queue is exercised on a bare loop in a plain thread (``QueueOnLoop``), not through LoopThread, so a
failure here points at the queue alone. That harness stops its loop with ``call_soon_threadsafe``, which
keeps working when the queue under test is wedged (the broken variant below wedges on purpose).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from types import TracebackType

import pytest

from evserve.server.defer import DeferClosed, DeferQueue

# loop_factory_fixture is imported for pytest, which registers it here as the ``loop_factory`` fixture.
from tests.server.loops import WAIT, LoopFactory, loop_factory_fixture  # noqa: F401


class QueueOnLoop:
    """Run ``queue`` on a fresh loop in a daemon thread for the duration of a ``with`` block."""

    def __init__(self, queue: DeferQueue, loop_factory: LoopFactory) -> None:
        self.queue = queue
        self._loop_factory = loop_factory
        self._ready = threading.Event()
        self.ident: int | None = None
        self.thread = threading.Thread(target=self._run, name="defer-test-loop", daemon=True)

    def _run(self) -> None:
        self.loop = self._loop_factory()
        self.ident = threading.get_ident()
        self.queue.attach(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.queue.close()
            self.loop.close()

    def __enter__(self) -> QueueOnLoop:
        self.thread.start()
        assert self._ready.wait(WAIT)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def error_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[logging.LogRecord]]:
    """Collect what "evserve.server" logs, without letting it propagate.

    The errors are the point of the test that uses this, so tests/server/conftest.py's clean-run
    check (which fails a test on any logged error) must not see them.
    """
    records: list[logging.LogRecord] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("evserve.server")
    handler = ListHandler(logging.ERROR)
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "propagate", False)
    yield records
    logger.removeHandler(handler)


def _noop() -> None:
    pass


def _stress(queue: DeferQueue, *, producers: int, rounds: int, timeout: float) -> int:
    """Each producer defers one job and waits for it, ``rounds`` times; return how many waits timed out.

    A lost wake-up leaves a job queued with no byte in the socket and the flag set, so the waiting
    producer times out (and so would every later defer: the producer gives up at its first timeout).
    """
    barrier = threading.Barrier(producers)
    lost: list[int] = []

    def producer() -> None:
        barrier.wait()
        for i in range(rounds):
            ran = threading.Event()
            queue.defer(ran.set)
            if not ran.wait(timeout):
                lost.append(i)
                return

    threads = [threading.Thread(target=producer) for _ in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(lost)


class _InterleavedQueue(DeferQueue):
    """The real ordering, with a defer forced into the middle of every pass (after the drain, before the re-arm).

    Calling ``defer`` here, on the consumer thread, replays exactly what a producer thread preempted at
    that instant would do: ``defer`` takes the same lock and runs the same code whatever thread calls it.
    """

    def _drain(self) -> None:
        super()._drain()
        if not self.closed:  # close() runs a last pass, and defer would rightly refuse then
            self.defer(_noop)


class _ClearBeforeDrainQueue(DeferQueue):
    """DELIBERATELY BROKEN: re-arms the flag before draining (the bug STYLE.md section 5 records).

    Like _InterleavedQueue it forces one defer into the middle of each pass, here between re-arm and
    drain: that defer sends a byte which the drain swallows, leaving the flag set and the socket empty.
    """

    def _begin_pass(self) -> int:
        with self._lock:
            self._wake_pending = False
        if not self.closed:
            self.defer(_noop)
        self._drain()
        with self._lock:
            return len(self._jobs)


def test_DeferQueue_defer_FIFO(loop_factory: LoopFactory) -> None:
    record: list[int] = []
    done = threading.Event()
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:
        for i in range(1000):
            runner.queue.defer(record.append, i)
        runner.queue.defer(done.set)
        assert done.wait(WAIT)
    assert record == list(range(1000))


def test_DeferQueue_defer_many_producers_each_call_once_on_owner_in_FIFO(
    loop_factory: LoopFactory,
) -> None:
    producers, per_producer = 8, 5000
    record: list[tuple[int, int, int]] = []
    barrier = threading.Barrier(producers)
    done = threading.Event()
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:

        def job(producer: int, seq: int) -> None:
            record.append((producer, seq, threading.get_ident()))

        def produce(producer: int) -> None:
            barrier.wait()
            for seq in range(per_producer):
                runner.queue.defer(job, producer, seq)

        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runner.queue.defer(done.set)  # FIFO: it runs after every job above.
        assert done.wait(WAIT)
        owner = runner.ident
        stats = runner.queue.statistics()

    assert len(record) == producers * per_producer
    assert {ident for _, _, ident in record} == {owner}
    for producer in range(producers):
        assert [seq for p, seq, _ in record if p == producer] == list(range(per_producer))
    assert stats.jobs_run == producers * per_producer + 1
    assert stats.wakeups_received == stats.wakeups_sent


def test_DeferQueue_defer_coalesces_wakeups_while_loop_busy(
    loop_factory: LoopFactory,
) -> None:
    """10,000 defers into a busy loop cost exactly one wake-up byte and are run in exactly one pass.

    Not timing-dependent: the loop is held inside a job (its pass has already drained and re-armed),
    so the first defer of the burst must send and every later one must not. Not vacuous: ``queued``
    proves nothing ran during the burst, and a naive queue would send 10,000 bytes.
    """
    burst = 10_000
    busy, release, done = threading.Event(), threading.Event(), threading.Event()
    record: list[int] = []
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:
        queue = runner.queue

        def hold_loop() -> None:
            busy.set()
            release.wait(WAIT)

        queue.defer(hold_loop)
        assert busy.wait(WAIT)
        before = queue.statistics()
        for i in range(burst):
            queue.defer(record.append, i)
        queue.defer(done.set)
        during = queue.statistics()
        release.set()
        assert done.wait(WAIT)
        after = queue.statistics()

    assert during.queued == burst + 1
    assert during.wakeups_sent - before.wakeups_sent == 1
    assert after.passes - during.passes == 1
    assert after.jobs_run - during.jobs_run == burst + 1
    assert after.wakeups_received == after.wakeups_sent
    assert record == list(range(burst))


def test_DeferQueue_defer_after_close_raises_DeferClosed() -> None:
    queue = DeferQueue()
    queue.close()
    assert queue.closed
    with pytest.raises(DeferClosed):
        queue.defer(_noop)
    assert issubclass(DeferClosed, RuntimeError)
    queue.close()  # idempotent


def test_DeferQueue_defer_after_loop_stopped_raises_DeferClosed(
    loop_factory: LoopFactory,
) -> None:
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:
        pass
    with pytest.raises(DeferClosed):
        runner.queue.defer(_noop)
    assert runner.queue.statistics().closed


def test_DeferQueue_close_runs_queued_jobs_and_refuses_new_ones() -> None:
    queue = DeferQueue()
    record: list[object] = []

    def defer_during_close() -> None:
        try:
            queue.defer(record.append, "never")
        except DeferClosed:
            record.append("refused")

    for i in range(3):
        queue.defer(record.append, i)
    queue.defer(defer_during_close)
    queue.close()
    assert record == [0, 1, 2, "refused"]
    assert queue.statistics().queued == 0


def test_DeferQueue_close_off_owner_thread_raises(loop_factory: LoopFactory) -> None:
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:
        with pytest.raises(RuntimeError, match="must run on the thread"):
            runner.queue.close()
        assert not runner.queue.closed


def test_DeferQueue_attach_twice_raises(loop_factory: LoopFactory) -> None:
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:
        with pytest.raises(RuntimeError, match="already attached"):
            runner.queue.attach(runner.loop)


def test_DeferQueue_run_pending_bounded_pass() -> None:
    """Jobs deferred by a running pass wait for the next one (trio's starvation-resistance rule)."""
    queue = DeferQueue()
    record: list[str] = []

    def respawn() -> None:
        record.append("respawn")
        if not queue.closed:
            queue.defer(respawn)

    queue.defer(respawn)
    queue.defer(record.append, "other")
    assert queue.run_pending() == 2
    assert record == ["respawn", "other"]
    assert queue.statistics().queued == 1
    for _ in range(3):
        assert queue.run_pending() == 1
    queue.close()


def test_DeferQueue_defer_starvation_resistance(loop_factory: LoopFactory) -> None:
    """A job that re-defers itself forever starves neither other deferred jobs nor the loop's own callbacks."""
    spinning = True
    spins = 0
    other_job, loop_callback = threading.Event(), threading.Event()
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:

        def spin() -> None:
            nonlocal spins
            spins += 1
            if spinning:
                runner.queue.defer(spin)

        runner.queue.defer(spin)
        runner.queue.defer(other_job.set)
        runner.loop.call_soon_threadsafe(loop_callback.set)
        assert other_job.wait(WAIT)
        assert loop_callback.wait(WAIT)
        assert spins >= 1
        spinning = False


def test_DeferQueue_run_pending_exception_does_not_break_queue(
    loop_factory: LoopFactory, error_log: list[logging.LogRecord]
) -> None:
    done = threading.Event()

    def boom() -> None:
        raise ValueError("boom")

    with QueueOnLoop(DeferQueue(), loop_factory) as runner:
        runner.queue.defer(boom)
        runner.queue.defer(done.set)
        assert done.wait(WAIT)
        # A later pass still works too.
        again = threading.Event()
        runner.queue.defer(again.set)
        assert again.wait(WAIT)
    assert len(error_log) == 1
    assert error_log[0].exc_info is not None and isinstance(error_log[0].exc_info[1], ValueError)


def test_DeferQueue_statistics_is_immutable() -> None:
    queue = DeferQueue()
    stats = queue.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.jobs_run = 1  # type: ignore[misc]
    assert (stats.queued, stats.wakeups_sent, stats.jobs_run, stats.passes, stats.closed) == (0, 0, 0, 0, False)
    queue.close()


def test_DeferQueue_threaded_stress_test(loop_factory: LoopFactory) -> None:
    """Four producers, each deferring one job and waiting for it, 2,000 rounds: no wake-up may be lost.

    This run has teeth without any forced interleaving: measured on a 2-core machine, the
    clear-before-drain order wedged in 100 of 100 runs on each loop (after a median of 36-54 jobs, at
    worst 1,830 of the 8,000). Scheduling decides when, though, so the self-check below forces it.
    """
    producers, rounds = 4, 2000
    with QueueOnLoop(DeferQueue(), loop_factory) as runner:
        assert _stress(runner.queue, producers=producers, rounds=rounds, timeout=WAIT) == 0
        stats = runner.queue.statistics()
    assert stats.jobs_run == producers * rounds
    assert stats.wakeups_sent <= stats.jobs_run


def test_DeferQueue_threaded_stress_test_with_defer_inside_pass(
    loop_factory: LoopFactory,
) -> None:
    """The real ordering survives the interleaving that breaks the reversed one (see the test below)."""
    with QueueOnLoop(_InterleavedQueue(), loop_factory) as runner:
        assert _stress(runner.queue, producers=1, rounds=50, timeout=WAIT) == 0


def test_DeferQueue_threaded_stress_test_catches_clear_before_drain(
    loop_factory: LoopFactory,
) -> None:
    """SELF-CHECK OF THE STRESS TEST against a deliberately broken queue: the lost wake-up must show.

    Deterministic: the forced defer lands between re-arm and drain on the first pass, so the second
    round's defer finds the flag set and no byte in the socket. Left to thread scheduling alone, the
    broken order fails only when a preemption hits that window, which would make this test flaky.
    """
    with QueueOnLoop(_ClearBeforeDrainQueue(), loop_factory) as runner:
        assert _stress(runner.queue, producers=1, rounds=50, timeout=0.5) == 1
        stats = runner.queue.statistics()
        assert stats.queued == 1  # the wedged job: its defer saw the flag still set
        assert stats.wakeups_received == stats.wakeups_sent  # and no byte is left to wake the loop
