"""DeferQueue: run ``fn(*args)`` on a loop thread, asked from any thread (libevhtp's ``evthr_defer``).

Theory of operation
-------------------
A loop thread owns its connections; every other thread (a model worker finishing an inference, the
supervisor stopping the server) reaches them only by *deferring* a call onto the owner. The parts:

* ``_jobs``: a ``collections.deque`` of ``(fn, args)``. ``append`` and ``popleft`` are atomic, so the
  consumer pops without taking the lock.
* a non-blocking AF_UNIX socketpair whose read end is registered with the loop (``add_reader``). One
  byte written to it wakes the loop out of ``epoll_wait``. The buffers are made as small as the kernel
  allows (trio's ``_wakeup_socketpair.py``): a full buffer only means a wake-up is already pending.
* ``_wake_pending``: True from the moment a producer sends a byte until the consumer has drained it.
  Producers send only when the flag is False, so a burst of 10,000 defers costs one ``send`` syscall
  instead of 10,000 (a naive send per defer is several times slower than uvloop's
  ``call_soon_threadsafe``; coalesced, it is at parity: see bench/bench_defer.py).

Why no wake-up is lost. Invariant: *whenever ``_wake_pending`` is True, a byte is in the socket or the
consumer has not yet cleared the flag in a pass that will still snapshot the queue.* A producer, under
``_lock``, appends its job and, if the flag is False, sets it and sends a byte. A consumer pass does,
in this order:

1. drain the socket completely;
2. under ``_lock``: clear ``_wake_pending`` and snapshot ``n = len(_jobs)``;
3. run exactly ``n`` jobs, oldest first.

A job appended before step 2 is inside the snapshot. A job appended after step 2 finds the flag either
False (its producer sends a fresh byte, and the drain of step 1 is already over, so the byte survives
and triggers the next pass) or True because a later producer already sent such a byte. The reverse
order (clear, then drain) is the trap: a producer that slips in between sets
the flag and sends a byte which the running drain then swallows, leaving the flag set with no byte
behind it, and every later defer waits forever. ``tests/server/test_defer.py`` pins this ordering
down against a deliberately broken subclass.

Because the flag is only read and written under ``_lock`` (which also publishes the deque append), the
argument does not lean on the GIL; it holds on a free-threaded build too.

Bounded passes. A pass runs the ``n`` jobs it snapshotted; jobs added meanwhile (including jobs that
re-defer themselves) wait for the next pass, which is a fresh loop iteration. One busy producer can
therefore never starve the loop's own I/O or the other jobs (trio's ``_entry_queue.py``).

Closing. ``close()`` sets ``_closed`` under ``_lock``; ``defer`` checks it under the same lock, so a call
is either queued before the close (and run by ``close()`` itself) or refused with ``DeferClosed``. It is
never run on a dead loop and never dropped silently. ``_lock`` is an RLock so that a signal handler
that interrupts a ``defer`` on the same thread can itself call ``defer`` (trio's reasoning).
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
from asyncio import AbstractEventLoop
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DeferClosed", "DeferQueue", "DeferStatistics"]

logger = logging.getLogger("evserve.server")

# The drain buffer: with coalescing one byte is normally pending, and the tiny socket buffers can never
# hold this much.
_DRAIN_SIZE = 4096


class DeferClosed(RuntimeError):
    """The queue's loop has stopped: the call was not queued and will never run."""


@dataclass(frozen=True)
class DeferStatistics:
    """A snapshot of a DeferQueue (trio's ``statistics()`` habit: an immutable record).

    ``wakeups_sent`` counts bytes written, ``wakeups_received`` bytes drained; their ratio to
    ``jobs_run`` shows how well wake-ups coalesce. A pass's jobs count in ``jobs_run`` (and leave
    ``queued``) when the pass starts.
    """

    queued: int
    wakeups_sent: int
    wakeups_received: int
    jobs_run: int
    passes: int
    closed: bool


class DeferQueue:
    """Cross-thread call queue for one event loop: ``defer`` anywhere, jobs run on the loop's thread."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = collections.deque()
        self._wake_pending = False
        self._closed = False
        self._loop: AbstractEventLoop | None = None
        self._owner: threading.Thread | None = None
        self._rsock, self._wsock = socket.socketpair()
        self._drain_buf = bytearray(_DRAIN_SIZE)  # reused by every pass: no allocation on the hot path
        for sock in (self._rsock, self._wsock):
            sock.setblocking(False)
            # The kernel rounds 1 up to its minimum (a few KiB on Linux); a burst then costs a few
            # bytes at most. Best effort, as in trio: some platforms refuse the option.
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, 1)
                except OSError:
                    pass
        # Producer-side counters are written under _lock, consumer-side ones only by the loop thread.
        self._wakeups_sent = 0
        self._wakeups_received = 0
        self._jobs_run = 0
        self._passes = 0

    # Producer side: any thread.

    def defer(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue ``fn(*args)`` to run on the loop thread; callable from any thread, never blocks.

        Raises DeferClosed once ``close()`` has begun. The lock is held across the send so that
        ``close()`` cannot shut the socket between our check of ``_closed`` and the write.
        """
        with self._lock:
            if self._closed:
                raise DeferClosed("DeferQueue is closed: its loop thread has stopped")
            self._jobs.append((fn, args))
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    self._wsock.send(b"\x00")
                    self._wakeups_sent += 1
                except BlockingIOError:
                    pass  # The buffer is full, so unread bytes are there: the loop will wake anyway.

    # Consumer side: the loop thread only.

    def attach(self, loop: AbstractEventLoop) -> None:
        """Start consuming on ``loop``; call on the thread that runs ``loop`` (add_reader is not thread-safe).

        Jobs deferred before ``attach`` already left a byte in the socket, so they run on the
        loop's first iteration.
        """
        if self._closed:
            raise DeferClosed("cannot attach a closed DeferQueue")
        if self._loop is not None:
            raise RuntimeError("DeferQueue is already attached to a loop")
        loop.add_reader(self._rsock.fileno(), self.run_pending)
        self._loop = loop
        self._owner = threading.current_thread()

    def run_pending(self) -> int:
        """Run one bounded pass (drain, re-arm, snapshot, run); return the number of jobs run.

        The loop calls this when the socket is readable. Tests and tools without a loop may call it
        directly, but only from the one thread that consumes this queue.
        """
        n = self._begin_pass()
        # Counted when the pass starts, once per pass rather than once per job: this is the hot loop.
        self._passes += 1
        self._jobs_run += n
        jobs = self._jobs
        for _ in range(n):
            fn, args = jobs.popleft()
            try:
                fn(*args)
            except Exception:
                # One faulty job must not take down the queue (and with it every connection of the loop).
                logger.exception("Exception in deferred call %r", fn)
        return n

    def close(self) -> None:
        """Refuse further defers, run what is still queued, and release the socketpair. Idempotent.

        When attached, call this on the loop thread: it runs jobs and removes the reader there.
        """
        if self._loop is not None and threading.current_thread() is not self._owner:
            raise RuntimeError("DeferQueue.close() must run on the thread of the loop it is attached to")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # No defer can append any more, so the queue only shrinks; jobs that try to defer get DeferClosed.
        while self._jobs:
            self.run_pending()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._rsock.fileno())
        self._rsock.close()
        self._wsock.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` has begun; from then on ``defer`` raises DeferClosed."""
        return self._closed

    def statistics(self) -> DeferStatistics:
        """Return the counters as an immutable snapshot; safe from any thread."""
        with self._lock:
            return DeferStatistics(
                queued=len(self._jobs),
                wakeups_sent=self._wakeups_sent,
                wakeups_received=self._wakeups_received,
                jobs_run=self._jobs_run,
                passes=self._passes,
                closed=self._closed,
            )

    def _begin_pass(self) -> int:
        """Drain, THEN re-arm, THEN snapshot; the order is what prevents lost wake-ups (see the banner)."""
        self._drain()
        with self._lock:
            self._wake_pending = False
            return len(self._jobs)

    def _drain(self) -> None:
        """Read every wake-up byte in the socket, before the re-arm, so none outlives this pass.

        One ``recv_into`` suffices: on a stream socket it returns everything buffered, and the tiny
        buffers hold far less than ``_DRAIN_SIZE``. Looping until BlockingIOError, as trio does,
        would cost a second syscall and an exception on every pass. A byte that still arrives after
        this ``recv`` was sent by a producer that found the flag clear, so it belongs to the next
        pass anyway; at worst it causes one empty pass, never a lost wake-up.
        """
        try:
            self._wakeups_received += self._rsock.recv_into(self._drain_buf)
        except OSError:
            pass  # BlockingIOError: a spurious wake-up, nothing to read. Otherwise closed by close().
