"""Every size limit of RELIABILITY.md §3 with its status, using small Limits so the tests stay fast.

"Bounded" is checked from the outside where it can be: the client sends a hostile stream in
pieces and watches for the answer, so a server that reads without limit is caught by the
number of bytes it swallowed before answering. Where only the inside can tell (queued
requests, kept bytes while a flood is not read) the connection's state is read on its own
loop thread.
"""

from __future__ import annotations

import threading
import time

import pytest

from evserve.server.config import Limits
from evserve.server.connection import HttpConnection
from tests.server.conftest import ONE_READ, PARSE_AHEAD_SLACK, ProbeServer, ServerFactory
from tests.wire import Client, chunked, exchange_until_close, get, request

SMALL = Limits(
    max_request_line=512,
    max_header_field=512,
    max_header_block=2048,
    max_headers=16,
    max_input_size=4096,
    max_chunk_extensions=1024,
    max_chunks=16,
)


@pytest.fixture
def small(make_server: ServerFactory) -> ProbeServer:
    return make_server(limits=SMALL)


def refused_with(port: int, data: bytes) -> tuple[int, bytes, bool]:
    """Send ``data``; expect exactly one reply and a close. Returns (status, body, says close)."""
    replies = exchange_until_close(port, data)
    assert len(replies) == 1, [r.status for r in replies]
    return replies[0].status, replies[0].body, replies[0].closes


def bytes_swallowed_before_answer(client: Client, head: bytes, piece: bytes, budget: int) -> tuple[int, bool]:
    """Send ``head`` then ``piece`` repeatedly (up to ``budget`` bytes) until the server answers.

    Returns (bytes sent after the head, whether an answer or a close came).
    """
    client.send(head)
    sent = 0
    while sent < budget:
        if client.readable(0.02):
            return sent, True
        try:
            client.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            return sent, True
        sent += len(piece)
    return sent, client.readable(0.5)


# ---------------------------------------------------------------------------- request line and headers


def test_request_line_at_the_limit_is_accepted(small: ProbeServer) -> None:
    target = "/echo?" + "a" * (SMALL.max_request_line - len("/echo?"))
    with Client(small.port) as client:
        assert client.exchange(get(target)).status == 200


def test_request_line_too_long_is_414(small: ProbeServer) -> None:
    target = "/echo?" + "a" * SMALL.max_request_line
    assert refused_with(small.port, get(target))[::2] == (414, True)


def test_endless_request_line_is_414_after_bounded_bytes(small: ProbeServer) -> None:
    with Client(small.port) as client:
        sent, answered = bytes_swallowed_before_answer(client, b"GET /", b"a" * 1024, 1024 * 1024)
        assert answered and sent <= 64 * 1024
        assert client.read_reply().status == 414


def test_header_field_at_the_limit_is_accepted(small: ProbeServer) -> None:
    value = "v" * (SMALL.max_header_field - len("x-field"))
    with Client(small.port) as client:
        assert client.exchange(get("/echo", ("X-Field", value))).status == 200


def test_header_field_too_large_is_431(small: ProbeServer) -> None:
    value = "v" * SMALL.max_header_field
    assert refused_with(small.port, get("/echo", ("X-Field", value)))[::2] == (431, True)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: test\r\nX-Endless: ", id="after-host"),
        pytest.param(
            b"GET /echo HTTP/1.1\r\nX-Endless: ",
            id="first-field",
        ),
    ],
)
def test_endless_header_field_is_431_after_bounded_bytes(small: ProbeServer, head: bytes) -> None:
    with Client(small.port) as client:
        sent, answered = bytes_swallowed_before_answer(client, head, b"v" * 1024, 1024 * 1024)
        assert answered and sent <= 64 * 1024
        assert client.read_reply().status == 431


def test_header_count_at_the_limit_is_accepted(small: ProbeServer) -> None:
    headers = tuple((f"X-H{index}", "v") for index in range(SMALL.max_headers - 1))  # + Host
    with Client(small.port) as client:
        reply = client.exchange(get("/echo", *headers))
        assert reply.status == 200
        assert reply.header("x-header-count") == str(SMALL.max_headers)


def test_too_many_headers_is_431(small: ProbeServer) -> None:
    headers = tuple((f"X-H{index}", "v") for index in range(SMALL.max_headers))
    assert refused_with(small.port, get("/echo", *headers))[::2] == (431, True)


def _big_block() -> bytes:
    # Each field is under max_header_field and there are fewer than max_headers, but the block is too large.
    headers = tuple((f"X-H{index}", "v" * 300) for index in range(10))
    return get("/echo", *headers)


def test_header_block_too_large_in_one_send_is_431(small: ProbeServer) -> None:
    assert refused_with(small.port, _big_block())[::2] == (431, True)


def test_header_block_too_large_trickled_is_431(small: ProbeServer) -> None:
    data = _big_block()
    with Client(small.port) as client:
        for offset in range(0, len(data), 100):
            try:
                client.send(data[offset : offset + 100])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.002)
        replies = client.replies_until_close()
    assert [r.status for r in replies] == [431]


# ---------------------------------------------------------------------------- bodies


def test_body_at_the_limit_is_accepted(small: ProbeServer) -> None:
    body = b"b" * SMALL.max_input_size
    with Client(small.port) as client:
        assert client.exchange(request("POST", "/echo", body=body)).body == body


@pytest.mark.parametrize("length", [SMALL.max_input_size + 1, 10 * 1024**3])
def test_declared_body_over_the_limit_is_413_before_any_body_byte(small: ProbeServer, length: int) -> None:
    with Client(small.port) as client:
        client.send(request("POST", "/echo", headers=(("Content-Length", str(length)),)))
        # Not one body byte has been sent: the answer must come from the headers alone.
        reply = client.read_reply(timeout=3)
        assert reply.status == 413
        assert reply.closes
        assert b"--http-max-input-size" in reply.body
        assert client.read_until_close() == b""


def test_chunked_body_over_the_limit_is_413_mid_stream(small: ProbeServer) -> None:
    piece = b"c" * 1000
    with Client(small.port) as client:
        head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),))
        sent, answered = bytes_swallowed_before_answer(client, head, b"%x\r\n%s\r\n" % (len(piece), piece), 64 * 1024)
        assert answered and sent <= SMALL.max_input_size + 4 * 1024
        reply = client.read_reply()
        assert reply.status == 413 and reply.closes


def test_chunked_body_at_the_limit_is_accepted(small: ProbeServer) -> None:
    body = b"d" * SMALL.max_input_size
    with Client(small.port) as client:
        head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),))
        assert client.exchange(head + chunked(body[:2048], body[2048:])).body == body


def test_one_endless_chunk_extension_is_refused_after_bounded_bytes(small: ProbeServer) -> None:
    """Node CVE-2024-22019: a single chunk extension that never ends must not be read forever."""
    with Client(small.port) as client:
        head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),)) + b"5;"
        sent, answered = bytes_swallowed_before_answer(client, head, b"a" * 16384, 1024 * 1024)
        assert answered, "the server kept reading an endless chunk extension"
        assert sent <= 256 * 1024
        assert client.read_reply().status in (400, 413)


def test_many_chunk_extensions_are_refused_after_bounded_bytes(make_server: ServerFactory) -> None:
    server = make_server(limits=Limits(max_chunk_extensions=1024, max_chunks=1_000_000))
    one = b"1;" + b"e" * 200 + b"\r\nx\r\n"
    with Client(server.port) as client:
        head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),))
        sent, answered = bytes_swallowed_before_answer(client, head, one * 20, 4 * 1024 * 1024)
        assert answered and sent <= 256 * 1024
        reply = client.read_reply()
        assert reply.status == 400 and reply.closes


def test_max_chunks_non_empty_chunks_are_accepted(small: ProbeServer) -> None:
    head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),))
    with Client(small.port) as client:
        reply = client.exchange(head + chunked(*[b"z"] * SMALL.max_chunks))
        assert reply.status == 200
        assert reply.body == b"z" * SMALL.max_chunks


def test_more_than_max_chunks_is_400_with_tritons_message(small: ProbeServer) -> None:
    head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),))
    status, body, closes = refused_with(small.port, head + chunked(*[b"z"] * (SMALL.max_chunks + 1)))
    assert (status, closes) == (400, True)
    assert body == (
        b'{"error":"Chunked request body exceeds maximum of 16 non-empty chunks. Send fewer or larger HTTP chunks."}'
    )


# ---------------------------------------------------------------------------- Host and version


def test_http10_without_host_is_accepted(small: ProbeServer) -> None:
    replies = exchange_until_close(small.port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert [r.status for r in replies] == [200]


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /echo HTTP/1.1\r\n\r\n", id="missing"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-different"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", id="two-same"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost:\r\n\r\n", id="empty"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n", id="space"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n", id="slash"),
        pytest.param(b"GET /echo HTTP/1.1\r\nHost: user@a\r\n\r\n", id="userinfo"),
        pytest.param(b'GET /echo HTTP/1.1\r\nHost: a"b\r\n\r\n', id="quote"),
    ],
)
def test_bad_host_is_400(small: ProbeServer, head: bytes) -> None:
    assert refused_with(small.port, head)[::2] == (400, True)


@pytest.mark.parametrize(
    ("line", "allowed"),
    [
        pytest.param(b"GET /echo HTTP/2.0", (505,), id="http2"),
        pytest.param(b"GET /echo HTTP/0.9", (400, 505), id="http09"),
        pytest.param(b"GET /echo HTTP/3.0", (400, 505), id="http3"),
        pytest.param(b"GET /echo HTTP/1.2", (400, 505), id="http12"),
        pytest.param(b"GET /echo", (400, 505), id="no-version"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM", (400, 505), id="h2-preface"),
    ],
)
def test_unsupported_http_version(small: ProbeServer, line: bytes, allowed: tuple[int, ...]) -> None:
    status, _body, closes = refused_with(small.port, line + b"\r\nHost: test\r\n\r\n")
    assert status in allowed and closes


# ---------------------------------------------------------------------------- per-connection bounds


def test_max_requests_per_connection_closes_after_the_last(make_server: ServerFactory) -> None:
    server = make_server(limits=Limits(max_requests_per_connection=3))
    with Client(server.port) as client:
        client.send(b"".join(get(f"/echo?i={index}") for index in range(5)))
        replies = client.replies_until_close()
    assert [r.header("x-query") for r in replies] == ["i=0", "i=1", "i=2"]
    assert [r.closes for r in replies] == [False, False, True]


def test_replies_before_a_close_survive_unread_pipelined_input(make_server: ServerFactory) -> None:
    """Closing with unread input makes the kernel send an RST that destroys undelivered replies.

    The client pipelines past max_requests_per_connection and reads late, so megabytes of
    replies are still in the server's socket buffer when the server decides to close.
    """
    server = make_server(limits=Limits(max_requests_per_connection=200))
    body = b"x" * 16384
    data = b"".join(request("POST", f"/echo?i={index}", body=body) for index in range(300))
    with Client(server.port, timeout=10) as client:
        sender = threading.Thread(target=_send_quietly, args=(client, data), daemon=True)
        sender.start()
        time.sleep(0.3)
        replies = client.replies_until_close()
        sender.join(5)
    assert [r.header("x-query") for r in replies] == [f"i={index}" for index in range(200)]
    assert replies[-1].closes


def _send_quietly(client: Client, data: bytes) -> None:
    try:
        client.send(data)
    except OSError:
        pass  # judged by what the reader gets


def test_oversized_body_sent_without_waiting_still_gets_the_413(small: ProbeServer) -> None:
    """Most clients send the whole body before reading: the 413 must reach them, not a reset."""
    body = b"o" * (16 * 1024 * 1024)
    with Client(small.port, timeout=10) as client:
        client.send(request("POST", "/echo", body=body))
        replies = client.replies_until_close()
    assert [r.status for r in replies] == [413]


def test_connections_beyond_the_cap_get_503(make_server: ServerFactory, connect) -> None:
    server = make_server(limits=Limits(max_connections=2))
    first, second = connect(server), connect(server)
    for client in (first, second):
        assert client.exchange(get("/echo")).status == 200
    with Client(server.port) as third:
        replies = third.replies_until_close()
        assert [r.status for r in replies] == [503]
    first.close()
    deadline = time.monotonic() + 3
    while server.live_connections() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    with Client(server.port) as fourth:
        assert fourth.exchange(get("/echo")).status == 200


def _flood_state(server: ProbeServer) -> list[tuple[int, int, int, bool]]:
    """(kept bytes, queued requests, write buffer, reading paused) of every connection, on its loop thread."""

    def state(conn: HttpConnection) -> tuple[int, int, int, bool]:
        transport = conn._transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return len(conn._flow.stash), len(conn._flow.ready), buffered, conn._flow.read_paused

    result = []
    for conn in server.connections():
        result.append(conn.owner.run_sync(state, conn, timeout=5))
    return result


def test_pipelined_flood_without_reading_stays_bounded(make_server: ServerFactory, connect) -> None:
    limits = Limits(
        read_high_water=64 * 1024,
        max_pipelined_requests=32,
        max_requests_per_connection=100_000,
        head_timeout=3.0,
        keepalive_timeout=3.0,
    )
    server = make_server(limits=limits)
    count = 20_000
    # 1 KiB replies: 20 MiB in all, more than the socket buffers hold, so the server must pause.
    flood = b"".join(get(f"/echo?i={index}&pad=1024") for index in range(count))
    flooder = connect(server, timeout=30)
    sender = threading.Thread(target=flooder.send, args=(flood,), daemon=True)
    sender.start()
    # While the flood is not read, another connection is still served at once.
    other = connect(server)
    peak = (0, 0, 0)
    paused = False
    for _ in range(5):
        assert other.exchange(get("/echo?other")).status == 200
        for kept, queued, buffered, reading_paused in _flood_state(server):
            peak = (max(peak[0], kept), max(peak[1], queued), max(peak[2], buffered))
            paused |= reading_paused
        time.sleep(0.05)
    assert paused, "the flooding connection was never paused"
    assert peak[0] <= limits.read_high_water + ONE_READ
    assert peak[1] <= limits.max_pipelined_requests + PARSE_AHEAD_SLACK
    assert peak[2] <= 4 * 1024 * 1024
    # Reading now lets the rest through, in order.
    for index in range(count):
        reply = flooder.read_reply(timeout=20)
        assert reply.header("x-query") == f"i={index}&pad=1024", (reply.status, reply.body[:100])
    sender.join(timeout=10)
    assert not sender.is_alive()
