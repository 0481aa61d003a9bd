"""Flow control for one connection: the bounded input buffers and the transport's two switches.

Three rules come from connection.py's Theory of operation (points 2 and 3):

* **Bounded parse-ahead.** At most ``max_ready`` complete requests wait in ``ready``. Bytes
  that arrive beyond them stay raw in ``stash``, and reading pauses once ``stash`` holds more
  than ``high_water``. A connection's memory is bounded whatever the client sends.
* **A client that does not read its replies gets no more of its requests read.** When the
  transport's write buffer passes its high-water mark, reading pauses too.
* **Resume later, not inline** (libevhtp's resumecb). The next request is taken up by a
  ``call_soon`` callback, at most one at a time. A reply written from a deferred job therefore
  never starts the next handler inside that job.

The switches mirror the transport (uvicorn's flow_control.py): ``pause_reading`` and
``resume_reading``, ``pause_writing`` and ``resume_writing`` do nothing when already in that
state. A caller therefore never needs to know who paused first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evserve.server.exchange import Request

__all__ = ["FlowControl"]


class FlowControl:
    """The ready queue, the stash and the read/write switches of one transport (owning loop only)."""

    __slots__ = (
        "_loop",
        "_transport",
        "_resume",
        "_resume_handle",
        "high_water",
        "max_ready",
        "ready",
        "stash",
        "read_paused",
        "write_paused",
        "write_paused_since",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, resume: Callable[[], None], *, high_water: int, max_ready: int
    ) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._resume = resume
        self._resume_handle: asyncio.Handle | None = None  # set while a resume is scheduled
        self.high_water = high_water
        self.max_ready = max_ready
        self.ready: deque[Request] = deque()  # complete requests waiting their turn
        self.stash = bytearray()  # raw bytes not yet fed to the parser
        self.read_paused = False
        self.write_paused = False
        self.write_paused_since = 0.0

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def detach(self) -> None:
        """The transport is gone: drop what was kept and any resume still scheduled."""
        self._transport = None
        self.ready.clear()
        self.stash.clear()
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None

    # ------------------------------------------------------------------ input buffers

    def keep(self, data: bytes | memoryview) -> None:
        """Keep ``data`` unparsed; pause reading once more than ``high_water`` bytes are kept."""
        self.stash += data
        if len(self.stash) > self.high_water:
            self.pause_reading()

    def take_stash(self) -> bytes:
        kept = bytes(self.stash)
        self.stash.clear()
        return kept

    def discard_input(self) -> None:
        """Forget every kept byte and queued request (a close with input unread)."""
        self.stash.clear()
        self.ready.clear()

    # ------------------------------------------------------------------ reading

    def pause_reading(self) -> None:
        transport = self._transport
        if not self.read_paused and transport is not None and not transport.is_closing():
            self.read_paused = True
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._transport
        if self.read_paused and transport is not None and not transport.is_closing():
            self.read_paused = False
            transport.resume_reading()

    def resume_reading_if_room(self) -> None:
        """Resume reading unless writing is paused or a bound is still reached."""
        if not self.write_paused and len(self.stash) <= self.high_water and len(self.ready) < self.max_ready:
            self.resume_reading()

    # ------------------------------------------------------------------ writing

    def pause_writing(self) -> None:
        """The write buffer passed its high-water mark: note when, and stop reading requests."""
        if not self.write_paused:
            self.write_paused = True
            self.write_paused_since = self._loop.time()
        self.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False

    # ------------------------------------------------------------------ resuming

    def schedule_resume(self) -> None:
        """Run the connection's resume on a later loop iteration (once, however often asked)."""
        if self._resume_handle is None:
            self._resume_handle = self._loop.call_soon(self._run_resume)

    def _run_resume(self) -> None:
        self._resume_handle = None
        self._resume()
