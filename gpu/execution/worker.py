"""One thread per model instance: a bounded queue in front, the model's ``execute`` behind.

Why threads with their own queues (and not a shared pool): a model instance is stateful and
not re-entrant (Triton runs each Python instance in its own stub process for the same reason),
so exactly one thread may call its ``execute``. Giving each instance its own bounded queue makes
admission control trivial and O(1): a full queue answers 503 "Exceeds maximum queue size" at
once instead of letting latency grow without limit. The loop threads only ever append to a
queue; all model code runs here. Dynamic batching (:mod:`.batching`) decides, where the queue
is drained, how many requests one ``execute`` takes.

Why these primitives: a request crosses from a loop thread to the worker once, so the crossing
is C-level. Jobs go through a ``queue.SimpleQueue`` (put never blocks and wakes a waiting
worker with one futex call; ``threading.Condition`` is pure Python and cost ~10 µs per request
on this path), the admission count sits under one plain lock, and the worker drains whatever
has queued up while it ran before it sleeps again, so a burst costs one wake-up.

Priority levels and queue policies (:mod:`.queue_policy`) change only what the worker's own
queue is: a model that has them gets a :class:`~.queue_policy.ScheduledQueue` and its requests a
level and a deadline; every other model keeps the plain FIFO and the path above, untouched.

Invariants the rest of the server relies on: every admitted job gets exactly one terminal call
(its result, an error when ``execute`` raises, a cancellation, or a drop at a bounded stop;
the job's own guard makes "exactly" hold, see :mod:`.contract`), and nothing a model does can
kill the thread. When ``execute`` returns normally the instance is trusted to have answered,
or to answer later: the python backend guarantees one answer per request, and a decoupled
``async def execute`` answers after ``execute`` has returned.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque

from evserve.gpu.execution.batching import BatchGatherer, BatchingPolicy, request_rows
from evserve.gpu.execution.contract import CANCELLED, QUEUE_FULL, ExecRequest, ModelInstance, Result
from evserve.gpu.execution.device import DeviceContext
from evserve.gpu.execution.queue_policy import TIMEOUT_EXPIRED, QueueScheduling, ScheduledQueue, reaper
from evserve.gpu.execution.stats import ModelStats
from evserve.protocol.errors import ProtocolError, Unavailable

_log = logging.getLogger(__name__)


def _now_ns() -> int:
    return time.monotonic_ns()


class _Admitted:
    """An admitted job with its batch rows and timestamps; accounts it when the job finishes."""

    __slots__ = (
        "job", "rows", "t_submit", "t_start", "phases", "_stats", "_responses", "_last_response", "_first_response",
    )

    def __init__(self, job: ExecRequest, rows: int, stats: ModelStats | None) -> None:
        self.job = job
        self.rows = rows
        self.t_submit = _now_ns()
        self.t_start = -1
        self.phases = _NOT_RUN  # (compute_input, compute_infer, compute_output) ns, once accounted
        self._stats = stats
        # (kind, compute since the previous response, output ns) per response, accounted with the request.
        self._responses: list[tuple[str, int, int]] = []
        self._last_response = -1
        self._first_response = -1
        if stats is not None:
            job.on_finish = self._account
            job.on_response = self._response

    def _response(self, kind: str, sent_at: int, output_ns: int) -> None:
        """One response of the job (Triton's response_stats): noted here, accounted in one go at the end."""
        if self._first_response < 0:
            self._first_response = sent_at
        since = self._last_response if self._last_response >= 0 else max(self.job.input_end, self.t_start)
        if len(self._responses) < ModelStats.MAX_RESPONSE_INDEX:  # a long stream keeps only the first ones
            self._responses.append((kind, max(sent_at - since, 0), output_ns))
        self._last_response = sent_at + output_ns

    def _account(self, result: Result | None) -> None:
        """Called inside the job's terminal call, exactly once (statistics follow Triton's)."""
        assert self._stats is not None
        now = _now_ns()
        started = self.t_start >= 0
        ok = not isinstance(result, ProtocolError)
        try:
            left = bool(self.job.cancelled())
        except Exception:
            _log.exception("cancelled() check failed")
            left = False
        if left:
            # The client went away (a closed stream, a paused /infer whose socket closed): Triton's CANCELED.
            ok, reason = False, "CANCELED"
        elif started:
            reason = "BACKEND"
        else:
            message = getattr(result, "message", "")
            # A queue timeout is Triton's REJECTED, as a full queue is.
            reason = "CANCELED" if message == CANCELLED else "REJECTED" if message == TIMEOUT_EXPIRED else "OTHER"
        if started:
            # The instance may have moved the job's start later (a pipelined batch that waited in
            # its child): from then on it computed, before that it queued.
            start = max(self.job.compute_start, self.t_start)
            phases = self.phases = self.job.compute_split(start, now)
        else:
            start = -1
            phases = _NOT_RUN
        responses = self._responses  # empty for a plain model: its one response is the request (stats.py)
        if left and responses:
            responses = [("cancel", infer, output) for _, infer, output in responses]
        # The first response: the first one a decoupled model sent, else the answer itself.
        first = self._first_response if self._first_response >= 0 else (now if started and result is not None else -1)
        self._stats.record_request(
            ok, now - self.t_submit, (start - self.t_submit) if started else -1, phases, self.rows, reason,
            responses, (first - self.t_submit) if first >= 0 else -1,
        )


_NOT_RUN = (-1, -1, -1)

# Where a scheduled job is (changed only under its worker's lock): the worker and the deadline
# reaper both want to take a queued job, and exactly one may.
_QUEUED, _TAKEN, _GONE = 0, 1, 2


class _Scheduled(_Admitted):
    """An admitted job of a model with priority levels or queue timeouts."""

    __slots__ = ("level", "deadline", "state", "watch")

    def __init__(self, job: ExecRequest, rows: int, stats: ModelStats | None, level: int, timeout_ns: int) -> None:
        super().__init__(job, rows, stats)
        self.level = level
        self.deadline = self.t_submit + timeout_ns if timeout_ns else 0
        self.state = _QUEUED
        self.watch: list | None = None  # the reaper's entry, for a REJECT deadline


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
        scheduling: QueueScheduling | None = None,
    ) -> None:
        self.model_name = model_name
        self.instance = instance
        self.capacity = max(1, queue_capacity)
        self.device_kind = device_kind
        self.device_id = device_id
        self.max_batch_size = max_batch_size
        self.stats = stats
        batched = batching is not None and max_batch_size > 0
        self._gatherer = BatchGatherer(batching, max_batch_size) if batched else None  # type: ignore[arg-type]
        # An instance that can take several batches at once (a process instance: one round trip to
        # its child for a burst) gets up to its depth of queued requests, each its own batch, in
        # order. Not with dynamic batching (a batch already takes the burst) nor with priorities or
        # queue timeouts (a request handed over could no longer be overtaken or time out).
        depth = getattr(instance, "pipeline_depth", 1)
        self._depth = depth if self._gatherer is None and scheduling is None else 1
        # Admitted jobs travel through `_inbox`; the worker moves them to `_pending` (its own)
        # while it gathers a batch. `_admitted` counts both, under `_lock`, for admission.
        self._inbox: queue.SimpleQueue[_Admitted | None] = queue.SimpleQueue()
        self._pending: deque[_Admitted] | ScheduledQueue = deque()
        self._lock = threading.Lock()
        self._admitted = 0
        # Priority levels / queue policies: queued jobs per level (under _lock), and the queue that orders them.
        self._scheduling = scheduling
        self._level_counts = [0] * len(scheduling.levels) if scheduling is not None else []
        if scheduling is not None:
            self._pending = ScheduledQueue(scheduling)
        self._accepting = True
        self._closing = False
        self._dropping = False
        self.in_flight = 0
        self.executions = 0
        self.inferences = 0
        self._thread = threading.Thread(
            target=self._run, name=thread_name or f"evserve-{model_name}", daemon=True
        )

    # ---- admission (any thread, O(1)) -------------------------------------------------------

    @property
    def queued(self) -> int:
        """Admitted and not yet executing."""
        return self._admitted

    @property
    def backlog(self) -> int:
        """Queued plus executing: what least-backlog routing compares."""
        return self._admitted + self.in_flight

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: ExecRequest) -> None:
        """Queue ``job`` or raise Unavailable at once; on success the job is finished exactly once."""
        if self._scheduling is not None:
            self._submit_scheduled(job, self._scheduling)
            return
        admitted = _Admitted(job, request_rows(job.request, self.max_batch_size), self.stats)
        with self._lock:
            if not self._accepting:
                raise Unavailable(f"model '{self.model_name}' is not accepting requests: it is being unloaded")
            if self._admitted >= self.capacity:
                raise Unavailable(QUEUE_FULL)
            self._admitted += 1
            # Under the lock, so nothing can be put behind close()'s end-of-queue marker.
            self._inbox.put(admitted)

    def _submit_scheduled(self, job: ExecRequest, scheduling: QueueScheduling) -> None:
        """``submit`` for a model with priority levels or queue timeouts: a level, a deadline, a per-level bound."""
        level, timeout_ns = scheduling.place(job.request.parameters)
        policy = scheduling.levels[level]
        admitted = _Scheduled(job, request_rows(job.request, self.max_batch_size), self.stats, level, timeout_ns)
        with self._lock:
            if not self._accepting:
                raise Unavailable(f"model '{self.model_name}' is not accepting requests: it is being unloaded")
            if self._admitted >= self.capacity or 0 < policy.max_size <= self._level_counts[level]:
                raise Unavailable(QUEUE_FULL)
            self._admitted += 1
            self._level_counts[level] += 1
            if timeout_ns and not policy.delay:
                # Set before the job can be taken (under this lock), so taking it can forget the entry.
                admitted.watch = reaper().watch(admitted.deadline, self._expire, admitted)
            self._inbox.put(admitted)

    def _expire(self, admitted: _Scheduled) -> None:
        """A REJECT deadline passed (reaper thread, or the worker as it looks): answer the job if still queued."""
        with self._lock:
            if admitted.state != _QUEUED:
                return  # it started, or was dropped at a stop
            admitted.state = _GONE
            self._admitted -= 1
            self._level_counts[admitted.level] -= 1
        admitted.job.finish(Unavailable(TIMEOUT_EXPIRED))

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

    def _next_batch(self) -> list[_Admitted] | None:
        """Block until work exists; None once closing with nothing left."""
        pending = self._pending
        if not self._closing:
            if not pending:
                self._take(block=True)
            self._take(block=False)  # whatever queued up meanwhile: one wake-up per burst
        if not pending:
            return None  # the end-of-queue marker came and nothing is left
        if self._scheduling is not None:
            for expired in pending.expire(_now_ns()):  # type: ignore[union-attr]
                self._expire(expired)
            if not pending:
                return []  # all of it timed out: look again
        count = self._depth if self._gatherer is None else self._gather(self._gatherer)
        batch: list[_Admitted] = []
        with contextlib.suppress(IndexError):  # a stop may have dropped what was pending
            for _ in range(count):
                batch.append(pending.popleft())
        if not batch:
            return []  # a stop dropped them: look again
        if self._scheduling is not None:
            return self._take_scheduled(batch)  # type: ignore[arg-type]
        with self._lock:
            self._admitted -= len(batch)
            self.in_flight += len(batch)
        return batch

    def _take_scheduled(self, batch: list[_Scheduled]) -> list[_Admitted]:
        """Claim the batch's jobs from the reaper: those it already answered are left out."""
        taken: list[_Admitted] = []
        with self._lock:
            for admitted in batch:
                if admitted.state != _QUEUED:
                    continue
                admitted.state = _TAKEN
                self._level_counts[admitted.level] -= 1
                if admitted.watch is not None:
                    reaper().forget(admitted.watch)
                    admitted.watch = None
                taken.append(admitted)
            self._admitted -= len(taken)
            self.in_flight += len(taken)
        return taken

    def _take(self, *, block: bool, timeout: float | None = None) -> None:
        """Move jobs from the inbox to ``_pending``; the end-of-queue marker sets ``_closing``."""
        inbox, pending = self._inbox, self._pending
        try:
            item = inbox.get(block, timeout) if block else inbox.get_nowait()
            while True:
                if item is None:
                    self._closing = True
                    return
                pending.append(item)
                item = inbox.get_nowait()
        except queue.Empty:
            return

    def _gather(self, gatherer: BatchGatherer) -> int:
        """Wait (bounded by the queue delay) until a batch is worth sending; return its length."""
        pending = self._pending
        deadline = gatherer.deadline(pending)
        while not gatherer.ready(pending) and not self._closing:
            remaining = deadline - _now_ns()
            if remaining <= 0:
                break
            self._take(block=True, timeout=remaining / 1e9)
        return gatherer.choose(pending)

    def _execute(self, batch: list[_Admitted]) -> None:
        if not batch:
            return
        live: list[_Admitted] = []
        for admitted in batch:
            job = admitted.job
            if job.done or self._dropping:
                job.finish(_dropped(self.model_name))  # dropped at a stop while it waited
                continue
            try:
                cancelled = job.cancelled()
            except Exception:
                _log.exception("cancelled() check failed; executing the request anyway")
                cancelled = False
            if cancelled:
                job.finish(ProtocolError(CANCELLED, 400))
            else:
                live.append(admitted)
        if len(live) < len(batch):
            with self._lock:
                self.in_flight -= len(batch) - len(live)
        if not live:
            return
        rows = sum(a.rows for a in live)
        start = _now_ns()
        for admitted in live:
            admitted.t_start = start
            admitted.job.compute_start = start
        # Without pipelining the jobs are one batch; with it (see __init__), each is its own.
        batches = [live] if self._depth == 1 else [[admitted] for admitted in live]
        try:
            if self._depth == 1:
                self.instance.execute([a.job for a in live])
            else:
                self.instance.execute_many([[a.job] for a in live])  # type: ignore[attr-defined]
        except BaseException as exc:  # model code may raise anything, SystemExit included
            _log.exception("model '%s': execute failed", self.model_name)
            failure = ProtocolError(f"Failed to process the request(s) for model '{self.model_name}': {exc}", 500)
            for admitted in live:
                admitted.job.finish(failure)
        end = _now_ns()
        if self.stats is not None:
            for batch in batches:
                first = batch[0]
                # The batch's split is its first job's (all share the marks); a job still running (a
                # decoupled model's) counts its whole time as infer.
                phases = first.phases if first.phases is not _NOT_RUN else (0, end - first.job.compute_start, 0)
                self.stats.record_execution(sum(a.rows for a in batch), phases)
        with self._lock:
            self.in_flight -= len(live)
            self.executions += len(batches)
            self.inferences += rows

    # ---- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting; the thread finishes what is queued, then exits. Does not wait."""
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self._inbox.put(None)  # the end-of-queue marker: nothing can be queued behind it

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
        """Answer every job not yet executing with 503 (the worker skips them if it wakes)."""
        self._dropping = True
        dropped: list[_Admitted] = []
        with contextlib.suppress(IndexError):
            while True:
                dropped.append(self._pending.popleft())
        marker = False
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._inbox.get_nowait()
                if item is None:
                    marker = True
                else:
                    dropped.append(item)
        if marker:
            self._inbox.put(None)  # the worker still needs it to stop when it wakes
        with self._lock:
            if self._scheduling is not None:
                dropped = [a for a in dropped if self._claim_for_drop(a)]  # type: ignore[arg-type]
            self._admitted -= len(dropped)
        for admitted in dropped:
            admitted.job.finish(_dropped(self.model_name))

    def _claim_for_drop(self, admitted: _Scheduled) -> bool:
        """Under ``_lock``: take a still-queued scheduled job for dropping (the reaper may have answered it)."""
        if admitted.state != _QUEUED:
            return False
        admitted.state = _GONE
        self._level_counts[admitted.level] -= 1
        if admitted.watch is not None:
            reaper().forget(admitted.watch)
            admitted.watch = None
        return True


def _dropped(model_name: str) -> Unavailable:
    return Unavailable(f"model '{model_name}' was unloaded before the request could run")
