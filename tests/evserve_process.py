"""Run a real ``evserve`` process for end-to-end tests: free ports, readiness wait, clean stop."""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The interpreter that runs the servers under test. The tests themselves (and their clients, such
# as tritonclient's gevent-based HTTP client, which does not run on a free-threaded build) stay on
# the interpreter running pytest, so one suite drives either build of the server:
#   EVSERVE_SERVER_PYTHON=/path/to/python3.14t-venv/bin/python pytest tests/e2e
SERVER_PYTHON = os.environ.get("EVSERVE_SERVER_PYTHON") or sys.executable
SERVER_COMMAND = [SERVER_PYTHON, "-m", "evserve.server"]



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        return conn.getresponse().status
    finally:
        conn.close()


# One folder for every server log of this test run, removed when the run ends.
_LOG_DIR = tempfile.mkdtemp(prefix="evserve-test-logs-")
atexit.register(shutil.rmtree, _LOG_DIR, True)


class EvserveProcess:
    """``evserve`` started as a subprocess on free ports, with ownership checks turned on."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.args = list(args)
        self.env = {**os.environ, "EVSERVE_DEBUG": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="evserve-", suffix=".log", delete=False, dir=_LOG_DIR)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> EvserveProcess:
        cmd = [
            *SERVER_COMMAND,
            "--http-address", "127.0.0.1",
            "--http-port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            # No balancer sits in front of a test's server: stop at once (a test's own value wins).
            "--drain-grace-secs", "0",
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        path = "/v2/health/ready" if wait_ready else "/v2/health/live"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"evserve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if http_status(self.port, "GET", path) == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"evserve did not become {'ready' if wait_ready else 'live'}:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> EvserveProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.unlink(self.log.name)
