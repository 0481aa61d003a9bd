"""Custom metrics (``pb_utils.MetricFamily``), exported on the metrics port beside Triton's own.

As in Triton's python backend, a family lives as long as the model holds it: families and their
metrics are kept by weak reference here, so an unloaded model's metrics disappear from
``/metrics`` with its objects. Creating a family whose name is taken by a live family of another
kind or description fails, as the C API does. Histograms keep Prometheus's cumulative buckets,
sum and count.

Metrics created inside a process-isolated instance live in its child process, which ships a
:func:`snapshot` to the server with each batch's answer (:mod:`evserve.gpu.process.child`); the
server exports the latest one.

Thread-safety: the registry and each metric have a lock (model threads update, the scrape reads).
"""

from __future__ import annotations

import bisect
import enum
import threading
import weakref

from evserve.gpu.python_backend.pb_utils.errors import TritonModelException


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class Metric:
    """One labelled series of a MetricFamily, with the C API's per-kind rules."""

    def __init__(self, kind: MetricKind, labels: dict[str, str], buckets: list[float] | None) -> None:
        self._kind = kind
        self.labels = {str(k): str(v) for k, v in labels.items()}
        self._lock = threading.Lock()
        self._value = 0.0
        self._bounds = sorted(float(b) for b in buckets) if buckets else []
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._count = 0

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
            self._count += 1
            self._counts[bisect.bisect_left(self._bounds, value)] += 1

    def value(self) -> float:
        if self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException("value is not supported for HISTOGRAM metrics")
        return self._value

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """(name suffix, labels, value) in Prometheus's text form: one sample, or a histogram's series."""
        with self._lock:
            if self._kind is not MetricKind.HISTOGRAM:
                return [("", self.labels, self._value)]
            out: list[tuple[str, dict[str, str], float]] = []
            running = 0
            for bound, count in zip([*self._bounds, float("inf")], self._counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(("_bucket", {**self.labels, "le": le}, running))
            out.append(("_sum", self.labels, self._value))
            out.append(("_count", self.labels, self._count))
            return out


class MetricFamily:
    """A named family of custom metrics, exported on /metrics while the model holds it."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name = name
        self.description = description
        self.kind = MetricKind(kind)
        self._metrics: weakref.WeakSet[Metric] = weakref.WeakSet()
        self._lock = threading.Lock()
        _register(self)

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        if self.kind is MetricKind.HISTOGRAM and not buckets:
            raise TritonModelException("buckets are required for HISTOGRAM metrics")
        metric = Metric(self.kind, labels or {}, buckets)
        with self._lock:
            self._metrics.add(metric)
        return metric

    def metrics(self) -> list[Metric]:
        with self._lock:
            return list(self._metrics)


# name -> the live families of that name (two instances of a model each create theirs).
_families: dict[str, weakref.WeakSet[MetricFamily]] = {}
_registry_lock = threading.Lock()


def _register(family: MetricFamily) -> None:
    with _registry_lock:
        same_name = _families.setdefault(family.name, weakref.WeakSet())
        for other in same_name:
            if other.kind is not family.kind or other.description != family.description:
                raise TritonModelException(
                    f"Metric family '{family.name}' already exists with a different kind or description"
                )
        same_name.add(family)


def families() -> list[tuple[str, str, MetricKind, list[Metric]]]:
    """(name, description, kind, live metrics) of every live custom family, by name (for the scrape)."""
    out = []
    with _registry_lock:
        for name in sorted(_families):
            live = list(_families[name])
            if not live:
                del _families[name]
                continue
            out.append((name, live[0].description, live[0].kind, [m for f in live for m in f.metrics()]))
    return out


Samples = list[tuple[str, dict[str, str], float]]


def snapshot() -> list[tuple[str, str, int, Samples]]:
    """(name, description, kind, samples) of every live family: what /metrics renders, as plain data."""
    return [(name, description, int(kind), [sample for metric in metrics for sample in metric.samples()])
            for name, description, kind, metrics in families()]
