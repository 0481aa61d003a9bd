"""Many connections, many client threads, pipelined inference: every reply is the answer to its own request.

Why: with N loop threads, two model instances and the defer path between them, a race shows up as
a reply delivered to the wrong connection, a lost or doubled reply, a torn statistic or a counter
that drifts. On a free-threaded build the loop threads, workers and client threads all run at
once, so this is the run that finds such races (CI runs it on 3.14t; ``.ci/race-stress`` repeats
it). Each request carries inputs unique to it, so a mixed-up reply cannot pass; afterwards the
server's statistics and per-thread request counters must add up exactly.

The server runs in this process (as in test_affinity.py) so the counters can be read directly;
the clients are raw keep-alive sockets (tests/wire.py), one per connection.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from evserve.gpu.options import ModelManagerOptions
from evserve.server.app import Server
from evserve.server.config import Config
from tests.wire import Client, request

LOOP_THREADS = 4
CLIENT_THREADS = 8
CONNECTIONS = 48
ROUNDS = 25
PIPELINE = 3  # requests written back to back on one connection before reading the replies


@pytest.fixture()
def server() -> Iterator[Server]:
    config = Config(
        http_address="127.0.0.1", http_port=0, metrics_port=0, threads=LOOP_THREADS, cap_threads_to_cores=False,
        model_repositories=(EXAMPLE_REPOSITORY,),
        models=ModelManagerOptions(control_mode="explicit", startup_models=("simple",)),
    )
    srv = Server(config)
    srv.start()
    assert srv.manager.wait_startup(30)
    yield srv
    srv.stop()


def simple_request(tag: int) -> tuple[bytes, list[int], list[int]]:
    """A request for `simple` whose inputs (and so outputs) are unique to ``tag``."""
    a = [tag * 16 + i for i in range(16)]
    b = [(tag % 7) - i for i in range(16)]
    body = json.dumps({"id": str(tag), "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b},
    ]}).encode()
    expected_sum = [x + y for x, y in zip(a, b, strict=True)]
    expected_diff = [x - y for x, y in zip(a, b, strict=True)]
    return request("POST", "/v2/models/simple/infer", body=body), expected_sum, expected_diff


def drive(port: int, connection: int) -> int:
    """One connection: ROUNDS bursts of PIPELINE pipelined requests, every reply checked."""
    answered = 0
    with Client(port, timeout=30) as client:
        for round_no in range(ROUNDS):
            tags = [(connection * ROUNDS + round_no) * PIPELINE + k for k in range(PIPELINE)]
            built = [simple_request(tag) for tag in tags]
            client.send(b"".join(raw for raw, _, _ in built))
            replies = client.read_replies(PIPELINE)
            for tag, (_, expected_sum, expected_diff), reply in zip(tags, built, replies, strict=True):
                assert reply.status == 200, reply.body
                doc = json.loads(reply.body)
                assert doc["id"] == str(tag), f"connection {connection} got the reply to request {doc['id']}"
                outputs = {out["name"]: out["data"] for out in doc["outputs"]}
                assert outputs == {"OUTPUT0": expected_sum, "OUTPUT1": expected_diff}
                answered += 1
    return answered


def test_every_reply_answers_its_own_request_and_the_counters_add_up(server: Server) -> None:
    port = server.api.port
    before = sum(loop.requests for loop in server.api.loops)
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        answered = sum(pool.map(lambda n: drive(port, n), range(CONNECTIONS)))

    total = CONNECTIONS * ROUNDS * PIPELINE
    assert answered == total
    assert sum(loop.requests for loop in server.api.loops) - before == total
    with Client(port) as client:
        stats = json.loads(client.exchange(request("GET", "/v2/models/simple/stats")).body)
    entry = stats["model_stats"][0]
    assert entry["inference_count"] == total
    assert entry["inference_stats"]["success"]["count"] == total
    assert entry["inference_stats"]["fail"]["count"] == 0


def test_client_threads_share_nothing_but_the_server(server: Server) -> None:
    """The same load, every connection opened at once by its own thread: a burst of accepts
    racing the balancer while the first inferences already run."""
    port = server.api.port
    start = threading.Barrier(CONNECTIONS)
    results: list[int] = []
    errors: list[BaseException] = []

    def one(connection: int) -> None:
        try:
            start.wait()
            results.append(drive(port, connection))
        except BaseException as exc:  # reported below, with the connection's own message
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]
    assert sum(results) == CONNECTIONS * ROUNDS * PIPELINE
