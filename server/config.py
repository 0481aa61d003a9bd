"""The server's configuration: one frozen object built by the CLI (or by tests and embedders).

Every default says where it comes from. The HTTP limits default to Triton's value where
Triton has one, otherwise the strictest of nginx, Envoy and Node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evserve.gpu.options import ModelManagerOptions
from evserve.server.trace import TraceSettings

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits and deadlines of the HTTP/1.1 layer."""

    # nginx large_client_header_buffers (8 KiB) → 414.
    max_request_line: int = 8 * 1024
    # nginx/Node: one header field (name + value) → 431.
    max_header_field: int = 8 * 1024
    # Envoy's 60 KiB, rounded up → 431.
    max_header_block: int = 64 * 1024
    # Envoy and gunicorn → 431.
    max_headers: int = 100
    # Triton's --http-max-input-size → 413 (decided from Content-Length before any body is read).
    max_input_size: int = 64 * MIB
    # Node's cap after CVE-2024-22019 → 400.
    max_chunk_extensions: int = 16 * 1024
    # Triton PR #8770: more non-empty chunks than this → 400.
    max_chunks: int = 65536
    # Envoy's edge request_headers_timeout: total time from the first byte (or accept) to the end of the head → 408.
    head_timeout: float = 10.0
    # nginx client_body_timeout-style idle gap between two body reads → 408.
    body_timeout: float = 10.0
    # Apache MinRate-style floor on the average body rate once body_timeout has passed → 408.
    body_min_rate: int = 64 * 1024
    # Idle keep-alive connections are closed silently after this.
    keepalive_timeout: float = 30.0
    # nginx keepalive_requests-style bound on per-connection state; the last reply says Connection: close.
    max_requests_per_connection: int = 10_000
    # nginx send_timeout: a client that has not read its replies for this long is dropped.
    send_timeout: float = 60.0
    # Live connections across all loop threads; capped again below RLIMIT_NOFILE at start.
    max_connections: int = 10_000
    # Complete requests parsed ahead and queued behind the one being answered (pipelining).
    max_pipelined_requests: int = 32
    # Unparsed bytes kept while a connection is paused; reading pauses above it.
    read_high_water: int = 256 * 1024
    # Events of one stream (generate_stream) waiting for a slow reader; the model's send() waits
    # above it. Triton has no bound (it buffers every event); 1 MiB holds thousands of tokens.
    stream_buffer_size: int = 1 * MIB

    def __post_init__(self) -> None:
        # A zero here leaves a server that refuses every request (or never answers one).
        for name in _COUNTS:
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be greater than 0")
        for name in _SECONDS:
            if getattr(self, name) <= 0:
                raise ValueError(f"{_flag(name)} must be greater than 0")


_COUNTS = (
    "max_request_line", "max_header_field", "max_header_block", "max_headers", "max_input_size", "max_chunks",
    "max_requests_per_connection", "max_connections", "max_pipelined_requests", "read_high_water",
    "stream_buffer_size",
)
_SECONDS = ("head_timeout", "body_timeout", "keepalive_timeout", "send_timeout")
# Limits fields whose CLI flag is not simply --http-<field>.
_FLAGS = {"max_header_block": "--http-max-header-size"}


def _flag(field_name: str) -> str:
    return _FLAGS.get(field_name, "--http-" + field_name.replace("_", "-"))


@dataclass(frozen=True, slots=True)
class Config:
    # Network.
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    # Triton's --http-thread-count default.
    threads: int = 8
    # Run at most one loop thread per usable core (server/runtime.py says why).
    cap_threads_to_cores: bool = True
    reuse_port: bool = False
    allow_http: bool = True
    allow_metrics: bool = True
    metrics_address: str | None = None
    metrics_port: int = 8002
    # --metrics-config (Triton's keys): which latency families /metrics carries.
    metrics_counter_latencies: bool = True
    metrics_summary_latencies: bool = False
    metrics_histogram_latencies: bool = False
    metrics_summary_quantiles: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
    # Triton's --exit-timeout-secs default.
    exit_timeout: float = 30.0
    # --drain-grace-secs: on a stop signal, seconds of answering "not ready" while still serving,
    # before the listener closes (Triton has none: it closes at once). 5 s covers a Kubernetes
    # endpoint update and a load balancer that checks readiness every 2 s; 0 closes at once.
    drain_grace: float = 5.0
    log_verbose: int = 0
    # Triton reports "triton" (its --id); clients that check the name need --server-name triton.
    server_name: str = "evserve"
    limits: Limits = field(default_factory=Limits)
    # Models: where they are, and how the model manager treats them (Triton's model flags).
    model_repositories: tuple[str, ...] = ()
    models: ModelManagerOptions = field(default_factory=ModelManagerOptions)
    # --http-header-forward-pattern: a regex over request header names (None: forward nothing).
    header_forward_pattern: str | None = None
    # --trace-config, parsed (server/trace.py).
    trace: TraceSettings = field(default_factory=TraceSettings)
    # --http-restricted-api: (API group, header, value), parsed by server/restricted_api.py.
    restricted_apis: tuple[tuple[str, str, str], ...] = ()
    # Client shared memory (Triton 2.73: off by default; a region lets a client map into the server).
    allow_client_shm: bool = False
    client_shm_max_regions: int = 1024
    client_shm_max_region_size: int = 16 * 1024 * MIB
    # Runs load/unload on the loop thread, as Triton does. Only for demonstrating the starvation
    # bug (the test suite proves its own test catches it); never use it to serve.
    sync_model_control: bool = False

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError("--http-thread-count must be at least 1")
        if self.exit_timeout < 0:
            raise ValueError("--exit-timeout-secs must not be negative")
        if self.drain_grace < 0:
            raise ValueError("--drain-grace-secs must not be negative")
        if self.client_shm_max_regions < 1 or self.client_shm_max_region_size < 1:
            raise ValueError("--client-shm-max-regions and --client-shm-max-region-size must be greater than 0")
        for port in (self.http_port, self.metrics_port):
            if not 0 <= port <= 65535:
                raise ValueError(f"invalid port {port}")
