"""Raw-socket helpers for black-box HTTP/1.1 tests: literal bytes go out, parsed replies come back.

Why not an HTTP client library: the tests must send bytes no client would send (smuggling,
bare LF, floods without reading) and must see exactly what the server wrote, including a
second reply that should never have been there. So the client here is a plain socket plus a
small, strict HTTP/1.1 *response* parser that understands keep-alive, pipelined replies,
``Content-Length``, chunked bodies with trailers, interim ``1xx`` replies and HEAD.

Every read has a timeout, so a server that hangs makes a test fail instead of hanging it.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 5.0
_RECV = 256 * 1024


class WireError(AssertionError):
    """The bytes on the wire are not a well-formed HTTP/1.1 response."""


@dataclass
class Reply:
    """One parsed response. Header names are lower-cased; values are kept as sent."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes
    chunked: bool = False
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_count(self, name: str) -> int:
        name = name.lower()
        return sum(1 for key, _ in self.headers if key == name)

    @property
    def closes(self) -> bool:
        """True when the reply announces that the server closes the connection after it."""
        value = self.header("connection") or ""
        return "close" in (token.strip().lower() for token in value.split(","))


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] != b"HTTP/1.1" or not (len(parts[1]) == 3 and parts[1].isdigit()):
        raise WireError(f"bad status line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b"\n" in line or b"\r" in line:
            raise WireError(f"bad header line {line!r}")
        headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    reason = parts[2].decode("latin-1") if len(parts) == 3 else ""
    return int(parts[1]), reason, headers


def _parse_chunked(buf: bytes | bytearray, pos: int) -> tuple[list[bytes], list[tuple[str, str]], int] | None:
    """Parse a chunked body starting at ``pos``; None if incomplete."""
    chunks: list[bytes] = []
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        size_text = bytes(buf[pos:end]).split(b";", 1)[0]
        try:
            size = int(size_text, 16)
        except ValueError:
            raise WireError(f"bad chunk size {size_text!r}") from None
        if size_text.strip() != size_text or size < 0:
            raise WireError(f"bad chunk size {size_text!r}")
        pos = end + 2
        if size == 0:
            break
        if len(buf) < pos + size + 2:
            return None
        chunks.append(bytes(buf[pos : pos + size]))
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise WireError("chunk data not followed by CRLF")
        pos += size + 2
    trailers = []
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        line = bytes(buf[pos:end])
        pos = end + 2
        if not line:
            return chunks, trailers, pos
        name, _, value = line.partition(b":")
        trailers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))


def parse_reply(
    buf: bytes | bytearray, pos: int = 0, *, head: bool = False, eof: bool = False
) -> tuple[Reply, int] | None:
    """Parse the reply that starts at ``buf[pos]``: (reply, end position), or None if incomplete.

    ``head``: the reply answers a HEAD request (no body whatever the headers say).
    ``eof``: the connection has ended, so a reply delimited by close is complete.
    """
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        if eof and len(buf) > pos:
            raise WireError(f"truncated response head {bytes(buf[pos : pos + 200])!r}")
        return None
    raw_head = bytes(buf[pos:end])
    status, reason, headers = _parse_head(raw_head)
    reply = Reply(status, reason, headers, b"", raw_head)
    body_start = end + 4
    if head or 100 <= status < 200 or status in (204, 304):
        return reply, body_start
    te = reply.header("transfer-encoding")
    length = reply.header("content-length")
    if te is not None:
        if te.lower() != "chunked" or length is not None:
            raise WireError(f"bad framing: Transfer-Encoding {te!r}, Content-Length {length!r}")
        parsed = _parse_chunked(buf, body_start)
        if parsed is None:
            if eof:
                raise WireError("truncated chunked body")
            return None
        reply.chunks, reply.trailers, after = parsed
        reply.chunked = True
        reply.body = b"".join(reply.chunks)
        return reply, after
    if length is not None:
        if reply.header_count("content-length") != 1 or not length.isdigit():
            raise WireError(f"bad Content-Length {length!r}")
        after = body_start + int(length)
        if len(buf) < after:
            if eof:
                raise WireError("truncated body")
            return None
        reply.body = bytes(buf[body_start:after])
        return reply, after
    if not eof:
        return None
    reply.body = bytes(buf[body_start:])
    return reply, len(buf)


def parse_all(data: bytes, *, eof: bool = True) -> list[Reply]:
    """Every reply in ``data`` (a whole conversation); trailing garbage raises WireError."""
    replies = []
    pos = 0
    while pos < len(data):
        parsed = parse_reply(data, pos, eof=eof)
        if parsed is None:
            raise WireError(f"incomplete reply at the end: {data[pos : pos + 200]!r}")
        reply, pos = parsed
        replies.append(reply)
    return replies


def request(
    method: str,
    target: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    version: str = "1.1",
    host: str | None = "test",
) -> bytes:
    """Build a well-formed request; a body gets a Content-Length unless a header frames it already."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    names = {name.lower() for name, _ in headers}
    lines += [f"{name}: {value}" for name, value in headers]
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(target: str, *headers: tuple[str, str]) -> bytes:
    return request("GET", target, headers=headers)


def chunked(*pieces: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body: one chunk per piece, then the last chunk, trailers and the final CRLF."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return out + b"0\r\n" + trailers + b"\r\n"


class Client:
    """One client socket with a receive buffer; every wait is bounded by ``timeout``."""

    def __init__(self, port: int, *, timeout: float = DEFAULT_TIMEOUT, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        """Close with an RST instead of a FIN (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self, deadline: float) -> bool:
        """Receive more bytes before ``deadline``; False once the peer has closed or reset."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no more bytes from the server; buffered: {bytes(self.buf[:300])!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(_RECV)
        except TimeoutError:
            raise TimeoutError(f"no more bytes from the server; buffered: {bytes(self.buf[:300])!r}") from None
        except ConnectionResetError:
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_reply(self, *, head: bool = False, timeout: float | None = None) -> Reply:
        """Read the next complete reply (an interim 1xx reply counts as one)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            parsed = parse_reply(self.buf, head=head, eof=self.eof)
            if parsed is not None:
                reply, end = parsed
                del self.buf[:end]
                return reply
            if not self._fill(deadline):
                parsed = parse_reply(self.buf, head=head, eof=True)
                if parsed is None:
                    raise EOFError("the server closed the connection without a reply")
                reply, end = parsed
                del self.buf[:end]
                return reply

    def read_replies(self, count: int, *, timeout: float | None = None) -> list[Reply]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return [self.read_reply(timeout=max(0.0, deadline - time.monotonic())) for _ in range(count)]

    def read_until_close(self, *, timeout: float | None = None) -> bytes:
        """Everything up to the server's close (or reset); raises TimeoutError if it stays open."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._fill(deadline):
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def replies_until_close(self, *, timeout: float | None = None) -> list[Reply]:
        return parse_all(self.read_until_close(timeout=timeout))

    def readable(self, timeout: float) -> bool:
        """True if bytes (or an EOF) are waiting within ``timeout`` seconds."""
        if self.buf or self.eof:
            return True
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return bool(ready)

    def exchange(self, data: bytes, *, head: bool = False) -> Reply:
        self.send(data)
        return self.read_reply(head=head)


def exchange_until_close(port: int, data: bytes, *, timeout: float = DEFAULT_TIMEOUT) -> list[Reply]:
    """Send ``data`` on a fresh connection and parse every reply until the server closes."""
    with Client(port, timeout=timeout) as client:
        client.send(data)
        return client.replies_until_close()
