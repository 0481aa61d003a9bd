"""A repository with broken models: the good ones serve, the broken ones say why, readiness tells.

Why: a typo in one ``config.pbtxt`` is the most common way a deployment goes wrong. The README
promises that a broken model is reported (file and field) and left UNAVAILABLE while the others
load, that strict readiness keeps ``/v2/health/ready`` at 400 meanwhile, that the default
``--exit-on-error=true`` exits naming the broken file, and that health answers while a slow model
is still loading (the HTTP port opens before any model work).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    SIMPLE_SUM,
    call,
    copy_simple,
    identity_infer,
    index,
    simple_infer,
    wait_for,
    write_identity,
)
from tests.evserve_process import SERVER_COMMAND, EvserveProcess

BAD_SYNTAX = """
name: "bad_syntax"
backend: "python"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }
"""

BAD_DTYPE = """
name: "bad_dtype"
backend: "python"
input [
  {
    name: "INPUT0"
    data_type: TYPE_FOO
    dims: [ -1 ]
  }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

BAD_DIMS = """
name: "bad_dims"
backend: "python"
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -2 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

BROKEN = ("bad_syntax", "bad_dtype", "bad_dims", "bad_init", "no_version")
SLOW_INIT_SECONDS = 3.0


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken-repo")
    copy_simple(root, "good")
    write_identity(root, "bad_syntax", config=BAD_SYNTAX)
    write_identity(root, "bad_dtype", config=BAD_DTYPE)
    write_identity(root, "bad_dims", config=BAD_DIMS)
    write_identity(root, "bad_init", initialize='raise ValueError("cannot open /weights/bad_init.bin")')
    write_identity(root, "no_version", version=None)
    return root


def _startup_finished(port: int) -> bool:
    rows = index(port)
    return all(rows.get(name, {}).get("state") == "UNAVAILABLE" for name in BROKEN) and \
        rows.get("good", {}).get("state") == "READY"


@pytest.fixture(scope="module")
def lenient(repository: Path) -> Iterator[EvserveProcess]:
    """--exit-on-error=false with the default strict readiness; yielded once startup loading ended."""
    proc = EvserveProcess("--threads", "2", "--model-repository", str(repository), "--exit-on-error=false")
    proc.start(wait_ready=False)
    try:
        wait_for(lambda: _startup_finished(proc.port), 30, "startup loading to finish")
        yield proc
    finally:
        proc.stop()
        Path(proc.log.name).unlink()


def test_good_model_serves(lenient: EvserveProcess) -> None:
    assert call(lenient.port, "GET", "/v2/models/good/ready").status == 200
    reply = simple_infer(lenient.port, "good")
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == SIMPLE_SUM


def test_strict_readiness_is_400_while_a_model_is_broken(lenient: EvserveProcess) -> None:
    assert call(lenient.port, "GET", "/v2/health/live").status == 200
    reply = call(lenient.port, "GET", "/v2/health/ready")
    assert (reply.status, reply.body) == (400, b"")


@pytest.mark.parametrize(("name", "needles"), [
    ("bad_syntax", ["bad_syntax/config.pbtxt:"]),
    ("bad_dtype", ["bad_dtype/config.pbtxt", "data_type", "TYPE_FOO"]),
    ("bad_dims", ["bad_dims/config.pbtxt", "dims", "INPUT0"]),
    ("bad_init", ["ValueError", "cannot open /weights/bad_init.bin"]),
    ("no_version", ["version"]),
])
def test_index_names_the_reason(lenient: EvserveProcess, name: str, needles: list[str]) -> None:
    row = index(lenient.port)[name]
    assert row["state"] == "UNAVAILABLE"
    for needle in needles:
        assert needle in row["reason"], row


@pytest.mark.parametrize("name", BROKEN)
def test_broken_model_is_not_ready_and_refuses_inference(lenient: EvserveProcess, name: str) -> None:
    assert call(lenient.port, "GET", f"/v2/models/{name}/ready").status == 400
    reply = identity_infer(lenient.port, name, [1.0])
    assert 400 <= reply.status < 500, reply
    assert reply.error


def test_not_strict_readiness_is_200(repository: Path) -> None:
    proc = EvserveProcess("--threads", "1", "--model-repository", str(repository), "--exit-on-error=false",
                          "--strict-readiness=false")
    with proc:  # start() waits for /v2/health/ready == 200
        assert index(proc.port)["bad_init"]["state"] == "UNAVAILABLE"
        assert call(proc.port, "GET", "/v2/models/good/ready").status == 200


def test_exit_on_error_by_default(repository: Path) -> None:
    cmd = [*SERVER_COMMAND, "--http-address", "127.0.0.1", "--http-port", "0",
           "--metrics-port", "0", "--threads", "1", "--model-repository", str(repository)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(repository / "bad_syntax" / "config.pbtxt") in output
    assert str(repository / "bad_dtype" / "config.pbtxt") in output
    assert "cannot open /weights/bad_init.bin" in output
    assert "Traceback" not in output


def test_missing_repository_exits(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repository"
    cmd = [*SERVER_COMMAND, "--http-address", "127.0.0.1", "--http-port", "0",
           "--metrics-port", "0", "--threads", "1", "--model-repository", str(missing)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"evserve kept running with a missing repository:\n{output}")
    assert proc.returncode != 0
    assert str(missing) in output


# ---------------------------------------------------------------------------------- slow startup


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-repo")
    copy_simple(root)
    write_identity(root, "slow_init", initialize=f"time.sleep({SLOW_INIT_SECONDS})")
    return root


def test_live_while_a_model_loads_ready_after(slow_repository: Path) -> None:
    proc = EvserveProcess("--threads", "2", "--model-repository", str(slow_repository))
    started = time.monotonic()
    proc.start(wait_ready=False)
    try:
        # start() returned on the first live 200; the model is still inside its 3 s initialize.
        probe = time.monotonic()
        assert call(proc.port, "GET", "/v2/health/live").status == 200
        ready = call(proc.port, "GET", "/v2/health/ready")
        assert time.monotonic() - probe < 1.0, "health probes must not wait for the load"
        assert (ready.status, ready.body) == (400, b"")
        assert index(proc.port).get("slow_init", {}).get("state") in ("LOADING", None)
        waited = wait_for(lambda: call(proc.port, "GET", "/v2/health/ready").status == 200, 30, "readiness")
        assert time.monotonic() - started >= SLOW_INIT_SECONDS - 0.5, f"ready after {waited:.1f} s of waiting"
        assert index(proc.port)["slow_init"]["state"] == "READY"
        assert identity_infer(proc.port, "slow_init", [3.0]).json()["outputs"][0]["data"] == [3.0]
    finally:
        proc.stop()
        Path(proc.log.name).unlink()
