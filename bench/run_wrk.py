"""wrk against evserve and against the hello-world floor, interleaved, reported as medians and ratios.

Why this shape: the machine is small and noisy, so one run of one server proves nothing. Each
configuration (the uvloop + httptools floor in bench/hello_server.py, ``evserve --threads 1``,
``evserve --threads 8``) is started fresh, pinned with taskset to the server cores, warmed up
and measured by wrk pinned to the other cores; the configurations take turns, round after round
(the order rotates each round), and the table reports each one's median and its ratio to the
floor. The ratio is the figure that travels between machines: it is what evserve's server layer
costs over the cheapest server built from the same parts.

Scenarios: ``ready`` (GET /v2/health/ready), ``infer-json`` (POST /v2/models/simple/infer,
tritonclient-style JSON, INT32 [1,16] x2), ``infer-binary`` (POST /v2/models/identity_fp32/infer,
a 1 MiB FP32 tensor in the binary tensor extension, binary output requested).

    python bench/run_wrk.py                         # every scenario, 3 rounds, 5 s each
    python bench/run_wrk.py --scenario ready --rounds 5 --duration 10

A markdown table goes to stdout, the raw samples to bench/results/<UTC>-wrk.json.
Exit status: 0 when every configuration produced a figure, 1 when one did not, 2 without wrk.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from _common import (
    BENCH_DIR,
    HOST,
    LUA_DIR,
    BenchError,
    Sample,
    WrkPlan,
    WrkResult,
    add_placement_arguments,
    check_placement,
    evserve_argv,
    fmt,
    free_port,
    measure_on_server,
    median_of,
    pending_row,
    prepare_runner,
    report_progress,
    request_ok,
    run_wrk,
    runner_parser,
    simple_json_body,
    write_record,
)

SCENARIOS = ("ready", "infer-json", "infer-binary")
READY_PATH = "/v2/health/ready"
BASELINE = "baseline (uvloop+httptools)"


@dataclass(frozen=True)
class Target:
    """One server configuration: its command line for a given port, and whether it is the floor."""

    name: str
    argv: Callable[[int], list[str]]
    ready_path: str
    floor: bool = False


@dataclass(frozen=True)
class Payload:
    """The request every wrk connection repeats, and the Lua arguments that make wrk send it."""

    method: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    lua_args: tuple[str, ...] = ()


@dataclass
class Scenario:
    name: str
    path: str
    lua: Path
    connections: int
    targets: list[Target]
    build: Callable[[int], Payload]  # port of a ready server → payload (may ask the server for metadata)
    _payload: Payload | None = None

    def payload(self, port: int) -> Payload:
        """Built once, from the first server that is up, then reused so every run sends the same bytes."""
        if self._payload is None:
            self._payload = self.build(port)
        return self._payload


# --- payloads ------------------------------------------------------------------------------------

def write_body(workdir: Path, name: str, body: bytes) -> Path:
    path = workdir / name
    path.write_bytes(body)
    return path


def json_payload(workdir: Path, _port: int) -> Payload:
    body = simple_json_body()
    path = write_body(workdir, "infer.json", body)
    return Payload("POST", body, {"Content-Type": "application/json"}, (str(path),))


def concrete_shape(dims: Sequence[int], count: int) -> list[int]:
    """Fill a metadata shape's -1 dims so it holds ``count`` elements (the last -1 takes the rest)."""
    fixed = 1
    for dim in dims:
        fixed *= dim if dim > 0 else 1
    free = [i for i, dim in enumerate(dims) if dim < 0]
    if count % fixed or (not free and fixed != count):
        raise BenchError(f"model shape {list(dims)} cannot hold {count} elements")
    shape = [dim if dim > 0 else 1 for dim in dims]
    if free:
        shape[free[-1]] = count // fixed
    return shape


def binary_payload(workdir: Path, model: str, mib: float, port: int) -> Payload:
    """A binary-extension request for ``model``'s first FP32 input, names and rank from its metadata."""
    raw = request_ok(port, "GET", f"/v2/models/{model}")
    try:
        meta = orjson.loads(raw)
        tensor_in, tensor_out = meta["inputs"][0], meta["outputs"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise BenchError(f"unexpected metadata for {model}: {raw[:200]!r}") from exc
    count = int(mib * 1024 * 1024) // 4
    data = bytes(4 * count)  # zeros: FP32 0.0; the content does not matter to an identity model
    header = orjson.dumps({
        "inputs": [{"name": tensor_in["name"], "shape": concrete_shape(tensor_in["shape"], count),
                    "datatype": "FP32", "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": tensor_out["name"], "parameters": {"binary_data": True}}],
    })
    body = header + data
    path = write_body(workdir, "infer.bin", body)
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return Payload("POST", body, headers, (str(path), str(len(header))))


# --- targets and scenarios ----------------------------------------------------------------------

def hello_target(json_infer: bool) -> Target:
    def argv(port: int) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "hello_server.py"), "--port", str(port),
                *(["--json-infer"] if json_infer else [])]

    return Target(BASELINE, argv, "/", floor=True)


def evserve_target(threads: int) -> Target:
    return Target(f"evserve --threads {threads}", functools.partial(evserve_argv, threads=threads), READY_PATH)


def build_scenarios(args: argparse.Namespace, workdir: Path) -> list[Scenario]:
    evservers = [evserve_target(n) for n in args.threads]

    def conns(default: int) -> int:
        return args.connections or default

    catalogue = {
        "ready": Scenario("ready", READY_PATH, LUA_DIR / "get.lua", conns(64),
                          [hello_target(False), *evservers], lambda _port: Payload("GET")),
        "infer-json": Scenario("infer-json", "/v2/models/simple/infer", LUA_DIR / "post_json.lua", conns(64),
                               [hello_target(True), *evservers], functools.partial(json_payload, workdir)),
        "infer-binary": Scenario("infer-binary", f"/v2/models/{args.binary_model}/infer",
                                 LUA_DIR / "post_binary.lua", conns(8), list(evservers),
                                 functools.partial(binary_payload, workdir, args.binary_model, args.binary_mib)),
    }
    return [catalogue[name] for name in args.scenario]


# --- running ------------------------------------------------------------------------------------

def measure(scenario: Scenario, target: Target, round_no: int, args: argparse.Namespace) -> Sample:
    """Send the payload once by hand (it must answer 200), then warm up and measure with wrk."""
    sample = Sample(target.name, round_no)
    port = free_port()
    plan = WrkPlan(args.wrk_cores, scenario.connections, args.duration, args.warmup)

    def run() -> WrkResult:
        payload = scenario.payload(port)
        request_ok(port, payload.method, scenario.path, payload.body, headers=payload.headers)
        result = run_wrk(plan, f"http://{HOST}:{port}{scenario.path}", scenario.lua, payload.lua_args)
        sample.extra["request_bytes"] = len(payload.body or b"")
        return result

    return measure_on_server(sample, target.argv(port), port, target.ready_path, args, run)


def run_scenario(scenario: Scenario, args: argparse.Namespace) -> list[Sample]:
    """Rounds of every target in turn, the order rotated each round so no target always goes first."""
    samples: list[Sample] = []
    for round_no in range(args.rounds):
        shift = round_no % len(scenario.targets)
        for target in scenario.targets[shift:] + scenario.targets[:shift]:
            sample = measure(scenario, target, round_no, args)
            status = f"{sample.result.requests_per_s:,.0f} req/s" if sample.result else f"failed: {sample.error}"
            report_progress(scenario.name, round_no, args.rounds, target.name, status)
            samples.append(sample)
    return samples


def table(scenario: Scenario, samples: Sequence[Sample]) -> str:
    """Markdown: medians per target, ratio to the floor (req/s and p50), request MiB/s for bodies."""
    floor = next((median_of(samples, t.name) for t in scenario.targets if t.floor), None)
    body_bytes = next((int(s.extra["request_bytes"]) for s in samples if "request_bytes" in s.extra), 0)
    lines = [
        f"### {scenario.name}: {scenario.path}, {scenario.connections} connections",
        "",
        "| server | req/s (median) | req/s min–max | p50 ms | p99 ms | resp MiB/s | req MiB/s "
        "| req/s ÷ floor | p50 ÷ floor | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target in scenario.targets:
        m = median_of(samples, target.name)
        if m is None:
            lines.append(pending_row(samples, target.name, 10))
            continue
        upload = fmt(m["requests_per_s"] * body_bytes / 2**20, 1) if body_bytes > 4096 else "—"
        rps_ratio = fmt(m["requests_per_s"] / floor["requests_per_s"], 2) if floor else "—"
        p50_ratio = fmt(m["p50_ms"] / floor["p50_ms"], 2) if floor else "—"
        lines.append(
            f"| {target.name} | {fmt(m['requests_per_s'])} | {fmt(m['rps_min'])}–{fmt(m['rps_max'])} "
            f"| {fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} | {fmt(m['transfer_mb_s'], 1)} | {upload} "
            f"| {rps_ratio} | {p50_ratio} | {int(m['errors'])} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = runner_parser(__doc__)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="repeatable; default: all of " + ", ".join(SCENARIOS))
    parser.add_argument("--threads", default="1,8", help="evserve --threads values, comma-separated (default 1,8)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded wrk seconds before each run (default 1)")
    parser.add_argument("--connections", type=int, default=0,
                        help="wrk -c for every scenario (default: 64; 8 for infer-binary)")
    add_placement_arguments(parser)
    parser.add_argument("--binary-model", default="identity_fp32", help="model for infer-binary")
    parser.add_argument("--binary-mib", type=float, default=1.0, help="FP32 tensor size in MiB (default 1)")
    args = parser.parse_args(argv)
    args.scenario = args.scenario or list(SCENARIOS)
    args.threads = [int(n) for n in args.threads.split(",") if n.strip()]
    check_placement(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_runner(args)
    report: dict[str, list[Sample]] = {}
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="evserve-bench-") as tmp:
        for scenario in build_scenarios(args, Path(tmp)):
            samples = run_scenario(scenario, args)
            report[scenario.name] = samples
            tables.append(table(scenario, samples))
    print("\n\n".join(tables))
    path = write_record("wrk", vars(args), {"samples": report})
    print(f"\nraw samples: {path}")
    failed = any(median_of(s, name) is None for s in report.values() for name in {x.config for x in s})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
