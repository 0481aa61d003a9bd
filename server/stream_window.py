"""Back-pressure for one streamed reply: how many of its bytes may wait for a slow reader.

A streaming model produces events on its own thread and the owning loop thread writes them.
Without a bound, a client that reads slowly (or not at all) makes the server hold every event
the model produces: the real Triton buffers them all (+278 MiB in ten seconds of a fast model
and a client that reads nothing). Here each stream has a window:

* the producer (a worker, the async runner, a process instance's reader: never a loop thread)
  calls :meth:`acquire` before it defers an event. It waits while the events deferred and not
  yet handed to the socket reach ``limit`` bytes, or while the transport's own buffer is over
  its high-water mark (``block``/``unblock``, from the protocol's pause/resume_writing);
* the loop thread calls :meth:`release` once it has written an event to the transport;
* :meth:`close` (the client went away, the stream ended) wakes every waiter for good: a
  producer never waits on a reader that is gone, and a closed window lets nothing through.

So a stream holds at most ``limit`` bytes of deferred events plus the transport's high-water
mark plus one event, whatever the client does. One event larger than the limit still goes
through when nothing else waits, so a big event cannot deadlock its stream.

Thread-safety: every field is read and written under the condition's lock, which makes the
class correct without the GIL (free-threaded CPython) as with it.
"""

from __future__ import annotations

import threading

__all__ = ["StreamWindow"]


class StreamWindow:
    """Bytes of one stream in flight between its producer and the socket, bounded by ``limit``."""

    __slots__ = ("limit", "_cond", "_pending", "_blocked", "_closed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._cond = threading.Condition(threading.Lock())
        self._pending = 0
        self._blocked = False
        self._closed = False

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    @property
    def closed(self) -> bool:
        return self._closed

    def acquire(self, size: int, *, wait: bool = True) -> bool:
        """Reserve ``size`` bytes, waiting for room if ``wait``; False once the window is closed.

        ``wait=False`` reserves at once whatever the room (for a caller that must not block,
        such as a loop thread); the bound then holds again from the next waiting producer on.
        """
        with self._cond:
            if wait:
                while not self._closed and (self._blocked or (self._pending and self._pending + size > self.limit)):
                    self._cond.wait()
            if self._closed:
                return False
            self._pending += size
            return True

    def release(self, size: int) -> None:
        """``size`` bytes left the queue for the transport (the owning loop thread calls this)."""
        with self._cond:
            self._pending -= size
            self._cond.notify_all()

    def block(self) -> None:
        """The transport's buffer passed its high-water mark: hold producers."""
        with self._cond:
            self._blocked = True

    def unblock(self) -> None:
        """The transport's buffer drained: let producers go on."""
        with self._cond:
            self._blocked = False
            self._cond.notify_all()

    def close(self) -> None:
        """No one will read any more: wake every producer, and refuse what they send from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
