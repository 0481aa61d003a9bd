"""Does loading and unloading a slow model hurt inference latency? p50/p99 with and without churn.

Why: in Triton the load API runs on the HTTP threads, so a model whose ``initialize`` takes
seconds stalls every other request (issues 8635, 8958). evserve runs model control on its own
bounded executor, off the loop threads. This benchmark checks that claim from the outside:
wrk drives POST /v2/models/simple/infer at a steady rate, and the p50/p99 it reports (a) with no
model-control traffic is compared with (b) the same load while a thread loads and unloads
``slow_load`` (its ``initialize`` takes ``--init-seconds``, its ``finalize`` a little) in a loop
for the whole measured run. A ratio near 1 means model control does not leak into serving.

``--init-mode sleep`` (default) waits with the GIL released, like a model waiting on disk or a
GPU; ``--init-mode spin`` burns CPU in Python for the same time, holding the GIL, which shows
what a CPU-bound ``initialize`` (an ``import torch``) costs the loop threads of a thread worker.

    python bench/model_control_latency.py                       # 3 interleaved rounds of 10 s
    python bench/model_control_latency.py --init-mode spin --rounds 5
    python bench/model_control_latency.py --init-mode spin --isolation process   # initialize in a child

The server is ``evserve --model-control-mode explicit --load-model simple --model-repository
<tmp repo>`` with ``simple`` copied from the package's example repository. Output: a markdown
table on stdout, raw samples in bench/results/<UTC>-model-control.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    HOST,
    LUA_DIR,
    Sample,
    WrkPlan,
    WrkResult,
    add_placement_arguments,
    check_placement,
    evserve_argv,
    fmt,
    free_port,
    http_request,
    measure_on_server,
    median_of,
    parse_wrk,
    pending_row,
    prepare_runner,
    report_progress,
    request_ok,
    runner_parser,
    simple_json_body,
    warm_up,
    write_record,
    wrk_text,
)

from evserve.gpu import EXAMPLE_REPOSITORY

MODES = ("steady", "load-unload")
INFER_PATH = "/v2/models/simple/infer"
SLOW_MODEL = "slow_load"

SLOW_CONFIG = """\
# Written by bench/model_control_latency.py: a model that is slow to load and unload, nothing else.
name: "slow_load"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
parameters: {{ key: "init_seconds" value: {{ string_value: "{init}" }} }}
parameters: {{ key: "finalize_seconds" value: {{ string_value: "{fini}" }} }}
parameters: {{ key: "init_mode" value: {{ string_value: "{mode}" }} }}
"""

SLOW_MODEL_PY = '''\
"""Written by bench/model_control_latency.py: initialize and finalize take time, execute echoes.

How long, and whether the wait holds the GIL ("spin") or not ("sleep"), come from the config's
parameters so that one file serves every run.
"""

import json
import time

import triton_python_backend_utils as pb_utils


def _wait(seconds, mode):
    if mode == "spin":
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    else:
        time.sleep(seconds)


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.mode = params["init_mode"]["string_value"]
        self.finalize_seconds = float(params["finalize_seconds"]["string_value"])
        _wait(float(params["init_seconds"]["string_value"]), self.mode)

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
            )
            for r in requests
        ]

    def finalize(self):
        _wait(self.finalize_seconds, self.mode)
'''


def build_repository(root: Path, args: argparse.Namespace) -> Path:
    """A temp repository: the package's ``simple`` plus the generated ``slow_load``."""
    repo = root / "models"
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "simple", repo / "simple", ignore=shutil.ignore_patterns("__pycache__"))
    slow = repo / SLOW_MODEL
    (slow / "1").mkdir(parents=True)
    (slow / "config.pbtxt").write_text(
        SLOW_CONFIG.format(init=args.init_seconds, fini=args.finalize_seconds, mode=args.init_mode)
    )
    (slow / "1" / "model.py").write_text(SLOW_MODEL_PY)
    return repo


@dataclass
class Churn:
    """Loads and unloads ``slow_load`` back to back on its own thread until stopped."""

    port: int
    timeout: float
    statuses: Counter[str] = field(default_factory=Counter)
    load_seconds: list[float] = field(default_factory=list)
    cycles: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    def _call(self, action: str) -> None:
        path = f"/v2/repository/models/{SLOW_MODEL}/{action}"
        start = time.perf_counter()
        try:
            status, _ = http_request(self.port, "POST", path, b"{}", timeout=self.timeout)
        except OSError as exc:
            self.statuses[f"{action} {type(exc).__name__}"] += 1
            return
        self.statuses[f"{action} {status}"] += 1
        if action == "load" and status == 200:
            self.load_seconds.append(time.perf_counter() - start)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._call("load")
            self._call("unload")
            self.cycles += 1

    def summary(self) -> dict[str, object]:
        load = statistics.median(self.load_seconds) if self.load_seconds else None
        return {"cycles": self.cycles, "statuses": dict(self.statuses), "load_s_median": load}


def server_argv(port: int, repo: Path, threads: int, isolation: str) -> list[str]:
    return [*evserve_argv(port, threads), "--model-isolation", isolation,
            "--model-control-mode", "explicit", "--load-model", "simple", "--model-repository", str(repo)]


def run_mode(mode: str, port: int, body_file: Path, args: argparse.Namespace, sample: Sample) -> WrkResult:
    """Probe, warm up without churn, then the measured run (with churn for load-unload)."""
    plan = WrkPlan(args.wrk_cores, args.connections, args.duration, args.warmup)
    url, lua, lua_args = f"http://{HOST}:{port}{INFER_PATH}", LUA_DIR / "post_json.lua", (str(body_file),)
    request_ok(port, "POST", INFER_PATH, body_file.read_bytes())
    warm_up(plan, url, lua, lua_args)
    if mode != "load-unload":
        return parse_wrk(wrk_text(plan, plan.duration_s, url, lua, lua_args))
    churn = Churn(port, args.init_seconds + args.finalize_seconds + 30)
    churn.start()
    try:
        return parse_wrk(wrk_text(plan, plan.duration_s, url, lua, lua_args))
    finally:
        churn.stop()
        sample.extra["churn"] = churn.summary()


def measure(mode: str, round_no: int, repo: Path, body_file: Path, args: argparse.Namespace) -> Sample:
    """One fresh server per run, so a model left half-loaded by one run cannot colour the next."""
    sample = Sample(mode, round_no)
    port = free_port()
    argv = server_argv(port, repo, args.threads, args.isolation)
    return measure_on_server(sample, argv, port, "/v2/health/ready", args,
                             lambda: run_mode(mode, port, body_file, args, sample))


def table(samples: Sequence[Sample], args: argparse.Namespace) -> str:
    steady = median_of(samples, "steady")
    lines = [
        f"### model control: {INFER_PATH} under wrk -c{args.connections}, evserve --threads {args.threads} "
        f"--model-isolation {args.isolation}, "
        f"slow_load init {args.init_seconds:g} s ({args.init_mode}), finalize {args.finalize_seconds:g} s",
        "",
        "| mode | req/s (median) | p50 ms | p99 ms | p50 ÷ steady | p99 ÷ steady | load/unload cycles | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        m = median_of(samples, mode)
        if m is None:
            lines.append(pending_row(samples, mode, 8))
            continue
        cycles = [int(s.extra["churn"]["cycles"]) for s in samples if s.config == mode and "churn" in s.extra]
        p50_ratio = fmt(m["p50_ms"] / steady["p50_ms"], 2) if steady else "—"
        p99_ratio = fmt(m["p99_ms"] / steady["p99_ms"], 2) if steady else "—"
        lines.append(
            f"| {mode} | {fmt(m['requests_per_s'])} | {fmt(m['p50_ms'], 2)} | {fmt(m['p99_ms'], 2)} "
            f"| {p50_ratio} | {p99_ratio} | {statistics.median(cycles) if cycles else '—'} | {int(m['errors'])} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = runner_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode (default 3)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per run; several load cycles must fit (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded wrk seconds, no churn (default 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    parser.add_argument("--threads", type=int, default=8, help="evserve --threads (default 8)")
    parser.add_argument("--init-seconds", type=float, default=2.0, help="slow_load initialize time (default 2)")
    parser.add_argument("--finalize-seconds", type=float, default=0.2, help="slow_load finalize time (default 0.2)")
    parser.add_argument("--init-mode", choices=("sleep", "spin"), default="sleep",
                        help="sleep: GIL released while waiting; spin: GIL held (default sleep)")
    parser.add_argument("--isolation", choices=("thread", "process"), default="thread",
                        help="evserve --model-isolation: where initialize runs (default thread)")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    check_placement(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_runner(args)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="evserve-bench-") as tmp:
        repo = build_repository(Path(tmp), args)
        body_file = Path(tmp) / "infer.json"
        body_file.write_bytes(simple_json_body())
        for round_no in range(args.rounds):
            order = MODES if round_no % 2 == 0 else MODES[::-1]
            for mode in order:
                sample = measure(mode, round_no, repo, body_file, args)
                shown = f"p50 {sample.result.p50_ms:.2f} ms, p99 {sample.result.p99_ms:.2f} ms" if sample.result \
                    else f"failed: {sample.error}"
                churn = sample.extra.get("churn", "")
                report_progress("model-control", round_no, args.rounds, mode, f"{shown} {churn}")
                samples.append(sample)
    print(table(samples, args))
    path = write_record("model-control", vars(args), {"samples": samples})
    print(f"\nraw samples: {path}")
    return 0 if all(median_of(samples, mode) is not None for mode in MODES) else 1


if __name__ == "__main__":
    sys.exit(main())
