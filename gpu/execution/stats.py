"""Per-version inference statistics: Triton's ``/stats`` entry and the Prometheus counters.

Updated from worker threads (each request's terminal call, each execution) and read by the
stats endpoint and the metrics scrape on loop threads; one lock per version keeps every
snapshot consistent, and it is held only for a few additions.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class ModelStats:
    """Per-version counters for /stats and Prometheus; updated after each response completes.

    Durations are nanoseconds as in Triton's statistics JSON. ``compute_infer`` is the time from
    the start of the batch's ``execute`` to the request's completion, so a batch of n adds its
    duration n times (Triton attributes batch compute to every request in it).
    """

    FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_count = 0
        self.queue_ns = 0
        self.compute_count = 0
        self.compute_ns = 0
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.failures = dict.fromkeys(self.FAILURE_REASONS, 0)
        # batch size (rows) -> [count, compute ns]
        self.batches: dict[int, list[int]] = {}

    def record_request(self, ok: bool, total_ns: int, queue_ns: int, compute_ns: int, rows: int,
                       reason: str = "BACKEND") -> None:
        """Account one completed request; ``queue_ns``/``compute_ns`` < 0 mean "never executed"."""
        with self._lock:
            if ok:
                self.success_count += 1
                self.success_ns += total_ns
                self.inference_count += rows
            else:
                self.fail_count += 1
                self.fail_ns += total_ns
                self.failures[reason if reason in self.failures else "OTHER"] += 1
            if queue_ns >= 0:
                self.queue_count += 1
                self.queue_ns += queue_ns
            if compute_ns >= 0:
                self.compute_count += 1
                self.compute_ns += compute_ns

    def record_rejected(self) -> None:
        """A request refused at admission (queue full): a failure with reason REJECTED."""
        self.record_request(False, 0, -1, -1, 0, reason="REJECTED")

    def record_execution(self, rows: int, compute_ns: int) -> None:
        """Account one ``execute`` of ``rows`` batch rows; it is also the last inference's time."""
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            self.execution_count += 1
            self.last_inference_ms = now_ms
            entry = self.batches.setdefault(rows, [0, 0])
            entry[0] += 1
            entry[1] += compute_ns

    def snapshot(self) -> dict[str, Any]:
        """The counters in Triton's ``model_stats`` entry shape (minus name/version)."""
        with self._lock:
            def pair(count: int, ns: int) -> dict[str, int]:
                return {"count": count, "ns": ns}

            return {
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": pair(self.success_count, self.success_ns),
                    "fail": pair(self.fail_count, self.fail_ns),
                    "queue": pair(self.queue_count, self.queue_ns),
                    "compute_input": pair(self.compute_count, 0),
                    "compute_infer": pair(self.compute_count, self.compute_ns),
                    "compute_output": pair(self.compute_count, 0),
                    "cache_hit": pair(0, 0),
                    "cache_miss": pair(0, 0),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": pair(count, 0),
                        "compute_infer": pair(count, ns),
                        "compute_output": pair(count, 0),
                    }
                    for size, (count, ns) in sorted(self.batches.items())
                ],
            }

    def failure_counts(self) -> dict[str, int]:
        """Failures by Prometheus ``reason`` label (REJECTED, CANCELED, BACKEND, OTHER)."""
        with self._lock:
            return dict(self.failures)


