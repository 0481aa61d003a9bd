"""The drain grace on SIGTERM/SIGINT (``--drain-grace-secs``), seen from outside the process.

A rolling restart loses nothing only if traffic has moved away before the listener closes. So
on the first signal evserve answers ``/v2/health/ready`` with 400 (live stays 200) and keeps
serving every request for the grace, each reply closing its connection so that keep-alive
clients reconnect through their balancer; then the listener closes, requests in flight (a
stream too) finish within ``--exit-timeout-secs``, and the process exits 0. A second signal
skips the rest of the grace, and a server that is not ready when the signal comes (still
loading its models) skips it: no balancer sends it traffic.

The bounds on time here are generous upper bounds, plus the lower bound that matters: a new
connection is still served while the grace lasts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import (
    announce_then_sleep,
    call,
    connection_refused_or_dropped,
    simple_infer,
    wait_for,
    write_identity,
)
from tests.evserve_process import SERVER_COMMAND, EvserveProcess, free_port
from tests.wire import Client, get

# Long enough for the checks of the grace to finish inside it on a busy two-core machine.
GRACE = 4.0
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
WORD_DELAY_MS = 800  # the stream lasts 5.6 s: it starts before SIGTERM and ends after the grace


class Stream:
    """A generate_stream read on a thread, each event with the time it arrived."""

    def __init__(self, port: int) -> None:
        self.events: list[tuple[float, str]] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self._port = port
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = {"text_input": " ".join(WORDS), "delay_ms": WORD_DELAY_MS}
        try:
            with requests.post(f"http://127.0.0.1:{self._port}/v2/models/text_stream/generate_stream", json=body,
                               stream=True, timeout=30) as reply:
                self.status = reply.status_code
                for line in reply.iter_lines():
                    if line:
                        event = json.loads(line[len(b"data: "):])
                        self.events.append((time.monotonic(), event["text_output"].strip()))
        except BaseException as exc:  # reported by the test, not lost on the thread
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        assert self.error is None, repr(self.error)


def test_sigterm_reports_not_ready_serves_through_the_grace_then_drains_a_stream() -> None:
    server = EvserveProcess("--threads", "2", "--drain-grace-secs", str(GRACE), "--exit-timeout-secs", "30")
    server.start()
    try:
        kept = Client(server.port)
        assert kept.exchange(get("/v2/health/ready")).status == 200  # a keep-alive connection, now idle
        stream = Stream(server.port)
        wait_for(lambda: len(stream.events) >= 1, 10, "the stream's first event")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Not ready at once, on new connections and on the one kept open; live, and still serving.
        wait_for(lambda: call(server.port, "GET", "/v2/health/ready", timeout=2).status == 400, 2,
                 "/v2/health/ready to answer 400")
        with kept:
            reply = kept.exchange(get("/v2/health/ready"))
            assert reply.status == 400 and reply.body == b""
            assert kept.read_until_close(timeout=2) == b"", "a reply of the grace kept its connection open"
        assert call(server.port, "GET", "/v2/health/live").status == 200
        served = simple_infer(server.port)
        assert served.status == 200, served
        assert served.headers.get("connection", "").lower() == "close"
        assert time.monotonic() - signalled < GRACE, "too slow to check the grace (the bounds need a faster host)"

        # Then the listener closes: new connections are refused, the stream goes on to its end.
        wait_for(lambda: connection_refused_or_dropped(server.port), GRACE + 3, "new connections to be refused")
        refused = time.monotonic()
        status = server.proc.wait(20)
        exited = time.monotonic()
        stream.join(10)
        assert stream.status == 200
        assert [word for _, word in stream.events] == WORDS, stream.events
        assert stream.events[-1][0] > signalled + GRACE, "the stream should have outlasted the grace"
        assert status == 0, server.output()
        assert exited - signalled < GRACE + 10, f"exited {exited - signalled:.1f} s after SIGTERM"
        log = server.output()
        assert f"not ready from now on, still serving for {GRACE:g} s" in log, log
        assert log.index("not ready from now on") < log.index("stopping: draining connections")
        print(f"after SIGTERM: refused new connections within {refused - signalled:.2f} s, "
              f"exited after {exited - signalled:.2f} s (grace {GRACE} s)")
    finally:
        server.stop()


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_skips_the_rest_of_the_grace(second: signal.Signals) -> None:
    server = EvserveProcess("--threads", "1", "--drain-grace-secs", "120")
    server.start()
    try:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: call(server.port, "GET", "/v2/health/ready", timeout=2).status == 400, 5, "not ready")
        assert simple_infer(server.port).status == 200
        server.proc.send_signal(second)
        assert server.proc.wait(15) == 0, server.output()
        assert connection_refused_or_dropped(server.port)
    finally:
        server.stop()


def test_a_server_stopped_while_starting_skips_the_grace(tmp_path: Path) -> None:
    """Never ready, so no balancer routes to it: nothing to hand over, no grace to wait."""
    marker = tmp_path / "initialize-started"
    write_identity(tmp_path, "slow_start", initialize=announce_then_sleep(marker, 3))
    server = EvserveProcess("--threads", "1", "--model-repository", str(tmp_path), "--drain-grace-secs", "120")
    server.start(wait_ready=False)
    try:
        wait_for(marker.exists, 20, "the model's initialize to begin")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.output()
        assert "not ready from now on" not in server.output()
    finally:
        server.stop()


def test_a_negative_grace_is_refused() -> None:
    result = subprocess.run([*SERVER_COMMAND, "--http-port", str(free_port()), "--drain-grace-secs", "-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--drain-grace-secs must not be negative" in result.stderr.strip().splitlines()[-1]
