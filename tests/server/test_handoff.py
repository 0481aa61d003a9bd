"""The hand-off contract: pause on the loop thread, answer from another thread, written by the owner.

A paused request is answered by a thread-pool worker through ``Ticket.finish``; the reply must
come back whole and in order, on the connection's own loop thread (the conftest spy checks
every write). While paused the connection keeps listening: a client that leaves cancels its
ticket (Triton issue 7077) and the late reply is dropped without an error, and bytes the client
pipelines meanwhile are kept (bounded) and answered afterwards.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from evserve.server.config import Limits
from evserve.server.exchange import Response
from tests.server.conftest import ONE_READ, PARSE_AHEAD_SLACK, ProbeServer, ServerFactory
from tests.wire import Client, get


def _client_session(port: int, client_id: int, rounds: int) -> list[str]:
    """One keep-alive client doing ``rounds`` slow requests, the last pair pipelined."""
    bodies = []
    with Client(port, timeout=15) as client:
        for index in range(rounds - 2):
            reply = client.exchange(get(f"/slow?ms=20&c={client_id}&r={index}"))
            bodies.append(reply.body.decode())
        client.send(get(f"/slow?ms=30&c={client_id}&r={rounds - 2}") + get(f"/slow?ms=1&c={client_id}&r={rounds - 1}"))
        bodies += [reply.body.decode() for reply in client.read_replies(2)]
    return bodies


def test_many_concurrent_clients_with_slow_requests(any_server: ProbeServer) -> None:
    clients, rounds = 50, 4
    with ThreadPoolExecutor(clients) as pool:
        sessions = list(pool.map(lambda c: _client_session(any_server.port, c, rounds), range(clients)))
    for client_id, bodies in enumerate(sessions):
        assert bodies == [
            f"slow ms={20 if r < rounds - 2 else (30 if r == rounds - 2 else 1)}&c={client_id}&r={r} "
            for r in range(rounds)
        ]


def _wait_probe(server: ProbeServer, probe_id: str) -> bool:
    probe = server.probes[probe_id]
    assert probe.done.wait(8), "the probe worker never finished"
    return probe.cancelled


def _paused_probe(server: ProbeServer, probe_id: str, extra: bytes = b"") -> Client:
    client = Client(server.port)
    client.send(get(f"/cancel-probe?id={probe_id}&wait=2") + extra)
    assert server.wait_arrivals(1) == [f"/cancel-probe?id={probe_id}&wait=2"]
    return client


def test_reset_while_paused_cancels_the_ticket(any_server: ProbeServer) -> None:
    _paused_probe(any_server, "rst").abort()
    assert _wait_probe(any_server, "rst") is True
    # The server is unharmed: the late reply was dropped and the connection released.
    with Client(any_server.port) as client:
        assert client.exchange(get("/echo")).status == 200


def test_close_while_paused_cancels_the_ticket(server: ProbeServer) -> None:
    """A FIN from a client waiting for its reply means it has gone (nginx: 499); the work is cancelled."""
    _paused_probe(server, "fin").close()
    assert _wait_probe(server, "fin") is True


def test_reset_while_paused_with_a_full_read_buffer_cancels_the_ticket(make_server: ServerFactory) -> None:
    """Even when reading has paused at the high-water mark, a client that leaves must be noticed."""
    limits = Limits(read_high_water=8 * 1024, max_pipelined_requests=4)
    server = make_server(limits=limits)
    flood = b"".join(get(f"/echo?i={index}") for index in range(2000))
    client = _paused_probe(server, "full", flood)
    time.sleep(0.2)  # let the server read up to its high-water mark and pause reading
    client.abort()
    assert _wait_probe(server, "full") is True


def test_reply_to_a_cancelled_ticket_is_dropped_quietly(server: ProbeServer) -> None:
    before = server.live_connections()
    _paused_probe(server, "late").abort()
    assert _wait_probe(server, "late") is True
    probe = server.probes["late"]
    # The worker answered after the cancel; answering again must be just as harmless.
    probe.ticket.finish(Response(200))
    deadline = time.monotonic() + 3
    while server.live_connections() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.live_connections() == before


def test_ticket_is_not_cancelled_while_the_client_waits(server: ProbeServer) -> None:
    client = Client(server.port)
    with client:
        client.send(get("/cancel-probe?id=stay&wait=0.3"))
        server.wait_arrivals(1)
        assert _wait_probe(server, "stay") is False
        # Its reply ("too late") is delivered: the client never left.
        assert client.read_reply().body == b"too late"


def test_pipelined_bytes_sent_while_paused_are_answered_after(any_server: ProbeServer) -> None:
    with Client(any_server.port) as client:
        client.send(get("/slow?ms=300&id=paused"))
        assert any_server.wait_arrivals(1) == ["/slow?ms=300&id=paused"]
        for index in range(3):
            client.send(get(f"/echo?id={index}"))
            time.sleep(0.02)
        # Nothing behind a paused request reaches a handler before its reply is written.
        assert any_server.arrivals.empty()
        replies = client.read_replies(4)
        assert [r.header("x-query") for r in replies] == ["ms=300&id=paused", "id=0", "id=1", "id=2"]


def _connection_queue(server: ProbeServer) -> tuple[int, int]:
    (conn,) = server.connections()
    return conn.owner.run_sync(lambda: (len(conn._flow.ready), len(conn._flow.stash)), timeout=5)


def test_bytes_kept_while_paused_are_bounded(make_server: ServerFactory) -> None:
    limits = Limits(read_high_water=16 * 1024, max_pipelined_requests=8, head_timeout=3.0)
    server = make_server(limits=limits)
    count = 3000
    with Client(server.port, timeout=15) as client:
        client.send(get("/slow?ms=600&id=paused"))
        server.wait_arrivals(1)
        sender = threading.Thread(
            target=client.send, args=(b"".join(get(f"/echo?i={index}") for index in range(count)),), daemon=True
        )
        sender.start()
        time.sleep(0.2)
        queued, kept = _connection_queue(server)
        assert queued <= limits.max_pipelined_requests + PARSE_AHEAD_SLACK
        assert kept <= limits.read_high_water + ONE_READ
        assert server.arrivals.empty()
        replies = client.read_replies(count + 1)
        assert replies[0].header("x-query") == "ms=600&id=paused"
        assert [r.header("x-query") for r in replies[1:]] == [f"i={index}" for index in range(count)]
        sender.join(5)


@pytest.mark.parametrize("threads", [1, 3])
def test_finish_from_many_threads_at_once(make_server: ServerFactory, threads: int) -> None:
    """Replies finished concurrently by many workers each reach their own connection."""
    server = make_server(threads=threads)
    clients = [Client(server.port) for _ in range(30)]
    try:
        for index, client in enumerate(clients):
            client.send(get(f"/slow?ms=50&id={index}"))
        for index, client in enumerate(clients):
            assert client.read_reply().header("x-query") == f"ms=50&id={index}"
    finally:
        for client in clients:
            client.close()
