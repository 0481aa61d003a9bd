"""LoopThread: one OS thread running one event loop, reachable from other threads only through ``defer``.

This is libevhtp's evthr: the server starts N of them, each owns the connections it accepts for their
whole life, and any other thread hands it work with ``defer(fn, *args)``, which goes
through the thread's DeferQueue (coalesced socketpair wake-ups; see ``evserve.server.defer``).

Ownership checks. Code that touches loop-owned state (a transport, a parser) calls ``assert_owner()``.
The check costs one global bool test unless ownership debugging is on, in which case it also checks
that the calling thread is this loop thread and raises OwnershipError otherwise (uvloop's
``_check_thread`` habit). Debugging is on when ``DEBUG_OWNERSHIP`` below is True: it starts True
under ``python -X dev`` or with ``EVSERVE_DEBUG=1`` in the environment, and tests may set it directly.

Lifecycle. ``start()`` returns once the loop runs. ``stop()`` sends the stop request through the same
queue, so every call deferred before it runs first (FIFO), then the queue is closed: a later ``defer``
raises DeferClosed instead of queueing work for a loop that will never run it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import uvloop

from evserve.server.defer import DeferClosed, DeferQueue, DeferStatistics

__all__ = ["DEBUG_OWNERSHIP", "LoopThread", "OwnershipError", "current_loop_thread"]

T = TypeVar("T")
_log = logging.getLogger("evserve.server")

# Read at every assert_owner() call, so tests can flip it with monkeypatch.
DEBUG_OWNERSHIP: bool = sys.flags.dev_mode or os.environ.get("EVSERVE_DEBUG") == "1"


class _Current(threading.local):
    """The LoopThread running on this thread, if any.

    Ownership is checked against this rather than against a thread id because ids are recycled: a
    thread started after a loop thread has ended may be given its id and would pass an id check.
    """

    thread: LoopThread | None = None


_current = _Current()


class OwnershipError(RuntimeError):
    """Loop-owned state was touched from a thread that does not own it."""


def current_loop_thread() -> LoopThread | None:
    """Return the LoopThread running on the calling thread, or None off every loop thread."""
    return _current.thread


class LoopThread:
    """One thread, one event loop (uvloop by default), one DeferQueue; see the module docstring."""

    def __init__(
        self, name: str, index: int, *, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    ) -> None:
        self.name = name
        self.index = index
        # asyncio.new_event_loop is the test alternative: code that runs here must stay loop-agnostic.
        self._loop_factory = loop_factory or uvloop.new_event_loop
        self._queue = DeferQueue()
        # defer(fn, *args): run fn(*args) on this loop thread soon; callable from any thread; raises
        # DeferClosed once stopped. It is the queue's bound method itself, because every reply takes
        # this path and a delegating method would add a Python frame (about 200 ns, bench_defer.py).
        self.defer: Callable[..., None] = self._queue.defer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ident: int | None = None
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._stop_requested = False
        self._running = threading.Event()
        self._start_error: BaseException | None = None
        # Requests answered on this thread (for /metrics): only this thread writes it; readers
        # elsewhere may see it a little stale, never torn (one int attribute).
        self.requests = 0
        # after_burst() work; only this thread touches it.
        self._burst: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._burst_scheduled = False

    def __repr__(self) -> str:
        return f"<LoopThread {self.name!r} index={self.index} ident={self._ident}>"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The thread's event loop; only its own thread may use it, except for ``call_soon_threadsafe``."""
        if self._loop is None:
            raise RuntimeError(f"{self!r} has not been started")
        return self._loop

    @property
    def ident(self) -> int | None:
        """The owning thread's ``threading.get_ident()``; None before ``start()``.

        For logs and diagnostics. To check ownership use ``is_owner()``: once this thread has ended,
        a new thread may be given the same id.
        """
        return self._ident

    def start(self) -> None:
        """Start the thread and return once its loop is running; re-raise what stopped it from starting.

        The thread is a daemon so that a forgotten ``stop()`` cannot hang interpreter exit; the server
        stops its loop threads explicitly.
        """
        with self._state_lock:
            if self._thread is not None or self._stop_requested:
                raise RuntimeError(f"{self!r} cannot be started twice")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._running.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def call_soon(self, fn: Callable[..., object], *args: Any) -> asyncio.Handle:
        """``loop.call_soon`` for code already on this thread (cheaper than ``defer``; no wake-up needed)."""
        self.assert_owner()
        return self.loop.call_soon(fn, *args)

    def after_burst(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on this thread once the I/O callbacks of this loop iteration are done.

        For handing work to other threads: submissions made from every request of a burst go
        out together, so a worker is woken once per burst instead of once per request. On one
        core a wake-up per request costs two context switches (the woken worker preempts this
        thread, finds the GIL taken and blocks again); once per burst it costs two per burst.
        Call on this thread only; an exception from ``fn`` is logged, not raised.
        """
        self._burst.append((fn, args))
        if not self._burst_scheduled:
            self._burst_scheduled = True
            self.loop.call_soon(self._run_burst)

    def _run_burst(self) -> None:
        self._burst_scheduled = False
        burst, self._burst = self._burst, []
        for fn, args in burst:
            try:
                fn(*args)
            except Exception:
                _log.exception("after_burst callback failed")

    def run_sync(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run ``fn(*args)`` on this loop thread and wait for its result; for tests and tools.

        This is the safe way to read per-thread state from outside. On the owning thread it simply
        calls ``fn`` (waiting for ourselves would deadlock). Raises TimeoutError after ``timeout``.
        """
        if self.is_owner():
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except Exception as exc:
                future.set_exception(exc)

        self.defer(job)
        return future.result(timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the loop to stop after every call deferred so far, and wait for the thread to end.

        Callable from any thread and idempotent. Returns True once the thread has ended, False when
        ``timeout`` ran out first or when called on the loop thread itself (which cannot join itself;
        the loop then stops as soon as the current callback returns).
        """
        with self._state_lock:
            thread = self._thread
            first_request = not self._stop_requested
            self._stop_requested = True
        if thread is None:
            self._queue.close()  # Never started: nothing is attached, so any thread may close it.
            return True
        if first_request:
            try:
                self._queue.defer(self._stop_loop)
            except DeferClosed:
                pass  # The thread has already ended (it failed to start or its loop crashed).
        if self.is_owner():
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def is_owner(self) -> bool:
        """True when called on this loop thread (while it runs; False everywhere once it has ended)."""
        return _current.thread is self

    def assert_owner(self) -> None:
        """Raise OwnershipError off this thread when DEBUG_OWNERSHIP is on; a bool test otherwise."""
        if DEBUG_OWNERSHIP and _current.thread is not self:
            raise OwnershipError(f"{self!r} is owned by another thread, not {threading.current_thread().name!r}")

    def statistics(self) -> DeferStatistics:
        """The DeferQueue's counters (wake-ups, passes, jobs run)."""
        return self._queue.statistics()

    def _stop_loop(self) -> None:
        self.loop.stop()

    def _run(self) -> None:
        """Thread body: create the loop here (a loop belongs to the thread that runs it), then serve."""
        self._ident = threading.get_ident()
        _current.thread = self
        loop: asyncio.AbstractEventLoop | None = None
        try:
            loop = self._loop_factory()
            self._queue.attach(loop)
            self._loop = loop
            loop.call_soon(self._running.set)
            loop.run_forever()
        except BaseException as exc:
            if self._running.is_set():
                raise
            self._start_error = exc  # start() re-raises it in the caller's thread.
        finally:
            # Close before the loop: leftover jobs run while the loop still exists, later defers fail.
            self._queue.close()
            if loop is not None:
                _close_loop(loop)
            _current.thread = None
            self._running.set()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks left behind and close the loop, as ``asyncio.run`` does, so none is destroyed pending."""
    try:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
