"""Cross-thread wake-up micro-benchmark: does DeferQueue earn its place over ``call_soon_threadsafe``?

evserve keeps the coalesced DeferQueue only while it at least matches uvloop's
``call_soon_threadsafe``; this script is where that is decided. Four ways to run a callback on a loop
thread from another thread are compared:

* ``call_soon_threadsafe``: the loop's own mechanism (uvloop: a ``uv_async_t``, which libuv coalesces);
* ``DeferQueue``: deque + socketpair byte, coalesced by the ``wake_pending`` flag (evserve's choice);
* ``naive``: deque + one socketpair ``send`` per call, libevhtp's ``evthr_defer`` shape;
* ``coalesced_cst``: DeferQueue's deque and flag, but woken by one ``call_soon_threadsafe`` per pass
  instead of a socket byte (a candidate design, measured here so that the choice rests on numbers).

Two workloads, each against one LoopThread (the ``wake-ups`` column counts socket bytes, or
``call_soon_threadsafe`` calls for ``coalesced_cst``; ``-`` where the loop does not expose it):

* burst: one producer thread fires N callbacks back to back (throughput; best of ``--repeat``);
* sparse: one callback, wait for it, pause ``--gap-us``, repeat (wake-up latency of an idle loop, from
  the call to the callback starting on the loop thread; the realistic shape of inference completions).

On a standard CPython build producer and loop share the GIL, so the numbers are noisy on few cores:
repeat runs before drawing conclusions. Run time is bounded by the flags (a few seconds by default).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import platform
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvloop

from evserve.server.loop_thread import LoopThread

Submit = Callable[..., None]

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}

VARIANTS = ("call_soon_threadsafe", "DeferQueue", "naive", "coalesced_cst")

# A hung run (a lost wake-up) should fail loudly rather than hang the benchmark.
WAIT = 30.0


class NaiveDefer:
    """One ``send`` per call and no coalescing: the cost a coalescing flag removes."""

    def __init__(self) -> None:
        self._jobs: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = collections.deque()
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self.sent = 0  # a plain int: the benchmark has one producer thread
        self._loop: asyncio.AbstractEventLoop | None = None

    def defer(self, fn: Callable[..., object], *args: Any) -> None:
        self._jobs.append((fn, args))
        try:
            self._wsock.send(b"\x00")
            self.sent += 1
        except BlockingIOError:
            pass  # unread bytes remain, so the loop will still wake and see this job

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self._rsock.fileno(), self._on_readable)
        self._loop = loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._rsock.fileno())
        self._rsock.close()
        self._wsock.close()

    def _on_readable(self) -> None:
        try:
            while self._rsock.recv(65536):
                pass
        except BlockingIOError:
            pass
        jobs = self._jobs
        for _ in range(len(jobs)):
            fn, args = jobs.popleft()
            fn(*args)


class CoalescedCallSoon:
    """A deque and a wake_pending flag like DeferQueue, woken by ``call_soon_threadsafe`` instead of a byte.

    No socket, so no drain ordering to get wrong: clearing the flag and snapshotting the queue under
    the producers' lock is enough.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._jobs: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = collections.deque()
        self._wake_pending = False
        self.sent = 0

    def defer(self, fn: Callable[..., object], *args: Any) -> None:
        with self._lock:
            self._jobs.append((fn, args))
            if not self._wake_pending:
                self._wake_pending = True
                self.sent += 1
                self._loop.call_soon_threadsafe(self._run_pending)

    def _run_pending(self) -> None:
        with self._lock:
            self._wake_pending = False
            n = len(self._jobs)
        jobs = self._jobs
        for _ in range(n):
            fn, args = jobs.popleft()
            fn(*args)


class Variant:
    """One way of submitting callbacks to a started LoopThread, plus its wake-up count if it has one."""

    def __init__(self, name: str, lt: LoopThread) -> None:
        self.name = name
        self.lt = lt
        self.naive: NaiveDefer | None = None
        self.coalesced: CoalescedCallSoon | None = None
        if name == "call_soon_threadsafe":
            self.submit: Submit = lt.loop.call_soon_threadsafe
        elif name == "DeferQueue":
            self.submit = lt.defer
        elif name == "coalesced_cst":
            self.coalesced = CoalescedCallSoon(lt.loop)
            self.submit = self.coalesced.defer
        else:
            naive = self.naive = NaiveDefer()
            lt.run_sync(naive.attach, lt.loop, timeout=WAIT)
            self.submit = naive.defer

    def wakeups(self) -> int | None:
        if self.name == "DeferQueue":
            return self.lt.statistics().wakeups_sent
        if self.naive is not None:
            return self.naive.sent
        if self.coalesced is not None:
            return self.coalesced.sent  # call_soon_threadsafe calls, not bytes
        return None

    def close(self) -> None:
        if self.naive is not None:
            self.lt.run_sync(self.naive.close, timeout=WAIT)


def run_burst(variant: Variant, count: int) -> tuple[float, int | None]:
    """Return (callbacks per second, wake-ups) for ``count`` back-to-back callbacks and a final one."""
    tick = itertools.count().__next__
    done = threading.Event()
    before = variant.wakeups()
    submit = variant.submit
    start = time.perf_counter()
    for _ in range(count):
        submit(tick)
    submit(done.set)
    if not done.wait(WAIT):
        raise RuntimeError(f"{variant.name}: burst did not complete (lost wake-up?)")
    elapsed = time.perf_counter() - start
    after = variant.wakeups()
    wakeups = None if before is None or after is None else after - before
    return (count + 1) / elapsed, wakeups


def run_sparse(variant: Variant, rounds: int, gap_s: float) -> list[float]:
    """Return per-round latencies in microseconds: from the submit call to the callback starting."""
    latencies: list[float] = []
    done = threading.Event()

    def on_loop(sent_ns: int) -> None:
        latencies.append((time.perf_counter_ns() - sent_ns) / 1000)
        done.set()

    for _ in range(rounds):
        done.clear()
        variant.submit(on_loop, time.perf_counter_ns())
        if not done.wait(WAIT):
            raise RuntimeError(f"{variant.name}: sparse round did not complete (lost wake-up?)")
        if gap_s:
            time.sleep(gap_s)  # let the loop go back to sleep in epoll, as between real completions
    return latencies


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def bench_loop(loop_name: str, variants: list[str], args: argparse.Namespace) -> list[list[str]]:
    rows = []
    for name in variants:
        lt = LoopThread(f"bench-{loop_name}", 0, loop_factory=LOOPS[loop_name])
        lt.start()
        variant = Variant(name, lt)
        try:
            run_sparse(variant, 50, 0)  # warm-up
            bursts = [run_burst(variant, args.burst) for _ in range(args.repeat)]
            rate, wakeups = max(bursts, key=lambda b: b[0])
            lat = run_sparse(variant, args.sparse, args.gap_us / 1e6)
        finally:
            variant.close()
            lt.stop(WAIT)
        rows.append(
            [
                loop_name,
                name,
                f"{rate / 1000:,.0f}",
                "-" if wakeups is None else f"{wakeups:,}",
                f"{percentile(lat, 50):.1f}",
                f"{percentile(lat, 99):.1f}",
                f"{statistics.fmean(lat):.1f}",
            ]
        )
    return rows


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = zip(row, widths, strict=True)
        # Names left-aligned, numbers right-aligned.
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(cells)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=100_000, help="callbacks per burst (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="bursts per variant; the best is reported (default 3)")
    parser.add_argument("--sparse", type=int, default=2_000, help="round trips in the latency run (default 2000)")
    parser.add_argument("--gap-us", type=float, default=100.0, help="pause between sparse rounds (default 100)")
    parser.add_argument("--loop", choices=[*LOOPS, "both"], default="uvloop", help="event loop (default uvloop)")
    parser.add_argument(
        "--variant",
        action="append",
        choices=VARIANTS,
        help="variant to run (repeatable; default all)",
    )
    args = parser.parse_args(argv)
    variants = args.variant or list(VARIANTS)
    loops = list(LOOPS) if args.loop == "both" else [args.loop]

    print(
        f"# {cpu_model()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, uvloop {uvloop.__version__}, GIL switch {sys.getswitchinterval()} s"
    )
    print(
        f"# burst: {args.burst:,} callbacks from one thread, best of {args.repeat}; "
        f"sparse: {args.sparse:,} round trips, {args.gap_us:g} us apart"
    )
    started = time.perf_counter()
    rows = [row for loop_name in loops for row in bench_loop(loop_name, variants, args)]
    header = ["loop", "variant", "burst kcalls/s", "wake-ups", "sparse p50 us", "p99 us", "mean us"]
    print_table(header, rows)
    print(f"# {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
