"""compare.py's tables: medians per cell, the issue's workload × server matrix, details and ratios.

Why separate: the runner decides what is measured; this module only reduces samples (medians of
interleaved rounds, errors summed) and lays them out, so the layout can change without touching
how anything is measured.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from typing import Any

from _common import Sample, fmt

Figures = dict[str, float]
# The figure names a sample yields; errors are summed over rounds, everything else is a median.
# "cpu" is the headline CPU/request: loadgen's drained window when there is one (exact), else wrk's.
MEDIAN_KEYS = ("rps", "cpu", "wrk_cpu", "server_pct", "other_pct", "load_pct", "wrk_p50", "wrk_p99",
               "lg_rps", "lg_cpu", "raw_p50", "raw_p99", "raw_p999")


def sample_figures(sample: Sample) -> Figures | None:
    """One round's figures, flat; the loadgen ones are absent when loadgen failed or was skipped."""
    if sample.result is None:
        return None
    result, cpu = sample.result, sample.extra["wrk_cpu"]
    assert isinstance(cpu, dict)
    out = {"rps": result.requests_per_s, "wrk_p50": result.p50_ms, "wrk_p99": result.p99_ms,
           "wrk_cpu": cpu["cpu_us_per_req"], "server_pct": cpu["server_cpu_pct"], "other_pct": cpu["other_cpu_pct"],
           "load_pct": cpu.get("load_cpu_pct", math.nan), "errors": float(result.non_2xx + result.socket_errors)}
    out["cpu"] = out["wrk_cpu"]
    raw: Any = sample.extra.get("loadgen")
    if isinstance(raw, dict):
        out.update(lg_rps=raw["requests_per_s"], lg_cpu=raw["cpu_us_per_req"], raw_p50=raw["p50"],
                   raw_p99=raw["p99"], raw_p999=raw["p999"], cpu=raw["cpu_us_per_req"])
        out["errors"] += raw["errors"] + raw["non_2xx"]
    return out


def reduce(samples: Sequence[Sample], config: str) -> Figures | None:
    """Medians over the config's successful rounds (None when every round failed)."""
    rounds = [f for s in samples if s.config == config and (f := sample_figures(s)) is not None]
    if not rounds:
        return None
    out = {k: statistics.median(f[k] for f in rounds) for k in MEDIAN_KEYS if all(k in f for f in rounds)}
    out.update(rps_min=min(f["rps"] for f in rounds), rps_max=max(f["rps"] for f in rounds),
               rounds=float(len(rounds)), errors=sum(f["errors"] for f in rounds))
    return out


def failure(samples: Sequence[Sample], config: str) -> str:
    reason = next((s.error for s in samples if s.config == config and s.error), None) or "no run"
    return reason[:140].replace("|", "/").replace("\n", " ")


def get(m: Figures | None, key: str, digits: int = 0) -> str:
    return "n/a" if m is None or key not in m or math.isnan(m[key]) else fmt(m[key], digits)


def ratio(a: Figures | None, b: Figures | None, key: str) -> str:
    if a is None or b is None or key not in a or key not in b or not b[key]:
        return "—"
    return f"{a[key] / b[key]:.2f}"


# --- tables ----------------------------------------------------------------------------------------

def matrix(medians: dict[str, dict[str, Figures | None]], servers: Sequence[Any]) -> list[str]:
    """The issue's table: one row per workload, one column per server."""
    lines = ["## Summary: req/s · server CPU µs per request · uncorrected p99 ms (medians)", "",
             "| workload | " + " | ".join(s.name for s in servers) + " |",
             "|---|" + "---:|" * len(servers)]
    for label, row in medians.items():
        cells = []
        for server in servers:
            if server.name not in row:
                cells.append("—")
            elif (m := row[server.name]) is None:
                cells.append("pending")
            else:
                cells.append(f"{get(m, 'rps')} · {get(m, 'cpu', 1)} µs · {get(m, 'raw_p99', 2)} ms")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def detail(label: str, samples: Sequence[Sample], row: dict[str, Figures | None]) -> list[str]:
    """Every figure of one workload at one connection count, a row per server."""
    lines = [f"### {label}", "",
             "| server | req/s (wrk) | req/s min–max | CPU µs/req | CPU µs/req (wrk run) | wrk p50 ms | wrk p99 ms "
             "| raw p50 ms | raw p99 ms | raw p99.9 ms | req/s (loadgen) | server core: server % / other % "
             "| load core % | errors |",
             "|---|" + "---:|" * 13]
    for name, m in row.items():
        if m is None:
            lines.append(f"| {name} | pending |{' |' * 11} {failure(samples, name)} |")
            continue
        lines.append(
            f"| {name} | {get(m, 'rps')} | {get(m, 'rps_min')}–{get(m, 'rps_max')} | {get(m, 'cpu', 1)} "
            f"| {get(m, 'wrk_cpu', 1)} | {get(m, 'wrk_p50', 2)} | {get(m, 'wrk_p99', 2)} | {get(m, 'raw_p50', 2)} "
            f"| {get(m, 'raw_p99', 2)} | {get(m, 'raw_p999', 2)} | {get(m, 'lg_rps')} "
            f"| {get(m, 'server_pct')} / {get(m, 'other_pct')} | {get(m, 'load_pct')} | {int(m['errors'])} |")
    return lines


def anchor_ratios(medians: dict[str, dict[str, Figures | None]], servers: Sequence[Any]) -> list[str]:
    """evserve against the work floor and against Triton: req/s (higher is better), CPU/req (lower is)."""
    lines = ["## evserve ÷ work floor and ÷ Triton", "",
             "| workload | evserve | req/s ÷ work floor | CPU/req ÷ work floor | req/s ÷ Triton | CPU/req ÷ Triton "
             "| raw p99 ÷ Triton |", "|---|---|---:|---:|---:|---:|---:|"]
    work = next((s.name for s in servers if s.role == "work"), "")
    triton = next((s.name for s in servers if s.role == "triton"), "")
    for label, row in medians.items():
        for server in (s for s in servers if s.role == "evserve"):
            m, w, t = row.get(server.name), row.get(work), row.get(triton)
            lines.append(f"| {label} | {server.name} | {ratio(m, w, 'rps')} | {ratio(m, w, 'cpu')} "
                         f"| {ratio(m, t, 'rps')} | {ratio(m, t, 'cpu')} | {ratio(m, t, 'raw_p99')} |")
    return lines


def thread_ratios(medians: dict[str, dict[str, Figures | None]], servers: Sequence[Any]) -> list[str]:
    """Each further evserve thread count against the first, per interpreter build: what the extra
    loop threads cost (GIL) or gain (free-threaded) on these cores."""
    lines: list[str] = []
    for build in dict.fromkeys(s.build for s in servers if s.role == "evserve"):
        evservers = [s for s in servers if s.role == "evserve" and s.build == build]
        if len(evservers) < 2:
            continue
        base = evservers[0]
        lines += [f"## evserve{' ' + build if build else ''} thread counts ÷ --threads {base.threads}", "",
                  "| workload | threads | req/s | CPU/req | wrk p99 | raw p99 |", "|---|---:|---:|---:|---:|---:|"]
        for label, row in medians.items():
            for server in evservers[1:]:
                m, b = row.get(server.name), row.get(base.name)
                lines.append(f"| {label} | {server.threads} ÷ {base.threads} | {ratio(m, b, 'rps')} "
                             f"| {ratio(m, b, 'cpu')} | {ratio(m, b, 'wrk_p99')} | {ratio(m, b, 'raw_p99')} |")
        lines.append("")
    return lines


def build_ratios(medians: dict[str, dict[str, Figures | None]], servers: Sequence[Any]) -> list[str]:
    """Each other interpreter build against the runner's own, at the same thread count."""
    evservers = [s for s in servers if s.role == "evserve"]
    base = {s.threads: s for s in evservers if not s.build}
    others = [s for s in evservers if s.build and s.threads in base]
    if not others:
        return []
    lines = ["## evserve builds ÷ the standard build, same --threads", "",
             "| workload | build | threads | req/s | CPU/req | wrk p99 | raw p99 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, row in medians.items():
        for server in others:
            m, b = row.get(server.name), row.get(base[server.threads].name)
            lines.append(f"| {label} | {server.build} | {server.threads} | {ratio(m, b, 'rps')} | {ratio(m, b, 'cpu')} "
                         f"| {ratio(m, b, 'wrk_p99')} | {ratio(m, b, 'raw_p99')} |")
    return lines


def report(samples: dict[str, list[Sample]], servers: Sequence[Any], args: argparse.Namespace,
           triton_note: str) -> tuple[str, bool]:
    """All tables as markdown, and whether every cell got a figure."""
    medians = {label: {s.config: None for s in cell} for label, cell in samples.items()}
    for label, cell in samples.items():
        for config in medians[label]:
            medians[label][config] = reduce(cell, config)
    shown = [s for s in servers if any(s.name in row for row in medians.values())]
    lines = [f"{args.rounds} interleaved rounds × wrk {args.duration:g} s (+ {args.warmup:g} s warm-up) and "
             f"loadgen {args.loadgen_duration:g} s; server cores {args.server_cores}, load cores {args.wrk_cores}"
             f"{' (shared on purpose: --share-cores)' if getattr(args, 'share_cores', False) else ''}.",
             f"Triton: {triton_note}.", "", *matrix(medians, shown), ""]
    for label, cell in samples.items():
        lines += [*detail(label, cell, medians[label]), ""]
    lines += [*anchor_ratios(medians, shown), "", *thread_ratios(medians, shown), *build_ratios(medians, shown)]
    complete = all(m is not None for row in medians.values() for m in row.values())
    return "\n".join(lines).rstrip(), complete
