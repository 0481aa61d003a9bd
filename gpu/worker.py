"""One thread per model instance: a bounded queue in front, the model's ``execute`` behind.

Why threads with their own queues (and not a shared pool): a model instance is stateful and
not re-entrant (Triton runs each Python instance in its own stub process for the same reason),
so exactly one thread may call its ``execute``. Giving each instance its own bounded queue makes
admission control trivial and O(1): a full queue answers 503 "Exceeds maximum queue size" at
once instead of letting latency grow without limit. The loop threads only
ever append to a queue; all model code runs here.

Dynamic batching (config ``dynamic_batching``) is done where the queue is drained: when the
thread is free it takes as many queued requests as fit in ``max_batch_size`` rows, prefers the
configured preferred batch sizes, and waits at most ``max_queue_delay_microseconds`` (counted from
the oldest request's arrival) for more. The Python backend receives the batch as a list of
separate requests, so no tensors are concatenated here.

Invariants the rest of the server relies on: every admitted job gets exactly one terminal call
(its result, an error when ``execute`` raises, a cancellation, or a drop at a bounded stop), and
nothing a model does can kill the thread. When ``execute`` returns normally the instance is
trusted to have answered, or to answer later: python_model guarantees one answer per request,
and a decoupled ``async def execute`` answers after ``execute`` has returned.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from evserve.gpu.device import DeviceContext
from evserve.protocol.errors import ProtocolError, Unavailable
from evserve.protocol.types import InferRequest, InferResponse

_log = logging.getLogger(__name__)

QUEUE_FULL = "Exceeds maximum queue size"
CANCELLED = "Request was cancelled"

Completion = Callable[[InferResponse | ProtocolError], None]


class ExecJob(Protocol):
    """What a worker needs of a request (python_model.ExecRequest has this shape)."""

    request: InferRequest
    complete: Completion
    cancelled: Callable[[], bool]


class ModelInstance(Protocol):
    """What a worker needs of a model instance (python_model.PythonModelInstance)."""

    def execute(self, batch: list[Any]) -> None: ...

    def finalize(self) -> None: ...


class BatchingPolicy(Protocol):
    """The parts of model_config.DynamicBatching the gatherer reads."""

    max_queue_delay_us: int
    preferred_batch_sizes: Sequence[int]


def _now_ns() -> int:
    return time.monotonic_ns()


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
                self.last_inference_ms = time.time_ns() // 1_000_000

    def record_rejected(self) -> None:
        """A request refused at admission (queue full): a failure with reason REJECTED."""
        self.record_request(False, 0, -1, -1, 0, reason="REJECTED")

    def record_execution(self, rows: int, compute_ns: int) -> None:
        with self._lock:
            self.execution_count += 1
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


class _Tracked:
    """An admitted job plus its timestamps; guards the job's terminal call so it happens once.

    :meth:`install` replaces the job's ``complete`` (and, for streaming jobs, ``stream``) with
    guarded versions, so whoever finishes the job first (the model, a cancellation, a drop at
    stop) wins and later calls are dropped; statistics are taken on that first call.
    """

    __slots__ = ("job", "_complete", "_stream", "_stats", "_lock", "done", "rows", "t_submit", "t_start")

    def __init__(self, job: ExecJob, rows: int, stats: ModelStats | None) -> None:
        self.job = job
        self._complete = job.complete
        self._stream: Callable[[Any, bool], None] | None = getattr(job, "stream", None)
        self._stats = stats
        self._lock = threading.Lock()
        self.done = False
        self.rows = rows
        self.t_submit = _now_ns()
        self.t_start = -1

    def install(self) -> None:
        self.job.complete = self.finish
        if self._stream is not None:
            self.job.stream = self._on_stream  # type: ignore[attr-defined]

    def finish(self, result: InferResponse | ProtocolError | None) -> None:
        """The terminal call: through ``stream(result, True)`` for streaming jobs, else ``complete``."""
        if not self._claim():
            return
        self._account(result)
        if self._stream is not None:
            _call_quietly(self._stream, result, True)
        else:
            _call_quietly(self._complete, result)

    def _on_stream(self, result: InferResponse | ProtocolError | None, final: bool) -> None:
        if final:
            self.finish(result)
        elif not self.done and self._stream is not None:
            _call_quietly(self._stream, result, False)

    def _claim(self) -> bool:
        with self._lock:
            if self.done:
                _log.warning("request for model '%s' completed twice; extra result dropped",
                             self.job.request.model_name)
                return False
            self.done = True
            return True

    def _account(self, result: InferResponse | ProtocolError | None) -> None:
        if self._stats is None:
            return
        now = _now_ns()
        started = self.t_start >= 0
        if started:
            reason = "BACKEND"
        else:
            reason = "CANCELED" if getattr(result, "message", "") == CANCELLED else "OTHER"
        self._stats.record_request(
            not isinstance(result, ProtocolError),
            now - self.t_submit,
            (self.t_start - self.t_submit) if started else -1,
            (now - self.t_start) if started else -1,
            self.rows,
            reason,
        )


def _call_quietly(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        _log.exception("completion callback failed")


def _request_rows(request: InferRequest, max_batch_size: int) -> int:
    """Batch rows a request contributes: its leading dimension when the model batches, else 1."""
    if max_batch_size <= 0 or not request.inputs:
        return 1
    shape = request.inputs[0].shape
    return max(1, int(shape[0])) if shape else 1


class InstanceWorker:
    """A thread that owns one model instance and executes its queue, in order, batch by batch.

    ``device_kind`` is "GPU" or "CPU": a GPU worker runs every ``execute`` inside a
    :class:`DeviceContext` (its device and its own CUDA stream). Call :meth:`start` once;
    :meth:`stop` drains and joins. Finalizing the instance is the owner's call, after stop.
    """

    def __init__(
        self,
        model_name: str,
        instance: ModelInstance,
        queue_capacity: int,
        batching: BatchingPolicy | None,
        device_kind: str,
        device_id: int,
        *,
        max_batch_size: int = 0,
        stats: ModelStats | None = None,
        thread_name: str | None = None,
    ) -> None:
        self.model_name = model_name
        self.instance = instance
        self.capacity = max(1, queue_capacity)
        self.device_kind = device_kind
        self.device_id = device_id
        self.max_batch_size = max_batch_size
        self.stats = stats
        self._batching = batching if max_batch_size > 0 else None
        self._preferred = frozenset(batching.preferred_batch_sizes) if self._batching else frozenset()
        self._max_preferred = max(self._preferred, default=0)
        self._delay_ns = int(batching.max_queue_delay_us) * 1000 if self._batching else 0
        self._queue: deque[_Tracked] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._accepting = True
        self._closing = False
        self.in_flight = 0
        self.executions = 0
        self.inferences = 0
        self._thread = threading.Thread(
            target=self._run, name=thread_name or f"evserve-{model_name}", daemon=True
        )

    # ---- admission (any thread, O(1)) -------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def backlog(self) -> int:
        """Queued plus executing: what least-backlog routing compares."""
        return len(self._queue) + self.in_flight

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: ExecJob) -> None:
        """Queue ``job`` or raise Unavailable at once; on success ``job.complete`` fires exactly once."""
        tracked = _Tracked(job, _request_rows(job.request, self.max_batch_size), self.stats)
        with self._cond:
            if not self._accepting:
                raise Unavailable(f"model '{self.model_name}' is not accepting requests: it is being unloaded")
            if len(self._queue) >= self.capacity:
                raise Unavailable(QUEUE_FULL)
            tracked.install()
            self._queue.append(tracked)
            self._cond.notify()

    # ---- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            device = DeviceContext(self.device_kind, self.device_id)
            device.__enter__()
        except Exception:
            _log.exception("model '%s': cannot use device %s:%d; running on the CPU",
                           self.model_name, self.device_kind, self.device_id)
            device = None
        try:
            while (batch := self._next_batch()) is not None:
                self._execute(batch)
        finally:
            if device is not None:
                with contextlib.suppress(Exception):
                    device.__exit__(None, None, None)

    def _next_batch(self) -> list[_Tracked] | None:
        """Block until work exists; None once closing with an empty queue."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if self._batching is None:
                return [self._queue.popleft()]
            count = self._gather_locked()
            return [self._queue.popleft() for _ in range(count)]

    def _fitting_prefix(self) -> tuple[int, int, list[int]]:
        """(requests, rows) of the longest queue prefix within max_batch_size, plus prefix row sums."""
        rows, sums = 0, []
        for tracked in self._queue:
            if sums and rows + tracked.rows > self.max_batch_size:
                break
            rows += tracked.rows
            sums.append(rows)
        return len(sums), rows, sums

    def _gather_locked(self) -> int:
        """Wait (bounded by the queue delay) until a batch is worth sending; return its length."""
        deadline = self._queue[0].t_submit + self._delay_ns
        while True:
            count, rows, sums = self._fitting_prefix()
            full = count < len(self._queue) or rows >= self.max_batch_size
            remaining = deadline - _now_ns()
            if full or rows == self._max_preferred or self._closing or remaining <= 0:
                break
            self._cond.wait(remaining / 1e9)
        if self._preferred and rows not in self._preferred:
            best = [i + 1 for i, total in enumerate(sums) if total in self._preferred]
            if best:
                count = best[-1]
        return count

    def _execute(self, batch: list[_Tracked]) -> None:
        live: list[_Tracked] = []
        for tracked in batch:
            if self._is_cancelled(tracked):
                tracked.finish(ProtocolError(CANCELLED, 400))
            else:
                live.append(tracked)
        if not live:
            return
        rows = sum(t.rows for t in live)
        with self._cond:
            self.in_flight += len(live)
        start = _now_ns()
        for tracked in live:
            tracked.t_start = start
        try:
            self.instance.execute([t.job for t in live])
        except BaseException as exc:  # model code may raise anything, SystemExit included
            _log.exception("model '%s': execute failed", self.model_name)
            failure = ProtocolError(f"Failed to process the request(s) for model '{self.model_name}': {exc}", 500)
            for tracked in live:
                if not tracked.done:
                    tracked.finish(failure)
        elapsed = _now_ns() - start
        if self.stats is not None:
            self.stats.record_execution(rows, elapsed)
        with self._cond:
            self.in_flight -= len(live)
            self.executions += 1
            self.inferences += rows
            self._cond.notify_all()

    @staticmethod
    def _is_cancelled(tracked: _Tracked) -> bool:
        try:
            return bool(tracked.job.cancelled())
        except Exception:
            _log.exception("cancelled() check failed; executing the request anyway")
            return False

    # ---- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting; the thread finishes what is queued, then exits. Does not wait."""
        with self._cond:
            self._accepting = False
            self._closing = True
            self._cond.notify_all()

    def stop(self, drain_timeout: float) -> bool:
        """Close, let queued and running work finish for up to ``drain_timeout`` s, then join.

        Jobs still queued at the deadline are completed with 503 so no client waits forever.
        Returns True when the thread has exited (only then is it safe to finalize the instance).
        """
        self.close()
        if self._thread.ident is None:  # never started: nothing can run the queue
            self._drop_queued()
            return True
        self._thread.join(max(0.0, drain_timeout))
        if self._thread.is_alive():
            self._drop_queued()
            self._thread.join(0.05)
        return not self._thread.is_alive()

    def _drop_queued(self) -> None:
        with self._cond:
            dropped = list(self._queue)
            self._queue.clear()
        for tracked in dropped:
            tracked.finish(Unavailable(f"model '{self.model_name}' was unloaded before the request could run"))
