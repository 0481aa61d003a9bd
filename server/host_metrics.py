"""Triton's host families: ``nv_cpu_utilization``, ``nv_cpu_memory_total_bytes``, ``nv_cpu_memory_used_bytes``.

Read from ``/proc`` at scrape time (Linux). Utilization is the host's busy share of CPU time
since the previous scrape (since boot at the first), as Triton reports it between its metric
polls; memory "used" is total minus available, as ``free`` computes it. Off Linux the families
are left out rather than reported as zero.
"""

from __future__ import annotations

import threading
from pathlib import Path

from evserve.protocol.prometheus import Family

_lock = threading.Lock()
_last: tuple[int, int] | None = None  # (busy, total) jiffies at the previous scrape


def _cpu_jiffies() -> tuple[int, int] | None:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def _memory_bytes() -> tuple[int, int] | None:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0]) * 1024
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return total, total - available


def host_families() -> list[Family]:
    global _last
    out = []
    now = _cpu_jiffies()
    if now is not None:
        with _lock:
            before, _last = _last or (0, 0), now
        busy, total = now[0] - before[0], now[1] - before[1]
        utilization = Family("nv_cpu_utilization", "gauge", "CPU utilization rate [0.0 - 1.0]")
        utilization.add({}, busy / total if total > 0 else 0.0)
        out.append(utilization)
    memory = _memory_bytes()
    if memory is not None:
        total_bytes = Family("nv_cpu_memory_total_bytes", "gauge", "CPU total memory (RAM), in bytes")
        used_bytes = Family("nv_cpu_memory_used_bytes", "gauge", "CPU used memory (RAM), in bytes")
        total_bytes.add({}, memory[0])
        used_bytes.add({}, memory[1])
        out += [total_bytes, used_bytes]
    return out
