"""The ``evserve`` command line: flag spellings, refusals, a taken port, and graceful stop.

Why end to end: argparse details (``--flag=value``, Triton's ``--bool=false``), the exit status
and the single stderr line of a taken port, and what SIGTERM does to a request in flight are
only visible from outside the process. Graceful stop is checked with a model whose ``execute``
sleeps 2 s: the request in flight must still get its 200, a new connection must be refused, and
the process must exit 0 long before ``--exit-timeout-secs``.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evserve.server.runtime import usable_cores
from tests.e2e.conftest import (
    announce_then_sleep,
    call,
    connection_refused_or_dropped,
    copy_simple,
    identity_infer,
    simple_infer,
    wait_for,
    write_identity,
)
from tests.evserve_process import SERVER_COMMAND, EvserveProcess, free_port
from tests.wire import Client, get

SERVER = SERVER_COMMAND


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run evserve to completion (for invocations that must exit by themselves)."""
    return subprocess.run([*SERVER, *args], capture_output=True, text=True, timeout=timeout)


class Started:
    """An evserve process with its exact command line (no flags added) and its output in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen([*SERVER, *args], stdout=self._file, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_live(self, port: int, timeout: float = 30.0) -> None:
        def live() -> bool:
            assert self.proc.poll() is None, f"evserve exited with {self.proc.returncode}:\n{self.output()}"
            try:
                return call(port, "GET", "/v2/health/live", timeout=2).status == 200
            except OSError:
                return False

        wait_for(live, timeout, f"evserve to listen on {port}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        return self.proc.returncode


@pytest.fixture()
def started() -> Iterator[list[Started]]:
    """Processes started by a test; all are stopped afterwards whatever happened."""
    procs: list[Started] = []
    yield procs
    for proc in procs:
        proc.stop()


def start(started: list[Started], tmp_path: Path, *args: str) -> Started:
    proc = Started(list(args), tmp_path / f"evserve-{len(started)}.log")
    started.append(proc)
    return proc


# ---------------------------------------------------------------------------------- help and parsing


def test_help_lists_the_flags() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--threads", "--http-thread-count", "--http-port", "--model-repository", "--exit-timeout-secs",
                 "--http-max-input-size", "--strict-readiness"):
        assert flag in result.stdout
    assert "--sync-model-control" not in result.stdout


def test_console_script_help() -> None:
    script = shutil.which("evserve")
    if script is None:
        pytest.skip("the evserve console script is not installed on PATH")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: evserve")
    assert "--http-thread-count" in result.stdout


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_port_flag_forms(started: list[Started], tmp_path: Path, form: str) -> None:
    port, metrics = free_port(), free_port()
    if form == "separate":
        args = ["--http-address", "127.0.0.1", "--http-port", str(port), "--metrics-port", str(metrics)]
    else:
        args = ["--http-address=127.0.0.1", f"--http-port={port}", f"--metrics-port={metrics}"]
    proc = start(started, tmp_path, *args, "--threads=1")
    proc.wait_live(port)
    assert call(metrics, "GET", "/metrics").status == 200


def test_triton_style_booleans(started: list[Started], tmp_path: Path) -> None:
    """``--flag=false`` turns a default-true option off: metrics unserved, readiness not strict."""
    repository = tmp_path / "models"
    copy_simple(repository)
    write_identity(repository, "broken", initialize='raise RuntimeError("no weights")')
    port, metrics = free_port(), free_port()
    proc = start(started, tmp_path, "--http-address", "127.0.0.1", "--http-port", str(port),
                 "--metrics-port", str(metrics), "--threads", "1", "--model-repository", str(repository),
                 "--allow-metrics=false", "--strict-readiness=false", "--exit-on-error=false",
                 "--reuse-http-port")
    proc.wait_live(port)
    # `broken` fails at startup; without strict readiness the server is still ready once loading ends.
    wait_for(lambda: call(port, "GET", "/v2/health/ready").status == 200, 30, "readiness")
    assert call(port, "GET", "/v2/models/broken/ready").status == 400
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", metrics), timeout=2).close()


@pytest.mark.parametrize(("args", "message"), [
    (["--http-max-input-size=0"], "--http-max-input-size must be greater than 0"),
    (["--model-control-mode", "bogus"], "invalid choice: 'bogus'"),
    (["--load-model", "x"], "--load-model requires --model-control-mode=explicit"),
    (["--threads", "0"], "at least 1"),
    (["--allow-metrics=maybe"], "expected true or false"),
    (["--http-port", "70000"], "invalid port 70000"),
])
def test_invalid_values_exit_with_a_clear_message(args: list[str], message: str) -> None:
    # Free ports first, so that a wrongly accepted value starts a server on them instead of on 8000.
    result = run_cli("--http-address", "127.0.0.1", "--http-port", "0", "--metrics-port", "0", *args, timeout=15)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("evserve: error:"), result.stderr
    assert message in last


def test_limits_that_refuse_every_request_are_rejected() -> None:
    flags = ["--http-max-request-line", "--http-max-header-field", "--http-max-header-size", "--http-max-headers",
             "--http-max-pipelined-requests"]
    procs = {
        flag: subprocess.Popen([*SERVER, "--http-address", "127.0.0.1", "--http-port", "0", "--metrics-port", "0",
                                "--threads", "1", flag, "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        for flag in flags
    }
    accepted = []
    deadline = time.monotonic() + 5
    for flag, proc in procs.items():
        try:
            _, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            accepted.append(flag)
            continue
        if proc.returncode == 0 or "evserve: error:" not in stderr or flag not in stderr:
            accepted.append(flag)
    assert accepted == [], f"started a server that cannot answer a request: {accepted}"


def test_unresolvable_address_is_one_clear_line() -> None:
    result = run_cli("--http-address", "nonsense.invalid", "--http-port", "0", "--metrics-port", "0", timeout=15)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nonsense.invalid" in lines[0], result.stderr


@pytest.mark.parametrize("which", ["http", "metrics"])
def test_taken_port_is_one_line_and_status_1(which: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        http_port = taken if which == "http" else free_port()
        metrics_port = taken if which == "metrics" else free_port()
        result = run_cli("--http-address", "127.0.0.1", "--http-port", str(http_port),
                         "--metrics-port", str(metrics_port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "already in use" in lines[0] and str(taken) in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_port_zero_picks_a_free_port(started: list[Started], tmp_path: Path) -> None:
    metrics = free_port()
    proc = start(started, tmp_path, "--threads", "8", "--http-address", "127.0.0.1", "--http-port", "0",
                 "--metrics-port", str(metrics))
    # The server runs one loop thread per usable core at most (server/runtime.py).
    threads = min(8, usable_cores())
    found: list[int] = []

    def announced() -> bool:
        assert proc.proc.poll() is None, proc.output()
        match = re.search(rf"HTTP API on 127\.0\.0\.1:(\d+) with {threads} loop threads", proc.output())
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    wait_for(announced, 30, "the 'HTTP API on' log line")
    port = found[0]
    assert port != 0
    proc.wait_live(port)
    wait_for(lambda: call(port, "GET", "/v2/health/ready").status == 200, 30, "readiness")
    text = call(metrics, "GET", "/metrics").body.decode()
    assert f'evserve_http_live_connections{{thread="{threads - 1}"}}' in text
    assert f'evserve_http_live_connections{{thread="{threads}"}}' not in text


def test_threads_beyond_the_cores_are_kept_when_asked(started: list[Started], tmp_path: Path) -> None:
    proc = start(started, tmp_path, "--threads", "8", "--cap-threads-to-cores=false", "--http-address", "127.0.0.1",
                 "--http-port", "0", "--metrics-port", str(free_port()))
    wait_for(lambda: re.search(r"HTTP API on 127\.0\.0\.1:\d+ with 8 loop threads", proc.output()) is not None,
             30, "the 'HTTP API on' log line with 8 threads")


# ---------------------------------------------------------------------------------- stopping

SLOW_SECONDS = 2.0
SLOW_MARKER = "slow-execute-started"


@pytest.fixture(scope="module")
def stop_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("stop-repo")
    copy_simple(repository)
    write_identity(repository, "slow", execute=announce_then_sleep(repository / SLOW_MARKER, SLOW_SECONDS))
    return repository


def test_sigterm_drains_in_flight_and_refuses_new(stop_repository: Path) -> None:
    server = EvserveProcess("--threads", "2", "--model-repository", str(stop_repository),
                            "--exit-timeout-secs", "30")
    server.start()
    try:
        result: dict[str, object] = {}

        def infer() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [3],
                                           "data": [1.5, 2.5, 3.5]}]})
            conn.request("POST", "/v2/models/slow/infer", body=body)
            response = conn.getresponse()
            result.update(status=response.status, body=response.read(), connection=response.getheader("Connection"))
            conn.close()

        idle = Client(server.port)
        assert idle.exchange(get("/v2/health/live")).status == 200  # a keep-alive connection, now idle
        marker = stop_repository / SLOW_MARKER
        marker.unlink(missing_ok=True)
        thread = threading.Thread(target=infer)
        thread.start()
        wait_for(marker.exists, 10, "the request to reach execute (which then sleeps 2 s)")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        with idle:
            assert idle.read_until_close(timeout=1.0) == b"", "the idle connection was not closed at SIGTERM"
        time.sleep(0.3)
        assert connection_refused_or_dropped(server.port), "a new connection was served after SIGTERM"
        status = server.proc.wait(15)
        exited = time.monotonic()
        thread.join(15)
        assert result.get("status") == 200, (result, server.output())
        assert json.loads(result["body"])["outputs"][0]["data"] == [1.5, 2.5, 3.5]  # type: ignore[arg-type]
        assert (result["connection"] or "").lower() == "close"  # type: ignore[union-attr]
        assert status == 0, server.output()
        assert exited - signalled < 10, f"took {exited - signalled:.1f} s to exit"
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_an_idle_server_with_status_0(stop_repository: Path, sig: signal.Signals) -> None:
    server = EvserveProcess("--threads", "2", "--model-repository", str(stop_repository))
    server.start()
    try:
        assert simple_infer(server.port).status == 200
        assert server.proc is not None
        server.proc.send_signal(sig)
        assert server.proc.wait(10) == 0, server.output()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        server.stop()


def test_exit_within_exit_timeout_when_a_request_never_finishes(tmp_path: Path) -> None:
    marker = tmp_path / "stuck-execute-started"
    write_identity(tmp_path, "stuck", execute=announce_then_sleep(marker, 30))
    server = EvserveProcess("--threads", "1", "--model-repository", str(tmp_path), "--exit-timeout-secs", "3")
    server.start()
    try:
        thread = threading.Thread(target=lambda: _infer_ignoring_errors(server.port, "stuck"), daemon=True)
        thread.start()
        wait_for(marker.exists, 10, "the request to reach execute")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        status = server.proc.wait(20)
        took = time.monotonic() - signalled
        assert status == 0, server.output()
        assert took < 3 + 1.5, f"exited {took:.1f} s after SIGTERM with --exit-timeout-secs 3"
    finally:
        server.stop()


def _infer_ignoring_errors(port: int, model: str) -> None:
    try:
        identity_infer(port, model, [1.0])
    except OSError:
        pass


@pytest.mark.parametrize(("given", "bound"), [("0.0.0.0", "0.0.0.0"), ("::1", "::1"), ("ipv6:[::1]", "::1"),
                                              ("[::1]", "::1")])
def test_addresses_take_tritons_ipv6_spelling(given: str, bound: str) -> None:
    from evserve.server.cli import address

    assert address(given) == bound


def test_version() -> None:
    done = subprocess.run([*SERVER, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and re.fullmatch(r"evserve \d+\.\d+\.\d+\n", done.stdout)


def test_a_kserve_triton_command_line_starts_and_logs_the_model_table(tmp_path: Path) -> None:
    """KServe's Triton runtime passes gRPC and backend flags: accepted, one warning each, and it serves."""
    copy_simple(tmp_path)
    with EvserveProcess("--model-store", str(tmp_path), "--grpc-port=9000", "--allow-grpc=true",
                        "--backend-directory", "/opt/tritonserver/backends",
                        "--backend-config", "python,shm-default-byte-size=1048576",
                        "--pinned-memory-pool-byte-size", "0", "--cuda-memory-pool-byte-size", "0:0",
                        "--id", "triton") as server:
        assert simple_infer(server.port).status == 200
        wait_for(lambda: "started: HTTP on" in server.output(), 10, "the start-up lines")
        log = server.output()
    assert log.count("evserve serves no gRPC: --grpc-port, --allow-grpc ignored") == 1
    assert "--backend-directory ignored" in log and "--backend-config python,shm-default-byte-size" in log
    assert "memory pools of its own" in log
    assert re.search(r"\] \| Model +\| Version \| Status \|$", log, re.M), log
    assert re.search(r"\] \| simple +\| 1 +\| READY +\|$", log, re.M), log
    assert log.index("| simple") < log.index("started: HTTP on")


def test_the_model_table_shows_why_a_model_is_unavailable(tmp_path: Path) -> None:
    copy_simple(tmp_path)
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\n')
    (broken / "1" / "model.py").write_text("raise ImportError('no such thing')\n")
    with EvserveProcess("--model-repository", str(tmp_path), "--exit-on-error=false",
                        "--strict-readiness=false") as server:
        wait_for(lambda: "started: HTTP on" in server.output(), 10, "the start-up lines")
        log = server.output()
    assert re.search(r"\| Model +\| Version \| Status +\| Reason", log), log
    assert re.search(r"\| broken +\| 1 +\| UNAVAILABLE \| .*no such thing", log), log
