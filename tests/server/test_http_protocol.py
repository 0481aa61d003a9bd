"""HTTP/1.1 semantics of HttpConnection, black-box over real sockets: keep-alive, HEAD, pipelining, bodies.

Each test writes literal bytes and checks the literal reply, in nginx-tests style. Replies are
parsed strictly (tests/wire.py), so a reply with a stray body, a missing one or a second reply
where none belongs shows up as a parse error or a count mismatch.
"""

from __future__ import annotations

import pytest

import evserve.server.loop_thread as loop_thread
from evserve.server.config import Limits
from evserve.server.loop_thread import OwnershipError
from tests.server.conftest import OWNERSHIP, ProbeServer, ServerFactory, TransportSpy
from tests.wire import chunked, get, request


def test_http11_keeps_the_connection_open_by_default(any_server: ProbeServer, connect) -> None:
    client = connect(any_server)
    for index in range(3):
        reply = client.exchange(get(f"/echo?i={index}"))
        assert reply.status == 200
        assert reply.header("x-query") == f"i={index}"
        assert not reply.closes
    assert not client.readable(0.2), "the server closed (or wrote to) an idle keep-alive connection at once"


def test_http10_closes_after_the_reply_unless_asked(server: ProbeServer, connect) -> None:
    client = connect(server)
    client.send(b"GET /echo HTTP/1.0\r\n\r\n")
    replies = client.replies_until_close()
    assert [r.status for r in replies] == [200]
    assert replies[0].closes
    assert replies[0].header("x-version") == "1.0"


def test_http10_keep_alive_is_honoured(server: ProbeServer, connect) -> None:
    client = connect(server)
    first = client.exchange(b"GET /echo?n=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert first.status == 200 and not first.closes
    second = client.exchange(b"GET /echo?n=2 HTTP/1.0\r\n\r\n")
    assert second.header("x-query") == "n=2"
    assert second.closes
    assert client.read_until_close() == b""


def test_http10_keep_alive_reply_says_keep_alive(server: ProbeServer, connect) -> None:
    """An HTTP/1.0 client keeps the connection only if the reply says so (ab -k, 1.0 proxies; evhtp does)."""
    client = connect(server)
    reply = client.exchange(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert (reply.header("connection") or "").lower() == "keep-alive"


def test_connection_close_is_honoured(server: ProbeServer, connect) -> None:
    client = connect(server)
    client.send(get("/echo", ("Connection", "close")))
    replies = client.replies_until_close()
    assert [r.status for r in replies] == [200]
    assert replies[0].closes


def test_head_has_a_content_length_and_no_body(server: ProbeServer, connect) -> None:
    client = connect(server)
    client.send(request("HEAD", "/hello") + get("/hello"))
    head = client.read_reply(head=True)
    assert head.status == 200
    assert head.header("content-length") == str(len(b"hello, world"))
    # Had the server sent the body after the HEAD reply, this would parse "hello, world" as a status line.
    following = client.read_reply()
    assert following.body == b"hello, world"


def test_unknown_path_is_404_and_the_connection_stays(server: ProbeServer, connect) -> None:
    client = connect(server)
    assert client.exchange(get("/nowhere")).status == 404
    assert client.exchange(get("/echo")).status == 200


def test_pipelined_slow_and_fast_requests_are_answered_in_order(any_server: ProbeServer, connect) -> None:
    targets = ["/slow?ms=150&id=0", "/echo?id=1", "/slow?ms=10&id=2", "/echo?id=3", "/slow?ms=60&id=4", "/echo?id=5"]
    client = connect(any_server)
    client.send(b"".join(get(target) for target in targets))
    replies = client.read_replies(len(targets))
    assert [r.header("x-query") for r in replies] == [target.split("?")[1] for target in targets]
    assert all(r.status == 200 for r in replies)


@pytest.mark.parametrize("first", ["/echo?i=first", "/slow?ms=50&i=first"])
def test_two_hundred_pipelined_gets_in_one_send(server: ProbeServer, connect, first: str) -> None:
    client = connect(server)
    client.send(get(first) + b"".join(get(f"/echo?i={index}") for index in range(199)))
    replies = client.read_replies(200, timeout=3)
    assert [r.header("x-query") for r in replies] == [first.split("?")[1]] + [f"i={index}" for index in range(199)]


def test_content_length_body_is_delivered_whole(server: ProbeServer, connect) -> None:
    client = connect(server)
    body = bytes(range(256)) * 40
    client.send(request("POST", "/echo", body=body)[: -len(body)])
    for offset in range(0, len(body), 3000):
        client.send(body[offset : offset + 3000])
    reply = client.read_reply()
    assert reply.body == body
    assert reply.header("x-method") == "POST"
    assert client.exchange(request("POST", "/echo", headers=(("Content-Length", "0"),))).body == b""


def test_chunked_body_is_reassembled(server: ProbeServer, connect) -> None:
    client = connect(server)
    head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),))
    body = b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    reply = client.exchange(head + body)
    assert reply.body == b"hello world"


def test_chunked_body_with_trailers_keeps_the_framing(server: ProbeServer, connect) -> None:
    client = connect(server)
    head = request("POST", "/echo", headers=(("Transfer-Encoding", "chunked"),))
    body = chunked(b"abc", b"defg", trailers=b"X-Checksum: 1234\r\nX-Other: 5\r\n")
    client.send(head + body + get("/echo?after=trailers"))
    first, second = client.read_replies(2)
    assert first.body == b"abcdefg"
    assert second.header("x-query") == "after=trailers"


def test_expect_100_continue_comes_before_the_body(server: ProbeServer, connect) -> None:
    client = connect(server)
    client.send(request("POST", "/echo", headers=(("Expect", "100-continue"), ("Content-Length", "5"))))
    interim = client.read_reply()
    assert interim.status == 100
    client.send(b"hello")
    final = client.read_reply()
    assert (final.status, final.body) == (200, b"hello")


def test_expect_100_continue_is_not_sent_for_a_body_that_will_be_refused(make_server: ServerFactory, connect) -> None:
    server = make_server(limits=Limits(max_input_size=1024))
    client = connect(server)
    client.send(request("POST", "/echo", headers=(("Expect", "100-continue"), ("Content-Length", "1025"))))
    replies = client.replies_until_close()
    assert [r.status for r in replies] == [413]


def test_expect_100_continue_waits_for_the_reply_before_it(server: ProbeServer, connect) -> None:
    """The 100 of a pipelined request must not overtake the reply still owed to the request before it."""
    client = connect(server)
    expect = request("POST", "/echo", headers=(("Expect", "100-continue"), ("Content-Length", "2")))
    client.send(get("/slow?ms=150&id=first") + expect)
    assert client.read_reply().header("x-query") == "ms=150&id=first"
    assert client.read_reply().status == 100
    client.send(b"ok")
    assert client.read_reply().body == b"ok"


def test_no_100_continue_for_a_body_that_arrived_with_its_head(server: ProbeServer, connect) -> None:
    """A client may send the body without waiting; then no 100 is owed, not even after the reply."""
    client = connect(server)
    expect = request("POST", "/echo", headers=(("Expect", "100-continue"), ("Content-Length", "2")))
    client.send(get("/slow?ms=100&id=first") + expect + b"ok")
    first, second = client.read_replies(2)
    assert first.header("x-query") == "ms=100&id=first"
    assert (second.status, second.body) == (200, b"ok")
    assert client.exchange(get("/echo?after=expect")).header("x-query") == "after=expect"
    assert not client.readable(0.2), "a stray interim reply followed the final ones"


def test_streamed_reply_is_chunked_and_keeps_the_connection(any_server: ProbeServer, connect) -> None:
    client = connect(any_server)
    reply = client.exchange(get("/stream?n=4&ms=5"))
    assert reply.status == 200
    assert reply.chunked and reply.header("content-length") is None
    assert reply.chunks == [b"part %d\n" % index for index in range(4)]
    assert not reply.closes
    assert client.exchange(get("/echo?after=stream")).header("x-query") == "after=stream"


def test_streamed_reply_to_a_closing_request_closes(server: ProbeServer, connect) -> None:
    client = connect(server)
    client.send(get("/stream?n=2&ms=5", ("Connection", "close")))
    replies = client.replies_until_close()
    assert [r.chunks for r in replies] == [[b"part 0\n", b"part 1\n"]]
    assert replies[0].closes


def test_replies_are_written_only_by_the_owning_loop_thread(any_server: ProbeServer, connect) -> None:
    """Inline, paused and streamed replies all reach the transport on the connection's own thread.

    The TransportSpy (conftest) records the thread of every write; the autouse fixture fails the
    test on any violation. Here we also check that the spy really was in the path.
    """
    assert loop_thread.DEBUG_OWNERSHIP
    writes_before = OWNERSHIP.writes
    client = connect(any_server)
    client.send(get("/slow?ms=20") + get("/stream?n=3&ms=5") + get("/echo"))
    assert [r.status for r in client.read_replies(3)] == [200, 200, 200]
    assert OWNERSHIP.writes - writes_before >= 3
    connections = any_server.connections()
    assert connections and all(isinstance(conn._transport, TransportSpy) for conn in connections)
    assert OWNERSHIP.violations == []


def test_the_ownership_checks_can_fail(server: ProbeServer) -> None:
    """Negative control: the same checks, called from the test thread, do report a violation."""
    owner = server.loops[0]
    with pytest.raises(OwnershipError):
        owner.assert_owner()
    OWNERSHIP.record(owner, "write")
    assert len(OWNERSHIP.violations) == 1
    OWNERSHIP.violations.clear()


def test_absolute_form_target_is_served(server: ProbeServer, connect) -> None:
    """RFC 9112 §3.2.2: a server must accept the absolute form and route on its path."""
    client = connect(server)
    client.send(b"GET http://example.test/echo?x=1 HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert client.read_reply().status == 200
