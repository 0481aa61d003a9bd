"""One HTTP/1.1 connection on httptools: framing, limits, pipelining, pause and resume.

Theory of operation
-------------------
1. **Ownership.** An :class:`HttpConnection` is created on the loop thread that accepted it
   and is touched only there: its transport, its parser, its queues and its state. Other
   threads reach it only through :class:`Ticket`, whose methods ``defer`` onto the owning loop.
2. **One request answered at a time.** httptools (llhttp) cannot be paused inside a buffer,
   so complete requests that arrive pipelined are parsed ahead into the ready queue and
   answered strictly in order. Parse-ahead is bounded (flow_control.py). Bytes are fed in
   slices, and once ``max_pipelined_requests`` requests wait, further bytes stay raw in the
   stash and reading pauses at ``read_high_water``. Memory per connection is therefore
   bounded whatever the client sends.
3. **Pause.** A handler that cannot answer at once calls :meth:`Request.pause`, gets a
   :class:`Ticket` and hands it to another thread. The connection keeps reading (bounded) so
   that a client that goes away is noticed and the ticket is cancelled. When the reply comes
   back through ``defer`` it is written here. A pipelined request waiting behind it is taken
   up on a later loop iteration (``FlowControl.schedule_resume``, a ``call_soon``), as
   libevhtp's resume event does; with nothing waiting, reading resumes at once.
4. **Limits are counted, not inferred.** llhttp gives strict framing and nothing else. Sizes
   are counted in the callbacks, into the connection's :class:`RequestCycle`. Deadlines are
   checked by the loop thread's tick (:meth:`check_deadlines`, deadlines.py), so a slow or
   hostile client is closed in bounded time.
5. **State is three enums, not flags** (connection_state.py): Lifecycle, Phase and Answer.
   Each is written only by its ``_set_*`` method, which checks the move against its table.
   The current request and its ticket are object references beside them. A ticket is live
   while it ``is`` ``_ticket``, and ``_ticket`` is cleared when the reply is written.

Hot path. The only state a keep-alive request allocates is its :class:`Request`; the
RequestCycle is reset, not replaced. Enum members are read from module constants, because an
``Enum.MEMBER`` attribute read costs about as much as the table check itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from evserve.protocol.http import CONTINUE_100, LAST_CHUNK, chunk, response_head
from evserve.server import log as server_log
from evserve.server import trace
from evserve.server.connection_state import (
    ANSWER_ALLOWED,
    LIFECYCLE_ALLOWED,
    PHASE_ALLOWED,
    Answer,
    IllegalTransition,
    Lifecycle,
    Phase,
)
from evserve.server.deadlines import Deadlines, Expired
from evserve.server.exchange import Handler, Request, Response, Ticket
from evserve.server.flow_control import FlowControl
from evserve.server.request_cycle import (
    CloseEntry,
    ErrorEntry,
    HeadTooLarge,
    QueueMarker,
    Reject,
    RequestCycle,
    rejection_for,
    too_large,
)
from evserve.server.stream_window import StreamWindow

if TYPE_CHECKING:
    from evserve.server.config import Limits
    from evserve.server.loop_thread import LoopThread

__all__ = ["HttpConnection", "Phase"]

log = logging.getLogger("evserve.server")

# Feeding the parser in slices bounds how many pipelined requests one read can produce.
_SLICE = 4096
# nginx lingering_timeout-style bound on reading and discarding after a final reply.
_LINGER_SECONDS = 2.0

_OPEN, _DRAINING, _CLOSING, _LINGERING, _CLOSED = Lifecycle  # unpacked in definition order
_HEAD, _BODY, _PHASE_IDLE, _FAILED = Phase.HEAD, Phase.BODY, Phase.IDLE, Phase.FAILED
_ANSWER_IDLE, _HANDLING, _PAUSED, _STREAMING = Answer.IDLE, Answer.HANDLING, Answer.PAUSED, Answer.STREAMING
_PEER_GONE, _SEND, _READ = Expired.PEER_GONE, Expired.SEND, Expired.READ
# The methods llhttp knows that a client is likely to send, decoded once.
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}


class HttpConnection(asyncio.Protocol):
    """The httptools callback object and asyncio protocol of one socket."""

    def __init__(
        self,
        owner: LoopThread,
        handler: Handler,
        limits: Limits,
        *,
        on_close: Callable[[HttpConnection], None] | None = None,
    ) -> None:
        # Per-connection state
        self.owner = owner
        self._handler = handler
        self._limits = limits
        self._on_close = on_close
        self._loop = owner.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._lifecycle = _OPEN
        self._phase = _HEAD
        self._answer = _ANSWER_IDLE
        self._flow = FlowControl(
            self._loop, self._resume, high_water=limits.read_high_water, max_ready=limits.max_pipelined_requests
        )
        self._deadlines = Deadlines(self._loop, limits)
        self._current: Request | None = None  # the request being answered (Answer is not IDLE)
        self._ticket: Ticket | None = None  # its live ticket (Answer is PAUSED or STREAMING)
        self._linger: asyncio.TimerHandle | None = None  # the bound on a lingering close
        self._seq = 0
        self._served = 0
        # Raw head bytes fed since the last head completed; httptools joins a header's pieces
        # before calling back, so this is what bounds what it can accumulate.
        self._head_fed = 0
        self._head_cap = limits.max_request_line + limits.max_header_block + _SLICE

        # Per-request state (the request being parsed)
        self._cycle = RequestCycle()

    # ------------------------------------------------------------------ state

    @property
    def lifecycle(self) -> Lifecycle:
        return self._lifecycle

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def answer(self) -> Answer:
        return self._answer

    def _set_lifecycle(self, new: Lifecycle) -> None:
        if not LIFECYCLE_ALLOWED[self._lifecycle] >> new & 1:
            raise IllegalTransition(self._lifecycle, new)
        self._lifecycle = new

    def _set_phase(self, new: Phase) -> None:
        """Move the parse phase; the phase clock (the read deadline's start) restarts with it."""
        if not PHASE_ALLOWED[self._phase] >> new & 1:
            raise IllegalTransition(self._phase, new)
        self._phase = new
        self._deadlines.phase_since = self._loop.time()

    def _set_answer(self, new: Answer) -> None:
        if not ANSWER_ALLOWED[self._answer] >> new & 1:
            raise IllegalTransition(self._answer, new)
        self._answer = new

    # ------------------------------------------------------------------ transport interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by the loop once the accepted socket is attached to this protocol."""
        self._transport = transport  # type: ignore[assignment]
        self._flow.attach(transport)  # type: ignore[arg-type]
        # The head deadline runs from accept.
        self._deadlines.phase_since = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by the loop when the socket is closed, by either side."""
        self._set_lifecycle(_CLOSED)
        self._transport = None
        self._flow.detach()
        if self._linger is not None:
            self._linger.cancel()
        if self._ticket is not None:
            # The client left while its request was with a worker: Triton issue 7077.
            self._ticket.cancel()
        if self._on_close is not None:
            self._on_close(self)

    def eof_received(self) -> bool | None:
        """The client half-closed. Finish what is in flight, then close (returning False closes)."""
        if self._lifecycle is _LINGERING:
            return False
        if self._answer is _ANSWER_IDLE and not self._flow.ready:
            return False
        if self._ticket is not None:
            # The client left while its request was with a worker: close, which cancels the ticket.
            return False
        # Keep the transport open to write the reply now owed; DRAINING makes it the last.
        if self._lifecycle is _OPEN:
            self._set_lifecycle(_DRAINING)
        return True

    def pause_writing(self) -> None:
        """The transport's write buffer passed its high-water mark: stop producing replies."""
        self._flow.pause_writing()
        window = self._ticket.window if self._ticket is not None else None
        if window is not None:
            window.block()  # a streaming model waits in send() until the client reads

    def resume_writing(self) -> None:
        """The transport's write buffer drained below its low-water mark: take up the queue again."""
        self._flow.resume_writing()
        window = self._ticket.window if self._ticket is not None else None
        if window is not None:
            window.unblock()
        self._schedule_resume()

    def data_received(self, data: bytes) -> None:
        if self._lifecycle >= _CLOSING or self._phase is _FAILED:
            return
        flow = self._flow
        if flow.stash or len(flow.ready) >= flow.max_ready:
            flow.keep(data)
            return
        if len(data) <= _SLICE and self._phase is not _BODY:
            self._feed_piece(data, in_body=False)  # the usual read: one slice, no slicing
        else:
            self._feed(memoryview(data))
        self._dispatch()

    # ------------------------------------------------------------------ feeding the parser

    def _feed(self, data: memoryview) -> None:
        """Feed ``data`` in slices until it is used up or enough requests wait; keep the rest."""
        flow = self._flow
        ready = flow.ready
        offset = 0
        total = len(data)
        while offset < total and self._phase is not _FAILED:
            if len(ready) >= flow.max_ready:
                flow.keep(data[offset:])
                return
            cycle = self._cycle
            in_body = self._phase is _BODY
            if in_body and cycle.body_remaining is not None:
                piece = data[offset : offset + cycle.body_remaining + _SLICE]
            else:
                # Chunked bodies go in small slices too: the chunk-extension check allows one slice of
                # slack (it may hold the next request's bytes), so the slice bounds the overshoot.
                piece = data[offset : offset + _SLICE]
            offset += len(piece)
            if not self._feed_piece(piece, in_body=in_body):
                return

    def _feed_piece(self, piece: bytes | memoryview, *, in_body: bool) -> bool:
        """Feed one slice, counting it against the head or body bounds; False once parsing failed."""
        try:
            if in_body:
                self._cycle.body_fed += len(piece)
            else:
                self._head_fed += len(piece)
                if self._head_fed > self._head_cap:
                    raise HeadTooLarge
            self._parser.feed_data(piece)
            if self._phase is _BODY and self._cycle.chunked:
                # Chunked bodies are fed in _SLICE pieces, so one slice is the slack.
                self._cycle.check_extensions(self._limits, _SLICE)
        except (Reject, HeadTooLarge, httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._reject_after_queue(rejection_for(exc))
            return False
        return True

    def _reject_after_queue(self, reject: Reject | None) -> None:
        """Stop parsing, and queue the error (or a close) behind the requests already parsed.

        The requests parsed before the error are answered in order, as nginx does; the error
        reply (or the close) comes last, in its turn, and it alone says Connection: close.
        """
        self._set_phase(_FAILED)
        flow = self._flow
        flow.stash.clear()
        flow.pause_reading()
        flow.ready.append(ErrorEntry(self, reject) if reject is not None else CloseEntry(self, -1))

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._seq += 1
        req = Request(self, self._seq)
        if trace.TRACING:
            req.recv_start = time.monotonic_ns()
        self._cycle.begin(req)
        if self._phase is _PHASE_IDLE:
            self._set_phase(_HEAD)

    def on_url(self, url: bytes) -> None:
        target = self._cycle.url
        target += url
        if len(target) > self._limits.max_request_line:
            raise Reject(414, "URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools joins split names and values before calling this.
        cycle = self._cycle
        limits = self._limits
        size = len(name) + len(value)
        cycle.header_count += 1
        cycle.head_bytes += size + 4
        if size > limits.max_header_field:
            raise Reject(431, "Request Header Fields Too Large: a header field is too large")
        if cycle.header_count > limits.max_headers:
            raise Reject(431, "Request Header Fields Too Large: too many header fields")
        if cycle.head_bytes > limits.max_header_block:
            raise Reject(431, "Request Header Fields Too Large: the header block is too large")
        # Recorded here (headers in order, first values indexed, repeats noted) for every header.
        req = cycle.request
        assert req is not None
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        req.headers.append((key, text))
        fields = req.fields
        if key in fields:
            req.add_repeated(key)
        else:
            fields[key] = text

    def on_headers_complete(self) -> None:
        cycle = self._cycle
        req = cycle.request
        assert req is not None
        parser = self._parser
        req.version = parser.get_http_version()
        method = parser.get_method()
        req.method = _METHODS.get(method) or method.decode("ascii", "replace")
        req.keep_alive = parser.should_keep_alive()
        cycle.head_complete(req, self._limits)
        if cycle.expect_continue:
            self._send_continue_if_turn()
        self._head_fed = 0
        if cycle.chunked or cycle.body_remaining:
            now = self._loop.time()
            cycle.body_started = now
            cycle.last_body = now
            self._set_phase(_BODY)

    def on_body(self, body: bytes) -> None:
        cycle = self._cycle
        if cycle.chunked:
            cycle.check_chunk_count(self._limits)
        cycle.body_got += len(body)
        cycle.last_body = self._loop.time()
        if cycle.body_remaining is not None:
            cycle.body_remaining -= len(body)
        if cycle.body_got > self._limits.max_input_size:
            raise too_large(cycle.body_got, self._limits)
        cycle.body += body

    def on_chunk_header(self) -> None:
        cycle = self._cycle
        cycle.chunks += 1
        cycle.check_extensions(self._limits, _SLICE)

    def on_message_complete(self) -> None:
        cycle = self._cycle
        req = cycle.request
        assert req is not None
        if trace.TRACING:
            req.recv_end = time.monotonic_ns()
        cycle.request = None  # the ready queue owns it now
        cycle.expect_continue = False  # the whole body is here: no 100 Continue is owed any more
        ready = self._flow.ready
        if self._served + len(ready) + 1 >= self._limits.max_requests_per_connection:
            req.keep_alive = False
        ready.append(req)
        self._head_fed = 0
        self._set_phase(_PHASE_IDLE)

    # ------------------------------------------------------------------ answering requests

    def _send_continue_if_turn(self) -> None:
        """100 Continue goes out only when this request is next to be answered (order on the wire)."""
        cycle = self._cycle
        if cycle.expect_continue and self._answer is _ANSWER_IDLE and not self._flow.ready and self._transport:
            cycle.expect_continue = False
            self._transport.write(CONTINUE_100)
            # The client sends the body only now: its clock starts here.
            cycle.last_body = cycle.body_started = self._loop.time()

    def _dispatch(self) -> None:
        """Answer queued requests in order until one is paused or the queue is empty."""
        flow = self._flow
        ready = flow.ready
        while self._answer is _ANSWER_IDLE and ready and self._lifecycle < _CLOSING and not flow.write_paused:
            req = ready.popleft()
            self._current = req
            self._set_answer(_HANDLING)
            if isinstance(req, QueueMarker):
                if isinstance(req, ErrorEntry):
                    self._write(Response.error(req.reject.status, req.reject.message, ()), close=True)
                else:
                    self._close()
                return
            self.owner.requests += 1
            try:
                response = self._handler(req)
            except Exception:
                log.exception("handler failed for %s %s", req.method, req.path)
                response = Response.error(500, "Internal Server Error")
            if response is None:
                if self._ticket is None:
                    log.error("handler for %s returned no response and did not pause", req.path)
                    self._write(Response.error(500, "Internal Server Error"), close=False)
                return
            self._write(response, close=False)
        self._after_dispatch()

    def _after_dispatch(self) -> None:
        if self._lifecycle >= _CLOSING:
            return
        flow = self._flow
        if self._answer is _ANSWER_IDLE and not flow.ready:
            if self._lifecycle is _DRAINING and self._cycle.request is None:
                self._close()  # nothing owed, nothing half-received: the stop can close it
                return
            if self._cycle.expect_continue:
                self._send_continue_if_turn()
            if flow.stash:
                # Kept bytes hold more requests: take them up on a later iteration.
                self._schedule_resume()
        if flow.read_paused and self._phase is not _FAILED:
            flow.resume_reading_if_room()

    def _write(self, response: Response, *, close: bool) -> None:
        """Write a complete reply for ``_current`` (on the owning thread only).

        The request and its ticket are forgotten first, so a second reply for them finds
        nothing to answer, even when the transport is already gone.
        """
        self.owner.assert_owner()
        req = self._current
        transport = self._transport
        self._current = None
        self._ticket = None
        self._set_answer(_ANSWER_IDLE)
        if transport is None or transport.is_closing():
            return
        keep_alive = not (close or response.close) and self._lifecycle is _OPEN
        if keep_alive and self._phase is _FAILED:
            # Parsing stopped: the reply right before a silent close (an Upgrade) says so.
            ready = self._flow.ready
            keep_alive = not (ready and type(ready[0]) is CloseEntry)
        if req is not None and not req.keep_alive:
            keep_alive = False
        headers = response.headers
        heads = response.heads
        if keep_alive and req is not None and req.version == "1.0":
            headers = [*headers, ("Connection", "keep-alive")]
            heads = None
        head = heads.get(keep_alive) if heads is not None else None
        if head is None:
            head = response_head(response.status, headers, content_length=response.body_length, keep_alive=keep_alive)
            if heads is not None:
                heads[keep_alive] = head
        traced = req.trace if req is not None else None
        if traced is not None:
            traced.mark("HTTP_SEND_START")
        if req is not None and req.method == "HEAD":
            transport.write(head)
        else:
            transport.writelines([head, *response.buffers])
        if traced is not None:
            traced.mark("HTTP_SEND_END")
            traced.done()
        if server_log.ACCESS_LOG and req is not None:
            server_log.log_access(req.method, req.path, req.version, response.status, response.body_length)
        self._served += 1
        self._deadlines.restart(self._phase, self._cycle)
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        """Begin the close: at once when nothing is unread, lingering otherwise (once only)."""
        if self._lifecycle >= _CLOSING:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            self._set_lifecycle(_CLOSING)
            return
        flow = self._flow
        unread = self._phase is _FAILED or bool(flow.stash or flow.ready) or self._cycle.request is not None
        if not unread or not transport.can_write_eof():
            self._set_lifecycle(_CLOSING)
            transport.close()
            return
        # Lingering close (nginx lingering_close): closing a socket with unread input makes the
        # kernel send an RST that destroys the replies not yet delivered. Send FIN, read and
        # discard what the client still sends, close on its EOF or after a bound.
        self._set_lifecycle(_LINGERING)
        flow.discard_input()
        transport.write_eof()
        flow.resume_reading()
        self._linger = self._loop.call_later(_LINGER_SECONDS, transport.close)

    # ------------------------------------------------------------------ pause / resume

    def _pause(self, req: Request) -> Ticket:
        """Request.pause(): hand out the one ticket of the request being answered."""
        self.owner.assert_owner()
        if req is not self._current or self._answer is not _HANDLING:
            raise RuntimeError("only the request being answered can be paused, once")
        self._ticket = Ticket(self, req._seq)
        self._set_answer(_PAUSED)
        return self._ticket

    def _finish_ticket(self, ticket: Ticket, response: Response) -> None:
        """Ticket.finish(), run on the owning loop.

        A ticket that is not ``_ticket`` was answered already, or belongs to an earlier request.
        A lost transport means its client left. Either way the reply is dropped.
        """
        if ticket is not self._ticket or self._transport is None:
            return
        if self._answer is _STREAMING:
            # A complete reply cannot follow a chunked head: end the stream and close instead.
            log.error("a ticket finished with a complete reply after starting a stream; closing")
            self._stream_end(ticket)
            self._close()
            return
        self._write(response, close=False)
        flow = self._flow
        if flow.ready or flow.stash:
            self._schedule_resume()  # more requests wait: take them up on a later iteration
        elif self._lifecycle < _CLOSING and not flow.write_paused:
            self._after_dispatch()  # what _resume would do with nothing queued, without a loop hop

    def _open_window(self) -> StreamWindow:
        """Ticket.open_window(): the stream's window, held shut while the transport is already full."""
        window = StreamWindow(self._limits.stream_buffer_size)
        if self._flow.write_paused:
            window.block()
        return window

    def _stream_start(self, ticket: Ticket, status: int, headers: list[tuple[str, str]]) -> None:
        if ticket is not self._ticket or self._transport is None or self._answer is not _PAUSED:
            return
        self.owner.assert_owner()
        self._set_answer(_STREAMING)
        req = self._current
        # A live ticket means no close has begun (connection_state.py, rule 4), so only DRAINING
        # can forbid keep-alive here.
        keep_alive = bool(req and req.keep_alive) and self._lifecycle is not _DRAINING
        head = response_head(status, headers, content_length=None, keep_alive=keep_alive)
        if req is not None and req.trace is not None:
            req.trace.mark("HTTP_SEND_START")
        self._transport.write(head)

    def _stream_chunk(self, ticket: Ticket, data: bytes) -> None:
        window = ticket.window
        if window is not None:
            window.release(len(data))  # out of the queue: into the transport's buffer, or dropped
        if ticket is self._ticket and self._answer is _STREAMING and self._transport is not None:
            self.owner.assert_owner()
            if self._current is not None and self._current.method == "HEAD":
                return
            self._transport.writelines(chunk(data))

    def _stream_end(self, ticket: Ticket) -> None:
        transport = self._transport
        if ticket is not self._ticket or self._answer is not _STREAMING or transport is None:
            return
        self.owner.assert_owner()
        if ticket.window is not None:
            ticket.window.close()
        req = self._current
        self._current = None
        self._ticket = None
        self._set_answer(_ANSWER_IDLE)
        if req is None or req.method != "HEAD":
            transport.write(LAST_CHUNK)
        if req is not None and req.trace is not None:
            req.trace.mark("HTTP_SEND_END")
            req.trace.done()
        self._served += 1
        self._deadlines.restart(self._phase, self._cycle)
        if req is None or not req.keep_alive or self._lifecycle is _DRAINING:
            self._close()
            return
        self._schedule_resume()

    def _schedule_resume(self) -> None:
        if self._lifecycle < _CLOSING:
            self._flow.schedule_resume()

    def _resume(self) -> None:
        """Take up the next request: feed kept bytes, answer what is queued (libevhtp's resumecb)."""
        flow = self._flow
        if self._lifecycle >= _CLOSING or flow.write_paused:
            return
        if flow.stash and len(flow.ready) < flow.max_ready and self._phase is not _FAILED:
            self._feed(memoryview(flow.take_stash()))
        self._dispatch()

    # ------------------------------------------------------------------ deadlines and shutdown

    @property
    def closed(self) -> bool:
        return self._lifecycle is _CLOSED

    @property
    def busy(self) -> bool:
        return self._answer is not _ANSWER_IDLE or bool(self._flow.ready) or self._cycle.request is not None

    def check_deadlines(self, now: float) -> None:
        """Called by the loop thread's tick: enforce the head, body, keep-alive and send deadlines."""
        expired = self._deadlines.check(
            now,
            self._phase,
            self._cycle,
            self._flow,
            self._transport,
            paused=self._ticket is not None,
            owed=self._lifecycle >= _CLOSING or self._answer is not _ANSWER_IDLE or bool(self._flow.ready),
        )
        if expired is None:
            return
        if expired is _PEER_GONE:
            assert self._ticket is not None
            self._ticket.cancel()
            self.abort()
        elif expired is _SEND:
            # nginx send_timeout: a client that stops reading its replies does not hold them forever.
            self.abort()
        elif expired is _READ:
            self._timeout()
        else:
            self._close()

    def _timeout(self) -> None:
        self._set_phase(_FAILED)
        self._current = ErrorEntry(self, Reject(408, "Request Timeout"))
        self._set_answer(_HANDLING)
        self._write(Response.error(408, "Request Timeout"), close=True)

    def begin_drain(self) -> None:
        """Server stop: close at once if idle, else after the reply now owed."""
        if self._lifecycle is _OPEN:
            self._set_lifecycle(_DRAINING)
        if not self.busy:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
