"""The hand-off contract between the HTTP layer and the rest of evserve: Request, Response, Ticket.

A handler receives a :class:`Request` on the loop thread that owns its connection. It either
returns a :class:`Response` at once, or calls :meth:`Request.pause` and hands the returned
:class:`Ticket` to another thread; whatever that thread does, the ticket's methods defer the
reply back to the owning loop, which alone writes to the connection. This is Triton's
InferRequestClass plus evthr_defer, without the off-loop buffer writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evserve.protocol.errors import error_body
from evserve.server.defer import DeferClosed
from evserve.server.loop_thread import current_loop_thread
from evserve.server.stream_window import StreamWindow

if TYPE_CHECKING:
    from evserve.server.connection import HttpConnection
    from evserve.server.loop_thread import LoopThread
    from evserve.server.trace import Trace


class Response:
    """A complete reply: status, headers and body buffers (written with one writelines).

    A reply is never changed once built. A ``shared`` one (health, server metadata) is built
    once and written many times, so the connection keeps its encoded heads in ``heads``.
    """

    __slots__ = ("status", "headers", "buffers", "close", "heads")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        buffers: list[bytes | memoryview] | None = None,
        *,
        close: bool = False,
        shared: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.buffers = buffers if buffers is not None else []
        self.close = close
        # Encoded heads by keep-alive, for shared replies only; None means "build each time".
        self.heads: dict[bool, bytes] | None = {} if shared else None

    @classmethod
    def error(cls, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, [("Content-Type", "application/json"), *headers], [error_body(message)])

    @property
    def body_length(self) -> int:
        buffers = self.buffers
        if len(buffers) == 1 and type(buffers[0]) is bytes:
            return len(buffers[0])
        return sum(b.nbytes if isinstance(b, memoryview) else len(b) for b in buffers)


# Shared by every request that repeats no header (the usual case); never mutated.
_NONE_REPEATED: set[str] = frozenset()  # type: ignore[assignment]


class Request:
    """One parsed request. Owned by its connection's loop thread until paused."""

    __slots__ = (
        "method", "path", "query", "version", "headers", "fields", "repeated", "body", "keep_alive", "_conn", "_seq",
        "trace", "recv_start", "recv_end",
    )

    def __init__(self, conn: HttpConnection, seq: int) -> None:
        self._conn = conn
        self._seq = seq
        self.method = ""
        self.path = ""
        self.query = ""
        self.version = "1.1"
        # Lower-cased names, values as sent (latin-1), in arrival order.
        self.headers: list[tuple[str, str]] = []
        # The first value of each name (what header() answers), and the names sent more than once.
        self.fields: dict[str, str] = {}
        self.repeated: set[str] = _NONE_REPEATED
        self.body = bytearray()
        self.keep_alive = True
        # Set only for a request that tracing sampled (server/trace.py), with its receive times.
        self.trace: Trace | None = None
        self.recv_start = 0
        self.recv_end = 0

    def add_repeated(self, name: str) -> None:
        """Note that header ``name`` was sent more than once."""
        if self.repeated is _NONE_REPEATED:
            self.repeated = set()
        self.repeated.add(name)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        return self.fields.get(name)

    def header_count(self, name: str) -> int:
        if name not in self.repeated:
            return 1 if name in self.fields else 0
        return sum(1 for key, _ in self.headers if key == name)

    @property
    def owner(self) -> LoopThread:
        return self._conn.owner

    def pause(self) -> Ticket:
        """Pause this request's connection and return the ticket that will answer it.

        Call on the owning loop thread, from the handler; then return None from the handler.
        """
        return self._conn._pause(self)


class Ticket:
    """The hand-off of a paused request to another thread (Triton's InferRequestClass).

    Every method may be called from any thread. Each one defers onto the owning loop, so the
    reply is written by the thread that owns the connection, in the order the calls were
    made. A ticket whose client has gone away reports ``cancelled()``; its reply is dropped.

    Whether the ticket is still live is the connection's to know, not the ticket's. The
    connection answers a ticket only while it ``is`` the one it handed out for the request being
    answered, and it forgets it once the reply is written. So a second ``finish()``, or an
    ``end()`` after the stream ended, reaches a connection that no longer knows the ticket and
    is dropped.
    """

    __slots__ = ("_conn", "_seq", "_cancelled", "window")

    def __init__(self, conn: HttpConnection, seq: int) -> None:
        self._conn = conn
        self._seq = seq
        self._cancelled = False
        # The back-pressure of a streamed reply (stream_window.py); None for a complete reply.
        self.window: StreamWindow | None = None

    @property
    def owner(self) -> LoopThread:
        return self._conn.owner

    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Mark the ticket cancelled: no one is left to answer, so its work may stop and its reply is dropped.

        The connection calls it on its loop thread when the client goes away (Triton issue 7077).
        The ticket calls it itself when the owning loop has stopped. It is one attribute store,
        so a worker on another thread sees it at its next ``cancelled()``. Cancelling twice is
        harmless.
        """
        self._cancelled = True
        window = self.window
        if window is not None:
            window.close()  # a producer waiting for room wakes up, and sends nothing more

    def finish(self, response: Response) -> None:
        """Send the complete reply and resume the connection."""
        conn = self._conn
        try:
            conn.owner.defer(conn._finish_ticket, self, response)
        except DeferClosed:
            self._cancelled = True  # as _defer: the loop has stopped, no one is left to answer

    def open_window(self) -> StreamWindow:
        """Bound what this ticket's stream may buffer (``--http-stream-buffer-size``); on the owning loop.

        Called by the handler before the ticket leaves the loop thread, so a client that goes away
        at any later moment finds the window and closes it (``cancel``).
        """
        self._conn.owner.assert_owner()
        self.window = self._conn._open_window()
        return self.window

    def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Start a chunked reply (for streams such as SSE); follow with send() and end()."""
        self._defer(self._conn._stream_start, self, status, headers)

    def send(self, data: bytes) -> bool:
        """Queue one chunk of the stream; False (and nothing sent) once the client has gone.

        With a window open, this waits while the stream's buffered bytes are at their bound: the
        caller is a model's thread, so the model's ``send`` waits for a slow reader instead of
        the server buffering without limit. On a loop thread it never waits (that would stall
        the very loop that drains the buffer).
        """
        if self._cancelled:
            return False
        window = self.window
        if window is not None and not window.acquire(len(data), wait=current_loop_thread() is None):
            return False
        self._defer(self._conn._stream_chunk, self, data)
        return True

    def end(self) -> None:
        self._defer(self._conn._stream_end, self)

    def _defer(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._conn.owner.defer(fn, *args)
        except DeferClosed:
            # The loop has stopped: its connections are gone, so there is no one to answer.
            self.cancel()


Handler = Callable[[Request], "Response | None"]
