"""Does a CPU-bound Python model scale with ``instance_group { count: N }``? Threads against processes.

Why: with the GIL, N in-process instances of a model that computes in pure Python take turns on
one interpreter, so N buys nothing; in child processes (``--model-isolation process``) each
instance has an interpreter of its own and N instances use N cores. The model here spins pure
Python for ``--work-ms`` per request (no NumPy, no sleeping), so the load generator costs next
to nothing beside it and may share the server's cores.

    python bench/instance_scaling.py                      # 1 and 2 instances, thread and process
    python bench/instance_scaling.py --counts 1,2,4 --server-cores 0-3 --wrk-cores 4

Output: a markdown table (req/s, p50, p99, and N instances ÷ 1) on stdout; raw samples in
bench/results/<UTC>-instance-scaling.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _common import (
    HOST,
    LUA_DIR,
    Sample,
    WrkPlan,
    add_placement_arguments,
    check_placement,
    evserve_argv,
    fmt,
    free_port,
    measure_on_server,
    median_of,
    parse_wrk,
    pending_row,
    prepare_runner,
    report_progress,
    request_ok,
    runner_parser,
    warm_up,
    write_record,
    wrk_text,
)

MODEL = "spin"
PATH = f"/v2/models/{MODEL}/infer"
CONFIG = """
name: "spin"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
"""
MODEL_PY = """
import time
import triton_python_backend_utils as pb_utils

WORK_S = {work_s}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            deadline = time.perf_counter() + WORK_S
            spins = 0
            while time.perf_counter() < deadline:
                spins += 1
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data)]))
        return responses
"""
BODY = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[1.0]}]}'


def build_repository(root: Path, count: int, work_ms: float) -> Path:
    repo = root / f"count{count}"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(CONFIG.format(count=count))
    (repo / MODEL / "1" / "model.py").write_text(MODEL_PY.format(work_s=work_ms / 1000))
    return repo


def measure(isolation: str, count: int, round_no: int, repo: Path, body_file: Path, args: argparse.Namespace) -> Sample:
    sample = Sample(f"{isolation} ×{count}", round_no)
    port = free_port()
    argv = [*evserve_argv(port, 1, repo), "--model-isolation", isolation]
    plan = WrkPlan(args.wrk_cores, args.connections, args.duration, args.warmup)
    url, lua = f"http://{HOST}:{port}{PATH}", LUA_DIR / "post_json.lua"

    def run() -> object:
        request_ok(port, "POST", PATH, BODY)
        warm_up(plan, url, lua, (str(body_file),))
        return parse_wrk(wrk_text(plan, plan.duration_s, url, lua, (str(body_file),)))

    return measure_on_server(sample, argv, port, "/v2/health/ready", args, run)  # type: ignore[arg-type]


def table(samples: Sequence[Sample], args: argparse.Namespace) -> str:
    lines = [f"### instance scaling: `{MODEL}` spins {args.work_ms:g} ms of pure Python per request, wrk "
             f"-c{args.connections}; server cores {args.server_cores}, load cores {args.wrk_cores}", "",
             "| isolation | instances | req/s | p50 ms | p99 ms | ÷ one instance |", "|---|---:|---:|---:|---:|---:|"]
    for isolation in args.isolation:
        base = median_of(samples, f"{isolation} ×{args.counts[0]}")
        for count in args.counts:
            config = f"{isolation} ×{count}"
            m = median_of(samples, config)
            if m is None:
                lines.append(pending_row(samples, config, 5))
                continue
            ratio = fmt(m["requests_per_s"] / base["requests_per_s"], 2) if base else "—"
            lines.append(f"| {isolation} | {count} | {fmt(m['requests_per_s'])} | {fmt(m['p50_ms'], 2)} "
                         f"| {fmt(m['p99_ms'], 2)} | {ratio} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = runner_parser(__doc__)
    parser.add_argument("--counts", default="1,2", help="instance counts, comma-separated (default 1,2)")
    parser.add_argument("--isolation", default="thread,process", help="isolations, comma-separated")
    parser.add_argument("--work-ms", type=float, default=5.0, help="pure-Python work per request (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured wrk seconds per run (default 8)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded wrk seconds (default 1)")
    parser.add_argument("--connections", type=int, default=8, help="wrk -c (default 8)")
    add_placement_arguments(parser)
    parser.set_defaults(server_cores="0,1", wrk_cores="1", share_cores=True)
    args = parser.parse_args(argv)
    args.counts = [int(n) for n in args.counts.split(",") if n.strip()]
    args.isolation = [word.strip() for word in args.isolation.split(",") if word.strip()]
    check_placement(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_runner(args)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="evserve-scaling-") as tmp:
        root = Path(tmp)
        body_file = root / "body.json"
        body_file.write_bytes(BODY)
        repos = {count: build_repository(root, count, args.work_ms) for count in args.counts}
        for round_no in range(args.rounds):
            for isolation in args.isolation:
                for count in args.counts:
                    sample = measure(isolation, count, round_no, repos[count], body_file, args)
                    samples.append(sample)
                    shown = sample.error or f"{sample.result.requests_per_s:,.0f} req/s"  # type: ignore[union-attr]
                    report_progress("instance scaling", round_no, args.rounds, sample.config, shown)
    text = table(samples, args)
    print(text)
    path = write_record("instance-scaling", vars(args), {"samples": samples, "table": text})
    print(f"\nraw samples: {path}")
    return 0 if all(s.result is not None for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
