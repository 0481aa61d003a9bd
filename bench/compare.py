"""evserve beside its floors and the real Triton 2.51, per workload, measured side by side in one run.

Why this shape: "how fast is evserve" means nothing alone. Three anchors give it meaning, and they
are measured in the same run, interleaved, on the same pinned cores:
- the floor (bench/hello_server.py): canned replies, what HTTP framing alone costs;
- the work floor (bench/work_floor.py): the same jobs (decode, numpy, model, encode) done inline
  on one uvloop loop, the Python limit for each job;
- the real NVIDIA Triton 2.51 CPU build with the python backend (../shared/tools/triton-reference),
  serving the same two models from the same repository.

Workloads: ``ready`` (GET /v2/health/ready), ``simple-json`` (POST /v2/models/simple/infer, the
body tritonclient sends), ``identity-binary`` (1 MiB FP32 through identity_fp32 in the binary
tensor extension, binary output) and ``identity-json`` (the same tensor as JSON in and out).

Every (workload, connections, server) cell is measured ``--rounds`` times, the servers in an
order rotated each round, each time in a fresh server pinned with taskset: one reply is checked
against the expected outputs, wrk warms up (discarded), wrk measures req/s and its corrected
p50/p99, then loadgen (bench/loadgen.c) measures uncorrected p50/p99/p99.9; the server's CPU
(its whole process tree) is read from /proc around both, after waiting for it to go idle. The
headline CPU per request is loadgen's, whose window drains and so holds whole requests only.
Tables report medians.

    python bench/compare.py                                   # 3 rounds x 5 s, c=16 (~15 min)
    python bench/compare.py --workload ready --connections 16,64
    python bench/compare.py --no-triton --rounds 5
    python bench/compare.py --threads 1 --isolation thread,process   # model instances in child processes
    # the standard build beside a free-threaded one (.ci/python-ft builds it), threads 1/2/8:
    python bench/compare.py --no-triton --workload ready --workload simple-json --threads 1,2,8 \
        --python 3.14t=/path/to/ft-venv/bin/python --server-cores 0,1 --wrk-cores 1 --share-cores

Tables go to stdout, raw samples to bench/results/<UTC>-compare.json. Exit status: 0 when every
cell has a figure (a Triton column skipped because Triton cannot run counts as fine; it says so),
1 when one has none, 2 without wrk or taskset.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from _common import (
    BENCH_DIR,
    HOST,
    LUA_DIR,
    BenchError,
    Sample,
    ServerProcess,
    WrkPlan,
    add_placement_arguments,
    check_placement,
    evserve_argv,
    find_triton,
    free_port,
    http_exchange,
    parse_wrk,
    prepare_runner,
    report_progress,
    runner_parser,
    simple_json_body,
    triton_argv,
    warm_up,
    write_record,
    wrk_text,
)
from _compare_report import report
from _measure import CpuWindow, build_loadgen, raw_request, run_loadgen, wait_idle

from evserve.gpu import EXAMPLE_REPOSITORY

WORKLOADS = ("ready", "simple-json", "identity-binary", "identity-json", "bls-json", "ensemble-json")
MODELS = ("simple", "identity_fp32", "bls_simple", "simple_ensemble")
# Workloads that need a model server (BLS, ensembles): the work floor serves only single models.
COMPOSED = frozenset({"bls-json", "ensemble-json"})
READY_PATH = "/v2/health/ready"
DTYPES: dict[str, type[np.generic]] = {"INT32": np.int32, "FP32": np.float32}
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Workload:
    """One request every connection repeats, how wrk and loadgen send it, and the outputs it must get."""

    name: str
    method: str
    path: str
    lua: Path
    lua_args: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    expected: Arrays | None = None  # None: a 200 is the whole check
    request_file: Path = Path()     # the raw request loadgen repeats


@dataclass(frozen=True)
class Server:
    """One server configuration: its command for a port, and the workloads it serves."""

    name: str
    role: str  # floor, work, triton, evserve
    argv: Callable[[int], list[str]]
    ready_path: str
    workloads: frozenset[str]
    threads: int = 0
    build: str = ""  # the interpreter evserve runs on, by label ("" for the runner's own)


# --- workloads -----------------------------------------------------------------------------------

def tensor_data(mib: float) -> np.ndarray:
    """Seeded FP32 values in [0, 1): real-looking numbers, so JSON carries full-length floats."""
    return np.random.default_rng(0).random(int(mib * 2**20) // 4, dtype=np.float32)


def simple_expected(body: bytes) -> Arrays:
    """The outputs of `simple` for the request body: sum and difference of its two INT32 inputs."""
    inputs = {t["name"]: np.array(t["data"], np.int32).reshape(t["shape"]) for t in orjson.loads(body)["inputs"]}
    return {"OUTPUT0": inputs["INPUT0"] + inputs["INPUT1"], "OUTPUT1": inputs["INPUT0"] - inputs["INPUT1"]}


def _swapped(outputs: Arrays) -> Arrays:
    return {"OUTPUT0": outputs["OUTPUT1"], "OUTPUT1": outputs["OUTPUT0"]}


def _doubled(body: bytes) -> Arrays:
    """simple_ensemble's outputs: two `simple` steps give twice each input."""
    inputs = {t["name"]: np.array(t["data"], np.int32).reshape(t["shape"]) for t in orjson.loads(body)["inputs"]}
    return {"TWICE0": 2 * inputs["INPUT0"], "TWICE1": 2 * inputs["INPUT1"]}


def identity_body(data: np.ndarray, binary: bool) -> tuple[bytes, int]:
    """An identity_fp32 request (what tritonclient sends) and the length of its JSON part."""
    tensor: dict[str, object] = {"name": "INPUT0", "shape": list(data.shape), "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": data.nbytes}
    else:
        tensor["data"] = data.tolist()
    header = orjson.dumps({"inputs": [tensor], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": binary}}]})
    return (header + data.tobytes(), len(header)) if binary else (header, len(header))


def write_files(workdir: Path, workload: Workload) -> Workload:
    """Body file for wrk's Lua script and raw request for loadgen, both read once per run."""
    lua_args = workload.lua_args
    if workload.body is not None:
        body_file = workdir / f"{workload.name}.body"
        body_file.write_bytes(workload.body)
        lua_args = (str(body_file), *lua_args)
    request_file = workdir / f"{workload.name}.http"
    request_file.write_bytes(raw_request(workload.method, workload.path, workload.headers, workload.body))
    return Workload(workload.name, workload.method, workload.path, workload.lua, lua_args, workload.headers,
                    workload.body, workload.expected, request_file)


def build_workloads(names: Sequence[str], mib: float, workdir: Path) -> list[Workload]:
    simple_body = simple_json_body()
    ensemble_body = simple_json_body(("TWICE0", "TWICE1"))
    data = tensor_data(mib)
    binary, header_length = identity_body(data, binary=True)
    as_json, _ = identity_body(data, binary=False)
    json_headers = {"Content-Type": "application/json"}
    identity = "/v2/models/identity_fp32/infer"
    catalogue = {
        "ready": Workload("ready", "GET", READY_PATH, LUA_DIR / "get.lua"),
        "simple-json": Workload("simple-json", "POST", "/v2/models/simple/infer", LUA_DIR / "post_json.lua",
                                headers=json_headers, body=simple_body, expected=simple_expected(simple_body)),
        "identity-binary": Workload(
            "identity-binary", "POST", identity, LUA_DIR / "post_binary.lua", (str(header_length),),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)},
            binary, {"OUTPUT0": data}),
        "identity-json": Workload("identity-json", "POST", identity, LUA_DIR / "post_json.lua",
                                  headers=json_headers, body=as_json, expected={"OUTPUT0": data}),
        # simple's request through bls_simple: one BLS hop to `simple`, outputs swapped.
        "bls-json": Workload("bls-json", "POST", "/v2/models/bls_simple/infer", LUA_DIR / "post_json.lua",
                             headers=json_headers, body=simple_body, expected=_swapped(simple_expected(simple_body))),
        # simple's request through simple_ensemble: two `simple` steps, one after the other.
        "ensemble-json": Workload("ensemble-json", "POST", "/v2/models/simple_ensemble/infer",
                                  LUA_DIR / "post_json.lua", headers=json_headers, body=ensemble_body,
                                  expected=_doubled(ensemble_body)),
    }
    return [write_files(workdir, catalogue[name]) for name in names]


# --- reply check ---------------------------------------------------------------------------------

def decode_reply(headers: dict[str, str], body: bytes) -> Arrays:
    """Output arrays of a KServe v2 reply, JSON ``data`` or binary tail alike."""
    header_length = int(headers.get("inference-header-content-length", len(body)))
    offset, outputs = header_length, {}
    for tensor in orjson.loads(body[:header_length])["outputs"]:
        dtype = DTYPES[tensor["datatype"]]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.array(tensor["data"], dtype=dtype)
        else:
            array = np.frombuffer(body, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset)
            offset += size
        outputs[tensor["name"]] = array.reshape(tensor["shape"])
    return outputs


def check_reply(port: int, workload: Workload) -> None:
    """Send the workload's request once: 200, and the expected names, datatypes, shapes and values.

    Every server is held to the same expected outputs, so a figure is only taken for a server
    that does the same job as the others (same meaning, if not the same bytes).
    """
    status, headers, body = http_exchange(port, workload.method, workload.path, workload.body,
                                          headers=workload.headers, timeout=60)
    if status != 200:
        raise BenchError(f"{workload.method} {workload.path} → {status}: {body[:200]!r}")
    if workload.expected is None:
        return
    try:
        got = decode_reply(headers, body)
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise BenchError(f"undecodable reply ({exc}): {body[:200]!r}") from exc
    for name, want in workload.expected.items():
        have = got.get(name)
        if have is None or have.dtype != want.dtype or have.shape != want.shape or not np.array_equal(have, want):
            shown = "missing" if have is None else f"{have.dtype} {list(have.shape)} {have.ravel()[:4]}"
            raise BenchError(f"{name}: expected {want.dtype} {list(want.shape)} {want.ravel()[:4]}, got {shown}")


# --- servers -------------------------------------------------------------------------------------

def model_repository(workdir: Path) -> Path:
    """simple and identity_fp32 copied from evserve's example repository; Triton 2.51 loads them as they are."""
    repo = workdir / "models"
    for model in MODELS:
        shutil.copytree(Path(EXAMPLE_REPOSITORY) / model, repo / model, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def build_servers(args: argparse.Namespace, repo: Path, triton: Path | None) -> list[Server]:
    everything = frozenset(WORKLOADS)
    python = sys.executable
    servers = [
        Server("floor (hello_server, canned)", "floor",
               lambda port: [python, str(BENCH_DIR / "hello_server.py"), "--port", str(port), "--json-infer"],
               "/", frozenset({"ready", "simple-json"})),
        Server("work floor (inline Python)", "work",
               lambda port: [python, str(BENCH_DIR / "work_floor.py"), "--port", str(port)], READY_PATH,
               everything - COMPOSED),
    ]
    if triton is not None:
        servers.append(Server("Triton 2.51", "triton", lambda port: triton_argv(triton, repo, port),
                              READY_PATH, everything))
    for build, build_python in args.python:
        for isolation in args.isolation:
            words = ["evserve", build, "" if isolation == "thread" else f"{isolation}-isolated"]
            prefix = " ".join(word for word in words if word)
            for threads in args.threads:
                servers.append(Server(
                    f"{prefix} --threads {threads}", "evserve",
                    lambda port, n=threads, py=build_python, iso=isolation: [
                        *evserve_argv(port, n, repo, py), "--model-isolation", iso],
                    READY_PATH, everything, threads, build))
    return servers


# --- measuring -----------------------------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    loadgen: Path | None


def measure_loadgen(ctx: Context, server: ServerProcess, workload: Workload, connections: int,
                    sample: Sample) -> None:
    """The uncorrected latencies and the exact CPU/request figure into ``sample.extra``.

    loadgen drains its requests at the end, so its window holds whole requests only: the
    server's CPU over it divided by every response in it (requests + drained) is exact.
    """
    if ctx.loadgen is None:
        return
    try:
        sample.extra["idle_wait_s"] = wait_idle(server.pid)
        with CpuWindow(server.pid, ctx.args.server_cores, ctx.args.wrk_cores) as cpu:
            result = run_loadgen(ctx.loadgen, ctx.args.wrk_cores, server.port, connections,
                                 ctx.args.loadgen_duration, workload.request_file)
        if not result["requests"]:
            raise BenchError("loadgen: no response within the measured time")
        sample.extra["loadgen"] = {**result, **cpu.figures(int(result["requests"] + result["drained"]))}
    except BenchError as exc:
        sample.extra["loadgen_error"] = str(exc)


def measure(ctx: Context, workload: Workload, server: Server, connections: int, round_no: int) -> Sample:
    """A fresh pinned server: check one reply, warm up, wrk (with CPU), loadgen (with CPU), stop.

    Any failure becomes ``sample.error``; a server that died is reported instead of its symptom.
    """
    args = ctx.args
    sample = Sample(server.name, round_no)
    port = free_port()
    # a 30 s timeout: 64 connections of 1 MiB JSON queue for seconds, and a timeout would drop them
    plan = WrkPlan(args.wrk_cores, connections, args.duration, args.warmup, timeout_s=30.0)
    url = f"http://{HOST}:{port}{workload.path}"
    try:
        with ServerProcess(server.argv(port), args.server_cores, port, server.ready_path) as proc:
            try:
                proc.wait_ready(args.ready_timeout)
                check_reply(port, workload)
                warm_up(plan, url, workload.lua, workload.lua_args)
                wait_idle(proc.pid)
                with CpuWindow(proc.pid, args.server_cores, args.wrk_cores) as cpu:
                    result = parse_wrk(wrk_text(plan, plan.duration_s, url, workload.lua, workload.lua_args))
                if not result.requests:
                    raise BenchError(f"wrk: no response within {plan.duration_s:g} s")
                sample.extra["wrk_cpu"] = cpu.figures(result.requests)
                measure_loadgen(ctx, proc, workload, connections, sample)
            except (BenchError, OSError):
                proc.check_alive()
                raise
            proc.check_alive()
            sample.result = result
    except (BenchError, OSError) as exc:
        sample.error = str(exc)
    return sample


def progress_line(sample: Sample) -> str:
    if sample.result is None:
        return f"failed: {sample.error}"
    wrk_cpu = sample.extra["wrk_cpu"]["cpu_us_per_req"]  # type: ignore[index]
    raw = sample.extra.get("loadgen")
    tail = (f"; loadgen {raw['cpu_us_per_req']:,.1f} µs/req, raw p99 {raw['p99']:.2f} ms" if isinstance(raw, dict)
            else f"; loadgen: {sample.extra.get('loadgen_error', 'skipped')}")
    result = sample.result
    return f"wrk {result.requests_per_s:,.0f} req/s, {wrk_cpu:,.1f} µs/req, p99 {result.p99_ms:.2f} ms{tail}"


def run_cell(ctx: Context, workload: Workload, servers: Sequence[Server], connections: int) -> list[Sample]:
    """Rounds of every server in turn, the order rotated each round so no server always goes first."""
    samples: list[Sample] = []
    label = f"{workload.name} c{connections}"
    for round_no in range(ctx.args.rounds):
        shift = round_no % len(servers)
        for server in [*servers[shift:], *servers[:shift]]:
            sample = measure(ctx, workload, server, connections, round_no)
            report_progress(label, round_no, ctx.args.rounds, server.name, progress_line(sample))
            samples.append(sample)
    return samples


# --- command line --------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = runner_parser(__doc__)
    parser.add_argument("--workload", action="append", choices=WORKLOADS,
                        help="repeatable; default: all of " + ", ".join(WORKLOADS))
    parser.add_argument("--connections", default="16", help="connection counts, comma-separated (default 16)")
    parser.add_argument("--threads", default="1,8", help="evserve --threads values, comma-separated (default 1,8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured wrk seconds per run (default 5)")
    parser.add_argument("--loadgen-duration", type=float, default=None,
                        help="measured loadgen seconds per run (default: --duration)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded wrk seconds before each run (default 1)")
    parser.add_argument("--tensor-mib", type=float, default=1.0, help="identity tensor size in MiB (default 1)")
    parser.add_argument("--triton", default=None, help="path of triton-reference (default: ../shared/tools/)")
    parser.add_argument("--no-triton", action="store_const", const="none", dest="triton", help="leave Triton out")
    parser.add_argument("--isolation", default="thread",
                        help="evserve --model-isolation values, comma-separated (default thread)")
    parser.add_argument("--python", action="append", default=[], metavar="LABEL=PATH",
                        help="repeatable: also run evserve on this interpreter (evserve installed there), labelled "
                             "LABEL; the runner's own interpreter is always measured first")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    args.workload = args.workload or list(WORKLOADS)
    args.connections = [int(n) for n in args.connections.split(",") if n.strip()]
    args.threads = [int(n) for n in args.threads.split(",") if n.strip()]
    args.isolation = [word.strip() for word in args.isolation.split(",") if word.strip()]
    if not set(args.isolation) <= {"thread", "process"}:
        parser.error("--isolation takes thread and/or process")
    args.loadgen_duration = args.loadgen_duration or args.duration
    builds = [("", None)]
    for spec in args.python:
        label, sep, path = spec.partition("=")
        if not sep or not label or not Path(path).exists():
            parser.error(f"--python {spec!r}: expected LABEL=PATH to an existing interpreter")
        builds.append((label, path))
    args.python = builds
    check_placement(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_runner(args)
    triton, triton_note = find_triton(args.triton)
    print(f"triton: {triton_note}", file=sys.stderr, flush=True)
    report_samples: dict[str, list[Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="evserve-compare-") as tmp:
        workdir = Path(tmp)
        try:
            loadgen: Path | None = build_loadgen(workdir)
        except BenchError as exc:
            print(f"loadgen: {exc}", file=sys.stderr)
            loadgen = None
        ctx = Context(args, loadgen)
        servers = build_servers(args, model_repository(workdir), triton)
        workloads = build_workloads(args.workload, args.tensor_mib, workdir)
        for connections in args.connections:
            for workload in workloads:
                serving = [s for s in servers if workload.name in s.workloads]
                report_samples[f"{workload.name}@c{connections}"] = run_cell(ctx, workload, serving, connections)
    text, complete = report(report_samples, servers, args, triton_note)
    print(text)
    path = write_record("compare", vars(args), {"triton": triton_note, "samples": report_samples, "tables": text})
    print(f"\nraw samples: {path}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
