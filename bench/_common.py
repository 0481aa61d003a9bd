"""What every wrk-driven benchmark here shares: pinned server processes, wrk runs, parsing, records.

Why one module: on a 2-core, noisy machine a figure means something only when each run is set
up the same way (server and load generator pinned to different cores, the same readiness wait,
the same warm-up, several interleaved rounds reduced to a median) and recorded with the
versions it was taken with. Both runners (run_wrk.py, model_control_latency.py) import this so
the method is written once. Scripts run as ``python bench/<name>.py``, which puts bench/ on
sys.path; bench/ is deliberately not a package.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson

BENCH_DIR = Path(__file__).resolve().parent
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"

_LATENCY_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_BYTES_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


class BenchError(RuntimeError):
    """A run that produced no figure (server did not start, wrk failed); the runner records it."""


@dataclass(frozen=True)
class WrkResult:
    """The figures one wrk run reports; MB are wrk's binary megabytes (MiB)."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    transfer_mb_s: float
    requests: int
    non_2xx: int = 0
    socket_errors: int = 0


@dataclass
class Sample:
    """One measured run of one configuration, kept raw in the JSON record."""

    config: str
    round: int
    result: WrkResult | None = None
    error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


# --- tools and environment -------------------------------------------------------------------

def require_tools() -> None:
    """Exit 2 with install hints when wrk or taskset is missing: nothing can be measured without them."""
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if not missing:
        return
    print(f"missing: {', '.join(missing)}", file=sys.stderr)
    if "wrk" in missing:
        print("install wrk: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)", file=sys.stderr)
    if "taskset" in missing:
        print("install taskset: `apt-get install util-linux` (Debian/Ubuntu)", file=sys.stderr)
    sys.exit(2)


def parse_cores(text: str) -> list[int]:
    """``"0"``, ``"0,1"`` or ``"2-3"`` → core numbers, checked against this machine."""
    cores: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        cores.extend(range(int(low), int(high or low) + 1))
    available = os.sched_getaffinity(0)
    unknown = [c for c in cores if c not in available]
    if unknown or not cores:
        raise ValueError(f"cores {text!r} not available (this process may use {sorted(available)})")
    return cores


def runner_parser(doc: str) -> argparse.ArgumentParser:
    """A runner's parser: the first paragraph of its module docstring is the --help description."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    """--server-cores, --wrk-cores and --ready-timeout: where the server and wrk run, how long to wait."""
    parser.add_argument("--server-cores", default="0", help="taskset cores for the server (default 0)")
    parser.add_argument("--wrk-cores", default="1", help="taskset cores for wrk and this runner (default 1)")
    parser.add_argument("--ready-timeout", type=float, default=60.0,
                        help="seconds to wait for a server to answer (default 60)")
    parser.add_argument("--share-cores", action="store_true",
                        help="let server and load cores overlap (a machine too small to give a multi-threaded "
                             "server cores of its own; figures then include the load generator's contention)")


def check_placement(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn the two core options into core lists; refuse cores missing here or shared by both."""
    try:
        args.server_cores = parse_cores(args.server_cores)
        args.wrk_cores = parse_cores(args.wrk_cores)
    except ValueError as exc:
        parser.error(str(exc))
    if set(args.server_cores) & set(args.wrk_cores) and not args.share_cores:
        parser.error("--server-cores and --wrk-cores overlap: the load generator would steal the server's core")


def prepare_runner(args: argparse.Namespace) -> None:
    """Before the first run: exit without the tools, then move this process onto the wrk cores."""
    require_tools()
    pin_self(args.wrk_cores)


def pin_self(cores: Sequence[int]) -> None:
    """Keep the runner (and its load/unload thread) on the load generator's cores, off the server's."""
    os.sched_setaffinity(0, set(cores))


def taskset(cores: Sequence[int], argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def evserve_command() -> list[str]:
    """The installed console script, or the module when only the checkout is importable."""
    script = shutil.which("evserve")
    return [script] if script else [sys.executable, "-m", "evserve.server"]


def evserve_argv(port: int, threads: int, repository: Path | None = None, python: str | None = None) -> list[str]:
    """evserve on ``port`` with ``threads`` loop threads; metrics off, on a port of their own so none clash.

    ``repository`` replaces the bundled example repository (compare.py serves Triton and evserve
    the same two-model repository, so both load the same models). ``python`` runs evserve on
    another interpreter with evserve installed (a free-threaded build, say).
    """
    extra = ["--model-repository", str(repository)] if repository is not None else []
    command = [python, "-m", "evserve.server"] if python else evserve_command()
    # No drain grace: a benchmark's server has no balancer to warn, and each stop would wait it out.
    return [*command, "--threads", str(threads), "--http-port", str(port),
            "--metrics-port", str(free_port()), "--allow-metrics=false", "--drain-grace-secs", "0", *extra]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, object]:
    """Machine and versions, recorded next to every figure (granian's habit: no table without them)."""
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    wrk_line = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "unknown"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
        "orjson": _version("orjson"),
        "numpy": _version("numpy"),
        "evserve": _version("evserve"),
        "wrk": " ".join(wrk_line.split()[:2]),
    }


# --- request bodies ----------------------------------------------------------------------------

def simple_json_body(output_names: tuple[str, str] = ("OUTPUT0", "OUTPUT1")) -> bytes:
    """What tritonclient's HTTP client sends for Triton's simple example (binary_data off everywhere)."""
    def tensor(name: str, data: list[int]) -> dict[str, object]:
        return {"name": name, "shape": [1, 16], "datatype": "INT32", "data": data}

    outputs = [{"name": name, "parameters": {"binary_data": False}} for name in output_names]
    return orjson.dumps({"inputs": [tensor("INPUT0", list(range(16))), tensor("INPUT1", [1] * 16)],
                         "outputs": outputs})


# --- servers -----------------------------------------------------------------------------------

def free_port() -> int:
    """A port the kernel just handed out; a tiny race with other processes is acceptable here."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_exchange(port: int, method: str, path: str, body: bytes | None = None, *,
                  headers: dict[str, str] | None = None,
                  timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection → (status, headers with lower-case names, body); a body defaults to JSON."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        if headers is None:
            headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def http_request(port: int, method: str, path: str, body: bytes | None = None, *,
                 headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """``http_exchange`` without the reply headers."""
    status, _, reply = http_exchange(port, method, path, body, headers=headers, timeout=timeout)
    return status, reply


def request_ok(port: int, method: str, path: str, body: bytes | None = None, *,
               headers: dict[str, str] | None = None) -> bytes:
    """``http_request`` that must answer 200: a wrong request should fail loudly, not become a fast 400 figure."""
    status, reply = http_request(port, method, path, body, headers=headers)
    if status != 200:
        raise BenchError(f"{method} {path} → {status}: {reply[:200]!r}")
    return reply


class ServerProcess:
    """A server pinned with taskset, its output in a temp log, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, argv: Sequence[str], cores: Sequence[int], port: int, ready_path: str) -> None:
        self.argv = taskset(cores, argv)
        self.port = port
        self.ready_path = ready_path
        self._log = tempfile.NamedTemporaryFile(prefix="evserve-bench-", suffix=".log", delete=False)
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self._proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The server's pid (taskset execs the server, so it is the server's own), for CPU accounting."""
        assert self._proc is not None
        return self._proc.pid

    def wait_ready(self, timeout: float) -> None:
        """Poll ``ready_path`` until 200; raise BenchError with the log tail if it dies or never answers."""
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BenchError(f"server exited with status {self._proc.returncode}: {self.log_tail()}")
            try:
                if http_request(self.port, "GET", self.ready_path, timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"server not ready after {timeout:.0f} s: {self.log_tail()}")

    def check_alive(self) -> None:
        """Raise when the server has exited: figures taken meanwhile came from someone else.

        On a shared machine another process can take the port between ``free_port`` and the
        server's bind; the server then exits with "cannot listen" while that other process
        answers the readiness poll. Checking after each run keeps such a figure out of the table.
        """
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise BenchError(f"server exited with status {self._proc.returncode} "
                             f"(port {self.port} taken by another process?): {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) if text else "(no output)"

    @staticmethod
    def _kill_leftovers(pgid: int) -> None:
        """SIGKILL whatever is left of the server's process group (Triton's python-backend stubs,
        should one outlive its parent): the next configuration must have the core to itself."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = 15.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._kill_leftovers(self._proc.pid)
        self._proc = None
        self._log.close()
        os.unlink(self._log.name)


def measure_on_server(sample: Sample, argv: Sequence[str], port: int, ready_path: str, args: argparse.Namespace,
                      run: Callable[[], WrkResult]) -> Sample:
    """A fresh server pinned to ``args.server_cores``; once ready, ``run`` gives the sample its result.

    A failure of any step becomes ``sample.error``; a server that died meanwhile is reported
    instead of the symptom it caused, and a figure taken while it was dead is discarded.
    """
    try:
        with ServerProcess(argv, args.server_cores, port, ready_path) as server:
            try:
                server.wait_ready(args.ready_timeout)
                result = run()
            except (BenchError, OSError):
                server.check_alive()  # a dead server explains the failure better than its symptom
                raise
            server.check_alive()
            sample.result = result
    except (BenchError, OSError) as exc:
        sample.error = str(exc)
    return sample


def report_progress(label: str, round_no: int, rounds: int, config: str, shown: str) -> None:
    print(f"  [{label}] round {round_no + 1}/{rounds} {config}: {shown}", file=sys.stderr, flush=True)


# --- wrk ---------------------------------------------------------------------------------------

def _latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise BenchError(f"unparsed wrk latency {text!r}")
    return float(match.group(1)) * _LATENCY_UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Read req/s, p50, p99, transfer/s and error counts from ``wrk --latency`` text."""
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rps = find(r"^Requests/sec:\s+([\d.]+)")
    p50 = find(r"^\s+50%\s+(\S+)")
    p99 = find(r"^\s+99%\s+(\S+)")
    transfer = find(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)")
    total = find(r"^\s+(\d+) requests in")
    if not (rps and p50 and p99 and transfer and total):
        raise BenchError(f"unparsed wrk output: {output.strip()[-300:]!r}")
    non_2xx = find(r"Non-2xx or 3xx responses:\s+(\d+)")
    sockets = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=_latency_ms(p50.group(1)),
        p99_ms=_latency_ms(p99.group(1)),
        transfer_mb_s=float(transfer.group(1)) * _BYTES_UNITS[transfer.group(2)] / 1024**2,
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


@dataclass(frozen=True)
class WrkPlan:
    """How wrk is run: the same for every configuration of a scenario so that ratios are fair."""

    cores: Sequence[int]
    connections: int
    duration_s: float
    warmup_s: float
    timeout_s: float = 5.0


def wrk_text(plan: WrkPlan, seconds: float, url: str, lua: Path, lua_args: Sequence[str] = ()) -> str:
    """One ``wrk -t1 --latency`` run pinned to ``plan.cores``; its stdout."""
    argv = taskset(plan.cores, [
        "wrk", "-t1", f"-c{plan.connections}", f"-d{seconds:g}s", f"--timeout={plan.timeout_s:g}s",
        "--latency", "-s", str(lua), url,
    ])
    if lua_args:
        argv += ["--", *lua_args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + 60:g} s") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout


def warm_up(plan: WrkPlan, url: str, lua: Path, lua_args: Sequence[str] = ()) -> None:
    """A discarded run: first-request costs (imports, allocator growth, caches) stay out of the figure."""
    if plan.warmup_s > 0:
        wrk_text(plan, plan.warmup_s, url, lua, lua_args)


def run_wrk(plan: WrkPlan, url: str, lua: Path, lua_args: Sequence[str] = ()) -> WrkResult:
    """Warm up, then the measured run."""
    warm_up(plan, url, lua, lua_args)
    return parse_wrk(wrk_text(plan, plan.duration_s, url, lua, lua_args))


# --- reduction and records ---------------------------------------------------------------------

def median_of(samples: Sequence[Sample], config: str) -> dict[str, float] | None:
    """Median of each figure over the config's successful rounds (None when every round failed)."""
    results = [s.result for s in samples if s.config == config and s.result is not None]
    if not results:
        return None
    keys = ("requests_per_s", "p50_ms", "p99_ms", "transfer_mb_s")
    reduced = {k: statistics.median(getattr(r, k) for r in results) for k in keys}
    reduced["rps_min"] = min(r.requests_per_s for r in results)
    reduced["rps_max"] = max(r.requests_per_s for r in results)
    reduced["rounds_ok"] = len(results)
    reduced["errors"] = sum(r.non_2xx + r.socket_errors for r in results)
    return reduced


def first_error(samples: Sequence[Sample], config: str) -> str | None:
    return next((s.error for s in samples if s.config == config and s.error), None)


def pending_row(samples: Sequence[Sample], config: str, columns: int) -> str:
    """The table row of a config with no figure: ``pending``, blank cells, and why in the last of ``columns``."""
    reason = (first_error(samples, config) or "no run")[:160].replace("|", "/")
    return f"| {config} | pending |{' |' * (columns - 3)} {reason} |"


def write_record(kind: str, args: dict[str, object], payload: dict[str, object]) -> Path:
    """bench/results/<UTC timestamp>-<kind>.json: the raw samples and the environment they came from."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}-{kind}.json"
    record = {"kind": kind, "utc": stamp, "environment": environment(), "args": args, **payload}
    path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, Sample | WrkResult):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


# --- the real Triton -----------------------------------------------------------------------------

def find_triton(requested: str | None) -> tuple[Path | None, str]:
    """The triton-reference tool, set up (its first run downloads the wheel), or None and why not."""
    if requested == "none":
        return None, "skipped (--no-triton)"
    candidates = [requested] if requested else [
        os.environ.get("TRITON_REFERENCE"),
        str(BENCH_DIR.parent / "shared/tools/triton-reference"),
        str(BENCH_DIR.parent.parent / "shared/tools/triton-reference"),
    ]
    tool = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    if tool is None:
        return None, "skipped: no triton-reference tool (pass --triton PATH)"
    try:
        done = subprocess.run([str(tool)], env={**os.environ, "TRITON_REAL_SETUP_ONLY": "1"},
                              capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        return None, "skipped: triton-reference setup took over 15 min"
    if done.returncode != 0:
        return None, f"skipped: triton-reference setup failed: {(done.stderr or done.stdout).strip()[-200:]}"
    return tool, f"Triton 2.51 from {done.stdout.strip()}"


def triton_argv(tool: Path, repo: Path, port: int) -> list[str]:
    """tritonserver with its default HTTP thread count (8); gRPC and metrics off, as evserve runs here."""
    return [str(tool), "--model-repository", str(repo), "--http-port", str(port),
            "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
            "--allow-grpc=false", "--allow-metrics=false"]
