"""``/generate`` and ``/generate_stream`` against a real server, as a user would call them.

Clients: ``http.client`` for exact statuses and bodies, ``requests`` with ``stream=True`` for
incremental delivery, and raw sockets (tests/wire.py) for disconnects, slow readers and
pipelining. The expected texts and statuses were measured on the real tritonserver 2.51; where
evserve answers differently on purpose (the status of a model's error, /generate's
exactly-one-response error) the test says so.

The server runs with one loop thread, so "a stream never delays other connections" is tested
where it is hardest: every connection shares the loop thread of the stream.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from evserve.protocol.generate_codec import EXACTLY_ONE
from tests.e2e.conftest import call, wait_for
from tests.evserve_process import EvserveProcess
from tests.wire import Client, request

# A decoupled model whose first input element picks what it sends.
MODES_CONFIG = """
name: "modes"
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ -1 ] }, { name: "HALF" data_type: TYPE_FP16 dims: [ 1 ] } ]
"""
MODES_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def out(*values):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array(values, np.int32))])


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            mode = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(-1)[0])
            if mode == 0:    # an error first (INVALID_ARG)
                error = pb_utils.TritonError("first went wrong", pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error))
            elif mode == 1:  # a response, then an error
                sender.send(out(1))
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("later went wrong")))
            elif mode == 3:  # exactly one response, sent with the final flag
                sender.send(out(7), flags=FINAL)
                continue
            elif mode == 4:  # an error with the default code (INTERNAL)
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("internal first")))
            elif mode == 5:  # three responses
                for value in (1, 2, 3):
                    sender.send(out(value))
            elif mode == 6:  # an empty output and response parameters
                response = pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUT", np.array([], np.int32))], parameters={"p": "x", "n": 3}
                )
                sender.send(response, flags=FINAL)
                continue
            elif mode == 7:  # an FP16 output, which JSON cannot carry
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("HALF", np.array([1], np.float16))]))
            sender.send(flags=FINAL)   # mode 2: no response at all
        return None
"""

# bench/models/stream_flood: COUNT numbered events of about 1 KiB as fast as the server takes them.
FLOOD_MODEL_DIR = Path(__file__).resolve().parents[2] / "bench" / "models" / "stream_flood"

# One event every 100 ms for up to 10 s; records when it sees the request cancelled.
WATCH_CONFIG = """
name: "watch"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
parameters {{ key: "marker" value {{ string_value: "{marker}" }} }}
"""
WATCH_MODEL = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marker = json.loads(args["model_config"])["parameters"]["marker"]["string_value"]

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            for seq in range(100):
                if request.is_cancelled():
                    with open(self.marker, "a") as f:
                        f.write(json.dumps({"cancelled_at": time.time(), "sent": seq}) + "\\n")
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([seq], np.int32))]))
                time.sleep(0.1)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# A plain (not decoupled) model for /infer that works until its request is cancelled (10 s at most).
PATIENT_CONFIG = """
name: "patient"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
parameters {{ key: "marker" value {{ string_value: "{marker}" }} }}
"""
PATIENT_MODEL = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.marker = json.loads(args["model_config"])["parameters"]["marker"]["string_value"]

    def execute(self, requests):
        with open(self.marker, "a") as f:
            f.write(json.dumps({"started_at": time.time()}) + "\\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not requests[0].is_cancelled():
            time.sleep(0.01)
        with open(self.marker, "a") as f:
            f.write(json.dumps({"cancelled_at": time.time(), "cancelled": requests[0].is_cancelled()}) + "\\n")
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))]) for _ in requests]
"""


def _write_model(repository: Path, name: str, config: str, model: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config)
    (repository / name / "1" / "model.py").write_text(model)


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, markers: Path) -> Iterator[EvserveProcess]:
    repository = tmp_path_factory.mktemp("generate-repo")
    for name in ("text_stream", "repeat_int32", "simple"):
        shutil.copytree(Path(EXAMPLE_REPOSITORY) / name, repository / name)
    _write_model(repository, "modes", MODES_CONFIG, MODES_MODEL)
    shutil.copytree(FLOOD_MODEL_DIR, repository / "stream_flood")
    _write_model(repository, "watch", WATCH_CONFIG.format(marker=markers / "watch"), WATCH_MODEL)
    _write_model(repository, "patient", PATIENT_CONFIG.format(marker=markers / "patient"), PATIENT_MODEL)
    with EvserveProcess("--model-repository", str(repository), "--threads", "1") as proc:
        yield proc


def generate(port: int, model: str, payload: Any, *, stream: bool = False) -> Any:
    path = f"/v2/models/{model}/generate_stream" if stream else f"/v2/models/{model}/generate"
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return call(port, "POST", path, body)


def events(body: bytes) -> list[dict[str, Any]]:
    """The JSON objects of an SSE body; every event must be exactly ``data: <json>\\n\\n``."""
    assert body == b"" or body.endswith(b"\n\n"), body
    chunks = body.split(b"\n\n")[:-1]
    assert all(chunk.startswith(b"data: ") for chunk in chunks), body
    return [json.loads(chunk[len(b"data: "):]) for chunk in chunks]


# ---------------------------------------------------------------------------------- /generate


def test_generate_answers_one_flat_object(server: EvserveProcess) -> None:
    reply = generate(server.port, "text_stream", {"text_input": "hello", "id": "r-1"})
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    # Triton writes the keys sorted; a one-element output is a scalar.
    assert reply.body == b'{"id":"r-1","model_name":"text_stream","model_version":"1","text_output":"hello"}'


def test_generate_on_a_plain_model_maps_fields_to_inputs(server: EvserveProcess) -> None:
    reply = generate(server.port, "simple", {"INPUT0": list(range(16)), "INPUT1": [1] * 16})
    assert reply.status == 200, reply.body
    assert reply.json() == {
        "model_name": "simple", "model_version": "1",
        "OUTPUT0": [i + 1 for i in range(16)], "OUTPUT1": [i - 1 for i in range(16)],
    }
    assert "id" not in reply.json()


def test_generate_passes_other_fields_as_parameters_and_writes_response_parameters(server: EvserveProcess) -> None:
    reply = generate(server.port, "modes", {"IN": 6, "temperature": 0.5, "parameters": {"max_tokens": 3}})
    assert reply.status == 200, reply.body
    assert reply.json() == {"model_name": "modes", "model_version": "1", "OUT": [], "p": "x", "n": 3}


def test_generate_refuses_anything_but_exactly_one_response(server: EvserveProcess) -> None:
    # Triton writes this error with the status of the first response (200 here); evserve says 400.
    for payload in ({"text_input": "two words"}, {"IN": 5}, {"IN": 2}):
        model = "text_stream" if "text_input" in payload else "modes"
        reply = generate(server.port, model, payload)
        assert (reply.status, reply.error) == (400, EXACTLY_ONE), payload


def test_generate_model_errors_take_their_code_status(server: EvserveProcess) -> None:
    # Triton 2.51 answers 400 whatever the code; evserve maps the code as /infer does.
    assert (generate(server.port, "modes", {"IN": 0}).status, generate(server.port, "modes", {"IN": 0}).error) == (
        400, "first went wrong")
    reply = generate(server.port, "modes", {"IN": 4})
    assert (reply.status, reply.error) == (500, "internal first")
    reply = generate(server.port, "modes", {"IN": 7})
    assert reply.status == 400 and "sending FP16 data via JSON is not supported" in reply.error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "expected 1 inputs but got 0 inputs for model 'text_stream'"),
        (b'{"text_input": 5}', "Unable to parse JSON bytes array: attempt to access JSON non-string as string"),
        (b'{"text_input": ["a", "b"]}', "The schema can not convert input 'text_input' to tensor with proper shape"),
        (b'{"text_input": "a", "text_input": "b"}', "input 'text_input' already exists in request"),
        (b'{"text_input": "a", "parameters": {"text_input": "b"}}',
         "Converting keyword: 'parameters': input 'text_input' already exists in request"),
        (b'{"text_input": "a", "parameters": 1}',
         "Expected JSON object for keyword: 'parameters': attempt to access JSON non-object as object"),
        (b'{"text_input": "a", "nested": {"k": 1}}',
         "parameter 'nested' has invalid type. It should be either 'int', 'bool', or 'string'."),
        (b'{"text_input": "a", "id": 5}', "Unable to parse 'id': attempt to access JSON non-string as string"),
        (b"[1]", "attempt to get members for non-object"),
        (b"not json", "failed to parse the request JSON buffer"),
    ],
)
def test_generate_bad_bodies_are_400_with_tritons_text(server: EvserveProcess, body: bytes, message: str) -> None:
    for stream in (False, True):
        reply = generate(server.port, "text_stream", body, stream=stream)
        assert reply.status == 400 and reply.headers["content-type"] == "application/json", reply
        assert message in reply.error, reply.error


def test_generate_types_follow_the_input_datatype(server: EvserveProcess) -> None:
    reply = generate(server.port, "simple", {"INPUT0": [1.5] * 16, "INPUT1": [1] * 16})
    assert reply.status == 400
    assert reply.error == "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"


def test_generate_refuses_compressed_bodies_and_other_methods(server: EvserveProcess) -> None:
    reply = call(server.port, "POST", "/v2/models/text_stream/generate", b"{}", {"Content-Encoding": "gzip"})
    assert (reply.status, reply.error) == (400, "Unsupported content-encoding, only 'identity' is supported.")
    assert call(server.port, "GET", "/v2/models/text_stream/generate_stream").status == 405


def test_generate_with_a_version(server: EvserveProcess) -> None:
    reply = call(server.port, "POST", "/v2/models/text_stream/versions/1/generate", b'{"text_input": "v"}')
    assert reply.status == 200 and reply.json()["text_output"] == "v"
    reply = call(server.port, "POST", "/v2/models/text_stream/versions/4/generate", b'{"text_input": "v"}')
    assert (reply.status, reply.error) == (404, "Request for unknown model: 'text_stream' version 4 is not found")


# ------------------------------------------------------------------------------ /generate_stream


def test_stream_sends_one_event_per_response(server: EvserveProcess) -> None:
    reply = generate(server.port, "text_stream", {"text_input": "the quick brown fox", "delay_ms": 0}, stream=True)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert [event["text_output"] for event in events(reply.body)] == ["the", " quick", " brown", " fox"]
    assert all(event["model_name"] == "text_stream" for event in events(reply.body))


def test_stream_of_a_plain_and_of_a_decoupled_model(server: EvserveProcess) -> None:
    reply = generate(server.port, "simple", {"INPUT0": [2] * 16, "INPUT1": [1] * 16}, stream=True)
    assert reply.status == 200 and [e["OUTPUT0"] for e in events(reply.body)] == [[3] * 16]
    reply = generate(server.port, "repeat_int32", {"IN": [4, 5, 6], "id": "x"}, stream=True)
    assert reply.status == 200
    assert events(reply.body) == [{"OUT": v, "id": "x", "model_name": "repeat_int32", "model_version": "1"}
                                  for v in (4, 5, 6)]


def test_stream_status_comes_from_the_first_response(server: EvserveProcess) -> None:
    first = generate(server.port, "modes", {"IN": 0}, stream=True)
    assert first.status == 400 and first.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert events(first.body) == [{"error": "first went wrong"}]
    internal = generate(server.port, "modes", {"IN": 4}, stream=True)
    assert internal.status == 500 and events(internal.body) == [{"error": "internal first"}]
    later = generate(server.port, "modes", {"IN": 1}, stream=True)
    assert later.status == 200
    assert events(later.body) == [{"OUT": 1, "model_name": "modes", "model_version": "1"},
                                  {"error": "later went wrong"}]


def test_stream_with_no_response_is_empty(server: EvserveProcess) -> None:
    reply = generate(server.port, "modes", {"IN": 2}, stream=True)
    assert (reply.status, reply.body) == (200, b"")


def test_stream_events_arrive_as_the_model_sends_them(server: EvserveProcess) -> None:
    """requests with stream=True: the first event is read before the model has produced the last."""
    requests = pytest.importorskip("requests")
    url = f"http://127.0.0.1:{server.port}/v2/models/text_stream/generate_stream"
    arrivals: list[tuple[float, str]] = []
    with requests.post(url, json={"text_input": "one two three four", "delay_ms": 400}, stream=True,
                       timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                arrivals.append((time.monotonic(), json.loads(line[len(b"data: "):])["text_output"]))
    assert [word for _, word in arrivals] == ["one", " two", " three", " four"]
    # The model waits 400 ms between words, so the last is produced 1.2 s after the first; a server
    # that buffered the stream would deliver all four together.
    assert arrivals[-1][0] - arrivals[0][0] > 0.8


def test_many_concurrent_streams_and_generates(server: EvserveProcess) -> None:
    results: dict[int, Any] = {}

    def one(index: int) -> None:
        text = " ".join(f"w{index}-{k}" for k in range(5))
        if index % 2:
            reply = generate(server.port, "text_stream", {"text_input": text, "delay_ms": 5}, stream=True)
            results[index] = (reply.status, "".join(e["text_output"] for e in events(reply.body)))
        else:
            reply = generate(server.port, "text_stream", {"text_input": f"w{index}", "id": str(index)})
            results[index] = (reply.status, reply.json()["text_output"] + "|" + reply.json()["id"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for index in range(60):
        expected = " ".join(f"w{index}-{k}" for k in range(5)) if index % 2 else f"w{index}|{index}"
        assert results[index] == (200, expected)


def test_pipelined_request_waits_behind_the_stream(server: EvserveProcess) -> None:
    body = b'{"text_input": "a b c", "delay_ms": 100}'
    with Client(server.port) as client:
        client.send(request("POST", "/v2/models/text_stream/generate_stream", body=body)
                    + request("GET", "/v2/health/ready"))
        stream, health = client.read_replies(2)
    assert stream.status == 200 and [e["text_output"] for e in events(stream.body)] == ["a", " b", " c"]
    assert health.status == 200


# ------------------------------------------------------------------------------ cancellation


def _marker_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _failure_count(port: int, model: str) -> int:
    stats = call(port, "GET", f"/v2/models/{model}/stats").json()["model_stats"][0]
    return int(stats["inference_stats"]["fail"]["count"])


def _canceled_metric(metrics_port: int, model: str) -> float:
    text = call(metrics_port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith("nv_inference_request_failure{") and f'model="{model}"' in line \
                and 'reason="CANCELED"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_closing_a_stream_cancels_its_request(server: EvserveProcess, markers: Path) -> None:
    marker = markers / "watch"
    failures = _failure_count(server.port, "watch")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request("POST", "/v2/models/watch/generate_stream", body=b'{"IN": 1}'))
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    closed_at = time.time()
    sock.close()
    wait_for(lambda: len(_marker_lines(marker)) == 1, 5, "the model to see its request cancelled")
    seen = _marker_lines(marker)[0]
    # The model checks every 100 ms (one event interval); allow the machine's noise on top.
    assert seen["cancelled_at"] - closed_at < 0.5, seen
    assert seen["sent"] < 10
    wait_for(lambda: _failure_count(server.port, "watch") == failures + 1, 5, "the cancelled request in /stats")
    assert _canceled_metric(server.metrics_port, "watch") >= 1
    assert call(server.port, "GET", "/v2/health/live").status == 200


def test_closing_a_paused_infer_cancels_it(server: EvserveProcess, markers: Path) -> None:
    """Triton notices only when it writes the reply (issue 7077); evserve at the client's FIN."""
    marker = markers / "patient"
    body = json.dumps({"inputs": [{"name": "IN", "datatype": "INT32", "shape": [1], "data": [1]}]}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request("POST", "/v2/models/patient/infer", body=body))
    wait_for(lambda: len(_marker_lines(marker)) == 1, 12, "the model to start")
    closed_at = time.time()
    sock.close()
    wait_for(lambda: len(_marker_lines(marker)) == 2, 12, "the model to finish")
    seen = _marker_lines(marker)[1]
    assert seen["cancelled"] and seen["cancelled_at"] - closed_at < 0.5, seen


def _open_fds_and_threads(pid: int) -> tuple[int, int]:
    threads = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Threads:"))
    return len(list(Path(f"/proc/{pid}/fd").iterdir())), threads


def test_cancelled_streams_leave_nothing_behind(server: EvserveProcess) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    generate(server.port, "watch", {"IN": 0}, stream=False)  # warm: the model's first request is done
    failures = _failure_count(server.port, "watch")
    before = _open_fds_and_threads(pid)
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(request("POST", "/v2/models/watch/generate_stream", body=b'{"IN": 1}'))
        received = b""
        while b"data: " not in received:
            received += sock.recv(65536)
        sock.close()
    wait_for(lambda: _failure_count(server.port, "watch") >= failures + 20, 30, "20 cancelled streams")
    # No more than before (a connection of an earlier test may still have been closing then).
    wait_for(lambda: all(now <= was for now, was in zip(_open_fds_and_threads(pid), before, strict=True)), 5,
             f"fds and threads back to {before} (now {_open_fds_and_threads(pid)})")


# ------------------------------------------------------------------------------ back-pressure


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# The stated bound: the stream window (1 MiB by default), the transport's buffer and allocator
# slack. Without back-pressure the 50 MiB this stream produces would all be held.
RSS_GROWTH_BOUND = 16 * 1024 * 1024
FLOOD_EVENTS = 50_000


def test_a_reader_that_stalls_holds_the_model_not_the_memory(server: EvserveProcess) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    before = _rss_bytes(pid)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    body = json.dumps({"COUNT": FLOOD_EVENTS}).encode()
    sock.sendall(request("POST", "/v2/models/stream_flood/generate_stream", body=body))
    peak = before
    for _ in range(50):  # read nothing for 5 s
        time.sleep(0.1)
        peak = max(peak, _rss_bytes(pid))
    assert peak - before < RSS_GROWTH_BOUND, f"RSS grew {(peak - before) / 2**20:.1f} MiB"

    # Other connections on the same (only) loop thread are served meanwhile.
    started = time.monotonic()
    assert call(server.port, "GET", "/v2/health/ready").status == 200
    assert generate(server.port, "text_stream", {"text_input": "still"}).status == 200
    assert time.monotonic() - started < 5

    # Then the reader catches up: every event arrives, in order, and the stream ends.
    data = bytearray()
    sock.settimeout(30)
    while not data.endswith(b"\r\n0\r\n\r\n"):
        piece = sock.recv(1 << 20)
        assert piece, "the server closed the stream early"
        data += piece
        peak = max(peak, _rss_bytes(pid))
    sock.close()
    assert peak - before < RSS_GROWTH_BOUND
    sequence = [int(chunk.split(b'"SEQ":', 1)[1].split(b",", 1)[0]) for chunk in data.split(b"data: ")[1:]]
    assert sequence == list(range(FLOOD_EVENTS))


def test_a_stalled_reader_that_leaves_releases_the_model(server: EvserveProcess) -> None:
    """The model waits in send() while the window is full; the client leaving wakes it for good."""
    failures = _failure_count(server.port, "stream_flood")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(request("POST", "/v2/models/stream_flood/generate_stream", body=b'{"COUNT": 1000000}'))
    time.sleep(1.0)
    sock.close()
    wait_for(lambda: _failure_count(server.port, "stream_flood") == failures + 1, 10, "the flood to be cancelled")
    # The instance is free again.
    reply = generate(server.port, "stream_flood", {"COUNT": 2}, stream=True)
    assert reply.status == 200 and [e["SEQ"] for e in events(reply.body)] == [0, 1]


# ------------------------------------------------------------------------------ process instances


@pytest.fixture(scope="module")
def process_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EvserveProcess, Path]]:
    repository = tmp_path_factory.mktemp("generate-process-repo")
    marker = tmp_path_factory.mktemp("process-markers") / "watch"
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "text_stream", repository / "text_stream")
    _write_model(repository, "watch", WATCH_CONFIG.format(marker=marker), WATCH_MODEL)
    with EvserveProcess("--model-repository", str(repository), "--model-isolation", "process") as proc:
        yield proc, marker


def test_streams_from_a_process_instance(process_server: tuple[EvserveProcess, Path]) -> None:
    server, _ = process_server
    reply = generate(server.port, "text_stream", {"text_input": "from a child", "delay_ms": 0}, stream=True)
    assert reply.status == 200 and [e["text_output"] for e in events(reply.body)] == ["from", " a", " child"]
    reply = generate(server.port, "text_stream", {"text_input": "one"})
    assert reply.status == 200 and reply.json()["text_output"] == "one"


def test_closing_a_stream_cancels_a_process_instance_request(process_server: tuple[EvserveProcess, Path]) -> None:
    server, marker = process_server
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request("POST", "/v2/models/watch/generate_stream", body=b'{"IN": 1}'))
    received = b""
    while received.count(b"data: ") < 2:
        received += sock.recv(65536)
    closed_at = time.time()
    sock.close()
    wait_for(lambda: len(_marker_lines(marker)) == 1, 5, "the child's model to see its request cancelled")
    assert _marker_lines(marker)[0]["cancelled_at"] - closed_at < 0.5


def test_statistics_split_compute_and_count_each_response(server: EvserveProcess) -> None:
    """Triton's shape: compute_input/infer/output measured, response_stats per response index."""
    reply = generate(server.port, "text_stream", {"text_input": "one two three", "delay_ms": 20}, stream=True)
    assert reply.status == 200
    generate(server.port, "simple", {"INPUT0": [1] * 16, "INPUT1": [1] * 16})
    stream_stats = call(server.port, "GET", "/v2/models/text_stream/stats").json()["model_stats"][0]
    simple_stats = call(server.port, "GET", "/v2/models/simple/stats").json()["model_stats"][0]
    for stats in (stream_stats, simple_stats):
        assert set(stats) >= {"inference_stats", "response_stats", "batch_stats", "memory_usage"}
        inference = stats["inference_stats"]
        assert inference["compute_input"]["ns"] > 0 and inference["compute_infer"]["ns"] > 0
        assert stats["memory_usage"] == []
    assert simple_stats["inference_stats"]["compute_output"]["ns"] > 0
    responses = stream_stats["response_stats"]
    # Three words, then the bare final flag: responses 0-2 succeed, response 3 is empty.
    assert responses["0"]["success"]["count"] >= 1 and responses["2"]["success"]["count"] >= 1
    assert responses["3"]["empty_response"]["count"] >= 1
    assert responses["1"]["compute_infer"]["ns"] >= 15_000_000, "the 20 ms the model waited between words"
    assert set(responses["0"]) == {"compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"}


def test_process_instance_statistics_are_split_too(process_server: tuple[EvserveProcess, Path]) -> None:
    server, _ = process_server
    assert generate(server.port, "text_stream", {"text_input": "a b", "delay_ms": 0}, stream=True).status == 200
    stats = call(server.port, "GET", "/v2/models/text_stream/stats").json()["model_stats"][0]
    assert stats["inference_stats"]["compute_input"]["ns"] > 0
    assert stats["response_stats"]["0"]["success"]["count"] >= 1
