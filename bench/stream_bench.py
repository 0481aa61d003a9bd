"""Streaming: time to first event and events/s of /generate_stream, evserve beside the real Triton.

Both servers serve the bundled decoupled ``text_stream`` model (its ``async def execute`` sends
one SSE event per word) from the same temporary repository. For each number of concurrent
streams N, a client in this process (uvloop, one keep-alive connection per stream, each starting
its next stream as soon as the last ended) runs for ``--duration`` seconds and records:

* **TTFE**: time from sending the request to the first ``data:`` event (p50, p99);
* **events/s**: events received over the window, all streams together;
* **CPU µs per event**: the server's process tree (Triton's model runs in a stub process).

Then the **slow reader** check: one stream of ``--flood-events`` events of about 1 KiB from
``bench/models/stream_flood`` (a model that holds next to nothing itself), its client reading
nothing for 5 s: how much the server's resident memory (the whole process tree) grew. The real
Triton buffers every event it is given; evserve bounds each stream (``--http-stream-buffer-size``)
and makes the model's ``send`` wait. Then the client reads everything, and every event must arrive.

Server on ``--server-cores``, this client on ``--wrk-cores``; ``--rounds`` rounds with the
servers in rotated order; medians. Raw samples go to ``results/<UTC>-stream.json``.

    python bench/stream_bench.py                        # N = 1, 16, 64; 3 rounds x 5 s (~4 min)
    python bench/stream_bench.py --streams 1,16 --words 64 --no-triton
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvloop
from _common import (
    ServerProcess,
    add_placement_arguments,
    check_placement,
    evserve_argv,
    find_triton,
    fmt,
    free_port,
    pin_self,
    runner_parser,
    triton_argv,
    write_record,
)
from _measure import CpuWindow, tree_cpu_seconds, tree_rss_bytes, wait_idle

from evserve.gpu import EXAMPLE_REPOSITORY

MODEL = "text_stream"
FLOOD_MODEL = "stream_flood"
PATH = f"/v2/models/{MODEL}/generate_stream"
READY_PATH = "/v2/health/ready"
END = b"\r\n0\r\n\r\n"


@dataclass(frozen=True)
class Server:
    label: str
    argv: Callable[[int], list[str]]


def stream_request(words: int, delay_ms: float) -> bytes:
    text = " ".join(f"w{i}" for i in range(words))
    body = json.dumps({"text_input": text, "delay_ms": delay_ms}).encode()
    head = f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


# --- the client -----------------------------------------------------------------------------------

class _StreamClient(asyncio.Protocol):
    """One keep-alive connection running streams back to back; counts events and first-event times."""

    def __init__(self, request: bytes, stop_at: float, done: asyncio.Future[None], stats: _Stats) -> None:
        self.request = request
        self.stop_at = stop_at
        self.done = done
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.sent_at = 0.0
        self.first = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.first = False
        self.tail = b""
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        # An event marker may straddle two reads: count over the last few bytes kept plus the new ones.
        joined = self.tail + data
        events = joined.count(b"data: ") - self.tail.count(b"data: ")
        if events:
            if not self.first:
                self.first = True
                self.stats.ttfe.append(now - self.sent_at)
            self.stats.events += events
        self.tail = joined[-8:]
        if joined.endswith(END):
            self.stats.streams += 1
            if now < self.stop_at:
                self._send()
            elif not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"server closed the connection: {exc}"))


@dataclass
class _Stats:
    events: int = 0
    streams: int = 0
    ttfe: list[float] | None = None


async def _run_streams(port: int, streams: int, request: bytes, seconds: float) -> tuple[_Stats, float]:
    loop = asyncio.get_running_loop()
    stats = _Stats(ttfe=[])
    stop_at = time.perf_counter() + seconds
    futures: list[asyncio.Future[None]] = []
    transports = []
    start = time.perf_counter()
    for _ in range(streams):
        done: asyncio.Future[None] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda d=done: _StreamClient(request, stop_at, d, stats), "127.0.0.1", port)
        transports.append(transport)
        futures.append(done)
    await asyncio.wait_for(asyncio.gather(*futures), timeout=seconds + 60)
    wall = time.perf_counter() - start
    for transport in transports:
        transport.close()
    return stats, wall


def run_streams(port: int, streams: int, request: bytes, seconds: float) -> tuple[_Stats, float]:
    return uvloop.run(_run_streams(port, streams, request, seconds))


# --- the slow reader ------------------------------------------------------------------------------

def flood_request(events: int) -> bytes:
    body = json.dumps({"COUNT": events}).encode()
    head = f"POST /v2/models/{FLOOD_MODEL}/generate_stream HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def slow_reader_growth(port: int, root: int, events: int, seconds: float = 5.0) -> dict[str, float]:
    """RSS growth of the server tree while one stream's client reads nothing for ``seconds``."""
    before = tree_rss_bytes(root)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(flood_request(events))
    peak = before
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        peak = max(peak, tree_rss_bytes(root))
    # Then read it all: the stream must still arrive whole.
    sock.settimeout(120)
    received = bytearray()
    while not received.endswith(END):
        piece = sock.recv(1 << 20)
        if not piece:
            break
        received += piece
    sock.close()
    got = received.count(b"data: ")
    return {"rss_growth_mib": (peak - before) / 2**20, "events_after": got, "complete": float(got == events)}


# --- the runner -----------------------------------------------------------------------------------

def repository(workdir: Path) -> Path:
    repo = workdir / "models"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(EXAMPLE_REPOSITORY) / MODEL, repo / MODEL, ignore=ignore)
    shutil.copytree(Path(__file__).parent / "models" / FLOOD_MODEL, repo / FLOOD_MODEL, ignore=ignore)
    return repo


def measure(server: Server, args: argparse.Namespace, streams: int) -> dict[str, float]:
    port = free_port()
    request = stream_request(args.words, args.delay_ms)
    with ServerProcess(server.argv(port), args.server_cores, port, READY_PATH) as proc:
        proc.wait_ready(args.ready_timeout)
        run_streams(port, streams, request, 1.0)  # warm-up
        wait_idle(proc.pid)
        with CpuWindow(proc.pid, args.server_cores, args.wrk_cores) as window:
            stats, wall = run_streams(port, streams, request, args.duration)
        wait_idle(proc.pid)
        proc.check_alive()
    ttfe = sorted(stats.ttfe or [0.0])
    cpu = window.figures(stats.events)
    return {
        "events_per_s": stats.events / wall,
        "streams_per_s": stats.streams / wall,
        "ttfe_p50_ms": 1e3 * ttfe[len(ttfe) // 2],
        "ttfe_p99_ms": 1e3 * ttfe[min(len(ttfe) - 1, int(len(ttfe) * 0.99))],
        "cpu_us_per_event": cpu["cpu_us_per_req"],
        "other_cpu_pct": cpu["other_cpu_pct"],
    }


def measure_slow_reader(server: Server, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    with ServerProcess(server.argv(port), args.server_cores, port, READY_PATH) as proc:
        proc.wait_ready(args.ready_timeout)
        run_streams(port, 1, flood_request(1000), 1.0)
        wait_idle(proc.pid)
        cpu_before = tree_cpu_seconds(proc.pid)
        result = slow_reader_growth(port, proc.pid, args.flood_events)
        result["cpu_s"] = tree_cpu_seconds(proc.pid) - cpu_before
        proc.check_alive()
    return result


def _median(rows: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = runner_parser(__doc__ or "")
    add_placement_arguments(parser)
    parser.add_argument("--streams", default="1,16,64", help="concurrent streams, comma-separated (default 1,16,64)")
    parser.add_argument("--words", type=int, default=32, help="events per stream (default 32)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="the model's delay between events (default 0)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood-events", type=int, default=200_000,
                        help="1 KiB events of the slow-reader stream (default 200,000; 0 leaves the check out)")
    parser.add_argument("--slow-reader-only", action="store_true", help="run only the slow-reader check")
    parser.add_argument("--threads", type=int, default=1, help="evserve --threads (default 1)")
    parser.add_argument("--triton", default=None, help="path of triton-reference (default: ../shared/tools/)")
    parser.add_argument("--no-triton", action="store_const", const="none", dest="triton", help="leave Triton out")
    args = parser.parse_args(argv)
    check_placement(parser, args)
    counts = [int(part) for part in args.streams.split(",")]
    if shutil.which("taskset") is None:
        print("stream_bench: taskset is missing", file=sys.stderr)
        return 2
    pin_self(args.wrk_cores)
    triton, triton_note = find_triton(args.triton)
    print(f"triton: {triton_note}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="evserve-stream-") as tmp:
        repo = repository(Path(tmp))
        servers = [Server(f"evserve --threads {args.threads}",
                          lambda port: evserve_argv(port, args.threads, repo))]
        if triton is not None:
            servers.insert(0, Server("Triton 2.51", lambda port: triton_argv(triton, repo, port)))
        samples: dict[tuple[str, int], list[dict[str, float]]] = {}
        slow: dict[str, list[dict[str, float]]] = {}
        for round_no in range(0 if args.slow_reader_only else args.rounds):
            order = servers[round_no % len(servers):] + servers[:round_no % len(servers)]
            for count in counts:
                for server in order:
                    row = measure(server, args, count)
                    samples.setdefault((server.label, count), []).append(row)
                    print(f"round {round_no + 1}/{args.rounds} N={count:>3} {server.label:<22} "
                          f"{row['events_per_s']:>9.0f} events/s  TTFE p50 {row['ttfe_p50_ms']:.2f} ms",
                          file=sys.stderr, flush=True)
        if args.flood_events:
            for server in servers:
                slow.setdefault(server.label, []).append(measure_slow_reader(server, args))

    text = report(servers, counts, samples, slow, args)
    print(text)
    path = write_record("stream", vars(args), {"triton": triton_note, "samples": {
        f"{label}@{count}": rows for (label, count), rows in samples.items()}, "slow_reader": slow, "tables": text})
    print(f"raw samples: {path}", file=sys.stderr)
    return 0


def report(servers: Sequence[Server], counts: Sequence[int], samples: dict[tuple[str, int], list[dict[str, float]]],
           slow: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    lines: list[str] = [] if not samples else [
        f"text_stream, {args.words} events per stream, delay {args.delay_ms:g} ms; medians of {args.rounds} rounds "
        f"x {args.duration:g} s",
        "",
        "| streams | server | events/s | streams/s | TTFE p50 ms | TTFE p99 ms | CPU µs/event |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for count in counts if samples else ():
        for server in servers:
            rows = samples[(server.label, count)]
            lines.append(
                f"| {count} | {server.label} | {fmt(_median(rows, 'events_per_s'))} | "
                f"{fmt(_median(rows, 'streams_per_s'), 1)} | {fmt(_median(rows, 'ttfe_p50_ms'), 2)} | "
                f"{fmt(_median(rows, 'ttfe_p99_ms'), 2)} | {fmt(_median(rows, 'cpu_us_per_event'), 1)} |")
    if len(servers) == 2 and samples:
        base, ours = servers[0].label, servers[1].label
        lines += ["", "| streams | events/s evserve ÷ Triton | TTFE p50 Triton ÷ evserve "
                  "| CPU/event evserve ÷ Triton |", "|---:|---:|---:|---:|"]
        for count in counts:
            theirs, mine = samples[(base, count)], samples[(ours, count)]
            lines.append(
                f"| {count} | {fmt(_median(mine, 'events_per_s') / _median(theirs, 'events_per_s'), 2)} | "
                f"{fmt(_median(theirs, 'ttfe_p50_ms') / _median(mine, 'ttfe_p50_ms'), 2)} | "
                f"{fmt(_median(mine, 'cpu_us_per_event') / _median(theirs, 'cpu_us_per_event'), 2)} |")
    if slow:
        lines += ["", f"slow reader: one stream of {args.flood_events} events of 1 KiB, its client reading nothing "
                  "for 5 s", 
                  "", "| server | RSS growth MiB | then all events arrived |", "|---|---:|---|"]
        for label, rows in slow.items():
            row = rows[0]
            lines.append(f"| {label} | {fmt(row['rss_growth_mib'], 1)} | "
                         f"{'yes' if row['complete'] else 'no (' + str(int(row['events_after'])) + ')'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
