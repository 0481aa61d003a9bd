"""The parse state of the request being received, and the checks made on its head.

:class:`RequestCycle` does the job of uvicorn's ``RequestResponseCycle`` for the parse side:
it counts what the parser callbacks of :class:`~evserve.server.connection.HttpConnection`
saw for the one request that is arriving. Those counts are the limits of Theory of
operation point 4 in connection.py. A connection parses its requests one after another,
never two at once, so it keeps one cycle for life and :meth:`RequestCycle.begin` resets it.
A request then costs no allocation beyond its :class:`Request`, and a header costs none beyond
its name and value.

The queue entries at the bottom (:class:`ErrorEntry`, :class:`CloseEntry`) stand in line with
the parsed requests. When parsing stops, its outcome is answered in turn, after the replies
already owed.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import httptools

from evserve.server.exchange import Request

if TYPE_CHECKING:
    from evserve.server.config import Limits
    from evserve.server.connection import HttpConnection

__all__ = [
    "CloseEntry",
    "ErrorEntry",
    "HeadTooLarge",
    "QueueMarker",
    "Reject",
    "RequestCycle",
    "rejection_for",
    "too_large",
]

log = logging.getLogger("evserve.server")

# Per-chunk framing that is not an extension: up to 16 hex digits and two CRLFs.
_CHUNK_FRAMING = 20
# RFC 3986 authority characters (host, port, IPv6 brackets, userinfo is refused by omission of '@').
_VALID_HOST = re.compile(r"[A-Za-z0-9.\-_~%!$&'()*+,;=:\[\]]+")


class HeadTooLarge(Exception):
    """The raw bytes of a request head passed every limit before the parser finished it."""


class Reject(Exception):
    """Raised inside a parser callback: answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestCycle:
    """What the parser callbacks have counted for the request being received.

    ``request`` is the Request being filled in. It is None before the first request and again
    once on_message_complete has queued the request (the queue owns it from then on). The
    other fields keep their last values until the next :meth:`begin`. In particular,
    ``expect_continue`` stays set until the 100 Continue is sent or the whole body has arrived.
    ``body`` is the request's own bytearray, kept here so that on_body reaches it without a
    hop; ``valid_host`` spares the Host check its regex when a connection repeats its Host.
    """

    __slots__ = (
        "request",
        "body",
        "url",
        "header_count",
        "head_bytes",
        "body_remaining",
        "chunked",
        "chunks",
        "body_fed",
        "body_got",
        "body_started",
        "last_body",
        "expect_continue",
        "valid_host",
    )

    def __init__(self) -> None:
        self.request: Request | None = None
        self.body = bytearray()
        self.url = bytearray()  # the request target as it arrives (on_url may come in pieces)
        self.header_count = 0
        self.head_bytes = 0  # header bytes counted as llhttp delivers them (name, value, ": ", CRLF)
        self.body_remaining: int | None = None  # Content-Length still to come; None when chunked or absent
        self.chunked = False
        self.chunks = 0
        self.body_fed = 0  # raw body bytes fed to the parser, framing included
        self.body_got = 0  # body bytes the parser delivered
        self.body_started = 0.0  # when the body (or, after a 100 Continue, its wait) began
        self.last_body = 0.0  # when body bytes last arrived
        self.expect_continue = False  # a 100 Continue is owed once this request is next in line
        self.valid_host: str | None = None  # the last Host header found valid on this connection

    def begin(self, request: Request) -> None:
        """Reset for ``request`` (on_message_begin)."""
        self.request = request
        self.body = request.body
        self.url.clear()
        self.header_count = 0
        self.head_bytes = 0
        self.body_remaining = None
        self.chunked = False
        self.chunks = 0
        self.body_fed = 0
        self.body_got = 0
        self.expect_continue = False

    def head_complete(self, req: Request, limits: Limits) -> None:
        """Check a complete head (on_headers_complete) and note how its body is framed.

        llhttp has checked the syntax, refused conflicting framing and malformed or duplicate
        Content-Length values; what is left is what HTTP/1.1 and the limits require.
        """
        url = self.url
        if url[:1] == b"/" and b"?" not in url and b"#" not in url:
            req.path = url.decode("ascii", "replace")  # the usual origin form, no query: no split
        else:
            _split_target(req, url)
        if req.version not in ("1.0", "1.1"):
            raise Reject(505, "HTTP Version Not Supported")
        self.valid_host = _check_host(req, self.valid_host)
        if req.method == "CONNECT":
            raise Reject(405, "Method Not Allowed")
        fields = req.fields
        length = fields.get("content-length")
        te = fields.get("transfer-encoding")
        if te is not None:
            if req.version == "1.0":
                raise Reject(400, "Bad Request: Transfer-Encoding is not allowed on HTTP/1.0")
            self.chunked = True
        elif length is not None:
            declared = int(length)
            if declared > limits.max_input_size:
                raise too_large(declared, limits)
            self.body_remaining = declared
        expect = fields.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise Reject(417, "Expectation Failed")
            if req.version == "1.1" and (self.chunked or (self.body_remaining or 0) > 0):
                self.expect_continue = True

    def check_chunk_count(self, limits: Limits) -> None:
        if self.chunks > limits.max_chunks:
            raise Reject(
                400,
                f"Chunked request body exceeds maximum of {limits.max_chunks} non-empty chunks. "
                "Send fewer or larger HTTP chunks.",
            )

    def check_extensions(self, limits: Limits, slack: int) -> None:
        """Bound chunk extensions: raw body bytes fed beyond the data and its framing.

        ``slack`` is one parser slice: the slice being fed may hold bytes of the next request.
        """
        framing = self.body_fed - self.body_got
        if framing > limits.max_chunk_extensions + _CHUNK_FRAMING * (self.chunks + 1) + slack:
            raise Reject(400, "Bad Request: chunk extensions are too large")


def too_large(size: int, limits: Limits) -> Reject:
    """The 413 of a body over ``--http-max-input-size``, in Triton's words."""
    return Reject(
        413,
        f"request body of {size} bytes exceeds the maximum allowed value of "
        f"{limits.max_input_size} bytes. Use --http-max-input-size to increase the limit.",
    )


def rejection_for(
    exc: Reject | HeadTooLarge | httptools.HttpParserError | httptools.HttpParserUpgrade,
) -> Reject | None:
    """What a failed ``feed_data`` is answered with; None for an Upgrade (answered, then closed)."""
    if isinstance(exc, Reject):
        return exc
    if isinstance(exc, HeadTooLarge):
        # on_url enforces the 414 as the target arrives, so what overflows here is a header field.
        return Reject(431, "Request Header Fields Too Large")
    if isinstance(exc, httptools.HttpParserUpgrade):
        # Upgrade/CONNECT: never switch protocols. The request already parsed is answered,
        # then the connection closes because the bytes after it are not HTTP/1.1.
        return None
    if isinstance(exc, httptools.HttpParserCallbackError):
        cause = exc.__context__
        if isinstance(cause, Reject):
            return cause
        log.error("parser callback failed", exc_info=cause or exc)
        return Reject(500, "Internal Server Error")
    return Reject(400, f"Bad Request: {exc}")


def _split_target(req: Request, raw: bytearray) -> None:
    """Fill in ``req.path`` and ``req.query`` from the request target."""
    path, _, query = bytes(raw).partition(b"?")
    path, _, _ = path.partition(b"#")
    if path[:7].lower() == b"http://":
        # Absolute form (RFC 9112 §3.2.2): servers must accept it; the path starts after the authority.
        slash = path.find(b"/", 7)
        path = path[slash:] if slash >= 0 else b"/"
    # llhttp has refused raw non-ASCII and control bytes in the target already.
    req.path = path.decode("ascii", "replace")
    req.query = query.decode("ascii", "replace")


def _check_host(req: Request, valid_host: str | None) -> str | None:
    """RFC 9112 §3.2: exactly one valid Host on HTTP/1.1, at most one on HTTP/1.0.

    ``valid_host`` is the Host this connection's previous request sent, already found valid
    (clients send the same one every time); returns the Host found valid now.
    """
    host = req.fields.get("host")
    if host is None:
        if req.version == "1.1":
            raise Reject(400, "Bad Request: missing Host header")
        return valid_host
    if "host" in req.repeated:
        raise Reject(400, "Bad Request: more than one Host header")
    if host != valid_host and not _VALID_HOST.fullmatch(host):
        raise Reject(400, "Bad Request: invalid Host header")
    return host


class QueueMarker(Request):
    """A queue entry that is not a request: what to do when the answers before it are written."""

    __slots__ = ()


class ErrorEntry(QueueMarker):
    """Answer a framing or limit error (``reject``) in turn, then close."""

    __slots__ = ("reject",)

    def __init__(self, conn: HttpConnection, reject: Reject) -> None:
        super().__init__(conn, -1)
        self.reject = reject


class CloseEntry(QueueMarker):
    """Close once the replies before it are written (after an Upgrade request)."""

    __slots__ = ()
