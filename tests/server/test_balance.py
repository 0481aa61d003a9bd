"""Balance (DESIGN.md rule 4): no loop thread holds more than one connection above another.

Triton's evhtp picks the first idle worker, so a handful of keep-alive clients all land on
worker 0. Here every connection is adopted (one request answered on it) and kept open, then
the per-thread counts must be the floor or the ceiling of connections / threads. A connection
also stays on its thread for life: /whoami answers with the index of the loop thread that
runs the handler.
"""

from __future__ import annotations

import time

import pytest

from tests.server.conftest import ServerFactory
from tests.wire import Client, get


def open_adopted(port: int, count: int) -> tuple[list[Client], list[int]]:
    """Open ``count`` keep-alive connections, one /whoami on each; return them and their thread indices."""
    clients = [Client(port) for _ in range(count)]
    indices = []
    for client in clients:
        reply = client.exchange(get("/whoami"))
        assert reply.status == 200 and not reply.closes
        indices.append(int(reply.body))
    return clients, indices


def wait_live(server, count: int) -> None:
    deadline = time.monotonic() + 3
    while server.live_connections() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.live_connections() == count


@pytest.mark.parametrize("threads", [2, 4])
@pytest.mark.parametrize("per_thread", [1, 4], ids=lambda n: f"{n}x")
def test_connections_are_spread_evenly(make_server: ServerFactory, threads: int, per_thread: int) -> None:
    server = make_server(threads=threads)
    clients, indices = open_adopted(server.port, per_thread * threads)
    try:
        stats = server.thread_stats()
        assert [s.index for s in stats] == list(range(threads))
        assert [s.live_connections for s in stats] == [per_thread] * threads
        assert sorted(indices) == sorted(list(range(threads)) * per_thread)
        assert sum(s.requests for s in stats) == per_thread * threads
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(("threads", "count"), [(2, 5), (4, 7), (4, 9), (3, 10)])
def test_uneven_counts_are_floor_or_ceiling(make_server: ServerFactory, threads: int, count: int) -> None:
    server = make_server(threads=threads)
    clients, indices = open_adopted(server.port, count)
    try:
        live = [s.live_connections for s in server.thread_stats()]
        assert sum(live) == count
        assert set(live) <= {count // threads, -(-count // threads)}
        assert max(live) - min(live) <= 1
        assert [indices.count(index) for index in range(threads)] == live
    finally:
        for client in clients:
            client.close()


def test_closed_connections_are_released_and_new_ones_fill_the_gap(make_server: ServerFactory) -> None:
    server = make_server(threads=4)
    clients, indices = open_adopted(server.port, 8)
    try:
        # Close both connections of one thread: the next two connections must go there.
        emptied = indices[0]
        for client, index in zip(clients, indices, strict=True):
            if index == emptied:
                client.close()
        wait_live(server, 6)
        assert server.thread_stats()[emptied].live_connections == 0
        more, new_indices = open_adopted(server.port, 2)
        clients += more
        assert new_indices == [emptied, emptied]
    finally:
        for client in clients:
            client.close()
    wait_live(server, 0)


@pytest.mark.parametrize("threads", [2, 4])
def test_a_connection_stays_on_its_thread(make_server: ServerFactory, threads: int) -> None:
    server = make_server(threads=threads)
    clients, indices = open_adopted(server.port, 2 * threads)
    try:
        for _ in range(3):
            for client, index in zip(clients, indices, strict=True):
                # Mix inline and paused requests: the reply of a paused one is written by the same thread.
                client.send(get("/slow?ms=1") + get("/whoami"))
                slow, whoami = client.read_replies(2)
                assert slow.status == 200
                assert int(whoami.body) == index
    finally:
        for client in clients:
            client.close()
