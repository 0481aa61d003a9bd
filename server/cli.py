"""The ``evserve`` command: Triton's flag spellings → Config → a running Server.

Both ``--flag value`` and ``--flag=value`` work (argparse), and Triton's boolean options take
an optional value (``--strict-readiness=false``, ``--reuse-http-port`` alone means true).
SIGINT and SIGTERM stop the server gracefully: first a drain grace (``--drain-grace-secs``)
in which readiness answers 400 while every request is still served, so that load balancers
take the replica out; then the listener closes and requests in flight, streams included,
finish within ``--exit-timeout-secs``. A second signal skips what is left of the grace. A port
that is taken gives one clear line and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence

from evserve.gpu.execution.response_cache import parse_cache_config
from evserve.gpu.options import ModelManagerOptions
from evserve.server import cpu_scheduling
from evserve.server import log as server_log
from evserve.server.config import MIB, Config, Limits
from evserve.server.http_server import AddressInUse
from evserve.server.restricted_api import parse_restrictions
from evserve.server.runtime import describe_interpreter, free_threaded_build, gil_enabled, server_version, usable_cores
from evserve.server.startup_report import model_table
from evserve.server.trace import parse_trace_config

log = logging.getLogger("evserve.server")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _flag(parser: argparse.ArgumentParser, *names: str, **kwargs: object) -> None:
    parser.add_argument(*names, **kwargs)  # type: ignore[arg-type]


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help_text: str) -> None:
    parser.add_argument(name, type=boolean, nargs="?", const=True, default=default, metavar="BOOL", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    defaults = Limits()
    parser = argparse.ArgumentParser(
        prog="evserve",
        description="An event-loop inference server that speaks Triton's HTTP/REST protocol.",
    )
    parser.add_argument("--version", action="version", version=f"evserve {server_version()}")
    http = parser.add_argument_group("HTTP")
    _flag(http, "--threads", "--http-thread-count", dest="threads", type=int, default=8,
          help="loop threads serving HTTP (default 8)")
    _flag(http, "--http-port", type=int, default=8000, help="HTTP API port (default 8000; 0 picks a free port)")
    _flag(http, "--http-address", type=address, default="0.0.0.0",
          help="address to bind (default 0.0.0.0; IPv6 as ::1 or Triton's ipv6:[::1])")
    _bool_flag(http, "--reuse-http-port", False, "set SO_REUSEPORT so several servers can share the port")
    _bool_flag(http, "--cap-threads-to-cores", True,
               "run at most one loop thread per usable core (default true)")
    _flag(http, "--cpu-scheduling", choices=cpu_scheduling.POLICIES, default="batch",
          help="Linux scheduling policy of the server's threads and model processes: batch (SCHED_BATCH: a "
               "woken thread does not preempt a running one, so bursts run to their end) or normal "
               "(SCHED_OTHER) (default batch)")
    _bool_flag(http, "--allow-http", True, "serve the HTTP API (default true)")
    _flag(http, "--http-restricted-api", action="append", default=[], metavar="API[,API...]:KEY=VALUE",
          help="answer these API groups (health, metadata, inference, shared-memory, model-config, model-repository, "
               "statistics, trace, logging) only with header KEY: VALUE; repeatable")
    _flag(http, "--http-header-forward-pattern", default=None, metavar="REGEX",
          help="request headers whose name matches REGEX (case-insensitive) reach the model as request parameters")
    _flag(http, "--trace-config", action="append", default=[], metavar="[MODE,]KEY=VALUE",
          help="Triton's trace settings: file=PATH, level=OFF|TIMESTAMPS|TENSORS, rate=N, count=N, "
               "log-frequency=N (repeatable; change them live at /v2/trace/setting)")
    _flag(http, "--exit-timeout-secs", type=float, default=30.0,
          help="on SIGINT/SIGTERM, how long in-flight requests may drain (default 30)")
    _flag(http, "--drain-grace-secs", type=float, default=5.0,
          help="on SIGINT/SIGTERM, first answer /v2/health/ready with 400 and keep serving for this long "
               "(each reply then closes its connection), so that load balancers move traffic away before "
               "the listener closes; a second signal ends it early; 0 closes the listener at once (default 5)")
    _flag(http, "--server-name", "--id", dest="server_name", default="evserve",
          help="the name in server metadata (default evserve; 'triton' satisfies clients that check it)")

    limits = parser.add_argument_group("HTTP limits and deadlines")
    _flag(limits, "--http-max-input-size", type=int, default=defaults.max_input_size,
          help=f"largest request body in bytes, also decompressed (default {defaults.max_input_size // MIB} MiB)")
    _flag(limits, "--http-max-request-line", type=int, default=defaults.max_request_line, help="bytes (414 above)")
    _flag(limits, "--http-max-header-field", type=int, default=defaults.max_header_field, help="bytes (431 above)")
    _flag(limits, "--http-max-header-size", type=int, default=defaults.max_header_block,
          help="bytes in the whole header block (431 above)")
    _flag(limits, "--http-max-headers", type=int, default=defaults.max_headers, help="header fields (431 above)")
    _flag(limits, "--http-head-timeout", type=float, default=defaults.head_timeout,
          help="seconds to receive a request head, counted from accept or the first byte (408)")
    _flag(limits, "--http-body-timeout", type=float, default=defaults.body_timeout,
          help="seconds a body may stall between reads (408)")
    _flag(limits, "--http-body-min-rate", type=int, default=defaults.body_min_rate,
          help="bytes/s a body must average once --http-body-timeout has passed (408)")
    _flag(limits, "--http-keepalive-timeout", type=float, default=defaults.keepalive_timeout,
          help="seconds an idle keep-alive connection is kept")
    _flag(limits, "--http-send-timeout", type=float, default=defaults.send_timeout,
          help="seconds a client may leave its replies unread before the connection is dropped")
    _flag(limits, "--http-max-requests-per-connection", type=int, default=defaults.max_requests_per_connection)
    _flag(limits, "--http-max-connections", type=int, default=defaults.max_connections,
          help="live connections across all threads (kept below the file-descriptor limit)")
    _flag(limits, "--http-max-pipelined-requests", type=int, default=defaults.max_pipelined_requests,
          help="requests parsed ahead per connection before reading pauses")
    _flag(limits, "--http-stream-buffer-size", type=int, default=defaults.stream_buffer_size,
          help="bytes of one stream's events that may wait for a slow reader before the model's send() "
               f"waits (default {defaults.stream_buffer_size // MIB} MiB)")
    _flag(limits, "--max-queue-size", type=int, default=1024,
          help="inference requests queued per model instance before 503")

    cache = parser.add_argument_group("response cache")
    _flag(cache, "--cache-config", action="append", default=[], metavar="local,size=BYTES",
          help="Triton's response cache: a local LRU of BYTES for models with response_cache { enable: true }")
    _flag(cache, "--response-cache-byte-size", type=int, default=None, metavar="BYTES",
          help="deprecated spelling of --cache-config local,size=BYTES (as in Triton)")
    _flag(cache, "--cache-directory", default=None, help="accepted for Triton command lines; evserve loads no "
          "cache libraries")

    metrics = parser.add_argument_group("metrics")
    _bool_flag(metrics, "--allow-metrics", True, "serve Prometheus metrics (default true)")
    _flag(metrics, "--metrics-port", type=int, default=8002, help="metrics port (default 8002)")
    _flag(metrics, "--metrics-address", type=address, default=None, help="default: --http-address")
    _flag(metrics, "--metrics-config", action="append", default=[], metavar="KEY=VALUE",
          help="Triton's metric switches: counter_latencies, summary_latencies, histogram_latencies (true/false), "
               "summary_quantiles=0.5:0.05,0.9:0.01,...")
    _flag(metrics, "--metrics-interval-ms", type=int, default=2000,
          help="accepted for Triton command lines; evserve reads every value at scrape time")

    shm = parser.add_argument_group("client shared memory")
    _bool_flag(shm, "--allow-client-shm", False,
               "serve the shared-memory register/unregister APIs (default false, as Triton 2.73)")
    _flag(shm, "--client-shm-max-regions", type=int, default=1024, help="registered regions at most (default 1024)")
    _flag(shm, "--client-shm-max-region-size", type=int, default=16 * 1024 * MIB,
          help="bytes of one registered region at most (default 16 GiB)")

    models = parser.add_argument_group("models")
    _flag(models, "--model-repository", "--model-store", dest="model_repository", action="append", default=[],
          help="a Triton model repository (repeatable); default: the bundled example repository")
    _flag(models, "--model-control-mode", choices=("none", "explicit", "poll"), default="none")
    _flag(models, "--load-model", action="append", default=[],
          help="model to load at start in explicit mode (repeatable; '*' for all)")
    _flag(models, "--repository-poll-secs", type=float, default=15.0, help="poll interval in poll mode")
    _flag(models, "--model-load-thread-count", type=int, default=4,
          help="concurrent load/unload operations; one more gets 503 (default 4)")
    _flag(models, "--model-isolation", choices=("thread", "process"), default="thread",
          help="run python-backend instances in the server (thread) or a child process each (process); "
               "a model's EVSERVE_MODEL_ISOLATION parameter overrides it (default thread)")
    _flag(models, "--model-config-name", default=None, help="use configs/<name>.pbtxt instead of config.pbtxt")
    _bool_flag(models, "--strict-readiness", True, "ready only when every model is ready (default true)")
    _bool_flag(models, "--exit-on-error", True, "exit when a startup model fails to load (default true)")
    _bool_flag(models, "--disable-auto-complete-config", False, "do not run auto_complete_config")
    _bool_flag(models, "--strict-model-config", False, "deprecated spelling of --disable-auto-complete-config")
    # Runs load/unload on the loop thread, as Triton does; exists only so the starvation test can
    # show it catches that bug. Hidden from --help.
    models.add_argument("--sync-model-control", action="store_true", help=argparse.SUPPRESS)

    triton = parser.add_argument_group(
        "Triton flags evserve has no part for (accepted so Triton command lines start it; each warns once)")
    _flag(triton, "--grpc-port", type=int, default=None, help="evserve serves no gRPC")
    _flag(triton, "--grpc-address", default=None, help="evserve serves no gRPC")
    _bool_flag(triton, "--allow-grpc", False, "evserve serves no gRPC")
    _flag(triton, "--backend-directory", default=None, help="evserve runs python-backend models itself")
    _flag(triton, "--backend-config", action="append", default=[], help="backend settings such as python,shm-...")
    _flag(triton, "--pinned-memory-pool-byte-size", default=None, help="no pinned memory pool")
    _flag(triton, "--cuda-memory-pool-byte-size", action="append", default=[], help="no CUDA memory pool")

    logs = parser.add_argument_group("logging (all but the file can be changed live: POST /v2/logging)")
    _flag(logs, "--log-verbose", type=int, default=0,
          help="verbosity level (0: none; 1 and above: DEBUG and one access line per reply)")
    _flag(logs, "--log-file", default="", help="write the log to this file instead of stderr")
    _bool_flag(logs, "--log-info", True, "log INFO messages (default true)")
    _bool_flag(logs, "--log-warning", True, "log WARNING messages (default true)")
    _bool_flag(logs, "--log-error", True, "log ERROR messages (default true)")
    _flag(logs, "--log-format", choices=server_log.FORMATS, default="default",
          help="default (Triton's glog shape) or ISO8601")
    return parser


def _metrics_config(specs: list[str]) -> dict[str, object]:
    """``--metrics-config key=value`` values (Triton's keys) as Config fields; ValueError for the rest."""
    out: dict[str, object] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq:
            raise ValueError(f"--metrics-config expects key=value, got '{spec}'")
        if key in ("counter_latencies", "summary_latencies", "histogram_latencies"):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--metrics-config {key} takes true or false, got '{value}'")
            out["metrics_" + key] = value.lower() in ("true", "1")
        elif key == "summary_quantiles":
            try:
                out["metrics_summary_quantiles"] = tuple(float(p.split(":")[0]) for p in value.split(","))
            except ValueError:
                raise ValueError(f"--metrics-config summary_quantiles: bad value '{value}'") from None
        elif key != "summary_max_age":  # quantiles here are over the last 4096 requests, not a time window
            raise ValueError(f"--metrics-config: unknown key '{key}'")
    return out


def _regex(pattern: str | None) -> str | None:
    """The pattern, checked: a regex that does not compile is a start-up error, not a surprise per request."""
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"--http-header-forward-pattern: {exc}") from None
    return pattern


def address(text: str) -> str:
    """An address to bind; Triton's ``ipv6:[::1]`` spelling is accepted beside plain ``::1``."""
    if text.startswith("ipv6:"):
        text = text[5:]
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return text


def _cache_bytes(args: argparse.Namespace) -> int:
    """The response cache's size from --cache-config, or from Triton's deprecated --response-cache-byte-size."""
    if args.cache_config:
        return parse_cache_config(args.cache_config)
    if args.response_cache_byte_size is not None:
        if args.response_cache_byte_size <= 0:
            raise ValueError("--response-cache-byte-size must be a positive number of bytes")
        return int(args.response_cache_byte_size)
    return 0


def config_from_args(args: argparse.Namespace) -> Config:
    metrics_config = _metrics_config(args.metrics_config)
    limits = Limits(
        max_request_line=args.http_max_request_line,
        max_header_field=args.http_max_header_field,
        max_header_block=args.http_max_header_size,
        max_headers=args.http_max_headers,
        max_input_size=args.http_max_input_size,
        head_timeout=args.http_head_timeout,
        body_timeout=args.http_body_timeout,
        body_min_rate=args.http_body_min_rate,
        keepalive_timeout=args.http_keepalive_timeout,
        send_timeout=args.http_send_timeout,
        max_requests_per_connection=args.http_max_requests_per_connection,
        max_connections=args.http_max_connections,
        max_pipelined_requests=args.http_max_pipelined_requests,
        stream_buffer_size=args.http_stream_buffer_size,
    )
    models = ModelManagerOptions(
        control_mode=args.model_control_mode,
        startup_models=tuple(args.load_model),
        poll_secs=args.repository_poll_secs,
        load_thread_count=args.model_load_thread_count,
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        model_config_name=args.model_config_name,
        disable_auto_complete=args.disable_auto_complete_config or args.strict_model_config,
        queue_capacity=args.max_queue_size,
        isolation=args.model_isolation,
        latency_summaries=bool(metrics_config.get("metrics_summary_latencies", False)),
        response_cache_bytes=_cache_bytes(args),
    )
    return Config(
        http_address=args.http_address,
        http_port=args.http_port,
        threads=args.threads,
        cap_threads_to_cores=args.cap_threads_to_cores,
        reuse_port=args.reuse_http_port,
        allow_http=args.allow_http,
        allow_metrics=args.allow_metrics,
        **metrics_config,
        allow_client_shm=args.allow_client_shm,
        restricted_apis=parse_restrictions(args.http_restricted_api),
        header_forward_pattern=_regex(args.http_header_forward_pattern),
        trace=parse_trace_config(args.trace_config),
        client_shm_max_regions=args.client_shm_max_regions,
        client_shm_max_region_size=args.client_shm_max_region_size,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        exit_timeout=args.exit_timeout_secs,
        drain_grace=args.drain_grace_secs,
        log_verbose=args.log_verbose,
        server_name=args.server_name,
        limits=limits,
        model_repositories=tuple(args.model_repository),
        models=models,
        sync_model_control=args.sync_model_control,
    )


def ignored_triton_flags(args: argparse.Namespace) -> list[str]:
    """One warning per Triton flag given that evserve accepts but has no part for."""
    warnings = []
    grpc = [flag for flag, value in (("--grpc-port", args.grpc_port), ("--grpc-address", args.grpc_address),
                                     ("--allow-grpc", args.allow_grpc)) if value]
    if grpc:
        warnings.append(f"evserve serves no gRPC: {', '.join(grpc)} ignored; clients use HTTP on --http-port")
    if args.backend_directory is not None:
        warnings.append("--backend-directory ignored: evserve runs python-backend models itself")
    if args.backend_config:
        warnings.append(f"--backend-config {' '.join(args.backend_config)} ignored: evserve has no backend plugins")
    if args.response_cache_byte_size is not None:
        warnings.append("--response-cache-byte-size is deprecated: use --cache-config local,size="
                        f"{args.response_cache_byte_size}" + (" (given too, it wins)" if args.cache_config else ""))
    if args.cache_directory is not None:
        warnings.append("--cache-directory ignored: evserve's response cache is built in")
    if args.pinned_memory_pool_byte_size is not None or args.cuda_memory_pool_byte_size:
        warnings.append("--pinned-memory-pool-byte-size/--cuda-memory-pool-byte-size ignored: evserve keeps no "
                        "memory pools of its own (CuPy's allocator serves GPU memory)")
    return warnings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # First, on the main thread: every thread and child process started from here inherits it.
    scheduling = cpu_scheduling.apply(args.cpu_scheduling)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        server_log.configure(server_log.LogSettings(
            log_file=args.log_file, log_info=args.log_info, log_warning=args.log_warning, log_error=args.log_error,
            log_verbose_level=config.log_verbose, log_format=args.log_format,
        ))
    except OSError as exc:
        parser.error(f"--log-file {args.log_file}: {exc.strerror or exc}")
    for warning in ignored_triton_flags(args):
        log.warning(warning)
    if not config.allow_http:
        print("evserve: --allow-http=false leaves nothing to serve", file=sys.stderr)
        return 2

    for repository in config.model_repositories:
        if not os.path.isdir(repository):
            print(f"evserve: model repository '{repository}' does not exist or is not a directory", file=sys.stderr)
            return 1

    from evserve.gpu.host_memory import reuse_large_blocks
    from evserve.server.app import Server

    reuse_large_blocks()

    stop = threading.Event()  # the first SIGINT/SIGTERM
    hurry = threading.Event()  # a second one: skip what is left of the drain grace

    def on_signal(*_: object) -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = Server(config)
    try:
        server.start()
    except AddressInUse as exc:
        print(f"evserve: cannot listen: {exc.strerror}", file=sys.stderr)
        return 1
    except OSError as exc:  # an address that does not resolve, or one this host does not have
        print(f"evserve: cannot listen on {config.http_address}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log.info("%s; %d usable cores; %s", describe_interpreter(), usable_cores(), scheduling)
    if free_threaded_build() and gil_enabled():
        log.warning("the GIL is on in this free-threaded build: a module imported by evserve or its "
                    "dependencies has not declared free-threading support (Python's warning above names it); "
                    "the loop threads will not run in parallel")
    status = 0
    # Wait for the startup models, but stay responsive to signals meanwhile.
    while not stop.is_set() and not server.manager.wait_startup(0.2):
        pass
    if not stop.is_set():
        for line in model_table(server.manager.index()).splitlines():
            log.info("%s", line)
    errors = server.manager.startup_errors()
    if config.models.exit_on_error and errors and not stop.is_set():
        for name, reason in errors.items():
            log.error("failed to load '%s': %s", name, reason)
        log.error("exiting: failed to load all models (--exit-on-error=true)")
        stop.set()
        status = 1
    elif not stop.is_set():
        log.info("started: HTTP on %s:%d%s", config.http_address, server.api.port,
                 f", metrics on {server.metrics.address}:{server.metrics.port}/metrics" if server.metrics else "")
    while not stop.wait(0.5):
        pass
    # A server that is not ready (still starting, or a model failed) gets no traffic to hand over.
    if status == 0 and config.drain_grace > 0 and not hurry.is_set() and server.manager.ready():
        log.info("stopping: not ready from now on, still serving for %g s so that load balancers take this "
                 "replica out (--drain-grace-secs; a second signal skips ahead)", config.drain_grace)
        server.begin_drain_grace()
        # In short waits: Python runs a handler on this thread only, and a signal the kernel gave
        # to another thread does not wake a long wait (seen on the free-threaded build).
        end = time.monotonic() + config.drain_grace
        while (left := end - time.monotonic()) > 0 and not hurry.wait(min(left, 0.2)):
            pass
    log.info("stopping: draining connections for up to %.0f s", config.exit_timeout)
    server.stop()
    log.info("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
