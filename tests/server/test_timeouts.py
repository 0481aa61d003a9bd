"""Deadlines (RELIABILITY.md §3 rows 6-8): slowloris heads, stalled and trickled bodies, idle keep-alive.

The deadlines are half a second here, so every hostile client must be cut within a few seconds;
the bounds asserted are generous upper bounds only. The other half of the contract is that
time spent waiting for the *server* (a paused request, a stream, a request queued behind
one) never counts against the client.
"""

from __future__ import annotations

import time

import pytest

from evserve.server.config import Limits
from tests.server.conftest import ProbeServer, ServerFactory
from tests.wire import Client, get, parse_all, request

TIMEOUT = 0.5
SHORT = Limits(head_timeout=TIMEOUT, body_timeout=TIMEOUT, keepalive_timeout=TIMEOUT, body_min_rate=1000)
# Generous: the deadline, the loop's tick and a loaded 2-core machine.
CUT_WITHIN = 3.0
CLOCK_RESTARTS_LATE = (
    "server bug: the phase clock restarts in the deferred _resume, not when the reply is written; "
    "a tick in between times out the connection for the time it spent paused"
)


@pytest.fixture
def short(make_server: ServerFactory) -> ProbeServer:
    return make_server(limits=SHORT)


def trickle(client: Client, data: bytes, gap: float, limit: float) -> tuple[int, float]:
    """Send ``data`` one byte every ``gap`` seconds until the server answers or closes.

    Returns (bytes sent, seconds taken); stops at ``limit`` seconds.
    """
    start = time.monotonic()
    for sent in range(len(data)):
        if client.readable(gap) or time.monotonic() - start > limit:
            return sent, time.monotonic() - start
        try:
            client.send(data[sent : sent + 1])
        except (BrokenPipeError, ConnectionResetError):
            return sent, time.monotonic() - start
    return len(data), time.monotonic() - start


def timed_out(client: Client) -> None:
    """The server ended the exchange: nothing, or a 408 alone; then the close."""
    replies = parse_all(client.read_until_close(timeout=CUT_WITHIN))
    assert [r.status for r in replies] in ([], [408])


def test_connection_that_never_speaks_is_closed(short: ProbeServer) -> None:
    with Client(short.port) as client:
        start = time.monotonic()
        timed_out(client)
        assert time.monotonic() - start < CUT_WITHIN


def test_head_trickle_is_cut_at_the_head_deadline(short: ProbeServer) -> None:
    """One byte every 100 ms: each byte is 'activity', but the head deadline is a total, not an idle timer."""
    data = get("/echo", ("X-Padding", "p" * 20))
    with Client(short.port) as client:
        sent, took = trickle(client, data, gap=0.1, limit=CUT_WITHIN + 0.2)
        assert sent < len(data), f"the whole trickled head was accepted after {took:.1f} s"
        assert took < CUT_WITHIN
        timed_out(client)


def test_partial_head_then_silence_is_cut(short: ProbeServer) -> None:
    with Client(short.port) as client:
        client.send(b"GET /echo HTTP/1.1\r\nHost: te")
        timed_out(client)


def test_stalled_body_is_408(short: ProbeServer) -> None:
    with Client(short.port) as client:
        client.send(request("POST", "/echo", headers=(("Content-Length", "100"),)) + b"x" * 10)
        reply = client.read_reply(timeout=CUT_WITHIN)
        assert reply.status == 408 and reply.closes
        assert client.read_until_close() == b""


def test_stalled_chunked_body_is_408(short: ProbeServer) -> None:
    with Client(short.port) as client:
        client.send(request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),)) + b"5\r\nhel")
        assert client.read_reply(timeout=CUT_WITHIN).status == 408


def test_body_trickled_below_the_minimum_rate_is_408(short: ProbeServer) -> None:
    """Every gap (50 ms) is under the idle limit; the average rate (20 B/s) is far under 1000 B/s."""
    with Client(short.port) as client:
        client.send(request("POST", "/echo", headers=(("Content-Length", "1000"),)))
        sent, took = trickle(client, b"y" * 1000, gap=0.05, limit=CUT_WITHIN + 0.2)
        assert sent < 1000 and took < CUT_WITHIN
        assert client.read_reply().status == 408


def test_body_at_a_decent_rate_outlives_the_body_timeout(short: ProbeServer) -> None:
    """Control for the minimum rate: 16 pieces of 2 KiB over ~0.8 s (about 40 KiB/s) are accepted."""
    body = b"z" * (16 * 2048)
    with Client(short.port) as client:
        client.send(request("POST", "/echo", headers=(("Content-Length", str(len(body))),)))
        for offset in range(0, len(body), 2048):
            time.sleep(0.05)
            client.send(body[offset : offset + 2048])
        reply = client.read_reply()
        assert reply.status == 200 and reply.body == body


def test_idle_keep_alive_is_closed_silently(short: ProbeServer) -> None:
    with Client(short.port) as client:
        assert client.exchange(get("/echo")).status == 200
        assert client.read_until_close(timeout=CUT_WITHIN) == b""


def test_active_keep_alive_is_not_closed(short: ProbeServer) -> None:
    with Client(short.port) as client:
        for index in range(5):
            time.sleep(TIMEOUT * 0.5)
            assert client.exchange(get(f"/echo?i={index}")).status == 200


def test_paused_request_is_not_timed_out(short: ProbeServer) -> None:
    with Client(short.port) as client:
        reply = client.exchange(get(f"/slow?ms={int(TIMEOUT * 3000)}"))
        assert reply.status == 200


def test_deadline_check_just_after_a_paused_reply_keeps_the_connection(short: ProbeServer) -> None:
    """The time spent paused must not count as keep-alive idle time once the reply is out."""
    with Client(short.port) as client:
        assert client.exchange(get(f"/slow-then-tick?ms={int(TIMEOUT * 2000)}")).status == 200
        assert client.exchange(get("/echo")).status == 200


def test_long_stream_is_not_timed_out(short: ProbeServer) -> None:
    with Client(short.port) as client:
        reply = client.exchange(get(f"/stream?n=5&ms={int(TIMEOUT * 400)}"))
        assert len(reply.chunks) == 5


def test_request_queued_behind_a_paused_one_is_not_timed_out(short: ProbeServer) -> None:
    """Pipelined head with Expect: its body clock may start only once its 100 Continue has been sent."""
    with Client(short.port) as client:
        expect = request("POST", "/echo", headers=(("Expect", "100-continue"), ("Content-Length", "4")))
        client.send(get(f"/slow?ms={int(TIMEOUT * 3000)}") + expect)
        assert client.read_reply().status == 200
        assert client.read_reply().status == 100
        time.sleep(TIMEOUT * 0.6)  # well within the body deadline, counted from the 100
        client.send(b"body")
        reply = client.read_reply()
        assert (reply.status, reply.body) == (200, b"body")


def test_partial_head_queued_behind_a_paused_request_gets_its_full_deadline(short: ProbeServer) -> None:
    """The rest of a pipelined head sent just after the paused reply arrives is still accepted.

    /slow-then-tick runs a deadline check right after the reply, where the loop's tick may land.
    """
    with Client(short.port) as client:
        second = get("/echo?second")
        client.send(get(f"/slow-then-tick?ms={int(TIMEOUT * 3000)}") + second[:10])
        assert client.read_reply().status == 200
        time.sleep(TIMEOUT * 0.4)
        client.send(second[10:])
        assert client.read_reply().header("x-query") == "second"
