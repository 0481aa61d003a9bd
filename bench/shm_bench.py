"""A large tensor through system shared memory vs. the binary extension, evserve beside the real Triton.

One ``identity_fp32`` request of ``--tensor-mib`` MiB of FP32 (64 by default), repeated on one
keep-alive connection for ``--duration`` seconds, four ways:

* **binary**: the tensor in the request body (Triton's binary tensor extension) and back in the
  reply body;
* **shm**: the tensor in a registered POSIX shared-memory region, the output written into a
  second region; request and reply are a few hundred bytes of JSON.

Each server runs pinned to ``--server-cores`` (the client on ``--wrk-cores``), ``--rounds``
rounds in rotated order, medians. GiB/s counts the tensor once per request (input bytes). The
client checks every reply (its shape, and the output's first and last values). CPU µs per
request is the server's process tree (Triton's model runs in a stub process).

    python bench/shm_bench.py                 # 64 MiB, 3 rounds x 5 s (~3 minutes)
    python bench/shm_bench.py --tensor-mib 16 --no-triton
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.utils.shared_memory as shm
from _common import (
    HOST,
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
from _measure import CpuWindow, wait_idle

from evserve.gpu import EXAMPLE_REPOSITORY

MODEL = "identity_fp32"
PATH = f"/v2/models/{MODEL}/infer"
READY_PATH = "/v2/health/ready"
MODES = ("binary", "shm")


@dataclass(frozen=True)
class Server:
    label: str
    argv: Callable[[int], list[str]]


class Client:
    """One keep-alive connection sending the same request; checks each reply's shape and values."""

    def __init__(self, port: int, mode: str, tensor: np.ndarray, out_handle: object | None) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=120)
        self.mode = mode
        self.tensor = tensor
        self.out_handle = out_handle
        count = tensor.size
        if mode == "binary":
            head = json.dumps({
                "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [count],
                            "parameters": {"binary_data_size": tensor.nbytes}}],
                "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
            }).encode()
            self.body: bytes | memoryview = head + tensor.tobytes()
            self.headers = {"Inference-Header-Content-Length": str(len(head)),
                            "Content-Type": "application/octet-stream"}
        else:
            region = {"shared_memory_byte_size": tensor.nbytes}
            self.body = json.dumps({
                "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [count],
                            "parameters": {"shared_memory_region": "bench_in", **region}}],
                "outputs": [{"name": "OUTPUT0", "parameters": {"shared_memory_region": "bench_out", **region}}],
            }).encode()
            self.headers = {"Content-Type": "application/json"}

    def once(self) -> None:
        self.conn.request("POST", PATH, body=self.body, headers=self.headers)
        reply = self.conn.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"{self.mode}: {reply.status} {data[:200]!r}")
        if self.mode == "binary":
            head_length = int(reply.getheader("Inference-Header-Content-Length") or 0)
            out = np.frombuffer(data, dtype=np.float32, offset=head_length)
        else:
            out = shm.get_contents_as_numpy(self.out_handle, np.float32, [self.tensor.size])
        if out.size != self.tensor.size or out[0] != self.tensor[0] or out[-1] != self.tensor[-1]:
            raise RuntimeError(f"{self.mode}: wrong output")

    def close(self) -> None:
        self.conn.close()


def _register(port: int, key_in: str, key_out: str, size: int) -> None:
    for name, key in (("bench_in", key_in), ("bench_out", key_out)):
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.request("POST", f"/v2/systemsharedmemory/region/{name}/register",
                     body=json.dumps({"key": key, "offset": 0, "byte_size": size}))
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        if reply.status != 200:
            raise RuntimeError(f"register {name}: {reply.status} {body[:200]!r}")


def measure(server: Server, mode: str, args: argparse.Namespace, tensor: np.ndarray) -> dict[str, float]:
    port = free_port()
    handles: list[object] = []
    suffix = f"{os.getpid()}_{port}"
    try:
        with ServerProcess(server.argv(port), args.server_cores, port, READY_PATH) as proc:
            proc.wait_ready(args.ready_timeout)
            out_handle = None
            if mode == "shm":
                in_handle = shm.create_shared_memory_region("bench_in", f"/bench_in_{suffix}", tensor.nbytes)
                out_handle = shm.create_shared_memory_region("bench_out", f"/bench_out_{suffix}", tensor.nbytes)
                handles += [in_handle, out_handle]
                shm.set_shared_memory_region(in_handle, [tensor])
                _register(port, f"/bench_in_{suffix}", f"/bench_out_{suffix}", tensor.nbytes)
            client = Client(port, mode, tensor, out_handle)
            client.once()  # warm-up, and the correctness check
            wait_idle(proc.pid)
            count = 0
            with CpuWindow(proc.pid, args.server_cores, args.wrk_cores) as window:
                start = time.perf_counter()
                while time.perf_counter() - start < args.duration:
                    client.once()
                    count += 1
                wall = time.perf_counter() - start
            client.close()
            proc.check_alive()
    finally:
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    return {
        "req_per_s": count / wall,
        "gib_per_s": count * tensor.nbytes / wall / 2**30,
        "ms_per_req": 1e3 * wall / count,
        "cpu_us_per_req": window.figures(count)["cpu_us_per_req"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = runner_parser(__doc__ or "")
    add_placement_arguments(parser)
    parser.add_argument("--tensor-mib", type=int, default=64, help="tensor size in MiB (default 64)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="evserve --threads (default 1)")
    parser.add_argument("--triton", default=None, help="path of triton-reference (default: ../shared/tools/)")
    parser.add_argument("--no-triton", action="store_const", const="none", dest="triton", help="leave Triton out")
    args = parser.parse_args(argv)
    check_placement(parser, args)
    if shutil.which("taskset") is None:
        print("shm_bench: taskset is missing", file=sys.stderr)
        return 2
    pin_self(args.wrk_cores)
    triton, triton_note = find_triton(args.triton)
    print(f"triton: {triton_note}", file=sys.stderr, flush=True)
    tensor = np.random.default_rng(0).random(args.tensor_mib * 2**20 // 4, dtype=np.float32)
    # The binary body holds the tensor plus its JSON head: room for both.
    limit = str(2 * tensor.nbytes + 2**20)

    with tempfile.TemporaryDirectory(prefix="evserve-shm-bench-") as tmp:
        repo = Path(tmp) / "models"
        shutil.copytree(Path(EXAMPLE_REPOSITORY) / MODEL, repo / MODEL, ignore=shutil.ignore_patterns("__pycache__"))
        servers = [Server(f"evserve --threads {args.threads}", lambda port: [
            *evserve_argv(port, args.threads, repo), "--allow-client-shm=true", "--http-max-input-size", limit])]
        if triton is not None:
            # Triton 2.51 has no --http-max-input-size (2.5x added it); its body limit is not the 64 MiB default.
            servers.insert(0, Server("Triton 2.51", lambda port: triton_argv(triton, repo, port)))
        samples: dict[tuple[str, str], list[dict[str, float]]] = {}
        for round_no in range(args.rounds):
            order = servers[round_no % len(servers):] + servers[:round_no % len(servers)]
            for mode in MODES:
                for server in order:
                    row = measure(server, mode, args, tensor)
                    samples.setdefault((server.label, mode), []).append(row)
                    print(f"round {round_no + 1}/{args.rounds} {mode:<6} {server.label:<22} "
                          f"{row['req_per_s']:7.1f} req/s {row['gib_per_s']:6.2f} GiB/s", file=sys.stderr, flush=True)

    text = report(servers, samples, args)
    print(text)
    path = write_record("shm", vars(args), {"triton": triton_note, "tables": text, "samples": {
        f"{label}@{mode}": rows for (label, mode), rows in samples.items()}})
    print(f"raw samples: {path}", file=sys.stderr)
    return 0


def report(servers: Sequence[Server], samples: dict[tuple[str, str], list[dict[str, float]]],
           args: argparse.Namespace) -> str:
    def median(label: str, mode: str, key: str) -> float:
        return statistics.median(row[key] for row in samples[(label, mode)])

    lines = [f"identity_fp32, {args.tensor_mib} MiB FP32 in and out, one connection; medians of {args.rounds} "
             f"rounds x {args.duration:g} s", "",
             "| server | transport | req/s | GiB/s | ms/request | server CPU µs/request |",
             "|---|---|---:|---:|---:|---:|"]
    for server in servers:
        for mode in MODES:
            lines.append(f"| {server.label} | {mode} | {fmt(median(server.label, mode, 'req_per_s'), 1)} | "
                         f"{fmt(median(server.label, mode, 'gib_per_s'), 2)} | "
                         f"{fmt(median(server.label, mode, 'ms_per_req'), 1)} | "
                         f"{fmt(median(server.label, mode, 'cpu_us_per_req'))} |")
    ours = servers[-1].label
    gain = median(ours, "shm", "req_per_s") / median(ours, "binary", "req_per_s")
    lines += ["", f"{ours}: shm ÷ binary {fmt(gain, 2)}"]
    if len(servers) == 2:
        theirs = servers[0].label
        for mode in MODES:
            ratio = median(ours, mode, "req_per_s") / median(theirs, mode, "req_per_s")
            lines.append(f"evserve ÷ Triton, {mode}: {fmt(ratio, 2)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
