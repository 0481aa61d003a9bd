"""Request tracing in Triton's format: settings (global and per model), sampling, and the trace file.

Settings are Triton's (``trace_level`` OFF/TIMESTAMPS/TENSORS, ``trace_rate``, ``trace_count``,
``log_frequency``, ``trace_file``, ``trace_mode``), set at start with ``--trace-config`` and
changed while serving through ``/v2/trace/setting`` and ``/v2/models/{m}/trace/setting``. A model's
own settings override the global ones field by field; a ``null`` resets a field to the global
value. Values travel as strings, as in Triton's JSON.

Sampling: with tracing on, every ``trace_rate``-th request of a model is traced, until
``trace_count`` traces have been taken (-1: no end). A traced request collects Triton's
timestamps (HTTP_RECV_START ... HTTP_SEND_END, steady-clock nanoseconds) on the threads that
reach each point; the finished trace goes to a writer thread, never written on a loop thread.
With ``log_frequency`` N > 0 every N traces are written to ``<trace_file>.<k>`` (k = 0, 1, ...);
with 0 they are written to ``<trace_file>`` when the server stops, as Triton does. Each file is a
JSON array of Triton's entries: ``{"id", "model_name", "model_version", "request_id"}`` and
``{"id", "timestamps": [{"name", "ns"}]}``.

At TENSORS level the trace also holds each input (``TENSOR_QUEUE_INPUT``, ``TENSOR_BACKEND_INPUT``)
and output (``TENSOR_BACKEND_OUTPUT``) as Triton writes them; the arrays are kept by reference
and turned into text by the writer thread. In the
OpenTelemetry mode (``--trace-config mode=opentelemetry``) the writer thread hands each trace to
``otel_export.py`` instead of a file.

Thread-safety: settings and counters change under one lock; a request's trace is appended to
only by the thread that holds the request at that moment (loop thread, then worker, then loop
thread again), and handed over through the ticket's defer, which orders those appends.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evserve.gpu.execution.contract import ExecRequest
from evserve.protocol.errors import BadRequest, Unsupported
from evserve.server.otel_export import OtelExporter

if TYPE_CHECKING:
    from evserve.protocol.types import InferRequest
    from evserve.server.exchange import Request

log = logging.getLogger("evserve.server")

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
# Read by connections on every request: stamp HTTP_RECV_START/END only while tracing may sample.
TRACING = False
FIELDS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode")


@dataclass(frozen=True)
class TraceSettings:
    trace_level: tuple[str, ...] = ("OFF",)
    trace_rate: int = 1000
    trace_count: int = -1
    log_frequency: int = 0
    trace_file: str = ""
    trace_mode: str = "triton"
    # OpenTelemetry mode: the collector's OTLP/HTTP endpoint and extra resource attributes.
    otel_url: str = ""
    otel_resource: tuple[tuple[str, str], ...] = ()

    @property
    def on(self) -> bool:
        return "OFF" not in self.trace_level and bool(self.trace_level)

    @property
    def writes_file(self) -> bool:
        return self.trace_mode == "triton"

    def as_json(self) -> dict[str, Any]:
        return {
            "trace_level": list(self.trace_level), "trace_rate": str(self.trace_rate),
            "trace_count": str(self.trace_count), "log_frequency": str(self.log_frequency),
            "trace_file": self.trace_file, "trace_mode": self.trace_mode,
        }


def parse_trace_config(specs: list[str]) -> TraceSettings:
    """``--trace-config [mode,]key=value`` values (Triton's syntax) into start-up settings."""
    settings = TraceSettings()
    for spec in specs:
        mode, _, rest = spec.rpartition(",") if "," in spec else ("", "", spec)
        key, eq, value = rest.partition("=")
        if not eq:
            raise ValueError(f"--trace-config expects [mode,]key=value, got '{spec}'")
        if mode not in ("", "triton", "opentelemetry"):
            raise ValueError(f"--trace-config: unknown trace mode '{mode}'")
        key = key.replace("-", "_")
        if mode == "opentelemetry":
            if key == "url":
                settings = replace(settings, otel_url=value)
            elif key == "resource":
                name, _, attribute = value.partition("=")
                settings = replace(settings, otel_resource=(*settings.otel_resource, (name, attribute)))
            elif not key.startswith("bsp_"):  # the batch processor's tuning is the SDK's, read from its env
                raise ValueError(f"--trace-config: unknown OpenTelemetry setting '{key}'")
            continue
        if key == "mode":
            if value not in ("triton", "opentelemetry"):
                raise ValueError(f"--trace-config: unknown trace mode '{value}'")
            settings = replace(settings, trace_mode=value)
        elif key == "file":
            settings = replace(settings, trace_file=value)
        elif key == "level":
            if value.upper() not in LEVELS:
                raise ValueError(f"--trace-config: unknown trace level '{value}'")
            level = value.upper()
            wanted = {level, *settings.trace_level} - {"OFF"}
            settings = replace(settings, trace_level=("OFF",) if level == "OFF" else tuple(
                lv for lv in LEVELS if lv in wanted))
        elif key in ("rate", "count", "log_frequency"):
            try:
                settings = replace(settings, **{("trace_" + key if key != "log_frequency" else key): int(value)})
            except ValueError:
                raise ValueError(f"--trace-config: {key} must be an integer, got '{value}'") from None
        else:
            raise ValueError(f"--trace-config: unknown setting '{key}'")
    if settings.trace_mode == "opentelemetry":
        try:
            import opentelemetry.sdk  # noqa: F401
        except ImportError:
            raise ValueError(
                "--trace-config mode=opentelemetry needs the OpenTelemetry SDK: pip install 'evserve[trace]'"
            ) from None
    return settings


def _changes(body: Any) -> dict[str, Any]:
    """Validated field changes from a POST body (None: back to the global value)."""
    if not isinstance(body, dict):
        return {}
    if "trace_file" in body:
        raise Unsupported("trace file location can not be updated through network protocol")
    changes: dict[str, Any] = {}
    if "trace_level" in body:
        levels = body["trace_level"]
        if levels is None:
            changes["trace_level"] = None
        elif not isinstance(levels, list) or not all(isinstance(v, str) for v in levels):
            raise BadRequest("Unable to parse 'trace_level': attempt to access JSON non-array as array")
        else:
            known = {v.upper() for v in levels} & set(LEVELS)
            if known:  # unknown names are ignored, as Triton does; the order is Triton's
                changes["trace_level"] = ("OFF",) if "OFF" in known else tuple(lv for lv in LEVELS if lv in known)
    for key in ("trace_rate", "trace_count", "log_frequency"):
        if key in body:
            value = body[key]
            if value is None:
                changes[key] = None
                continue
            if not isinstance(value, str):
                raise BadRequest(f"Unable to parse '{key}': attempt to access JSON non-string as string")
            try:
                number = int(value)
            except ValueError:
                raise BadRequest(f"Unable to parse '{key}', got: {value}") from None
            if key == "trace_rate" and number == 0:
                raise BadRequest("Attempting to set invalid trace setting :sample rate must be non-zero")
            if number < (-1 if key == "trace_count" else 0):
                raise BadRequest(f"Unable to parse '{key}'. Expecting value >= {-1 if key == 'trace_count' else 0}, "
                                 f"got:{value}")
            changes[key] = number
    return changes


def _set_tracing(on: bool) -> None:
    global TRACING
    TRACING = on


@dataclass
class Trace:
    """One traced request: Triton's entries, appended by whichever thread holds the request."""

    id: int
    model: str
    version: str
    request_id: str
    timestamps: list[tuple[str, int]] = field(default_factory=list)
    manager: TraceManager | None = None
    traceparent: str = ""  # the request's W3C traceparent header (OpenTelemetry mode)
    # TENSORS level: (activity, name, datatype, shape, array), turned into text by the writer thread.
    tensors: list[tuple[str, str, str, tuple[int, ...], Any]] | None = None

    def add_tensor(self, activity: str, name: str, datatype: str, shape: tuple[int, ...], data: Any) -> None:
        if self.tensors is not None:
            self.tensors.append((activity, name, datatype, tuple(shape), data))

    def done(self) -> None:
        """The reply is written: hand the trace to the writer thread."""
        if self.manager is not None:
            self.manager.finish(self)

    def mark(self, name: str, ns: int | None = None) -> None:
        self.timestamps.append((name, time.monotonic_ns() if ns is None else ns))

    def entries(self) -> list[dict[str, Any]]:
        head = {"id": self.id, "model_name": self.model, "model_version": int(self.version)
                if self.version.isdigit() else self.version}
        if self.request_id:
            head["request_id"] = self.request_id
        stamps = [{"id": self.id, "timestamps": [{"name": n, "ns": ns}]} for n, ns in self.timestamps]
        tensors = [
            {"id": self.id, "activity": activity,
             "tensor": {"name": name, "data": _tensor_text(data), "shape": ",".join(map(str, shape)), "dtype": dtype}}
            for activity, name, dtype, shape, data in self.tensors or ()
        ]
        return [head, *stamps, *tensors]


def _tensor_text(data: Any) -> str:
    """Triton's TENSORS-level text: the elements, comma-separated (BYTES as UTF-8 text where it is)."""
    values = data.reshape(-1).tolist() if hasattr(data, "reshape") else list(data)
    return ",".join(v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v) for v in values)


class TraceManager:
    """The live settings, the per-model sampling counters, and the writer of finished traces."""

    def __init__(self, settings: TraceSettings) -> None:
        self._lock = threading.Lock()
        self._startup = settings  # what a null resets a global field to
        self._global = settings
        self._models: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, int] = {}
        self._taken: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._done: queue.SimpleQueue[Trace | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._otel: OtelExporter | None = None
        if settings.trace_mode == "opentelemetry":
            self._otel = OtelExporter(settings.otel_url, dict(settings.otel_resource))
        # Read on every request (one attribute): True while any setting has tracing on.
        self.active = settings.on
        _set_tracing(self.active)

    # -- settings --------------------------------------------------------------------------

    def settings(self, model: str | None = None) -> TraceSettings:
        with self._lock:
            return self._effective(model)

    def _effective(self, model: str | None) -> TraceSettings:
        overrides = self._models.get(model, {}) if model else {}
        return replace(self._global, **overrides) if overrides else self._global

    def update(self, model: str | None, body: Any) -> TraceSettings:
        changes = _changes(body)
        with self._lock:
            if model is None:
                resets = {k for k, v in changes.items() if v is None}
                base = self._startup
                new = replace(self._global, **{k: (getattr(base, k) if v is None else v) for k, v in changes.items()})
                for overrides in self._models.values():
                    for key in resets:
                        overrides.pop(key, None)
            else:
                overrides = self._models.setdefault(model, {})
                for key, value in changes.items():
                    if value is None:
                        overrides.pop(key, None)
                    else:
                        overrides[key] = value
                new = self._global
            candidate = new if model is None else replace(new, **self._models[model])
            if candidate.on and candidate.writes_file and not candidate.trace_file:
                if model is not None:
                    self._models[model] = {k: v for k, v in self._models[model].items() if k not in changes}
                raise BadRequest("Attempting to set invalid trace setting :trace file name is not given")
            self._global = new
            if "trace_count" in changes or "trace_rate" in changes:
                self._taken.pop(model, None) if model else self._taken.clear()
            self.active = self._global.on or any(self._effective(m).on for m in self._models)
            _set_tracing(self.active)
            return self._effective(model)

    # -- sampling and collection ---------------------------------------------------------------

    def sample(self, model: str, version: str, request_id: str) -> Trace | None:
        """A new trace when this request of ``model`` is to be traced, else None (called per request)."""
        with self._lock:
            settings = self._effective(model)
            if not settings.on:
                return None
            seen = self._seen.get(model, 0) + 1
            self._seen[model] = seen
            if seen % settings.trace_rate:
                return None
            taken = self._taken.get(model, 0)
            if 0 <= settings.trace_count <= taken:
                return None
            self._taken[model] = taken + 1
            tensors: list[Any] | None = [] if "TENSORS" in settings.trace_level else None
            return Trace(next(self._ids), model, version, request_id, manager=self, tensors=tensors)

    def finish(self, trace: Trace) -> None:
        """The request's reply is out: queue the trace for the writer thread."""
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_loop, name="evserve-trace", daemon=True)
                    self._writer.start()
        self._done.put(trace)

    def stop(self) -> None:
        """Write what is left (log_frequency 0: the whole file) and end the writer."""
        if self._writer is not None:
            self._done.put(None)
            self._writer.join(10)
        if self._otel is not None:
            self._otel.shutdown()

    def _write_loop(self) -> None:
        pending: list[Trace] = []
        file_index = 0
        while True:
            trace = self._done.get()
            settings = self.settings(trace.model if trace is not None else None)
            if trace is not None and self._otel is not None:
                self._otel.export(trace)
                continue
            if trace is None and self._otel is not None:
                return
            if trace is not None:
                pending.append(trace)
            frequency = settings.log_frequency
            if trace is None or (frequency > 0 and len(pending) >= frequency):
                if pending and settings.trace_file:
                    path = settings.trace_file if frequency == 0 else f"{settings.trace_file}.{file_index}"
                    file_index += frequency > 0
                    self._write(Path(path), pending)
                pending = []
            if trace is None:
                return

    @staticmethod
    def _write(path: Path, traces: list[Trace]) -> None:
        """Write the file whole, then give it its name: whoever sees the name (a log shipper
        watching the folder, a test) never reads a file that is still empty or half written."""
        partial = path.with_name(f".{path.name}.partial")
        try:
            partial.write_text(json.dumps([entry for trace in traces for entry in trace.entries()]))
            os.replace(partial, path)
        except OSError as exc:
            log.error("cannot write the trace file %s: %s", path, exc)
            partial.unlink(missing_ok=True)


def mark_compute(traced: Trace, job: ExecRequest) -> None:
    """Triton's compute timestamps of a finished job (from the marks its worker and instance left)."""
    end = time.monotonic_ns()
    for name, ns in (("COMPUTE_START", job.compute_start), ("COMPUTE_INPUT_END", job.input_end),
                     ("COMPUTE_OUTPUT_START", job.output_start)):
        if ns >= 0:
            traced.mark(name, ns)
    for name in ("COMPUTE_END", "INFER_RESPONSE_COMPLETE", "REQUEST_END"):
        traced.mark(name, end)


def start_trace(traces: TraceManager, request: Request, model: str, version: str,
                infer_request: InferRequest) -> Trace | None:
    """Sample a decoded request; a sampled one gets its receive, request and queue stamps (and inputs at
    TENSORS level), and rides on the request so its reply's write finishes it."""
    traced = traces.sample(model, version, infer_request.id)
    if traced is not None:
        traced.traceparent = request.fields.get("traceparent", "")
        traced.mark("HTTP_RECV_START", request.recv_start or None)
        traced.mark("HTTP_RECV_END", request.recv_end or None)
        now = time.monotonic_ns()
        traced.mark("REQUEST_START", now)
        traced.mark("QUEUE_START", now)
        if traced.tensors is not None:
            for activity in ("TENSOR_QUEUE_INPUT", "TENSOR_BACKEND_INPUT"):
                for tensor in infer_request.inputs:
                    traced.add_tensor(activity, tensor.name, tensor.datatype, tensor.shape, tensor.data)
        request.trace = traced
    return traced
