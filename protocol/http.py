"""HTTP/1.1 response framing: status lines, response heads and chunked framing.

Status lines are built once into a table (uvicorn's habit) so a reply head costs one join.
Header values are checked for CR, LF and NUL before they reach the wire: nothing a client
sent (a model name, say) can ever split a response header.
"""

from __future__ import annotations

from http import HTTPStatus

STATUS_LINE: dict[int, bytes] = {}
for _status in HTTPStatus:
    STATUS_LINE[_status.value] = f"HTTP/1.1 {_status.value} {_status.phrase}\r\n".encode("ascii")

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"

_FORBIDDEN_IN_HEADER = frozenset("\r\n\x00")


class HeaderInjection(ValueError):
    """A header name or value would have contained CR, LF or NUL."""


def status_line(status: int) -> bytes:
    line = STATUS_LINE.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Unknown\r\n".encode("ascii")
    return line


def _checked(text: str) -> str:
    if not _FORBIDDEN_IN_HEADER.isdisjoint(text):
        raise HeaderInjection(repr(text))
    return text


# Encoded header lines by (name, value): replies repeat a few (Content-Type, say), and a lookup
# is cheaper than formatting, checking and encoding each time. Bounded: values that vary
# (lengths, client-named content) stop being added once it is full; a line is checked once,
# before it is stored. Safe to share between threads, with or without the GIL: a dict's get and
# set are atomic, entries are only ever added, and a race stores the same bytes twice (the bound
# may be overshot by one entry per racing thread).
_LINES: dict[tuple[str, str], bytes] = {}
_MAX_LINES = 4096


def header_line(name: str, value: str) -> bytes:
    """``name: value\r\n``, refused (HeaderInjection) if either holds CR, LF or NUL."""
    key = (name, value)
    line = _LINES.get(key)
    if line is None:
        line = f"{_checked(name)}: {_checked(value)}\r\n".encode("latin-1")
        if len(_LINES) < _MAX_LINES:
            _LINES[key] = line
    return line


def response_head(
    status: int,
    headers: list[tuple[str, str]],
    *,
    content_length: int | None,
    keep_alive: bool,
) -> bytes:
    """The status line and header block of a response.

    ``content_length=None`` frames the body as chunked (for streams such as SSE). A head for a
    response that must close the connection carries ``Connection: close``.
    """
    parts = [STATUS_LINE.get(status) or status_line(status)]
    lines = _LINES
    for header in headers:
        line = lines.get(header)  # type: ignore[call-overload]
        parts.append(line if line is not None else header_line(*header))
    if content_length is None:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    else:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes | memoryview) -> list[bytes | memoryview]:
    """One chunk of a chunked body, as buffers for writelines (the data itself is not copied)."""
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size == 0:
        return []
    return [b"%x\r\n" % size, data, b"\r\n"]
