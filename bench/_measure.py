"""Server CPU per request and raw (uncorrected) latency: the two measurements compare.py adds to wrk.

Why CPU time: on a 2-core noisy machine req/s swings with whatever else runs, but the CPU a server
spends per request moves much less, and it counts every thread and every helper process. Triton's
python backend answers from stub processes, so the figure sums the whole process tree of the
server (utime + stime of each live process, plus cutime + cstime for children already reaped),
read from /proc before and after the measured window.

Why loadgen.c: wrk 4.1 corrects its latency histogram for coordinated omission unconditionally;
the C load generator next to this file records each latency as measured (see its header).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import BENCH_DIR, HOST, BenchError, taskset

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOADGEN_SOURCE = BENCH_DIR / "loadgen.c"


# --- CPU accounting ------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces); None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _process_table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, CPU ticks of the process and of its reaped children)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        # after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        # utime stime cutime cstime (fields 11-14 here)
        table[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    return table


def tree_pids(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``root`` and all its live descendants."""
    table = _process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            pids.append(pid)
            todo.extend(children.get(pid, ()))
    return pids


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and all its descendants (threads included, as /proc sums them)."""
    table = _process_table()
    return sum(table[pid][1] for pid in tree_pids(root, table)) / CLOCK_TICKS


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (Triton's model stubs are processes of their own)."""
    total = 0
    for pid in tree_pids(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def cores_busy_seconds(cores: Sequence[int]) -> float:
    """Non-idle seconds of ``cores`` from /proc/stat, whoever used them: the server plus any noise."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS


def wait_idle(root: int, timeout: float = 60.0, step: float = 0.25, busy_s: float = 0.02) -> float:
    """Wait until the server tree uses under ``busy_s`` CPU seconds per ``step``; the seconds waited.

    Why: a load generator that stops leaves requests in flight, and the server still works them
    off (16 × 1 MiB of JSON is seconds of CPU). Starting the next window before it is done would
    charge that work to requests that window did not count.
    """
    start = time.monotonic()
    before = tree_cpu_seconds(root)
    while time.monotonic() - start < timeout:
        time.sleep(step)
        now = tree_cpu_seconds(root)
        if now - before < busy_s:
            break
        before = now
    return time.monotonic() - start


@dataclass
class CpuWindow:
    """CPU of a server's process tree, of its cores and of the load generator's over one window.

    The load cores' share tells whether the load generator, not the server, set the pace (near
    100 % there while the server core has idle time left: the req/s is the client's limit).
    """

    root: int
    cores: Sequence[int]
    load_cores: Sequence[int]
    wall_s: float = 0.0
    server_s: float = 0.0
    cores_s: float = 0.0
    load_s: float = 0.0

    def _read(self) -> tuple[float, float, float, float]:
        return (time.monotonic(), tree_cpu_seconds(self.root), cores_busy_seconds(self.cores),
                cores_busy_seconds(self.load_cores))

    def __enter__(self) -> CpuWindow:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        self.wall_s, self.server_s, self.cores_s, self.load_s = (b - a for a, b in zip(self._start, end, strict=True))

    def figures(self, requests: int) -> dict[str, float]:
        """µs of server CPU per request; shares in % of one core: the server's, everyone else's on its
        cores, and everything on the load cores."""
        wall = max(self.wall_s, 1e-9)
        return {
            "cpu_us_per_req": self.server_s * 1e6 / requests if requests else float("nan"),
            "server_cpu_pct": 100 * self.server_s / wall,
            "other_cpu_pct": 100 * max(self.cores_s - self.server_s, 0.0) / wall,
            "load_cpu_pct": 100 * self.load_s / wall,
        }


# --- loadgen -------------------------------------------------------------------------------------

def build_loadgen(workdir: Path) -> Path:
    """``gcc -O2`` bench/loadgen.c into ``workdir`` (a temp dir: no binary lands in the checkout)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise BenchError("no C compiler (gcc or cc): uncorrected latencies are skipped")
    binary = workdir / "loadgen"
    done = subprocess.run([compiler, "-O2", "-o", str(binary), str(LOADGEN_SOURCE)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"building loadgen failed: {done.stderr.strip()[-300:]}")
    return binary


def raw_request(method: str, path: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The complete HTTP/1.1 request loadgen repeats (wrk builds the same one from its Lua script)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers.items())]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def run_loadgen(binary: Path, cores: Sequence[int], port: int, connections: int, seconds: float,
                request_file: Path) -> dict[str, float]:
    """One pinned loadgen run → its JSON (latencies in ms)."""
    argv = taskset(cores, [str(binary), HOST, str(port), str(connections), f"{seconds:g}", str(request_file)])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"loadgen did not finish within {seconds + 60:g} s") from exc
    if done.returncode != 0:
        raise BenchError(f"loadgen exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    try:
        return dict(json.loads(done.stdout))
    except json.JSONDecodeError as exc:
        raise BenchError(f"unparsed loadgen output: {done.stdout[-300:]!r}") from exc
