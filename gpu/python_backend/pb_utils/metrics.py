"""Custom metrics: kept so that models using them run; evserve does not export them."""

from __future__ import annotations

import enum
import logging
import threading

from evserve.gpu.python_backend.pb_utils.errors import TritonModelException

_log = logging.getLogger("evserve.model")


# Custom metrics: values are kept so models that use them run, but evserve does not export them.


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_metrics_warned = threading.Event()


class Metric:
    """One labelled series of a MetricFamily, with the C API's per-kind rules."""

    def __init__(self, kind: MetricKind, labels: dict[str, str], buckets: list[float] | None) -> None:
        self._kind = kind
        self.labels = dict(labels)
        self._lock = threading.Lock()
        self._value = 0.0
        self._buckets = buckets

    def increment(self, value: float) -> None:
        if self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException("increment is not supported for HISTOGRAM metrics")
        if self._kind is MetricKind.COUNTER and value < 0:
            raise TritonModelException("Counter metrics cannot be decremented")
        with self._lock:
            self._value += value

    def set(self, value: float) -> None:
        if self._kind is not MetricKind.GAUGE:
            raise TritonModelException("set is only supported for GAUGE metrics")
        with self._lock:
            self._value = float(value)

    def observe(self, value: float) -> None:
        if self._kind is not MetricKind.HISTOGRAM:
            raise TritonModelException("observe is only supported for HISTOGRAM metrics")
        with self._lock:
            self._value += value

    def value(self) -> float:
        if self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException("value is not supported for HISTOGRAM metrics")
        return self._value


class MetricFamily:
    """A named family of custom metrics (kept in-process; evserve does not export them)."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name = name
        self.description = description
        self.kind = MetricKind(kind)
        if not _metrics_warned.is_set():
            _metrics_warned.set()
            _log.warning("custom metrics (pb_utils.MetricFamily) are kept but not exported by evserve")

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        if self.kind is MetricKind.HISTOGRAM and not buckets:
            raise TritonModelException("buckets are required for HISTOGRAM metrics")
        return Metric(self.kind, labels or {}, buckets)
