"""Per-version inference statistics: Triton's ``/stats`` entry and the Prometheus counters.

Updated from worker threads (each request's terminal call, each execution) and read by the
stats endpoint and the metrics scrape on loop threads; one lock per version keeps every
snapshot consistent, and it is held only for a few additions.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from typing import Any


class ModelStats:
    """Per-version counters for /stats and Prometheus; updated after each response completes.

    Durations are nanoseconds as in Triton's statistics JSON. A request's compute time is split
    as Triton splits it: ``compute_input`` (building the model's request and input tensors),
    ``compute_infer`` (the model's ``execute``) and ``compute_output`` (taking the outputs it
    returned), each from the whole batch, so a batch of n adds its durations n times (Triton
    attributes batch compute to every request in it). ``response_stats`` holds, per response
    index, the compute since the previous response and the time to take its outputs, by outcome
    (success, fail, empty_response, cancel), as Triton's statistics extension defines them.
    """

    RESPONSE_KINDS = ("success", "fail", "empty_response", "cancel")
    # response_stats keeps one entry per response index, as Triton's does; a stream of a million
    # tokens must not make a million entries, so indexes from here on are not kept.
    MAX_RESPONSE_INDEX = 1024

    FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
    # Triton's nv_inference_first_response_histogram_ms buckets (ms), and how many recent
    # latencies a summary's quantiles are computed over.
    FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)
    SUMMARY_WINDOW = 4096
    SUMMARIES = ("request", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self, *, latency_summaries: bool = False) -> None:
        self._lock = threading.Lock()
        # Time to first response (ms): cumulative bucket counts (+Inf last), sum and count.
        self.first_response = [0] * (len(self.FIRST_RESPONSE_BUCKETS_MS) + 1)
        self.first_response_sum_ms = 0.0
        self.first_response_count = 0
        # Recent latencies (us) per summary family, only when --metrics-config summary_latencies=true.
        self.recent: dict[str, deque[float]] | None = (
            {name: deque(maxlen=self.SUMMARY_WINDOW) for name in self.SUMMARIES} if latency_summaries else None
        )
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_count = 0
        self.queue_ns = 0
        self.compute_count = 0
        self.input_ns = 0
        self.compute_ns = 0
        self.output_ns = 0
        self.inference_count = 0
        self.execution_count = 0
        # The response cache (Triton's cache_hit/cache_miss): lookups answered, and misses stored (ns).
        self.cache_hit_count = 0
        self.cache_hit_ns = 0
        self.cache_miss_count = 0
        self.cache_miss_ns = 0
        self.last_inference_ms = 0
        self.failures = dict.fromkeys(self.FAILURE_REASONS, 0)
        # batch size (rows) -> [count, input ns, infer ns, output ns]
        self.batches: dict[int, list[int]] = {}
        # response index -> kind -> [count, compute_infer ns, compute_output ns]
        self.responses: dict[int, dict[str, list[int]]] = {}
        # A plain model's one response is its request: response 0, kept as three sums per outcome
        # (success, fail, cancel) -> [count, compute_infer ns, compute_output ns], merged at snapshot.
        self.single: dict[str, list[int]] = {"success": [0, 0, 0], "fail": [0, 0, 0], "cancel": [0, 0, 0]}

    def record_request(self, ok: bool, total_ns: int, queue_ns: int, phases: tuple[int, int, int], rows: int,
                       reason: str = "BACKEND", responses: list[tuple[str, int, int]] | None = None,
                       first_response_ns: int = -1, *, sent_response: bool = True) -> None:
        """Account one completed request and its responses (kind, compute ns, output ns), under one lock.

        ``queue_ns`` < 0 or ``phases[0]`` < 0 mean "never executed"; ``first_response_ns`` is the
        time from arrival to the first response (-1: none was sent). ``sent_response`` False: the
        request's answer is not a response of this model's own (an ensemble's), so response_stats
        leave it out, as Triton's do.
        """
        input_ns, infer_ns, output_ns = phases
        with self._lock:
            if first_response_ns >= 0:
                ms = first_response_ns / 1e6
                self.first_response[bisect.bisect_left(self.FIRST_RESPONSE_BUCKETS_MS, ms)] += 1
                self.first_response_sum_ms += ms
                self.first_response_count += 1
            recent = self.recent
            if recent is not None and input_ns >= 0:
                recent["request"].append(total_ns / 1e3)
                recent["queue"].append(queue_ns / 1e3)
                recent["compute_input"].append(input_ns / 1e3)
                recent["compute_infer"].append(infer_ns / 1e3)
                recent["compute_output"].append(output_ns / 1e3)
            if responses:
                self._add_responses(responses)
            elif input_ns >= 0 and sent_response:
                single = self.single["success" if ok else "cancel" if reason == "CANCELED" else "fail"]
                single[0] += 1
                single[1] += infer_ns
                single[2] += output_ns
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
            if input_ns >= 0:
                self.compute_count += 1
                self.input_ns += input_ns
                self.compute_ns += infer_ns
                self.output_ns += output_ns

    def record_cache_hit(self, total_ns: int, queue_ns: int, lookup_ns: int) -> None:
        """A request answered from the response cache: a success with its queue time, as Triton counts
        it (no compute, no inference or execution, and ``last_inference`` stays)."""
        with self._lock:
            if self.recent is not None:  # Triton's request and queue summaries include cached requests
                self.recent["request"].append(total_ns / 1e3)
                self.recent["queue"].append(queue_ns / 1e3)
            self.success_count += 1
            self.success_ns += total_ns
            self.queue_count += 1
            self.queue_ns += queue_ns
            self.cache_hit_count += 1
            self.cache_hit_ns += lookup_ns

    def record_cache_miss(self, ns: int) -> None:
        """A miss whose answer was offered to the cache: its lookup and insert time (Triton's cache_miss)."""
        with self._lock:
            self.cache_miss_count += 1
            self.cache_miss_ns += ns

    def record_rejected(self) -> None:
        """A request refused at admission (queue full): a failure with reason REJECTED."""
        self.record_request(False, 0, -1, (-1, -1, -1), 0, reason="REJECTED")

    def record_execution(self, rows: int, phases: tuple[int, int, int]) -> None:
        """Account one ``execute`` of ``rows`` batch rows; it is also the last inference's time."""
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            self.execution_count += 1
            self.last_inference_ms = now_ms
            entry = self.batches.setdefault(rows, [0, 0, 0, 0])
            entry[0] += 1
            entry[1] += phases[0]
            entry[2] += phases[1]
            entry[3] += phases[2]

    def _add_responses(self, responses: list[tuple[str, int, int]]) -> None:
        """Response i of a request (0 first) by outcome and durations; the caller holds the lock."""
        table = self.responses
        for index, (kind, infer_ns, output_ns) in enumerate(responses[: self.MAX_RESPONSE_INDEX]):
            kinds = table.get(index)
            if kinds is None:
                kinds = table[index] = {}
            entry = kinds.get(kind)
            if entry is None:
                entry = kinds[kind] = [0, 0, 0]
            entry[0] += 1
            entry[1] += infer_ns
            entry[2] += output_ns

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
                    "compute_input": pair(self.compute_count, self.input_ns),
                    "compute_infer": pair(self.compute_count, self.compute_ns),
                    "compute_output": pair(self.compute_count, self.output_ns),
                    "cache_hit": pair(self.cache_hit_count, self.cache_hit_ns),
                    "cache_miss": pair(self.cache_miss_count, self.cache_miss_ns),
                },
                "response_stats": self._response_stats(),
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": pair(count, input_ns),
                        "compute_infer": pair(count, infer_ns),
                        "compute_output": pair(count, output_ns),
                    }
                    for size, (count, input_ns, infer_ns, output_ns) in sorted(self.batches.items())
                ],
                # Triton lists memory the backend reports; the python backend reports none.
                "memory_usage": [],
            }

    def _response_stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Triton's response_stats, the plain models' single responses folded into index 0 (lock held)."""
        table = {index: {kind: list(v) for kind, v in kinds.items()} for index, kinds in self.responses.items()}
        for kind, (count, infer_ns, output_ns) in self.single.items():
            if count:
                entry = table.setdefault(0, {}).setdefault(kind, [0, 0, 0])
                entry[0] += count
                entry[1] += infer_ns
                entry[2] += output_ns
        return {str(index): self._response_entry(kinds) for index, kinds in sorted(table.items())}

    @classmethod
    def _response_entry(cls, kinds: dict[str, list[int]]) -> dict[str, dict[str, int]]:
        """Triton's $response_stat: compute_infer/compute_output over every outcome, then each outcome."""
        count = sum(v[0] for v in kinds.values())
        entry = {
            "compute_infer": {"count": count, "ns": sum(v[1] for v in kinds.values())},
            "compute_output": {"count": count, "ns": sum(v[2] for v in kinds.values())},
        }
        for kind in cls.RESPONSE_KINDS:
            n, infer_ns, output_ns = kinds.get(kind, (0, 0, 0))
            entry[kind] = {"count": n, "ns": infer_ns + output_ns}
        return entry

    def first_response_histogram(self) -> tuple[list[tuple[float, int]], float, int]:
        """Cumulative (upper bound ms, count) pairs ending with +Inf, the sum (ms) and the count."""
        with self._lock:
            bounds = [*self.FIRST_RESPONSE_BUCKETS_MS, float("inf")]
            running, buckets = 0, []
            for bound, count in zip(bounds, self.first_response, strict=True):
                running += count
                buckets.append((bound, running))
            return buckets, self.first_response_sum_ms, self.first_response_count

    def latency_summary(self, name: str, quantiles: tuple[float, ...]) -> tuple[list[tuple[float, float]], float, int]:
        """(quantile, us) over the recent window, and the window's sum and count; empty when not kept."""
        with self._lock:
            values = sorted(self.recent[name]) if self.recent is not None else []
        if not values:
            return [], 0.0, 0
        last = len(values) - 1
        return [(q, values[min(last, int(q * len(values)))]) for q in quantiles], sum(values), len(values)

    def failure_counts(self) -> dict[str, int]:
        """Failures by Prometheus ``reason`` label (REJECTED, CANCELED, BACKEND, OTHER)."""
        with self._lock:
            return dict(self.failures)


