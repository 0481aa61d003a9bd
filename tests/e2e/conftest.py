"""Small helpers shared by the end-to-end tests: plain HTTP calls, repository building, waiting.

Why plain ``http.client`` next to tritonclient: these tests check exact status codes, headers
and bodies (``{"error": ...}`` texts, empty bodies, ``Content-Encoding``), which a client library
would hide or reinterpret. The model helpers write Triton-style python-backend models into a
temporary repository, so each test module controls exactly which models exist and how they fail.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from tests.wire import Client, get

# One [1, 16] INT32 request for the bundled `simple` model (OUTPUT0 = a + b, OUTPUT1 = a - b).
SIMPLE_INPUTS = [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
]
SIMPLE_SUM = [i + 1 for i in range(16)]

# An FP32 [-1] identity model (INPUT0 → OUTPUT0) in config.pbtxt form; `{name}` is filled in.
IDENTITY_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
"""

# The model.py of that identity model; `{initialize}` and `{execute}` are statements run first.
IDENTITY_MODEL = """
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        {initialize}

    def execute(self, requests):
        {execute}
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
"""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The message of an ``{"error": ...}`` body."""
        return str(self.json()["error"])


def call(port: int, method: str, path: str, body: bytes | str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 10.0) -> Reply:
    """One request on a fresh connection; header names of the reply are lower-cased."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def post_json(port: int, path: str, payload: Any, timeout: float = 30.0) -> Reply:
    return call(port, "POST", path, json.dumps(payload).encode(), timeout=timeout)


def simple_infer(port: int, model: str = "simple", **extra: Any) -> Reply:
    return post_json(port, f"/v2/models/{model}/infer", {"inputs": SIMPLE_INPUTS, **extra})


def identity_infer(port: int, model: str, data: list[float], timeout: float = 30.0) -> Reply:
    payload = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [len(data)], "data": data}]}
    return post_json(port, f"/v2/models/{model}/infer", payload, timeout=timeout)


def index(port: int, payload: Any = None) -> dict[str, dict[str, Any]]:
    """The repository index as {name: last row of that name}."""
    reply = call(port, "POST", "/v2/repository/index", b"" if payload is None else json.dumps(payload).encode())
    assert reply.status == 200, reply
    return {row["name"]: row for row in reply.json()}


def copy_simple(repository: Path, name: str = "simple") -> Path:
    """Copy the bundled `simple` model into ``repository`` (renamed in its config when asked)."""
    target = repository / name
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "simple", target)
    if name != "simple":
        config = target / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "simple"', f'name: "{name}"'))
    return target


def write_identity(repository: Path, name: str, *, initialize: str = "pass", execute: str = "pass",
                   config: str | None = None, version: str | None = "1") -> Path:
    """An FP32 identity model; ``initialize``/``execute`` add one statement each (a sleep, a raise)."""
    model_dir = repository / name
    model_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config if config is not None else IDENTITY_CONFIG.format(name=name))
    if version is not None:
        (model_dir / version).mkdir()
        (model_dir / version / "model.py").write_text(IDENTITY_MODEL.format(initialize=initialize, execute=execute))
    return model_dir


def announce_then_sleep(marker: Path, seconds: float) -> str:
    """A model statement that creates ``marker`` (so a test knows the call has begun), then sleeps."""
    return f"open({str(marker)!r}, 'a').write('started\\n'); time.sleep({seconds})"


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``condition`` until it holds; returns the seconds waited, raises AssertionError after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def metric(metrics_port: int, family: str, model: str, **labels: str) -> float:
    """One sample of /metrics: ``family`` for version 1 of ``model`` with ``labels`` (in any order)."""
    wanted = {"model": model, "version": "1", **labels}
    for line in call(metrics_port, "GET", "/metrics").body.decode().splitlines():
        found = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if found and found.group(1) == family and dict(re.findall(r'(\w+)="([^"]*)"', found.group(2))) == wanted:
            return float(found.group(3))
    raise AssertionError(f"{family} {wanted} not in /metrics")


def connection_refused_or_dropped(port: int) -> bool:
    """True when a new connection is refused, reset, or closed without any reply (a stopping server)."""
    try:
        client = Client(port, timeout=2)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    with client:
        try:
            client.send(get("/v2/health/live"))
            return client.read_until_close(timeout=2) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def tritonclient_http() -> Any:
    """tritonclient's HTTP client module, or a skip where it cannot be imported (no gevent on 3.14t)."""
    try:
        import tritonclient.http as httpclient
    except (ImportError, RuntimeError):  # RuntimeError: tritonclient installed without its http extra
        pytest.skip("needs tritonclient[http]")
    return httpclient
