"""Instructions per request, counted by callgrind: the figure that survives a noisy machine.

Why: req/s and CPU time on a small shared VM swing with everything else running on it, while
the number of instructions a server executes per request does not (valgrind counts them, it
does not time them). The server runs under ``valgrind --tool=callgrind``; once it answers, a
warm-up goes through, the counters are zeroed, N requests are sent on C keep-alive connections
(closed loop, from this process), and the counters are dumped: the total over N is the figure.
It counts user-space instructions of every thread of the server (syscalls' kernel work is not
counted), so it measures Python and C work, not waiting.

    python bench/instructions.py                      # evserve --threads 1, health and simple JSON
    python bench/instructions.py --server work-floor  # the work floor, for the ratio
    python bench/instructions.py --workload simple-json --requests 5000
    python bench/instructions.py --server evserve --workload simple-json-cache-hit   # answered by the response cache
    python bench/instructions.py --server evserve --workload simple-json-cache-miss  # every request new to it

Needs valgrind (Debian: valgrind; callgrind_control comes with it).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import BENCH_DIR, HOST, free_port, simple_json_body

WORKLOADS = ("ready", "simple-json", "simple-json-cache-hit", "simple-json-cache-miss", "bls-json", "ensemble-json")
# The work floor has no response cache: the cache workloads are evserve's alone. A miss workload
# sends INPUT0[0] = the request's number, so no request repeats an earlier one.
CACHED_MODEL = "simple_cached"
CACHE_WORKLOADS = ("simple-json-cache-hit", "simple-json-cache-miss")
# simple's request to the model each JSON workload names (bls_simple and simple_ensemble call simple).
MODELS = {"simple-json": "simple", "bls-json": "bls_simple", "ensemble-json": "simple_ensemble",
          **dict.fromkeys(CACHE_WORKLOADS, CACHED_MODEL)}
SERVERS = ("evserve", "work-floor")
# With --isolation process, the models each workload needs (only they load: every child runs under
# callgrind too, and each costs a minute to start there).
PROCESS_MODELS = {
    "ready": ("simple",), "simple-json": ("simple",), "bls-json": ("bls_simple", "simple"),
    "ensemble-json": ("simple_ensemble",),
}


def request_bytes(workload: str, number: int = 0) -> bytes:
    """The workload's request; ``number`` (the request's index) matters only to a miss workload."""
    if workload == "ready":
        return b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    body = simple_json_body(("TWICE0", "TWICE1") if workload == "ensemble-json" else ("OUTPUT0", "OUTPUT1"))
    if workload == "simple-json-cache-miss":
        body = body.replace(b'"data":[0,', b'"data":[%d,' % (number + 1000), 1)
    head = (
        b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (MODELS[workload].encode(), len(body))
    )
    return head + body


def cached_repository(root: str) -> list[str]:
    """evserve flags serving the bundled models plus ``simple`` again with response_cache, and a cache."""
    from evserve.gpu import EXAMPLE_REPOSITORY

    target = Path(root) / "cached" / CACHED_MODEL
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "simple", target)
    config = (target / "config.pbtxt").read_text().replace('name: "simple"', f'name: "{CACHED_MODEL}"')
    (target / "config.pbtxt").write_text(config + "\nresponse_cache { enable: true }\n")
    return ["--model-repository", str(EXAMPLE_REPOSITORY), "--model-repository", str(target.parent),
            "--cache-config", "local,size=1048576"]


def _reply_end(buf: bytes) -> int | None:
    """Where the first complete Content-Length reply in ``buf`` ends, or None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", buf[: head_end + 2])
    end = head_end + 4 + (int(match.group(1)) if match else 0)
    return end if len(buf) >= end else None


def send_requests(port: int, make: Callable[[int], bytes], count: int, connections: int, first: int = 0) -> None:
    """``count`` requests (``make(first)``, ``make(first + 1)``...) over ``connections`` keep-alive
    connections, one in flight on each."""
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    sent = done = 0
    for _ in range(min(connections, count)):
        sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
        sock.sendall(make(first + sent))
        sent += 1
    while done < count:
        for key, _ in selector.select(timeout=120):
            sock = key.fileobj  # type: ignore[assignment]
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError("the server closed a connection")
            buffers[sock] += data
            while (end := _reply_end(buffers[sock])) is not None:
                buffers[sock] = buffers[sock][end:]
                done += 1
                if sent < count:
                    sock.sendall(make(first + sent))
                    sent += 1
    for sock in buffers:
        sock.close()


def server_command(server: str, port: int, threads: int, extra: list[str] | None = None) -> list[str]:
    if server == "work-floor":
        return [sys.executable, str(BENCH_DIR / "work_floor.py"), "--port", str(port)]
    code = (
        "import sys; from evserve.server.cli import main; "
        f"sys.exit(main(['--threads', '{threads}', '--http-address', '{HOST}', '--http-port', '{port}', "
        f"'--allow-metrics', 'false', *{extra or []!r}]))"
    )
    return [sys.executable, "-c", code]


def wait_ready(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    ready = request_bytes("ready")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                sock.sendall(ready)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no 200 from port {port} within {timeout:.0f} s")


def total_instructions(dump: str) -> int:
    """The ``summary:`` line of a callgrind dump: every instruction counted since the last zero."""
    text = Path(dump).read_text(errors="replace")
    match = re.search(r"^summary:\s*(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no summary in {dump}")
    return int(match.group(1))


def measure(server: str, workload: str, requests: int, connections: int, threads: int,
            isolation: str = "thread") -> float:
    """Instructions per request of the server; with ``isolation="process"``, of the server and its
    model's child process together (callgrind follows the child; only the workload's models load)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="evserve-callgrind-") as tmp:
        out = os.path.join(tmp, "callgrind.out.%p")
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # idle BLAS threads spin and would be counted
        extra = cached_repository(tmp) if workload in CACHE_WORKLOADS else []
        trace = []
        if isolation == "process":
            models = PROCESS_MODELS[workload]
            extra += ["--model-isolation", "process", "--model-control-mode", "explicit",
                      *(arg for model in models for arg in ("--load-model", model))]
            trace = ["--trace-children=yes"]
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *trace,
             *server_command(server, port, threads, extra)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        # callgrind_control without a pid reaches every callgrind run: the server and its children.
        target = [str(proc.pid)] if isolation == "thread" else []
        try:
            wait_ready(port, 600)
            fixed = request_bytes(workload)
            make = (lambda n: request_bytes(workload, n)) if workload == "simple-json-cache-miss" else (lambda n: fixed)
            send_requests(port, make, 300, connections)  # warm-up: imports, caches, allocator
            subprocess.run(["callgrind_control", "-z", *target], check=True, capture_output=True)
            send_requests(port, make, requests, connections, first=300)
            subprocess.run(["callgrind_control", "-d", *target], check=True, capture_output=True)
            time.sleep(1)
            latest: dict[str, str] = {}  # each process's last dump
            for dump in sorted(glob.glob(os.path.join(tmp, "callgrind.out.*")), key=os.path.getmtime):
                latest[os.path.basename(dump).split(".")[2]] = dump
            if not latest:
                raise RuntimeError("callgrind wrote no dump")
            return sum(total_instructions(dump) for dump in latest.values() if dump.count(".") > 2) / requests
        finally:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=SERVERS, action="append", help="repeatable; default: both")
    parser.add_argument("--workload", choices=WORKLOADS, action="append",
                        help="repeatable; default: ready and simple-json (the work floor serves only those)")
    parser.add_argument("--requests", type=int, default=3000, help="requests counted (default 3000)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="evserve --threads (default 1)")
    parser.add_argument("--isolation", choices=("thread", "process"), default="thread",
                        help="evserve --model-isolation (default thread); process counts the model's child too")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions.py: needs valgrind and callgrind_control (apt-get install valgrind)", file=sys.stderr)
        return 2
    servers = args.server or list(SERVERS)
    figures: dict[tuple[str, str], float] = {}
    workloads = args.workload or ["ready", "simple-json"]
    print("| workload | server | instructions per request |\n|---|---|---:|")
    for workload in workloads:
        for server in servers:
            if server == "work-floor" and workload not in ("ready", "simple-json"):
                continue  # it serves one model inline: no cache, no BLS, no ensembles
            if args.isolation == "process" and server == "evserve" and workload not in PROCESS_MODELS:
                print(f"| {workload} | {server} | (no process-isolated run for this workload) |")
                continue
            isolation = args.isolation if server == "evserve" else "thread"
            figures[workload, server] = measure(server, workload, args.requests, args.connections, args.threads,
                                                isolation)
            print(f"| {workload} | {server} | {figures[workload, server]:,.0f} |", flush=True)
    if set(servers) == set(SERVERS):
        for workload in (w for w in workloads if (w, "work-floor") in figures):
            ratio = figures[workload, "evserve"] / figures[workload, "work-floor"]
            print(f"\n{workload}: evserve executes {ratio:.2f}x the work floor's instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
