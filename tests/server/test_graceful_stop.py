"""Graceful stop (DESIGN.md rule 6): refuse new connections, finish what is in flight, then close.

Triton on SIGINT resets new connections, lets open ones finish, and waits up to
``--exit-timeout-secs``. Here ``stop(timeout)`` runs on another thread while requests are in
flight; the time bounds are generous upper bounds (and one lower bound: stop must really wait
for a request that never ends).
"""

from __future__ import annotations

import socket
import threading
import time

from evserve.server.exchange import Response
from tests.server.conftest import ProbeServer, ServerFactory
from tests.wire import Client, get


class Stopper:
    """Runs ``server.stop(timeout)`` on a thread and records how long it took."""

    def __init__(self, server: ProbeServer, timeout: float) -> None:
        self.took: float | None = None
        self._thread = threading.Thread(target=self._run, args=(server, timeout), daemon=True)
        self._thread.start()

    def _run(self, server: ProbeServer, timeout: float) -> None:
        start = time.monotonic()
        server.stop(timeout)
        self.took = time.monotonic() - start

    def join(self, timeout: float) -> float:
        self._thread.join(timeout)
        assert self.took is not None, "stop() did not return"
        return self.took


def wait_until_refusing(server: ProbeServer) -> None:
    """stop() runs on another thread: connections made before it flips the flag may be served."""
    deadline = time.monotonic() + 2.0
    while server.accepting and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not server.accepting


def refused_within(port: int, seconds: float) -> None:
    """A new connection must be refused (or reset unanswered) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client = Client(port, timeout=1)
        except (ConnectionRefusedError, ConnectionResetError):
            # A reset during connect is a refusal too: the SYN sat in the backlog of a listener
            # that closed before accepting it.
            return
        with client:
            try:
                client.send(get("/echo?new"))
                data = client.read_until_close(timeout=1)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            assert data == b"", f"a new connection was served during the drain: {data[:80]!r}"
        time.sleep(0.01)
    raise AssertionError(f"new connections were still accepted {seconds} s after stop() began")


def test_stop_drains_in_flight_refuses_new_and_closes_idle(make_server: ServerFactory) -> None:
    server = make_server(threads=2)
    with Client(server.port) as idle, Client(server.port) as busy:
        assert idle.exchange(get("/echo")).status == 200
        busy.send(get("/slow?ms=1000&id=busy"))
        server.wait_arrivals(2)
        stopper = Stopper(server, timeout=10)
        wait_until_refusing(server)
        refused_within(server.port, 1.0)
        # The idle keep-alive connection is closed at once, long before the slow reply.
        assert idle.read_until_close(timeout=0.8) == b""
        reply = busy.read_reply(timeout=5)
        assert (reply.status, reply.body) == (200, b"slow ms=1000&id=busy ")
        assert reply.closes
        assert busy.read_until_close(timeout=2) == b""
        assert stopper.join(6) < 5


def test_stream_in_flight_completes_during_stop(make_server: ServerFactory) -> None:
    server = make_server()
    with Client(server.port) as client:
        client.send(get("/stream?n=5&ms=100"))
        server.wait_arrivals(1)
        stopper = Stopper(server, timeout=10)
        replies = client.replies_until_close()
        # The head went out before the stop, so only the close after the last chunk tells.
        assert [r.chunks for r in replies] == [[b"part %d\n" % index for index in range(5)]]
        assert stopper.join(6) < 5


def test_request_half_received_at_stop_is_still_answered(make_server: ServerFactory) -> None:
    server = make_server()
    with Client(server.port) as client:
        data = get("/echo?late")
        client.send(data[:12])
        time.sleep(0.1)
        stopper = Stopper(server, timeout=10)
        time.sleep(0.2)
        client.send(data[12:])
        replies = client.replies_until_close()
        assert [r.header("x-query") for r in replies] == ["late"]
        assert replies[0].closes
        assert stopper.join(6) < 5


def test_stop_gives_up_at_the_timeout_and_aborts(make_server: ServerFactory) -> None:
    server = make_server()
    timeout = 1.0
    with Client(server.port) as client:
        client.send(get("/never"))
        server.wait_arrivals(1)
        took = Stopper(server, timeout=timeout).join(timeout + 6)
        assert timeout * 0.9 <= took < timeout + 3
        # The connection was aborted without a reply.
        assert client.read_until_close(timeout=2) == b""
    # A worker that answers after the stop finds no one to answer, and no error.
    (ticket,) = server.held
    ticket.finish(Response(200))
    assert ticket.cancelled()


def test_stop_of_an_idle_server_is_quick_and_complete(make_server: ServerFactory) -> None:
    server = make_server(threads=3)
    port = server.port
    with Client(port) as client:
        assert client.exchange(get("/echo")).status == 200
        took = Stopper(server, timeout=10).join(6)
        assert took < 2
        assert client.read_until_close(timeout=1) == b""
    assert server.live_connections() == 0
    assert all(thread.stop(timeout=0) for thread in server.loops), "a loop thread is still running"
    probe = socket.socket()
    try:
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        probe.close()


def test_connection_accepted_just_before_stop_is_drained_too(make_server: ServerFactory) -> None:
    """A socket accepted before stop() but not yet attached by its loop thread must still be drained.

    The loop thread is held busy for a moment so that the hand-over of the new socket and the
    drain order are queued together, the order they can take in production under load.
    """
    server = make_server(threads=1)
    server.loops[0].defer(time.sleep, 0.3)
    with Client(server.port) as client:
        deadline = time.monotonic() + 2
        while server.live_connections() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert server.live_connections() == 1, "the acceptor did not take the connection"
        took = Stopper(server, timeout=2).join(8)
        assert took < 1.5, "stop() waited for its whole timeout on an idle connection"
        assert client.read_until_close(timeout=1) == b""
