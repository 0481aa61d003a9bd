"""Thread affinity of inference: execute runs on a worker, the reply is written by the owning loop.

The whole server runs in this process so the test can watch threads: every reply write is
recorded with the thread that made it and the loop thread that owns the connection, and
the model reports the thread its ``execute`` ran on. The client is a raw keep-alive socket per
connection (tests/wire.py), so this runs on a free-threaded build too, where the loop threads
really run at once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from evserve.server import loop_thread
from evserve.server.app import Server
from evserve.server.config import Config
from evserve.server.connection import HttpConnection
from tests.wire import Client, request

WHERE_MODEL = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        ident = np.array([threading.get_ident()], dtype=np.uint64)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("THREAD", ident)]) for _ in requests]
"""

WHERE_CONFIG = """
name: "where"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "THREAD" data_type: TYPE_UINT64 dims: [ 1 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


# A decoupled model that streams three responses, each naming the thread that sent it.
WHERE_STREAM_MODEL = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for _ in range(3):
                ident = np.array([threading.get_ident()], dtype=np.uint64)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("THREAD", ident)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

WHERE_STREAM_CONFIG = """
name: "where_stream"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "THREAD" data_type: TYPE_UINT64 dims: [ 1 ] } ]
"""


@pytest.fixture()
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None]]:
    """(writing thread, owning loop thread) for every reply, stream head, event and stream end written."""
    seen: list[tuple[int, int | None]] = []

    def spying(name: str) -> None:
        original = getattr(HttpConnection, name)

        def spy(self: HttpConnection, *args: object, **kwargs: object) -> None:
            seen.append((threading.get_ident(), self.owner.ident))
            original(self, *args, **kwargs)

        monkeypatch.setattr(HttpConnection, name, spy)

    for name in ("_write", "_stream_start", "_stream_chunk", "_stream_end"):
        spying(name)
    monkeypatch.setattr(loop_thread, "DEBUG_OWNERSHIP", True)
    return seen


@pytest.fixture()
def server(tmp_path: Path, writes: list[tuple[int, int | None]]) -> Iterator[Server]:
    (tmp_path / "where" / "1").mkdir(parents=True)
    (tmp_path / "where" / "config.pbtxt").write_text(WHERE_CONFIG)
    (tmp_path / "where" / "1" / "model.py").write_text(WHERE_MODEL)
    (tmp_path / "where_stream" / "1").mkdir(parents=True)
    (tmp_path / "where_stream" / "config.pbtxt").write_text(WHERE_STREAM_CONFIG)
    (tmp_path / "where_stream" / "1" / "model.py").write_text(WHERE_STREAM_MODEL)
    config = Config(
        http_address="127.0.0.1", http_port=0, metrics_port=0, threads=3, cap_threads_to_cores=False,
        model_repositories=(str(tmp_path),),
    )
    srv = Server(config)
    srv.start()
    assert srv.manager.wait_startup(30)
    yield srv
    srv.stop()


def test_execute_runs_on_workers_and_replies_on_the_owning_loop(
    server: Server, writes: list[tuple[int, int | None]]
) -> None:
    loop_idents = {thread.ident for thread in server.api.loops}
    body = json.dumps({"inputs": [{"name": "IN", "datatype": "INT32", "shape": [1], "data": [1]}]}).encode()
    infer = request("POST", "/v2/models/where/infer", body=body)
    clients = [Client(server.api.port) for _ in range(6)]
    executed_on = set()
    for _ in range(5):
        for client in clients:
            reply = client.exchange(infer)
            assert reply.status == 200, reply.body
            executed_on.add(int(json.loads(reply.body)["outputs"][0]["data"][0]))
    for client in clients:
        client.close()

    assert executed_on and not executed_on & loop_idents, "execute must never run on a loop thread"
    assert len(writes) >= 30
    assert all(writer == owner for writer, owner in writes), "a reply was written off its owning loop thread"
    assert {owner for _, owner in writes} == loop_idents, "six connections should spread over all three loops"


def test_stream_events_are_written_by_the_owning_loop(server: Server, writes: list[tuple[int, int | None]]) -> None:
    """generate_stream: the model sends from its worker; head, events and end are written by the owner."""
    loop_idents = {thread.ident for thread in server.api.loops}
    stream = request("POST", "/v2/models/where_stream/generate_stream", body=b'{"IN": 1}')
    clients = [Client(server.api.port) for _ in range(6)]
    sent_from = set()
    for _ in range(3):
        for client in clients:
            reply = client.exchange(stream)
            assert reply.status == 200, reply.body
            events = [json.loads(line[len(b"data: "):]) for line in reply.body.split(b"\n\n") if line]
            assert len(events) == 3
            sent_from.update(int(event["THREAD"]) for event in events)
    for client in clients:
        client.close()

    assert sent_from and not sent_from & loop_idents, "the model must never send from a loop thread"
    assert len(writes) >= 18 * 5  # per stream: the head, three events, the end
    assert all(writer == owner for writer, owner in writes), "a stream was written off its owning loop thread"
    assert {owner for _, owner in writes} == loop_idents
