"""Traces as OpenTelemetry spans, exported with the OpenTelemetry SDK's OTLP/HTTP exporter.

``--trace-config mode=opentelemetry`` (Triton's spelling; ``opentelemetry,url=...`` names the
collector, default ``http://localhost:4318/v1/traces``; ``opentelemetry,resource=key=value`` adds
resource attributes) turns each finished trace into spans: ``InferRequest`` from HTTP_RECV_START
to HTTP_SEND_END with every timestamp as a span event and the model's name and version as
attributes, and a child ``compute`` span from COMPUTE_START to COMPUTE_END. A W3C ``traceparent``
header on the request makes the spans part of the caller's trace. The SDK's batch processor
sends them from its own thread; nothing here runs on a loop thread.

The SDK is imported only when this mode is chosen (``pip install 'evserve[trace]'``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evserve.server.trace import Trace

DEFAULT_URL = "http://localhost:4318/v1/traces"


class OtelExporter:
    def __init__(self, url: str, resource: dict[str, str]) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ValueError(
                f"--trace-config mode=opentelemetry needs the OpenTelemetry SDK (pip install 'evserve[trace]'): {exc}"
            ) from None
        self._provider = TracerProvider(resource=Resource.create({"service.name": "evserve", **resource}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url or DEFAULT_URL)))
        self._tracer = self._provider.get_tracer("evserve")
        self._propagator = TraceContextTextMapPropagator()
        # Trace timestamps are steady-clock ns; spans want wall-clock ns.
        self._offset = time.time_ns() - time.monotonic_ns()

    def export(self, trace: Trace) -> None:
        stamps = dict(trace.timestamps)
        if not stamps:
            return
        wall = {name: ns + self._offset for name, ns in trace.timestamps}
        start = wall.get("HTTP_RECV_START", min(wall.values()))
        end = wall.get("HTTP_SEND_END", max(wall.values()))
        parent: Any = None
        if trace.traceparent:
            parent = self._propagator.extract({"traceparent": trace.traceparent})
        attributes = {"triton.model_name": trace.model, "triton.model_version": trace.version,
                      "triton.trace_id": trace.id}
        if trace.request_id:
            attributes["triton.request_id"] = trace.request_id
        span = self._tracer.start_span("InferRequest", context=parent, start_time=start, attributes=attributes)
        for name, ns in trace.timestamps:
            span.add_event(name, timestamp=ns + self._offset)
        if "COMPUTE_START" in wall and "COMPUTE_END" in wall:
            from opentelemetry import trace as otel_trace

            inner = self._tracer.start_span("compute", context=otel_trace.set_span_in_context(span),
                                            start_time=wall["COMPUTE_START"], attributes=attributes)
            inner.end(end_time=wall["COMPUTE_END"])
        span.end(end_time=end)

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes what the batch processor still holds
