"""Tracing against a real server: Triton's settings API (texts measured on tritonserver 2.51) and trace files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import SIMPLE_INPUTS, call, copy_simple, simple_infer, wait_for
from tests.evserve_process import SERVER_COMMAND, EvserveProcess

ORDER = ["HTTP_RECV_START", "HTTP_RECV_END", "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
         "COMPUTE_OUTPUT_START", "COMPUTE_END", "INFER_RESPONSE_COMPLETE", "REQUEST_END", "HTTP_SEND_START",
         "HTTP_SEND_END"]


def _post(port: int, path: str, body: object) -> tuple[int, dict[str, object]]:
    reply = call(port, "POST", path, json.dumps(body).encode())
    return reply.status, reply.json()


def _traces(path: Path) -> dict[int, dict[str, object]]:
    """Triton's entries grouped by trace id: the head fields and the timestamps in file order."""
    out: dict[int, dict[str, object]] = {}
    for entry in json.loads(path.read_text()):
        trace = out.setdefault(entry["id"], {"timestamps": []})
        if "timestamps" in entry:
            trace["timestamps"] += entry["timestamps"]  # type: ignore[operator]
        else:
            trace.update({k: v for k, v in entry.items() if k != "id"})
    return out


def test_settings_api_and_texts(tmp_path: Path) -> None:
    copy_simple(tmp_path / "repo")
    trace_file = tmp_path / "trace.json"
    with EvserveProcess("--model-repository", str(tmp_path / "repo"), "--trace-config",
                        f"triton,file={trace_file}", "--trace-config", "level=TIMESTAMPS",
                        "--trace-config", "rate=1") as server:
        port = server.port
        assert call(port, "GET", "/v2/trace/setting").json() == {
            "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0",
            "trace_file": str(trace_file), "trace_mode": "triton"}
        status, settings = _post(port, "/v2/trace/setting", {"trace_level": ["TENSORS", "TIMESTAMPS"],
                                                             "trace_rate": "5", "unknown": "ignored"})
        assert status == 200 and settings["trace_level"] == ["TIMESTAMPS", "TENSORS"] and settings["trace_rate"] == "5"
        for body, code, message in (
            ({"trace_rate": 5}, 400, "attempt to access JSON non-string as string"),
            ({"trace_rate": "x"}, 400, "Unable to parse 'trace_rate', got: x"),
            ({"trace_rate": "0"}, 400, "Attempting to set invalid trace setting :sample rate must be non-zero"),
            ({"trace_count": "-2"}, 400, "Unable to parse 'trace_count'. Expecting value >= -1, got:-2"),
            ({"trace_level": "TIMESTAMPS"}, 400, "attempt to access JSON non-array as array"),
            ({"trace_file": "/tmp/elsewhere.json"}, 501, "trace file location can not be updated through network"),
        ):
            reply = call(port, "POST", "/v2/trace/setting", json.dumps(body).encode())
            assert reply.status == code and message in reply.error, (body, reply.body)
        # A model's own settings override the global ones; null falls back to them.
        status, model = _post(port, "/v2/models/simple/trace/setting", {"trace_rate": "7", "trace_level": ["OFF"]})
        assert (status, model["trace_rate"], model["trace_level"]) == (200, "7", ["OFF"])
        status, model = _post(port, "/v2/models/simple/trace/setting", {"trace_rate": None})
        assert model["trace_rate"] == "5" and model["trace_level"] == ["OFF"]
        assert call(port, "GET", "/v2/trace/setting").json()["trace_rate"] == "5"
        status, settings = _post(port, "/v2/trace/setting", {"trace_rate": None})
        assert settings["trace_rate"] == "1", "null resets a global field to its start-up value"
        reply = call(port, "GET", "/v2/models/nope/trace/setting")
        assert (reply.status, reply.error) == (400, "Request for unknown model : nope")


def test_tracing_needs_a_file(tmp_path: Path) -> None:
    copy_simple(tmp_path)
    with EvserveProcess("--model-repository", str(tmp_path)) as server:
        assert call(server.port, "GET", "/v2/trace/setting").json()["trace_level"] == ["OFF"]
        reply = call(server.port, "POST", "/v2/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}')
        no_file = "Attempting to set invalid trace setting :trace file name is not given"
        assert (reply.status, reply.error) == (400, no_file)


def test_traces_are_written_in_tritons_format(tmp_path: Path) -> None:
    copy_simple(tmp_path / "repo")
    trace_file = tmp_path / "trace.json"
    with EvserveProcess("--model-repository", str(tmp_path / "repo"), "--trace-config", f"triton,file={trace_file}",
                        "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=2",
                        "--trace-config", "log-frequency=2") as server:
        for _ in range(5):
            assert simple_infer(server.port, id="req-7").status == 200
        wait_for(lambda: Path(f"{trace_file}.0").exists(), 10, "the first trace file")
        traces = _traces(Path(f"{trace_file}.0"))
        # rate 2: the 2nd and 4th requests; log-frequency 2: both in file .0
        assert sorted(traces) == [1, 2]
        for trace in traces.values():
            assert (trace["model_name"], trace["model_version"], trace["request_id"]) == ("simple", 1, "req-7")
            stamps = trace["timestamps"]
            assert [s["name"] for s in stamps] == ORDER  # type: ignore[union-attr]
            times = [s["ns"] for s in stamps]  # type: ignore[union-attr]
            assert times == sorted(times) and times[-1] > times[0]
        # Tracing off for the model: nothing more is sampled.
        call(server.port, "POST", "/v2/models/simple/trace/setting", b'{"trace_level": ["OFF"]}')
        for _ in range(4):
            simple_infer(server.port)
    assert not Path(f"{trace_file}.1").exists()


def test_log_frequency_zero_writes_the_file_at_stop_and_count_bounds_it(tmp_path: Path) -> None:
    copy_simple(tmp_path / "repo")
    trace_file = tmp_path / "trace.json"
    with EvserveProcess("--model-repository", str(tmp_path / "repo"), "--trace-config", f"triton,file={trace_file}",
                        "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
                        "--trace-config", "count=2") as server:
        body = json.dumps({"inputs": SIMPLE_INPUTS}).encode()
        for _ in range(4):
            assert call(server.port, "POST", "/v2/models/simple/infer", body).status == 200
        assert not trace_file.exists()
    assert sorted(_traces(trace_file)) == [1, 2]


@pytest.mark.parametrize(
    ("flag", "message"),
    [("opentelemetry,colour=blue", "unknown OpenTelemetry setting"), ("level=LOUD", "unknown trace level"),
     ("triton,colour=blue", "unknown setting 'colour'"), ("mode=zipkin", "unknown trace mode")],
)
def test_bad_trace_config_stops_the_start(flag: str, message: str) -> None:
    done = subprocess.run([*SERVER_COMMAND, "--trace-config", flag], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and message in done.stderr


class _OtlpReceiver:
    """A small OTLP/HTTP collector: decodes every ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        spans: list[object] = []
        self.spans = spans

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_opentelemetry_mode_exports_spans_to_a_collector(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    copy_simple(tmp_path)
    receiver = _OtlpReceiver()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        with EvserveProcess("--model-repository", str(tmp_path), "--trace-config", "mode=opentelemetry",
                            "--trace-config", f"opentelemetry,url={receiver.url}",
                            "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1") as server:
            assert call(server.port, "GET", "/v2/trace/setting").json()["trace_mode"] == "opentelemetry"
            body = json.dumps({"id": "otel-1", "inputs": SIMPLE_INPUTS}).encode()
            headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
            assert call(server.port, "POST", "/v2/models/simple/infer", body, headers).status == 200
        # Stopping the server flushes the SDK's batch.
        wait_for(lambda: len(receiver.spans) >= 2, 10, "the spans at the collector")
    finally:
        receiver.close()
    by_name = {span.name: span for span in receiver.spans}  # type: ignore[attr-defined]
    root, compute = by_name["InferRequest"], by_name["compute"]
    assert root.trace_id.hex() == trace_id, "the caller's traceparent is the spans' parent"
    attributes = {a.key: a.value.string_value or a.value.int_value for a in root.attributes}
    assert attributes["triton.model_name"] == "simple" and attributes["triton.request_id"] == "otel-1"
    assert [event.name for event in root.events] == ORDER
    assert compute.parent_span_id == root.span_id
    assert root.start_time_unix_nano <= compute.start_time_unix_nano <= compute.end_time_unix_nano
    assert compute.end_time_unix_nano <= root.end_time_unix_nano


def test_tensors_level_writes_inputs_and_outputs(tmp_path: Path) -> None:
    copy_simple(tmp_path / "repo")
    trace_file = tmp_path / "trace.json"
    with EvserveProcess("--model-repository", str(tmp_path / "repo"), "--trace-config", f"triton,file={trace_file}",
                        "--trace-config", "level=TIMESTAMPS", "--trace-config", "level=TENSORS",
                        "--trace-config", "rate=1") as server:
        assert call(server.port, "GET", "/v2/trace/setting").json()["trace_level"] == ["TIMESTAMPS", "TENSORS"]
        assert simple_infer(server.port).status == 200
    entries = [e for e in json.loads(trace_file.read_text()) if "activity" in e]
    by_activity = {(e["activity"], e["tensor"]["name"]): e["tensor"] for e in entries}
    assert by_activity[("TENSOR_QUEUE_INPUT", "INPUT0")] == {
        "name": "INPUT0", "data": ",".join(str(i) for i in range(16)), "shape": "1,16", "dtype": "INT32"}
    assert ("TENSOR_BACKEND_INPUT", "INPUT1") in by_activity
    assert by_activity[("TENSOR_BACKEND_OUTPUT", "OUTPUT0")]["data"] == ",".join(str(i + 1) for i in range(16))


def test_generate_and_generate_stream_are_traced(tmp_path: Path) -> None:
    import shutil

    from evserve.gpu import EXAMPLE_REPOSITORY

    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "text_stream", tmp_path / "repo" / "text_stream")
    trace_file = tmp_path / "trace.json"
    with EvserveProcess("--model-repository", str(tmp_path / "repo"), "--trace-config", f"triton,file={trace_file}",
                        "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1") as server:
        body = b'{"text_input": "a b", "delay_ms": 0, "id": "g-1"}'
        assert call(server.port, "POST", "/v2/models/text_stream/generate_stream", body).status == 200
        assert call(server.port, "POST", "/v2/models/text_stream/generate", b'{"text_input": "one"}').status == 200
    traces = _traces(trace_file)
    assert sorted(traces) == [1, 2] and traces[1]["request_id"] == "g-1"
    for trace in traces.values():
        names = [s["name"] for s in trace["timestamps"]]  # type: ignore[union-attr]
        assert names[0] == "HTTP_RECV_START" and names[-1] == "HTTP_SEND_END"
        assert {"COMPUTE_START", "COMPUTE_END", "REQUEST_END", "HTTP_SEND_START"} <= set(names)
