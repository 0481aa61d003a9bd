"""HTTPMetricsServer: Prometheus text exposition on its own port (Triton's port 8002).

It derives from the same HTTPServer base with a single loop thread, as Triton's does. A
scrape reads counters that other threads keep (per loop thread: live connections and
requests answered; per model version: the engine's statistics) and never waits on a lock
that request handling holds for long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from evserve.protocol.prometheus import CONTENT_TYPE, Family, render
from evserve.server.config import Config
from evserve.server.exchange import Request, Response
from evserve.server.host_metrics import host_families
from evserve.server.http_server import HTTPServer, ThreadStats

if TYPE_CHECKING:
    from evserve.gpu.model_manager import ModelManager


def server_families(threads: list[ThreadStats]) -> list[Family]:
    live = Family("evserve_http_live_connections", "gauge", "Live HTTP connections owned by each loop thread")
    served = Family("evserve_http_requests_total", "counter", "HTTP requests answered by each loop thread")
    for stats in threads:
        live.add({"thread": str(stats.index)}, stats.live_connections)
        served.add({"thread": str(stats.index)}, stats.requests)
    return [live, served]


def model_families(manager: ModelManager, config: Config | None = None) -> list[Family]:
    """Triton's nv_inference_* families (same names, types and labels), per ready version.

    ``--metrics-config`` chooses the latency families as Triton's does: the duration counters
    (on by default), ``*_summary_us`` summaries and the first-response histogram (off by default).
    """
    config = config or Config()
    success = Family("nv_inference_request_success", "counter", "Number of successful inference requests")
    failure = Family("nv_inference_request_failure", "counter", "Number of failed inference requests")
    count = Family("nv_inference_count", "counter", "Number of inferences performed (a batch of n counts n)")
    executions = Family("nv_inference_exec_count", "counter", "Number of model executions performed")
    pending = Family("nv_inference_pending_request_count", "gauge", "Inference requests waiting in the queue")
    request_us = Family("nv_inference_request_duration_us", "counter", "Cumulative inference request duration")
    queue_us = Family("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration")
    input_us = Family("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration")
    infer_us = Family("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration")
    output_us = Family("nv_inference_compute_output_duration_us", "counter",
                       "Cumulative inference compute output duration")
    load_s = Family("nv_model_load_duration_secs", "gauge", "Model load time in seconds")
    rss = Family("evserve_model_instance_rss_bytes", "gauge", "Resident memory of a model instance's child process")
    restarts = Family("evserve_model_instance_restarts_total", "counter",
                      "Times a model instance's child process was restarted after it died")
    for version in manager.ready_versions():
        labels = {"model": version.name, "version": version.version_str}
        snap = version.stats.snapshot()
        stats = snap["inference_stats"]
        success.add(labels, stats["success"]["count"])
        for reason, value in sorted(version.stats.failure_counts().items()):
            failure.add({**labels, "reason": reason}, value)
        count.add(labels, snap["inference_count"])
        executions.add(labels, snap["execution_count"])
        pending.add(labels, version.queued)
        request_us.add(labels, (stats["success"]["ns"] + stats["fail"]["ns"]) // 1000)
        queue_us.add(labels, stats["queue"]["ns"] // 1000)
        input_us.add(labels, stats["compute_input"]["ns"] // 1000)
        infer_us.add(labels, stats["compute_infer"]["ns"] // 1000)
        output_us.add(labels, stats["compute_output"]["ns"] // 1000)
        load_s.add(labels, version.load_seconds)
        for instance, resident, restarted in version.child_processes():
            rss.add({**labels, "instance": instance}, resident)
            restarts.add({**labels, "instance": instance}, restarted)
    families = [success, failure, count, executions, pending]
    if config.metrics_counter_latencies:
        families += [request_us, queue_us, input_us, infer_us, output_us]
    families.append(load_s)
    families += cache_families(manager)
    if config.metrics_summary_latencies:
        families += _summaries(manager, config.metrics_summary_quantiles)
    if config.metrics_histogram_latencies:
        families.append(_first_response_histogram(manager))
    return families + [family for family in (rss, restarts) if family.samples]


def cache_families(manager: ModelManager) -> list[Family]:
    """Triton's response-cache families: per version that enables the cache, and the cache's own gauges."""
    hits = Family("nv_cache_num_hits_per_model", "counter", "Number of cache hits per model")
    hit_us = Family("nv_cache_hit_duration_per_model", "counter", "Total cache hit duration per model, in microseconds")
    misses = Family("nv_cache_num_misses_per_model", "counter", "Number of cache misses per model")
    miss_us = Family("nv_cache_miss_duration_per_model", "counter",
                     "Total cache miss (insert+lookup) duration per model, in microseconds")
    for version in manager.ready_versions():
        if not version.config.response_cache:
            continue
        labels = {"model": version.name, "version": version.version_str}
        stats = version.stats.snapshot()["inference_stats"]
        hits.add(labels, stats["cache_hit"]["count"])
        hit_us.add(labels, stats["cache_hit"]["ns"] // 1000)
        misses.add(labels, stats["cache_miss"]["count"])
        miss_us.add(labels, stats["cache_miss"]["ns"] // 1000)
    families = [family for family in (hits, hit_us, misses, miss_us) if family.samples]
    cache = manager.response_cache
    if cache is None:
        return families
    counters = cache.counters()
    for name, value, text in (
        ("nv_cache_util", counters.used / counters.capacity, "Cache utilization [0.0 - 1.0]"),
        ("nv_cache_num_entries", counters.entries, "Number of responses stored in response cache"),
        ("nv_cache_num_hits", counters.hits, "Number of cache hits in response cache"),
        ("nv_cache_num_misses", counters.misses, "Number of cache misses in response cache"),
        ("nv_cache_num_lookups", counters.lookups, "Number of cache lookups in response cache"),
        ("nv_cache_num_evictions", counters.evictions, "Number of cache evictions in response cache"),
        ("nv_cache_lookup_duration", counters.lookup_ns // 1000,
         "Total cache lookup duration (hit and miss), in microseconds"),
        ("nv_cache_insertion_duration", counters.insert_ns // 1000, "Total cache insertion duration, in microseconds"),
    ):
        family = Family(name, "gauge", text)
        family.add({}, value)
        families.append(family)
    return families


_SUMMARY_HELP = {
    "request": "Summary of inference request duration in microseconds",
    "queue": "Summary of inference queuing duration in microseconds",
    "compute_input": "Summary of compute input duration in microseconds",
    "compute_infer": "Summary of compute inference duration in microseconds",
    "compute_output": "Summary of inference compute output duration in microseconds",
}


def _summaries(manager: ModelManager, quantiles: tuple[float, ...]) -> list[Family]:
    out = []
    for name, text in _SUMMARY_HELP.items():
        family = Family(f"nv_inference_{name}_summary_us", "summary", text)
        for version in manager.ready_versions():
            labels = {"model": version.name, "version": version.version_str}
            points, total, count = version.stats.latency_summary(name, quantiles)
            for quantile, value in points:
                family.add({**labels, "quantile": repr(quantile)}, value)
            family.add(labels, total, "_sum")
            family.add(labels, count, "_count")
        out.append(family)
    return out


def _first_response_histogram(manager: ModelManager) -> Family:
    family = Family("nv_inference_first_response_histogram_ms", "histogram",
                    "Duration from request to first response in milliseconds")
    for version in manager.ready_versions():
        labels = {"model": version.name, "version": version.version_str}
        buckets, total, count = version.stats.first_response_histogram()
        for bound, running in buckets:
            family.add({**labels, "le": "+Inf" if bound == float("inf") else repr(bound)}, running, "_bucket")
        family.add(labels, total, "_sum")
        family.add(labels, count, "_count")
    return family


_PROMETHEUS_KIND = {0: "counter", 1: "gauge", 2: "histogram"}


def custom_families(manager: ModelManager) -> list[Family]:
    """The models' own metric families (pb_utils.MetricFamily), as Triton exports them."""
    out = []
    by_name: dict[str, Family] = {}
    for name, description, kind, samples in manager.custom_metric_families():
        family = by_name.get(name)
        if family is None:  # two process instances of a model ship the same family: one block
            family = by_name[name] = Family(name, _PROMETHEUS_KIND.get(int(kind), "untyped"), description)
            out.append(family)
        for suffix, labels, value in samples:
            family.add(labels, value, suffix)
    return out


class HTTPMetricsServer(HTTPServer):
    """GET /metrics on --metrics-port. Other paths answer 200 with an empty body, as Triton's."""

    thread_prefix = "evserve-metrics"

    def __init__(self, config: Config, api: HTTPServer, manager: ModelManager | None = None) -> None:
        super().__init__(config.metrics_address or config.http_address, config.metrics_port, threads=1,
                         limits=config.limits)
        self._threads: Callable[[], list[ThreadStats]] = api.thread_stats
        self._manager = manager
        self._config = config

    def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response.error(405, "Method Not Allowed")
        if request.path not in ("/metrics", "/metrics/"):
            return Response(200)
        families = server_families(self._threads())
        if self._manager is not None:
            families += model_families(self._manager, self._config)
            families += custom_families(self._manager)
        families += host_families()
        return Response(200, [("Content-Type", CONTENT_TYPE)], [render(families)])
