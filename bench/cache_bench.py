"""What a response-cache hit saves, and what a miss costs: Triton's simple model, cached and not.

Why: a hit skips the queue, the worker hop and the model, so it should cost about what the HTTP
layer and the codec cost; a miss pays the lookup and the insert on top of a normal request. One
server (``--cache-config local,size=1 MiB``) serves ``simple`` twice, as ``simple`` and as
``simple_cached`` (``response_cache { enable: true }``), and three configurations are measured,
interleaved, each in a fresh server pinned with taskset:

- ``no cache``: simple-json's request to ``simple`` (the model runs every time);
- ``hit``: the same request to ``simple_cached`` (after the first, every request is a hit);
- ``no cache, varying``: to ``simple`` with INPUT0's first element counting up, so no request
  repeats (``bench/lua/post_json_vary.lua``; its Lua runs on wrk's core, but a request built
  per call also reaches the server differently, so this, not ``no cache``, is the miss's baseline);
- ``miss``: the varying requests to ``simple_cached``.

    python bench/cache_bench.py                       # 3 rounds x 5 s, c=16
    python bench/cache_bench.py --rounds 5 --connections 4

Output: a markdown table (req/s, server CPU µs per request, p50, p99) on stdout; raw samples in
bench/results/<UTC>-cache.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson
from _common import (
    HOST,
    LUA_DIR,
    BenchError,
    Sample,
    ServerProcess,
    WrkPlan,
    add_placement_arguments,
    check_placement,
    evserve_argv,
    fmt,
    free_port,
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
from _measure import CpuWindow, wait_idle

from evserve.gpu import EXAMPLE_REPOSITORY

CONFIGS = {
    "no cache": ("simple", "post_json.lua"),
    "hit": ("simple_cached", "post_json.lua"),
    "no cache, varying": ("simple", "post_json_vary.lua"),
    "miss": ("simple_cached", "post_json_vary.lua"),
}
CACHE_BYTES = 1 << 20  # small enough that the miss run evicts from its first second on (steady state)


def build_repository(root: Path) -> Path:
    repo = root / "repo"
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "simple", repo / "simple")
    cached = repo / "simple_cached"
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / "simple", cached)
    config = (cached / "config.pbtxt").read_text().replace('name: "simple"', 'name: "simple_cached"')
    (cached / "config.pbtxt").write_text(config + "\nresponse_cache { enable: true }\n")
    return repo


def varying_body() -> bytes:
    """simple-json's body with INPUT0's first element replaced by the Lua script's counter."""
    document = orjson.loads(simple_json_body())
    document["inputs"][0]["data"][0] = 987654321
    return orjson.dumps(document).replace(b"987654321", b"__N__")


def measure(config: str, round_no: int, repo: Path, bodies: dict[str, Path], args: argparse.Namespace) -> Sample:
    """One fresh pinned server, one warm-up, one measured wrk run with the server's CPU read around it."""
    model, script = CONFIGS[config]
    sample = Sample(config, round_no)
    port = free_port()
    argv = [*evserve_argv(port, 1, repo), "--cache-config", f"local,size={CACHE_BYTES}"]
    plan = WrkPlan(args.wrk_cores, args.connections, args.duration, args.warmup)
    path = f"/v2/models/{model}/infer"
    url, lua, body = f"http://{HOST}:{port}{path}", LUA_DIR / script, str(bodies[script])
    try:
        with ServerProcess(argv, args.server_cores, port, "/v2/health/ready") as server:
            server.wait_ready(args.ready_timeout)
            request_ok(port, "POST", path, simple_json_body())
            warm_up(plan, url, lua, (body,))
            sample.extra["idle_wait_s"] = wait_idle(server.pid)
            with CpuWindow(server.pid, args.server_cores, args.wrk_cores) as window:
                result = parse_wrk(wrk_text(plan, plan.duration_s, url, lua, (body,)))
            server.check_alive()
            sample.result = result
            sample.extra.update(window.figures(result.requests))
    except (BenchError, OSError) as exc:
        sample.error = str(exc)
    return sample


def table(samples: Sequence[Sample], args: argparse.Namespace) -> str:
    lines = [f"### response cache: simple JSON, wrk -c{args.connections}, {args.rounds} rounds x {args.duration:g} s; "
             f"server core {args.server_cores}, wrk core {args.wrk_cores}", "",
             "| request | req/s | server CPU µs/req | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
    for config in CONFIGS:
        m = median_of(samples, config)
        if m is None:
            lines.append(pending_row(samples, config, 4))
            continue
        cpu = sorted(s.extra["cpu_us_per_req"] for s in samples if s.config == config and s.result is not None)
        lines.append(f"| {config} | {fmt(m['requests_per_s'])} | {fmt(cpu[len(cpu) // 2])} | {fmt(m['p50_ms'], 2)} "
                     f"| {fmt(m['p99_ms'], 2)} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = runner_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured wrk seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded wrk seconds (default 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    check_placement(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_runner(args)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="evserve-cache-") as tmp:
        root = Path(tmp)
        repo = build_repository(root)
        bodies = {"post_json.lua": root / "body.json", "post_json_vary.lua": root / "vary.json"}
        bodies["post_json.lua"].write_bytes(simple_json_body())
        bodies["post_json_vary.lua"].write_bytes(varying_body())
        for round_no in range(args.rounds):
            order = list(CONFIGS)
            order = order[round_no % len(order):] + order[:round_no % len(order)]
            for config in order:
                sample = measure(config, round_no, repo, bodies, args)
                samples.append(sample)
                shown = sample.error or f"{sample.result.requests_per_s:,.0f} req/s"  # type: ignore[union-attr]
                report_progress("cache", round_no, args.rounds, config, shown)
    text = table(samples, args)
    print(text)
    path = write_record("cache", vars(args), {"samples": samples, "table": text})
    print(f"\nraw samples: {path}")
    return 0 if all(s.result is not None for s in samples) else 1


if __name__ == "__main__":
    sys.exit(main())
