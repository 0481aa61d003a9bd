"""One HTTP/1.1 connection on httptools: framing, limits, pipelining, pause and resume.

Theory of operation
-------------------
1. **Ownership.** An :class:`HttpConnection` is created on the loop thread that accepted it
   and is touched only there: its transport, its parser and its queues. Other threads reach
   it only through :class:`Ticket`, whose methods ``defer`` onto the owning loop.
2. **One request answered at a time.** httptools (llhttp) cannot be paused inside a buffer,
   so complete requests that arrive pipelined are parsed ahead into ``_ready`` and answered
   strictly in order. Parse-ahead is bounded: bytes are fed in slices, and once
   ``max_pipelined_requests`` requests wait, further bytes stay raw in ``_stash`` and reading
   pauses at ``read_high_water``. Memory per connection is therefore bounded whatever the
   client sends.
3. **Pause.** A handler that cannot answer at once calls :meth:`Request.pause`, gets a
   :class:`Ticket` and hands it to another thread. The connection keeps reading (bounded) so
   that a client that goes away is noticed and the ticket is marked cancelled. When the
   reply comes back through ``defer`` it is written here, and the next request is taken up
   on a later loop iteration (``call_soon``), as libevhtp's resume event does.
4. **Limits are counted, not inferred.** llhttp gives strict framing and nothing else; sizes
   are counted in the callbacks and deadlines are checked by the loop thread's tick
   (:meth:`check_deadlines`), so a slow or hostile client is closed in bounded time.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from evserve.protocol.http import CONTINUE_100, LAST_CHUNK, chunk, response_head
from evserve.server import log as server_log
from evserve.server.exchange import Handler, Request, Response, Ticket

if TYPE_CHECKING:
    from evserve.server.config import Limits
    from evserve.server.loop_thread import LoopThread

log = logging.getLogger("evserve.server")

# Feeding the parser in slices bounds how many pipelined requests one read can produce.
_SLICE = 4096
# Per-chunk framing that is not an extension: up to 16 hex digits and two CRLFs.
_CHUNK_FRAMING = 20
# tcpi_state values (linux/tcp.h): the peer reset (CLOSE) or sent its FIN (CLOSE_WAIT).
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8
# nginx lingering_timeout-style bound on reading and discarding after a final reply.
_LINGER_SECONDS = 2.0
# RFC 3986 authority characters (host, port, IPv6 brackets, userinfo is refused by omission of '@').
_VALID_HOST = re.compile(r"[A-Za-z0-9.\-_~%!$&'()*+,;=:\[\]]+")


class Phase(enum.Enum):
    """Where the connection is in its request cycle; decides which deadline applies."""

    HEAD = "head"  # waiting for or receiving a request head (head deadline)
    BODY = "body"  # receiving a body (idle gap and minimum rate)
    IDLE = "idle"  # between requests on a keep-alive connection (keep-alive timeout)


class _HeadTooLarge(Exception):
    """The raw bytes of a request head passed every limit before the parser finished it."""


class _Reject(Exception):
    """Raised inside a parser callback: answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpConnection(asyncio.Protocol):
    """The httptools callback object and asyncio protocol of one socket."""

    def __init__(
        self,
        owner: LoopThread,
        handler: Handler,
        limits: Limits,
        *,
        on_close: Callable[[HttpConnection], None] | None = None,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        # Per-connection state
        self.owner = owner
        self._handler = handler
        self._limits = limits
        self._on_close = on_close
        self._on_request = on_request
        self._loop = owner.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._ready: deque[Request] = deque()  # complete requests waiting their turn
        self._stash = bytearray()  # raw bytes not yet fed to the parser
        self._current: Request | None = None  # the request being answered
        self._ticket: Ticket | None = None
        self._streaming = False
        self._read_paused = False
        self._write_paused = False
        self._closing = False
        self._draining = False
        self._broken = False  # the parser failed: nothing more is parsed
        self._resume_scheduled = False
        self._linger: asyncio.TimerHandle | None = None
        self._write_paused_since = 0.0
        self._seq = 0
        self._served = 0
        self.phase = Phase.HEAD
        self._phase_since = self._loop.time()

        # Per-request state (the request being parsed)
        self._req: Request | None = None
        self._url = bytearray()
        self._field = bytearray()
        self._value = bytearray()
        self._header_count = 0
        self._head_bytes = 0
        self._head_fed = 0
        self._body_remaining: int | None = None
        self._chunked = False
        self._chunks = 0
        self._body_fed = 0
        self._body_got = 0
        self._body_started = 0.0
        self._last_body = 0.0
        self._expect_continue = False

    # ------------------------------------------------------------------ transport interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by the loop once the accepted socket is attached to this protocol."""
        self._transport = transport  # type: ignore[assignment]
        self._set_phase(Phase.HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by the loop when the socket is closed, by either side."""
        self._closing = True
        self._transport = None
        if self._linger is not None:
            self._linger.cancel()
        if self._ticket is not None:
            # The client left while its request was with a worker: Triton issue 7077.
            self._ticket._cancelled = True
        self._ready.clear()
        self._stash.clear()
        if self._on_close is not None:
            self._on_close(self)

    def eof_received(self) -> bool | None:
        """The client half-closed. Finish what is in flight, then close (returning False closes)."""
        if self._linger is not None:
            return False
        if self._current is None and not self._ready:
            return False
        if self._ticket is not None:
            # The client left while its request was with a worker: close, which cancels the ticket.
            return False
        # Keep the transport open to write the pending replies; close after the last one.
        self._draining = True
        return True

    def pause_writing(self) -> None:
        """The transport's write buffer passed its high-water mark: stop producing replies."""
        self._write_paused = True
        self._write_paused_since = self._loop.time()
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._schedule_resume()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._broken:
            return
        if self._stash or len(self._ready) >= self._limits.max_pipelined_requests:
            self._keep(data)
            return
        self._feed(memoryview(data))
        self._dispatch()

    # ------------------------------------------------------------------ feeding the parser

    def _keep(self, data: bytes | memoryview) -> None:
        self._stash += data
        if len(self._stash) > self._limits.read_high_water:
            self._pause_reading()

    def _feed(self, data: memoryview) -> None:
        """Feed ``data`` in slices until it is used up or enough requests wait; keep the rest."""
        offset = 0
        total = len(data)
        while offset < total and not self._broken:
            if len(self._ready) >= self._limits.max_pipelined_requests:
                self._keep(data[offset:])
                return
            size = self._slice_size()
            piece = data[offset : offset + size]
            offset += len(piece)
            try:
                if self.phase is Phase.BODY:
                    self._body_fed += len(piece)
                else:
                    # httptools joins a header's pieces before calling back, so the raw bytes of
                    # the head are counted here to bound what it can accumulate.
                    self._head_fed += len(piece)
                    if self._head_fed > self._limits.max_request_line + self._limits.max_header_block + _SLICE:
                        raise _HeadTooLarge
                self._parser.feed_data(piece)
                if self.phase is Phase.BODY and self._chunked:
                    self._check_extensions()
            except _Reject as exc:
                self._reject_after_queue(exc)
                return
            except _HeadTooLarge:
                # on_url enforces the 414 as the target arrives, so what overflows here is a header field.
                self._reject_after_queue(_Reject(431, "Request Header Fields Too Large"))
                return
            except httptools.HttpParserUpgrade:
                # Upgrade/CONNECT: never switch protocols. The request already parsed is answered,
                # then the connection closes because the bytes after it are not HTTP/1.1.
                self._reject_after_queue(None)
                return
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, _Reject):
                    self._reject_after_queue(cause)
                else:
                    log.error("parser callback failed", exc_info=cause or exc)
                    self._reject_after_queue(_Reject(500, "Internal Server Error"))
                return
            except httptools.HttpParserError as exc:
                self._reject_after_queue(_Reject(400, f"Bad Request: {exc}"))
                return

    def _slice_size(self) -> int:
        if self.phase is Phase.BODY and self._body_remaining is not None:
            return self._body_remaining + _SLICE
        # Chunked bodies go in small slices too: the chunk-extension check allows one slice of
        # slack (it may hold the next request's bytes), so the slice bounds the overshoot.
        return _SLICE

    def _reject_after_queue(self, reject: _Reject | None) -> None:
        """Stop parsing; answer the requests already queued, then the error, then close."""
        self._broken = True
        self._stash.clear()
        self._pause_reading()
        if reject is not None:
            self._ready.append(_ErrorRequest(self, reject))
        else:
            self._ready.append(_CloseMarker(self, -1))

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._seq += 1
        self._req = Request(self, self._seq)
        self._url.clear()
        self._field.clear()
        self._value.clear()
        self._header_count = 0
        self._head_bytes = 0
        self._body_remaining = None
        self._chunked = False
        self._chunks = 0
        self._body_fed = 0
        self._body_got = 0
        self._expect_continue = False
        if self.phase is Phase.IDLE:
            self._set_phase(Phase.HEAD)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            raise _Reject(414, "URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # httptools joins split names and values before calling this.
        size = len(name) + len(value)
        self._header_count += 1
        self._head_bytes += size + 4
        if size > self._limits.max_header_field:
            raise _Reject(431, "Request Header Fields Too Large: a header field is too large")
        if self._header_count > self._limits.max_headers:
            raise _Reject(431, "Request Header Fields Too Large: too many header fields")
        if self._head_bytes > self._limits.max_header_block:
            raise _Reject(431, "Request Header Fields Too Large: the header block is too large")
        assert self._req is not None
        self._req.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        parser = self._parser
        req.version = parser.get_http_version()
        req.method = parser.get_method().decode("ascii", "replace")
        req.keep_alive = parser.should_keep_alive()
        self._split_url(req)
        if req.version not in ("1.0", "1.1"):
            raise _Reject(505, "HTTP Version Not Supported")
        self._check_host(req)
        if req.method == "CONNECT":
            raise _Reject(405, "Method Not Allowed")
        length = req.header("content-length")
        te = req.header("transfer-encoding")
        if te is not None:
            if req.version == "1.0":
                raise _Reject(400, "Bad Request: Transfer-Encoding is not allowed on HTTP/1.0")
            self._chunked = True
        elif length is not None:
            # llhttp has already refused malformed and duplicate values.
            declared = int(length)
            if declared > self._limits.max_input_size:
                raise _Reject(413, self._too_large_message(declared))
            self._body_remaining = declared
        expect = req.header("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise _Reject(417, "Expectation Failed")
            if req.version == "1.1" and (self._chunked or (self._body_remaining or 0) > 0):
                self._expect_continue = True
                self._send_continue_if_turn()
        self._head_fed = 0
        if self._chunked or self._body_remaining:
            now = self._loop.time()
            self._body_started = now
            self._last_body = now
            self._set_phase(Phase.BODY)

    def on_body(self, body: bytes) -> None:
        if self._chunked:
            self._check_chunk_count()
        self._body_got += len(body)
        self._last_body = self._loop.time()
        if self._body_remaining is not None:
            self._body_remaining -= len(body)
        if self._body_got > self._limits.max_input_size:
            raise _Reject(413, self._too_large_message(self._body_got))
        assert self._req is not None
        self._req.body += body

    def on_chunk_header(self) -> None:
        self._chunks += 1
        self._check_extensions()

    def _check_chunk_count(self) -> None:
        if self._chunks > self._limits.max_chunks:
            raise _Reject(
                400,
                f"Chunked request body exceeds maximum of {self._limits.max_chunks} non-empty chunks. "
                "Send fewer or larger HTTP chunks.",
            )

    def _check_extensions(self) -> None:
        framing = self._body_fed - self._body_got
        # Tolerance of one slice: the slice being fed may hold bytes of the next request.
        if framing > self._limits.max_chunk_extensions + _CHUNK_FRAMING * (self._chunks + 1) + _SLICE:
            raise _Reject(400, "Bad Request: chunk extensions are too large")

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        self._req = None
        if self._served + len(self._ready) + 1 >= self._limits.max_requests_per_connection:
            req.keep_alive = False
        self._ready.append(req)
        self._head_fed = 0
        self._set_phase(Phase.IDLE)

    # ------------------------------------------------------------------ request checks

    def _split_url(self, req: Request) -> None:
        raw = bytes(self._url)
        path, _, query = raw.partition(b"?")
        path, _, _ = path.partition(b"#")
        if path[:7].lower() == b"http://":
            # Absolute form (RFC 9112 §3.2.2): servers must accept it; the path starts after the authority.
            slash = path.find(b"/", 7)
            path = path[slash:] if slash >= 0 else b"/"
        # llhttp has refused raw non-ASCII and control bytes in the target already.
        req.path = path.decode("ascii", "replace")
        req.query = query.decode("ascii", "replace")

    @staticmethod
    def _check_host(req: Request) -> None:
        hosts = [v for k, v in req.headers if k == "host"]
        if len(hosts) > 1:
            raise _Reject(400, "Bad Request: more than one Host header")
        if req.version == "1.1" and not hosts:
            raise _Reject(400, "Bad Request: missing Host header")
        if hosts and not _VALID_HOST.fullmatch(hosts[0]):
            raise _Reject(400, "Bad Request: invalid Host header")

    def _too_large_message(self, size: int) -> str:
        return (
            f"request body of {size} bytes exceeds the maximum allowed value of "
            f"{self._limits.max_input_size} bytes. Use --http-max-input-size to increase the limit."
        )

    def _send_continue_if_turn(self) -> None:
        """100 Continue goes out only when this request is next to be answered (order on the wire)."""
        if self._expect_continue and self._current is None and not self._ready and self._transport:
            self._expect_continue = False
            self._transport.write(CONTINUE_100)
            # The client sends the body only now: its clock starts here.
            self._last_body = self._body_started = self._loop.time()

    # ------------------------------------------------------------------ answering requests

    def _dispatch(self) -> None:
        """Answer queued requests in order until one is paused or the queue is empty."""
        while self._current is None and self._ready and not self._closing and not self._write_paused:
            req = self._ready.popleft()
            self._current = req
            if isinstance(req, _ErrorRequest):
                self._write(Response.error(req.reject.status, req.reject.message, ()), close=True)
                return
            if isinstance(req, _CloseMarker):
                self._close()
                return
            if self._on_request is not None:
                self._on_request()
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
        if self._closing:
            return
        if self._current is None and not self._ready:
            if self._draining:
                self._close()
                return
            self._send_continue_if_turn()
            if self._stash:
                # Kept bytes hold more requests: take them up on a later iteration.
                self._schedule_resume()
        self._resume_reading_if_possible()

    def _restart_clocks(self) -> None:
        """A reply is out: the read deadlines were suspended while busy, so restart them now."""
        now = self._loop.time()
        self._phase_since = now
        if self.phase is Phase.BODY:
            self._last_body = now
            self._body_started = now

    def _write(self, response: Response, *, close: bool) -> None:
        """Write a complete reply for ``_current`` (on the owning thread only)."""
        self.owner.assert_owner()
        req = self._current
        transport = self._transport
        self._current = None
        self._ticket = None
        if transport is None or transport.is_closing():
            return
        keep_alive = not (close or response.close or self._broken or self._draining or self._closing)
        if req is not None and not req.keep_alive:
            keep_alive = False
        headers = response.headers
        if keep_alive and req is not None and req.version == "1.0":
            headers = [*headers, ("Connection", "keep-alive")]
        head = response_head(
            response.status,
            headers,
            content_length=response.body_length,
            keep_alive=keep_alive,
        )
        if req is not None and req.method == "HEAD":
            transport.write(head)
        else:
            transport.writelines([head, *response.buffers])
        if server_log.ACCESS_LOG and req is not None:
            server_log.log_access(req.method, req.path, req.version, response.status, response.body_length)
        self._served += 1
        self._restart_clocks()
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        unread = self._broken or bool(self._stash or self._ready) or self._req is not None
        self._closing = True
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        if not unread or not transport.can_write_eof():
            transport.close()
            return
        # Lingering close (nginx lingering_close): closing a socket with unread input makes the
        # kernel send an RST that destroys the replies not yet delivered. Send FIN, read and
        # discard what the client still sends, close on its EOF or after a bound.
        self._stash.clear()
        self._ready.clear()
        transport.write_eof()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        self._linger = self._loop.call_later(_LINGER_SECONDS, transport.close)

    # ------------------------------------------------------------------ pause / resume

    def _pause(self, req: Request) -> Ticket:
        self.owner.assert_owner()
        if req is not self._current or self._ticket is not None:
            raise RuntimeError("only the request being answered can be paused, once")
        self._ticket = Ticket(self, req._seq)
        return self._ticket

    def _live_ticket(self, ticket: Ticket) -> bool:
        """True if ``ticket`` still belongs to the request this connection is answering."""
        if ticket._finished or ticket is not self._ticket or self._transport is None:
            return False
        return True

    def _finish_ticket(self, ticket: Ticket, response: Response) -> None:
        if not self._live_ticket(ticket):
            ticket._finished = True
            return
        if self._streaming:
            # A complete reply cannot follow a chunked head: end the stream and close instead.
            log.error("a ticket finished with a complete reply after starting a stream; closing")
            self._stream_end(ticket)
            self._close()
            return
        ticket._finished = True
        self._write(response, close=False)
        self._schedule_resume()

    def _stream_start(self, ticket: Ticket, status: int, headers: list[tuple[str, str]]) -> None:
        if not self._live_ticket(ticket) or self._streaming:
            return
        self.owner.assert_owner()
        self._streaming = True
        req = self._current
        keep_alive = bool(req and req.keep_alive) and not self._draining
        head = response_head(status, headers, content_length=None, keep_alive=keep_alive)
        assert self._transport is not None
        self._transport.write(head)

    def _stream_chunk(self, ticket: Ticket, data: bytes) -> None:
        if self._live_ticket(ticket) and self._streaming and self._transport is not None:
            self.owner.assert_owner()
            if self._current is not None and self._current.method == "HEAD":
                return
            self._transport.writelines(chunk(data))

    def _stream_end(self, ticket: Ticket) -> None:
        if not self._live_ticket(ticket) or not self._streaming or self._transport is None:
            ticket._finished = True
            return
        self.owner.assert_owner()
        ticket._finished = True
        self._streaming = False
        req = self._current
        self._current = None
        self._ticket = None
        if req is None or req.method != "HEAD":
            self._transport.write(LAST_CHUNK)
        self._served += 1
        self._restart_clocks()
        if req is None or not req.keep_alive or self._draining or self._broken:
            self._close()
            return
        self._schedule_resume()

    def _schedule_resume(self) -> None:
        if not self._resume_scheduled and not self._closing:
            self._resume_scheduled = True
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        """Take up the next request: feed kept bytes, answer what is queued (libevhtp's resumecb)."""
        self._resume_scheduled = False
        if self._closing or self._write_paused:
            return
        if self._stash and len(self._ready) < self._limits.max_pipelined_requests and not self._broken:
            kept = bytes(self._stash)
            self._stash.clear()
            self._feed(memoryview(kept))
        self._dispatch()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None and not self._transport.is_closing():
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading_if_possible(self) -> None:
        if (
            self._read_paused
            and not self._broken
            and not self._write_paused
            and len(self._stash) <= self._limits.read_high_water
            and len(self._ready) < self._limits.max_pipelined_requests
            and self._transport is not None
            and not self._transport.is_closing()
        ):
            self._read_paused = False
            self._transport.resume_reading()

    # ------------------------------------------------------------------ deadlines and shutdown

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._phase_since = self._loop.time()

    @property
    def closed(self) -> bool:
        return self._transport is None and self._closing

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._ready) or self._req is not None

    def check_deadlines(self, now: float) -> None:
        """Called by the loop thread's tick: enforce the head, body and keep-alive deadlines."""
        if self._ticket is not None and self._read_paused and self._peer_gone():
            self._ticket._cancelled = True
            self.abort()
            return
        if self._write_paused and now - self._write_paused_since > self._limits.send_timeout:
            # nginx send_timeout: a client that stops reading its replies does not hold them forever.
            self.abort()
            return
        if self._closing or self._current is not None or self._ready:
            return
        limits = self._limits
        if self.phase is Phase.HEAD and now - self._phase_since > limits.head_timeout:
            self._timeout()
        elif self.phase is Phase.BODY:
            stalled = now - self._last_body > limits.body_timeout
            elapsed = now - self._body_started
            too_slow = elapsed > limits.body_timeout and self._body_got / elapsed < limits.body_min_rate
            if stalled or too_slow:
                self._timeout()
        elif self.phase is Phase.IDLE and now - self._phase_since > limits.keepalive_timeout:
            self._close()

    def _peer_gone(self) -> bool:
        """Reading is paused, so EOF/RST go unseen: ask the kernel for the TCP state (Linux)."""
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        if sock is None or not hasattr(socket, "TCP_INFO"):
            return False
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)

    def _timeout(self) -> None:
        self._broken = True
        self._current = _ErrorRequest(self, _Reject(408, "Request Timeout"))
        self._write(Response.error(408, "Request Timeout"), close=True)

    def begin_drain(self) -> None:
        """Server stop: close at once if idle, else after the replies already owed."""
        self._draining = True
        if not self.busy:
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _ErrorRequest(Request):
    """A queue entry that stands for a framing or limit error to answer in turn."""

    __slots__ = ("reject",)

    def __init__(self, conn: HttpConnection, reject: _Reject) -> None:
        super().__init__(conn, -1)
        self.reject = reject


class _CloseMarker(Request):
    """A queue entry that closes the connection once the replies before it are written."""

    __slots__ = ()
