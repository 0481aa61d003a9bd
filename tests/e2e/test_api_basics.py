"""The basic HTTP API promises of the README, checked against a real ``evserve`` process.

Health, server metadata, routing (404/405/HEAD/query strings), model ready/config/stats, the
metrics port, request ids, compressed bodies and the body-size limit (also after inflation).
Each check names the exact status and body a Triton client would see, so a routing or framing
regression fails here even when tritonclient would paper over it. One server per purpose is
shared by the module: the default one (two loop threads) and a small-limit one named ``triton``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import zlib
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import SIMPLE_INPUTS, SIMPLE_SUM, call, simple_infer
from tests.evserve_process import EvserveProcess
from tests.wire import Client, get, request

SMALL_LIMIT = 4096


@pytest.fixture(scope="module")
def server() -> Iterator[EvserveProcess]:
    with EvserveProcess("--threads", "2") as proc:
        yield proc


@pytest.fixture(scope="module")
def small() -> Iterator[EvserveProcess]:
    """A server named `triton` whose request bodies (also inflated) are capped at 4 KiB."""
    with EvserveProcess("--threads", "1", "--server-name", "triton",
                        "--http-max-input-size", str(SMALL_LIMIT)) as proc:
        yield proc


def metric(text: str, name: str, labels: str) -> float:
    """The value of the sample ``name{labels}`` in Prometheus text; AssertionError when absent."""
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"no sample {name}{{{labels}}} in:\n{text[:2000]}"
    return float(match.group(1))


def scrape(server: EvserveProcess) -> str:
    reply = call(server.metrics_port, "GET", "/metrics")
    assert reply.status == 200
    return reply.body.decode()


# ---------------------------------------------------------------------------------- health, metadata


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2/health/ready?x=1",
                                  "/v2/health/live?verbose=true&a=b"])
def test_health_is_200_with_an_empty_body(server: EvserveProcess, path: str) -> None:
    reply = call(server.port, "GET", path)
    assert (reply.status, reply.body) == (200, b"")


def test_server_metadata_default_name(server: EvserveProcess) -> None:
    reply = call(server.port, "GET", "/v2")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    meta = reply.json()
    assert meta["name"] == "evserve"
    assert isinstance(meta["version"], str) and meta["version"]
    assert {"model_repository", "binary_tensor_data", "statistics"} <= set(meta["extensions"])


def test_server_name_flag(small: EvserveProcess) -> None:
    assert call(small.port, "GET", "/v2").json()["name"] == "triton"


# ---------------------------------------------------------------------------------- routing


@pytest.mark.parametrize("path", ["/nope", "/v2/nope", "/v2/health", "/v2/health/alive", "/metrics", "/",
                                  "/v2/models/simple/versions/abc", "/v2/models/simple/versions/1/bogus"])
def test_unknown_path_is_404(server: EvserveProcess, path: str) -> None:
    reply = call(server.port, "GET", path)
    assert reply.status == 404
    assert reply.json() == {"error": "Not Found"}


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/health/live"),
    ("PUT", "/v2/health/ready"),
    ("GET", "/v2/models/simple/infer"),
    ("DELETE", "/v2/models/simple"),
    ("GET", "/v2/repository/index"),
])
def test_wrong_method_is_405(server: EvserveProcess, method: str, path: str) -> None:
    reply = call(server.port, method, path)
    assert reply.status == 405
    assert reply.json() == {"error": "Method Not Allowed"}


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2", "/v2/models/simple/config"])
def test_head_on_a_get_endpoint_has_no_body(server: EvserveProcess, path: str) -> None:
    with Client(server.port) as client:
        reply = client.exchange(request("HEAD", path), head=True)
        assert reply.status == 200
        # Any body bytes written after the HEAD reply would be parsed as the next reply's head.
        follow = client.exchange(get("/v2/health/live"))
        assert (follow.status, follow.body) == (200, b"")
        assert not client.readable(0.1)


# ---------------------------------------------------------------------------------- models


def test_model_ready(server: EvserveProcess) -> None:
    assert call(server.port, "GET", "/v2/models/simple/ready").status == 200
    assert call(server.port, "GET", "/v2/models/simple/versions/1/ready").status == 200


def test_unknown_model_or_version_ready_is_400_not_ready(server: EvserveProcess) -> None:
    """Triton 2.51 answers /ready for an unknown model or version 400 "Model version not ready"."""
    for path in ("/v2/models/nope/ready", "/v2/models/nope/versions/1/ready", "/v2/models/simple/versions/9/ready"):
        reply = call(server.port, "GET", path)
        assert (reply.status, reply.error) == (400, "Model version not ready"), path


def test_unknown_model_is_404_on_metadata_config_infer_generate(server: EvserveProcess) -> None:
    """The real Triton binary answers 404 NOT_FOUND here (PROTOCOL.md Appendix B.2)."""
    unknown = "Request for unknown model: 'nope' is not found"
    for method, path, body in (
        ("GET", "/v2/models/nope", None),
        ("GET", "/v2/models/nope/config", None),
        ("POST", "/v2/models/nope/infer", b'{"inputs": []}'),
        ("POST", "/v2/models/nope/generate", b"{}"),
        ("POST", "/v2/models/nope/generate_stream", b"{}"),
    ):
        reply = call(server.port, method, path, body)
        assert (reply.status, reply.error) == (404, unknown), path


def test_model_config(server: EvserveProcess) -> None:
    reply = call(server.port, "GET", "/v2/models/simple/config")
    assert reply.status == 200
    config = reply.json()
    assert config["name"] == "simple" and config["max_batch_size"] == 8
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["input"][0]["data_type"] == "TYPE_INT32"


def test_stats_count_an_inference(server: EvserveProcess) -> None:
    def simple_stats() -> dict:
        reply = call(server.port, "GET", "/v2/models/simple/stats")
        assert reply.status == 200
        (entry,) = reply.json()["model_stats"]
        assert (entry["name"], entry["version"]) == ("simple", "1")
        return entry

    before = simple_stats()
    reply = simple_infer(server.port)
    assert reply.status == 200, reply
    after = simple_stats()
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    everything = call(server.port, "GET", "/v2/models/stats").json()["model_stats"]
    assert "simple" in {entry["name"] for entry in everything}


def test_a_batch_counts_its_rows_in_inference_count(server: EvserveProcess) -> None:
    """``inference_count`` counts batch rows, the success counter counts requests (Appendix B #12)."""
    labels = 'model="simple",version="1"'
    before_stats = call(server.port, "GET", "/v2/models/simple/stats").json()["model_stats"][0]
    before_metrics = scrape(server)
    batch = [{**tensor, "shape": [3, 16], "data": tensor["data"] * 3} for tensor in SIMPLE_INPUTS]
    reply = call(server.port, "POST", "/v2/models/simple/infer", json.dumps({"inputs": batch}).encode())
    assert reply.status == 200, reply
    assert reply.json()["outputs"][0]["data"] == SIMPLE_SUM * 3
    after_stats = call(server.port, "GET", "/v2/models/simple/stats").json()["model_stats"][0]
    after_metrics = scrape(server)
    assert after_stats["inference_count"] - before_stats["inference_count"] == 3
    assert after_stats["execution_count"] - before_stats["execution_count"] == 1

    def grew(name: str) -> float:
        return metric(after_metrics, name, labels) - metric(before_metrics, name, labels)

    assert grew("nv_inference_count") == 3
    assert grew("nv_inference_request_success") == grew("nv_inference_exec_count") == 1
    assert 3 in {entry["batch_size"] for entry in after_stats["batch_stats"]}


def test_request_id_is_echoed_only_when_sent(server: EvserveProcess) -> None:
    with_id = simple_infer(server.port, id="my-request-42")
    assert with_id.status == 200
    assert with_id.json()["id"] == "my-request-42"
    without = simple_infer(server.port)
    assert without.status == 200
    assert "id" not in without.json()
    assert without.json()["outputs"][0]["data"] == SIMPLE_SUM


# ---------------------------------------------------------------------------------- metrics port


def test_metrics_per_thread_and_per_model(server: EvserveProcess) -> None:
    labels = 'model="simple",version="1"'
    before = metric(scrape(server), "nv_inference_request_success", labels)
    assert simple_infer(server.port).status == 200
    text = scrape(server)
    assert metric(text, "nv_inference_request_success", labels) == before + 1
    for thread in ("0", "1"):
        assert metric(text, "evserve_http_live_connections", f'thread="{thread}"') >= 0
        assert metric(text, "evserve_http_requests_total", f'thread="{thread}"') >= 0
    assert 'thread="2"' not in text
    total = sum(metric(text, "evserve_http_requests_total", f'thread="{t}"') for t in ("0", "1"))
    assert total >= 2


def test_metrics_reply_is_prometheus_text(server: EvserveProcess) -> None:
    reply = call(server.metrics_port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert b"# TYPE nv_inference_request_success counter" in reply.body


def test_metrics_port_other_methods_and_paths(server: EvserveProcess) -> None:
    assert call(server.metrics_port, "POST", "/metrics", b"x").status == 405
    for path in ("/", "/other", "/v2/health/live"):
        reply = call(server.metrics_port, "GET", path)
        assert (reply.status, reply.body) == (200, b""), path


# ---------------------------------------------------------------------------------- encodings, limits


SIMPLE_BODY = json.dumps({"inputs": SIMPLE_INPUTS}).encode()


def test_gzip_request_and_reply(server: EvserveProcess) -> None:
    reply = call(server.port, "POST", "/v2/models/simple/infer", gzip.compress(SIMPLE_BODY),
                 {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert reply.status == 200, reply
    assert reply.headers.get("content-encoding") == "gzip"
    decoded = json.loads(gzip.decompress(reply.body))
    assert decoded["outputs"][0]["data"] == SIMPLE_SUM


def test_deflate_request_identity_reply(server: EvserveProcess) -> None:
    reply = call(server.port, "POST", "/v2/models/simple/infer", zlib.compress(SIMPLE_BODY),
                 {"Content-Encoding": "deflate"})
    assert reply.status == 200, reply
    assert "content-encoding" not in reply.headers
    assert reply.json()["outputs"][0]["data"] == SIMPLE_SUM


@pytest.mark.parametrize(("accept", "expected"), [
    ("gzip;q=0, deflate", "deflate"),
    ("deflate;q=0.5, gzip;q=0.9", "gzip"),
    ("br", None),
    ("identity", None),
    ("gzip;q=0", None),
])
def test_reply_encoding_follows_accept_encoding(server: EvserveProcess, accept: str, expected: str | None) -> None:
    reply = call(server.port, "POST", "/v2/models/simple/infer", SIMPLE_BODY, {"Accept-Encoding": accept})
    assert reply.status == 200
    assert reply.headers.get("content-encoding") == expected
    body = {"gzip": gzip.decompress, "deflate": zlib.decompress, None: bytes}[expected](reply.body)
    assert json.loads(body)["outputs"][0]["data"] == SIMPLE_SUM


def test_unknown_or_stacked_content_encoding_is_415(server: EvserveProcess) -> None:
    for coding in ("br", "gzip, gzip"):
        reply = call(server.port, "POST", "/v2/models/simple/infer", SIMPLE_BODY, {"Content-Encoding": coding})
        assert (reply.status, reply.headers.get("accept-encoding")) == (415, "gzip, deflate")
    reply = call(server.port, "POST", "/v2/models/simple/infer", SIMPLE_BODY, {"Content-Encoding": "br"})
    assert reply.status == 415
    assert reply.headers.get("accept-encoding") == "gzip, deflate"
    assert "compression" in reply.error


def test_body_over_the_limit_is_413(small: EvserveProcess) -> None:
    body = b'{"inputs": [' + b" " * SMALL_LIMIT + b"]}"
    reply = call(small.port, "POST", "/v2/models/simple/infer", body)
    assert reply.status == 413
    assert call(small.port, "GET", "/v2/health/ready").status == 200


def test_body_under_the_limit_is_served(small: EvserveProcess) -> None:
    assert len(SIMPLE_BODY) < SMALL_LIMIT
    reply = call(small.port, "POST", "/v2/models/simple/infer", SIMPLE_BODY)
    assert reply.status == 200, reply


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_bomb_is_413(small: EvserveProcess, encoding: str) -> None:
    inflated = b'{"inputs": [' + b" " * (1024 * 1024) + b"]}"
    body = gzip.compress(inflated) if encoding == "gzip" else zlib.compress(inflated)
    assert len(body) < SMALL_LIMIT
    reply = call(small.port, "POST", "/v2/models/simple/infer", body, {"Content-Encoding": encoding})
    assert reply.status == 413
    assert "--http-max-input-size" in reply.error


def test_corrupt_gzip_is_400(small: EvserveProcess) -> None:
    reply = call(small.port, "POST", "/v2/models/simple/infer", b"\x1f\x8bnot really gzip",
                 {"Content-Encoding": "gzip"})
    assert reply.status == 400


def test_still_healthy_after_everything(server: EvserveProcess, small: EvserveProcess) -> None:
    for proc in (server, small):
        assert proc.proc is not None and proc.proc.poll() is None
        assert call(proc.port, "GET", "/v2/health/ready").status == 200
        assert simple_infer(proc.port).json()["outputs"][0]["data"] == SIMPLE_SUM


def test_stats_of_an_unknown_version_say_which(server: EvserveProcess) -> None:
    reply = call(server.port, "GET", "/v2/models/simple/versions/9/stats")
    assert (reply.status, reply.error) == (400, "requested model version is not available for model 'simple'")
    reply = call(server.port, "GET", "/v2/models/nope/stats")
    assert (reply.status, reply.error) == (400, "requested model 'nope' is not available")


@pytest.mark.parametrize("header", ["Inference-Header-Content-Length", "Content-Encoding"])
def test_a_repeated_framing_header_is_400(server: EvserveProcess, header: str) -> None:
    body = b'{"inputs": []}'
    value = str(len(body)) if header.startswith("Inference") else "identity"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v2/models/simple/infer")
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader(header, value)
    conn.putheader(header, value)
    conn.endheaders(body)
    response = conn.getresponse()
    assert response.status == 400
    assert header.lower() in json.loads(response.read())["error"]
    conn.close()
