"""Three evserve replicas behind nginx under steady load: a rolling restart loses nothing.

What runs: three replicas on loopback, each on its own ports, with ``--drain-grace-secs``;
nginx (tests/e2e/nginx_balancer.py) balancing over them with passive health checks; client
threads sending inferences through nginx back to back on keep-alive connections, each checking
that its reply carries its own input back. Mid-load one replica gets SIGTERM, exits and is
started again on the same ports; later another is killed with SIGKILL.

What must hold:

- **Graceful restart: zero failed requests**, and the restarted replica takes traffic again.
  That is evserve's drain at work: during the grace the replica serves everything, its
  replies closing their connections; then its listener closes, so nginx's next connect is
  refused, which nginx retries on another replica; the requests in flight finish and carry
  ``Connection: close``. (nginx's passive checks never read /v2/health/ready, so the grace's
  "not ready" is for balancers that do, such as Kubernetes; with ``--drain-grace-secs 0`` this
  test passes too, and with ``--exit-timeout-secs 0``, which cuts the requests in flight, it
  fails.)
- **SIGKILL: failures bounded by what was in flight on that replica**, never more than the
  client threads (each has one request in flight), and every request started after the kill
  has settled succeeds: nginx routes around the dead replica.

Why nginx keeps ``non_idempotent`` off (its default): every inference is a POST, and nginx then
retries only failures that happened before it sent the request (a refused or reset connect).
With ``non_idempotent`` it would also replay a request the killed replica had received, which
would hide the SIGKILL failures below, but also replay requests a replica may have executed
(a decoupled model's stream, a model with side effects) and hide a drain that drops requests.
Here each failure a client sees is one the replicas caused.

The test prints how many requests ran and failed and how long the restart took
(``pytest -s tests/e2e/test_rolling_restart.py``). It needs nginx (Debian: ``apt-get install
nginx``; .ci/run installs it) and is skipped with the reason when there is none.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import write_identity
from tests.e2e.nginx_balancer import NginxBalancer, find_nginx
from tests.evserve_process import EvserveProcess

pytestmark = pytest.mark.slow

CLIENT_THREADS = 6
GRACE_SECS = 2.0
# Each inference takes 20 ms on the model, so a replica always has requests in flight and queued.
WORK_SECONDS = 0.02
REPLICA_ARGS = ("--threads", "1", "--drain-grace-secs", str(GRACE_SECS), "--exit-timeout-secs", "10")


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    ok: bool
    detail: str
    upstream: str


class Load:
    """Client threads sending inferences through the balancer until stopped, each on its own keep-alive connection."""

    def __init__(self, port: int, threads: int) -> None:
        self.port = port
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(index,), daemon=True) for index in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self._threads), "a client thread hung"
        return self.outcomes

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sequence = 0
        while not self._stop.is_set():
            sequence += 1
            data = [float(index), float(sequence)]
            body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": data}]})
            started = time.monotonic()
            upstream = ""
            try:
                conn.request("POST", "/v2/models/work/infer", body=body, headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                payload = reply.read()
                upstream = reply.getheader("X-Upstream") or ""
                ok = reply.status == 200 and json.loads(payload)["outputs"][0]["data"] == data
                detail = f"{reply.status} {payload[:120]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                ok, detail = False, repr(exc)
                conn.close()  # http.client reconnects on the next request
            with self._lock:
                self.outcomes.append(Outcome(started, time.monotonic(), ok, detail, upstream))


def start_replica(repository: Path, ports: tuple[int, int] | None = None) -> EvserveProcess:
    replica = EvserveProcess("--model-repository", str(repository), *REPLICA_ARGS)
    if ports is not None:  # a restart comes back on the same ports, as a pod keeps its Service port
        replica.port, replica.metrics_port = ports
    return replica.start()


def keep_loading(load: Load, seconds: float) -> None:
    """Let the load run for ``seconds``, checking that requests complete meanwhile."""
    before = load.count()
    time.sleep(seconds)
    assert load.count() > before, "no request completed: the load stalled"


def test_rolling_restart_behind_nginx_loses_no_request(tmp_path: Path) -> None:
    nginx_binary = find_nginx()
    if nginx_binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx; or set EVSERVE_NGINX)")
    repository = tmp_path / "models"
    write_identity(repository, "work", execute=f"time.sleep({WORK_SECONDS})")
    replicas = [start_replica(repository) for _ in range(3)]
    (tmp_path / "nginx").mkdir()
    nginx = NginxBalancer(nginx_binary, tmp_path / "nginx", [replica.port for replica in replicas])
    load: Load | None = None
    try:
        nginx.start()
        load = Load(nginx.port, CLIENT_THREADS)
        load.start()
        keep_loading(load, 2.0)

        # 1. Rolling restart of replica 0: SIGTERM, wait for it to exit, start it again, wait until ready.
        first = replicas[0]
        assert first.proc is not None
        term_at = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        status = first.proc.wait(GRACE_SECS + 30)
        exited_at = time.monotonic()
        assert status == 0, first.output()
        replicas[0] = start_replica(repository, (first.port, first.metrics_port))
        ready_at = time.monotonic()
        keep_loading(load, 4.0)  # past nginx's fail_timeout (2 s), so the new replica is tried again

        # 2. SIGKILL replica 1 mid-load.
        second = replicas[1]
        assert second.proc is not None
        kill_at = time.monotonic()
        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(10)
        dead_at = time.monotonic()
        keep_loading(load, 4.0)
        outcomes = load.stop()
        load = None
    finally:
        if load is not None:
            load.stop()
        nginx.stop()
        for replica in replicas:
            replica.stop()

    # A request that ended before the kill belongs to the graceful part; one still running at the kill to the other.
    graceful_failures = [o for o in outcomes if o.ended < kill_at and not o.ok]
    during_restart = [o for o in outcomes if term_at <= o.started and o.ended <= ready_at]
    after_kill = [o for o in outcomes if o.ended >= kill_at]
    kill_failures = [o for o in after_kill if not o.ok]
    settled = [o for o in outcomes if o.started > dead_at + 0.5]
    restarted_upstream = f"127.0.0.1:{replicas[0].port}"
    back_on_restarted = [o for o in outcomes if o.started > ready_at and o.upstream == restarted_upstream]
    failed = len(graceful_failures) + len(kill_failures)
    print(f"\nrolling restart behind nginx, {CLIENT_THREADS} client threads, {WORK_SECONDS * 1000:.0f} ms per "
          f"inference: {len(outcomes)} requests, {failed} failed")
    print(f"  graceful restart: SIGTERM -> exit {exited_at - term_at:.2f} s (grace {GRACE_SECS:g} s), "
          f"-> ready again {ready_at - term_at:.2f} s; {len(during_restart)} requests meanwhile, "
          f"{len(graceful_failures)} failed; restarted replica served {len(back_on_restarted)} afterwards")
    print(f"  SIGKILL: {len(after_kill)} requests from the kill on, {len(kill_failures)} failed "
          f"(bound: {CLIENT_THREADS}, the requests in flight); {len(settled)} after it settled, "
          f"{sum(not o.ok for o in settled)} failed")
    print(f"  nginx error log: {nginx.error_counts()}")

    assert len(during_restart) > 0, "no request ran while the replica restarted"
    assert graceful_failures == [], (graceful_failures[:5], nginx.errors()[-3000:])
    assert back_on_restarted, "the restarted replica took no traffic"
    assert len(kill_failures) <= CLIENT_THREADS, (kill_failures, nginx.errors()[-3000:])
    assert all(o.started <= dead_at for o in kill_failures), "a request sent after the kill failed"
    assert settled and all(o.ok for o in settled), [o for o in settled if not o.ok][:5]
