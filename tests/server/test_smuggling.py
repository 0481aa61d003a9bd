"""Request smuggling and malformed framing (RELIABILITY.md §2): refuse, close, never answer twice.

Every hostile request below is followed on the same connection by a well-formed
``GET /echo?smuggled``. A server that disagrees with a front proxy about where the first request
ends would answer that second request; the required behaviour is exactly one reply (the
refusal), ``Connection: close``, then the close.
"""

from __future__ import annotations

import pytest

from tests.server.conftest import ProbeServer
from tests.wire import Client, exchange_until_close, get, request

SMUGGLED = get("/echo?smuggled")
BAD = (400,)
BAD_OR_UNSUPPORTED = (400, 501)


def post(*header_lines: bytes, version: bytes = b"1.1") -> bytes:
    lines = b"".join(line + b"\r\n" for line in header_lines)
    return b"POST /echo HTTP/" + version + b"\r\nHost: test\r\n" + lines + b"\r\n"


TE = b"Transfer-Encoding: chunked"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"

CASES = [
    # CL.TE and TE.CL
    ("cl-te", post(b"Content-Length: 4", TE) + HELLO_CHUNKED, BAD),
    ("te-cl", post(TE, b"Content-Length: 4") + HELLO_CHUNKED, BAD),
    ("cl-te-zero", post(b"Content-Length: 0", TE) + b"0\r\n\r\n", BAD),
    # duplicate and malformed Content-Length
    ("cl-5-and-6", post(b"Content-Length: 5", b"Content-Length: 6") + b"hello!", BAD),
    ("cl-list", post(b"Content-Length: 5, 6") + b"hello!", BAD),
    ("cl-plus", post(b"Content-Length: +5") + b"hello", BAD),
    ("cl-negative", post(b"Content-Length: -1") + b"hello", BAD),
    ("cl-hex", post(b"Content-Length: 0x10") + b"hello", BAD),
    ("cl-space-inside", post(b"Content-Length: 1 0") + b"hello", BAD),
    ("cl-empty", post(b"Content-Length: ") + b"hello", BAD),
    ("cl-letters", post(b"Content-Length: 5a") + b"hello", BAD),
    ("cl-overflow", post(b"Content-Length: 18446744073709551617") + b"hello", (400, 413)),
    # Transfer-Encoding obfuscation
    ("te-identity", post(b"Transfer-Encoding: identity") + b"hello", BAD_OR_UNSUPPORTED),
    ("te-chunked-chunked", post(b"Transfer-Encoding: chunked, chunked") + HELLO_CHUNKED, BAD_OR_UNSUPPORTED),
    ("te-repeated", post(TE, TE) + HELLO_CHUNKED, BAD_OR_UNSUPPORTED),
    ("te-gzip-alone", post(b"Transfer-Encoding: gzip") + HELLO_CHUNKED, BAD_OR_UNSUPPORTED),
    ("te-chunked-gzip", post(b"Transfer-Encoding: chunked, gzip") + HELLO_CHUNKED, BAD_OR_UNSUPPORTED),
    ("te-xchunked", post(b"Transfer-Encoding: xchunked") + HELLO_CHUNKED, BAD_OR_UNSUPPORTED),
    ("te-chunked-suffix", post(b"Transfer-Encoding: chunkedx") + HELLO_CHUNKED, BAD_OR_UNSUPPORTED),
    ("te-http10", post(TE, version=b"1.0") + HELLO_CHUNKED, BAD),
    ("te-space-before-colon", post(b"Transfer-Encoding : chunked") + HELLO_CHUNKED, BAD),
    ("te-vertical-tab", post(b"Transfer-Encoding:\x0bchunked") + HELLO_CHUNKED, BAD_OR_UNSUPPORTED),
    ("te-obs-fold", post(b"Transfer-Encoding:", b" chunked") + HELLO_CHUNKED, BAD),
    ("te-behind-bare-lf", post(b"X-Foo: bar\nTransfer-Encoding: chunked") + HELLO_CHUNKED, BAD),
    ("te-leading-space-line", post(b"X-Foo: bar", b" Transfer-Encoding: chunked") + HELLO_CHUNKED, BAD),
    # line endings and header syntax
    ("bare-lf", b"GET /echo HTTP/1.1\nHost: test\n\n", BAD),
    ("bare-lf-request-line", b"GET /echo HTTP/1.1\nHost: test\r\n\r\n", BAD),
    ("bare-cr", b"GET /echo HTTP/1.1\rHost: test\r\r\n", BAD),
    ("bare-cr-in-value", b"GET /echo HTTP/1.1\r\nHost: test\r\nX-Foo: a\rb\r\n\r\n", BAD),
    ("obs-fold", b"GET /echo HTTP/1.1\r\nHost: test\r\nX-Foo: a\r\n b\r\n\r\n", BAD),
    ("space-before-colon", b"GET /echo HTTP/1.1\r\nHost : test\r\n\r\n", BAD),
    ("space-in-name", b"GET /echo HTTP/1.1\r\nHost: test\r\nX Foo: a\r\n\r\n", BAD),
    ("nul-in-name", b"GET /echo HTTP/1.1\r\nHost: test\r\nX\x00Foo: a\r\n\r\n", BAD),
    # chunk framing
    ("chunk-24-hex-digits", post(TE) + b"FFFFFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-negative", post(TE) + b"-5\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-trailing-space", post(TE) + b"5 \r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-garbage", post(TE) + b"5g\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-not-hex", post(TE) + b"zz\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-0x-prefix", post(TE) + b"0x5\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-empty-size", post(TE) + b"\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-runaway", post(TE) + b"4\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-short", post(TE) + b"6\r\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-bare-lf-size", post(TE) + b"5\nhello\r\n0\r\n\r\n", BAD),
    ("chunk-bare-lf-data", post(TE) + b"5\r\nhello\n0\r\n\r\n", BAD),
    ("chunk-unbalanced-quote", post(TE) + b'5;a="b\r\nhello\r\n0\r\n\r\n', BAD),
    # request target and method
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: test\r\n\r\n", BAD),
    ("control-in-target", b"GET /a\x01b HTTP/1.1\r\nHost: test\r\n\r\n", BAD),
    ("del-in-target", b"GET /a\x7fb HTTP/1.1\r\nHost: test\r\n\r\n", BAD),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: test\r\n\r\n", BAD),
    ("raw-ff-in-path", b"GET /a\xffb HTTP/1.1\r\nHost: test\r\n\r\n", BAD),
    ("raw-utf8-in-path", "GET /caf\u00e9 HTTP/1.1\r\nHost: test\r\n\r\n".encode(), BAD),
    ("lowercase-method", b"get /echo HTTP/1.1\r\nHost: test\r\n\r\n", (400, 405, 501)),
    ("unknown-method", b"FOO /echo HTTP/1.1\r\nHost: test\r\n\r\n", (400, 405, 501)),
    ("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", (405,)),
]


@pytest.mark.parametrize(("data", "allowed"), [pytest.param(d, a, id=i) for i, d, a in CASES])
def test_refused_once_then_closed(server: ProbeServer, data: bytes, allowed: tuple[int, ...]) -> None:
    replies = exchange_until_close(server.port, data + SMUGGLED)
    assert len(replies) == 1, f"answered {[r.status for r in replies]}: the smuggled request got through"
    assert replies[0].status in allowed
    assert replies[0].closes
    assert replies[0].header("x-query") is None


def test_request_inside_a_content_length_body_is_only_data(server: ProbeServer) -> None:
    with Client(server.port) as client:
        reply = client.exchange(request("POST", "/echo", body=SMUGGLED))
        assert reply.body == SMUGGLED
        assert client.exchange(get("/echo?after")).header("x-query") == "after"
        assert not client.readable(0.1), "a second reply: the body was parsed as a request"


def test_request_inside_a_chunked_body_is_only_data(server: ProbeServer) -> None:
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    with Client(server.port) as client:
        reply = client.exchange(post(TE) + body)
        assert reply.body == SMUGGLED
        assert client.exchange(get("/echo?after")).header("x-query") == "after"
        assert not client.readable(0.1), "a second reply: the body was parsed as a request"


def test_nothing_is_answered_after_connection_close(server: ProbeServer) -> None:
    replies = exchange_until_close(server.port, get("/echo?first", ("Connection", "close")) + SMUGGLED)
    assert [r.header("x-query") for r in replies] == ["first"]


def test_requests_before_a_malformed_one_are_all_answered_then_the_error(server: ProbeServer) -> None:
    """Pipelined good requests, then garbage: each good one is answered in order (keep-alive),
    then the 400, which alone closes the connection."""
    data = get("/slow?ms=50&id=a") + get("/echo?b") + get("/echo?c") + b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n"
    replies = exchange_until_close(server.port, data)
    assert [r.status for r in replies] == [200, 200, 200, 400]
    assert [r.header("x-query") for r in replies[:3]] == ["ms=50&id=a", "b", "c"]
    assert [r.closes for r in replies] == [False, False, False, True]


@pytest.mark.parametrize(
    "upgrade",
    [
        pytest.param((("Connection", "Upgrade"), ("Upgrade", "websocket")), id="websocket"),
        pytest.param((("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "")), id="h2c"),
    ],
)
def test_upgrade_is_answered_normally_never_101(server: ProbeServer, upgrade: tuple[tuple[str, str], ...]) -> None:
    replies = exchange_until_close(server.port, get("/echo?upgrade", *upgrade) + SMUGGLED)
    assert [r.status for r in replies] == [200]
    assert replies[0].header("x-query") == "upgrade"
