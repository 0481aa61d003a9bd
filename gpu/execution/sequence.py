"""Sequence batching: the requests of one correlation ID go, in order, to one instance for the sequence's life.

Triton's ``sequence_batching`` for stateful models, as the python backend sees it:

* Every request names its sequence (the ``sequence_id`` parameter, a non-zero integer or a
  non-empty string) and flags its first and last request (``sequence_start``/``sequence_end``).
  A request that does not start a sequence must belong to a live one.
* A sequence takes a *slot* on one instance when it starts and keeps it until its END request
  has run or it has been idle for ``max_sequence_idle_microseconds``; each instance has
  ``max_batch_size`` slots (one when the model does not batch) with the direct strategy, or
  ``max_candidate_sequences`` with the oldest. Sequences that find every slot taken wait, in
  arrival order, in a backlog; so with one slot a second sequence waits for the first to end or
  go idle, as on Triton.
* A sequence has at most one request at its instance at a time; the next waits here until the
  previous one has answered. That keeps a sequence in order, and it means a batch never holds two
  requests of one sequence. Requests of different sequences on one instance batch together as
  dynamic batching batches them (the strategy's queue delay and preferred sizes).
* The model sees the configured control inputs (``CONTROL_SEQUENCE_START``, ``_END``, ``_READY``,
  ``_CORRID``) as ordinary input tensors of shape ``[1]`` (``[1, 1]`` when the model batches).
* Implicit state (``state`` entries): each request of a sequence gets its ``input_name`` tensor
  (the ``initial_state`` on START), and the ``output_name`` tensor the model returns becomes the
  next request's, taken off the response before the client sees it. (Triton 2.51's python backend
  passes the initial state on every request and never keeps what the model returns.)

Everything here runs on whichever thread submits or completes a job; the state of all sequences
sits under one lock, never held while a job is handed to a worker or answered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evserve.gpu.execution.batching import request_rows
from evserve.gpu.execution.contract import QUEUE_FULL, ExecRequest
from evserve.gpu.execution.worker import InstanceWorker
from evserve.protocol.datatypes import config_to_protocol, numpy_dtype
from evserve.protocol.errors import BadRequest, ProtocolError, Unavailable
from evserve.protocol.types import InferResponse, InputTensor, RequestedOutput

_log = logging.getLogger(__name__)

START, END, READY, CORRID = (
    "CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_CORRID",
)
# How often the idle sweep looks at most: a sequence is released at most this late.
_SWEEP_CAP_S = 0.25


@dataclass(frozen=True, slots=True)
class ControlInput:
    """One control tensor the model receives: its name, kind, datatype, and false/true values."""

    name: str
    kind: str
    datatype: str
    false_true: tuple[Any, Any] = (0, 1)


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One implicit state: the input the model reads it from, the output it returns it in, its start value."""

    input_name: str
    output_name: str
    datatype: str
    initial: np.ndarray


@dataclass(frozen=True, slots=True)
class SequencePolicy:
    """The ``sequence_batching`` settings the batcher needs, read from a completed config."""

    strategy: str  # "direct" or "oldest"
    idle_ns: int
    slots_per_instance: int
    controls: tuple[ControlInput, ...]
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    states: tuple[StateSpec, ...] = ()

    @classmethod
    def from_config(cls, raw: dict, max_batch_size: int, model_dir: str | None = None) -> SequencePolicy:
        sequence = raw["sequence_batching"]
        oldest = sequence.get("oldest")
        strategy = "oldest" if oldest is not None else "direct"
        settings = oldest if oldest is not None else sequence.get("direct", {})
        if oldest is not None and int(oldest.get("max_candidate_sequences", 0)) > 0:
            slots = int(oldest["max_candidate_sequences"])
        else:
            slots = max(1, max_batch_size)
        return cls(
            strategy=strategy,
            idle_ns=int(sequence.get("max_sequence_idle_microseconds", 1_000_000)) * 1000,
            slots_per_instance=slots,
            controls=tuple(_control(entry) for entry in sequence.get("control_input", ()) if entry.get("control")),
            max_queue_delay_us=int(settings.get("max_queue_delay_microseconds", 0)),
            preferred_batch_sizes=tuple(int(size) for size in settings.get("preferred_batch_size", ())),
            states=tuple(_state(entry, max_batch_size, model_dir) for entry in sequence.get("state", ())),
        )


def _state(entry: dict, max_batch_size: int, model_dir: str | None) -> StateSpec:
    """A ``state`` entry with its initial value: zeros, a file's bytes, or zeros when it names none."""
    datatype = config_to_protocol(entry["data_type"])
    dims = [1 if d < 0 else int(d) for d in entry.get("dims", ())]
    initial_states = entry.get("initial_state", ())
    initial = np.zeros(dims, dtype=numpy_dtype(datatype))
    if initial_states:
        first = initial_states[0]
        dims = [int(d) for d in first.get("dims", dims)]
        initial = np.zeros(dims, dtype=numpy_dtype(datatype))
        data_file = first.get("data_file")
        if data_file and model_dir is not None:
            # Triton reads it from <model>/initial_state/<data_file>, raw little-endian values.
            with open(os.path.join(model_dir, "initial_state", data_file), "rb") as handle:
                raw = handle.read()
            initial = np.frombuffer(raw, dtype=numpy_dtype(datatype)).reshape(dims).copy()
    if max_batch_size > 0:
        initial = initial.reshape(1, *initial.shape)
    return StateSpec(entry["input_name"], entry["output_name"], datatype, initial)


def _control(entry: dict) -> ControlInput:
    control = entry["control"][0]  # an input with several controls carries the first (Triton accepts those)
    kind = control["kind"]
    if kind == CORRID:
        return ControlInput(entry["name"], kind, config_to_protocol(control.get("data_type", "TYPE_UINT64")))
    for field, datatype in (("int32_false_true", "INT32"), ("fp32_false_true", "FP32"), ("bool_false_true", "BOOL")):
        values = control.get(field)
        if values:
            return ControlInput(entry["name"], kind, datatype, (values[0], values[1]))
    return ControlInput(entry["name"], kind, "INT32")


class _Sequence:
    """One live sequence: its instance slot, its requests waiting their turn, and when it last ran."""

    __slots__ = ("key", "worker", "pending", "busy", "ending", "last_ns", "state")

    def __init__(self, key: int | str, now: int) -> None:
        self.key = key
        self.worker: int | None = None  # index of the instance whose slot it holds; None in the backlog
        self.pending: deque[ExecRequest] = deque()
        self.busy = False  # one of its requests is at the instance
        self.ending = False  # the last request queued carries END
        self.last_ns = now
        self.state: dict[str, np.ndarray] = {}  # implicit state by input name, as the last answer left it


class SequenceBatcher:
    """Routes the jobs of a sequence model's version to its instances, one sequence per slot."""

    def __init__(self, model_name: str, policy: SequencePolicy, workers: Sequence[InstanceWorker],
                 max_batch_size: int, waiting_limit: int = 1024) -> None:
        self.model_name = model_name
        self.policy = policy
        self.workers = list(workers)
        self.max_batch_size = max_batch_size
        # Jobs waiting here for their sequence's turn or a slot, and how many may: past it, 503 as a full queue.
        self.waiting_limit = waiting_limit
        self._waiting = 0
        self._free = [policy.slots_per_instance] * len(self.workers)
        self._sequences: dict[int | str, _Sequence] = {}
        self._backlog: deque[_Sequence] = deque()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_until_closed, name=f"evserve-{model_name}-sequences",
                                         daemon=True)

    @property
    def active(self) -> int:
        """Sequences holding a slot or waiting for one."""
        return len(self._sequences)

    def start(self) -> None:
        self._sweeper.start()

    # ---- requests -----------------------------------------------------------------------------

    def submit(self, job: ExecRequest) -> None:
        """Queue ``job`` in its sequence; raise BadRequest (Triton's texts) or Unavailable at once."""
        request = job.request
        parameters = request.parameters
        key = parameters.get("sequence_id", 0) if parameters else 0
        if key == 0 or key == "" or type(key) is bool:
            raise BadRequest(f"inference request to model '{self.model_name}' must specify a non-zero or "
                             "non-empty correlation ID")
        if self.max_batch_size > 0 and request_rows(request, self.max_batch_size) != 1:
            raise BadRequest(f"inference request to model '{self.model_name}' must specify batch-size 1 due to "
                             "requirements of sequence batcher")
        start = parameters.get("sequence_start") is True
        end = parameters.get("sequence_end") is True
        if self.policy.controls:
            request.inputs.extend(self._control_tensors(key, start, end))
        now = time.monotonic_ns()
        with self._lock:
            if self._closed.is_set():
                raise Unavailable(f"model '{self.model_name}' is not accepting requests: it is being unloaded")
            if self._waiting >= self.waiting_limit:
                raise Unavailable(QUEUE_FULL)
            sequence = self._sequences.get(key)
            if not start and (sequence is None or sequence.ending):
                raise BadRequest(f"inference request for sequence {key} to model '{self.model_name}' must specify "
                                 "the START flag on the first request of the sequence")
            if sequence is None:
                sequence = self._sequences[key] = _Sequence(key, now)
                self._take_slot(sequence)
            sequence.pending.append(job)
            self._waiting += 1
            sequence.ending = end
            sequence.last_ns = now
            first = self._next(sequence)
        if first is not None:
            self._dispatch(sequence, first, direct=True)

    def _control_tensors(self, key: int | str, start: bool, end: bool) -> list[InputTensor]:
        shape = (1, 1) if self.max_batch_size > 0 else (1,)
        flags = {START: start, END: end, READY: True}
        tensors = []
        for control in self.policy.controls:
            if control.kind == CORRID:
                data = self._correlation_tensor(control, key, shape)
            else:
                value = control.false_true[1 if flags.get(control.kind, False) else 0]
                data = np.full(shape, value, dtype=numpy_dtype(control.datatype))
            tensors.append(InputTensor(control.name, control.datatype, shape, data))
        return tensors

    def _correlation_tensor(self, control: ControlInput, key: int | str, shape: tuple[int, ...]) -> np.ndarray:
        """The CONTROL_SEQUENCE_CORRID tensor: the ID in the control's type (a numeric string converts)."""
        if control.datatype == "BYTES":
            return np.full(shape, str(key).encode(), dtype=object)
        dtype = numpy_dtype(control.datatype)
        value = key
        if isinstance(key, str):
            try:
                value = int(key)
            except ValueError:
                raise BadRequest(
                    f"sequence ID '{key}' of a request to model '{self.model_name}' is a string, but its "
                    f"{CORRID} input '{control.name}' is {control.datatype}: use an integer ID"
                ) from None
        info = np.iinfo(dtype)
        if not info.min <= int(value) <= info.max:
            raise BadRequest(f"sequence ID {key} of a request to model '{self.model_name}' does not fit the "
                             f"{control.datatype} {CORRID} input '{control.name}'")
        return np.full(shape, value, dtype=dtype)

    def _take_slot(self, sequence: _Sequence) -> None:
        """Give ``sequence`` a slot on the instance with the most free ones, or put it in the backlog."""
        free = self._free
        best = max(range(len(free)), key=free.__getitem__)
        if free[best] > 0:
            free[best] -= 1
            sequence.worker = best
        else:
            self._backlog.append(sequence)

    def _next(self, sequence: _Sequence) -> ExecRequest | None:
        """Under the lock: the sequence's next job when it holds a slot and has none at its instance."""
        if sequence.busy or sequence.worker is None or not sequence.pending:
            return None
        sequence.busy = True
        self._waiting -= 1
        return sequence.pending.popleft()

    def _dispatch(self, sequence: _Sequence, job: ExecRequest, *, direct: bool) -> None:
        """Hand ``job`` to its sequence's instance; its answer lets the sequence's next job go.

        ``direct`` when the submitting thread is still waiting for the outcome: a refusal (a full
        queue) is raised to it. A job that waited here is answered with the refusal instead.
        """
        if self.policy.states:
            self._give_state(sequence, job)
        self._watch(sequence, job)
        try:
            self.workers[sequence.worker].submit(job)  # type: ignore[index]
        except ProtocolError as exc:
            if direct:
                self._done(sequence)
                raise
            job.finish(exc)

    def _give_state(self, sequence: _Sequence, job: ExecRequest) -> None:
        """The job's implicit state inputs (the initial ones on START), and its state outputs requested."""
        request = job.request
        start = request.parameters.get("sequence_start") is True
        for state in self.policy.states:
            value = state.initial if start else sequence.state.get(state.input_name, state.initial)
            request.inputs.append(InputTensor(state.input_name, state.datatype, tuple(value.shape), value))
            if request.outputs is not None:
                request.outputs.append(RequestedOutput(state.output_name))

    def _keep_state(self, sequence: _Sequence, result: Any) -> None:
        """Take the state outputs off a response: the sequence's next request reads them."""
        if not isinstance(result, InferResponse):
            return
        names = {state.output_name: state.input_name for state in self.policy.states}
        kept = []
        for output in result.outputs:
            input_name = names.get(output.name)
            if input_name is None:
                kept.append(output)
            else:
                sequence.state[input_name] = output.data
        result.outputs = kept

    def _watch(self, sequence: _Sequence, job: ExecRequest) -> None:
        """Make the job's terminal call also keep its state and release its sequence's turn."""
        states = bool(self.policy.states)
        if job.stream is not None:
            stream = job.stream

            def streamed(result: Any, final: bool) -> None:
                try:
                    if states:
                        self._keep_state(sequence, result)
                    stream(result, final)
                finally:
                    if final:
                        self._done(sequence)

            job.stream = streamed
        else:
            complete = job.complete

            def completed(result: Any) -> None:
                try:
                    if states:
                        self._keep_state(sequence, result)
                    complete(result)
                finally:
                    self._done(sequence)

            job.complete = completed

    def _done(self, sequence: _Sequence) -> None:
        """A job of ``sequence`` has answered: send its next one, or end the sequence after END."""
        ready: list[tuple[_Sequence, ExecRequest]] = []
        with self._lock:
            sequence.busy = False
            sequence.last_ns = time.monotonic_ns()
            following = self._next(sequence)
            if following is not None:
                ready.append((sequence, following))
            elif sequence.ending:
                ready.extend(self._release(sequence))
        for owner, job in ready:
            self._dispatch(owner, job, direct=False)

    def _release(self, sequence: _Sequence) -> list[tuple[_Sequence, ExecRequest]]:
        """Under the lock: end ``sequence``, free its slot for the backlog; the jobs that may now go."""
        if self._sequences.get(sequence.key) is sequence:
            del self._sequences[sequence.key]
        slot, sequence.worker = sequence.worker, None
        if slot is None:
            return []
        if self._backlog:
            waiting = self._backlog.popleft()
            waiting.worker = slot
            job = self._next(waiting)
            return [(waiting, job)] if job is not None else []
        self._free[slot] += 1
        return []

    # ---- idle sequences and shutdown ----------------------------------------------------------

    def sweep(self, now: int | None = None) -> int:
        """Release sequences idle for longer than the policy allows; returns how many."""
        now = time.monotonic_ns() if now is None else now
        ready: list[tuple[_Sequence, ExecRequest]] = []
        released = []
        with self._lock:
            for sequence in list(self._sequences.values()):
                if sequence.busy or sequence.pending or now - sequence.last_ns <= self.policy.idle_ns:
                    continue
                released.append(sequence.key)
                ready.extend(self._release(sequence))
        for key in released:
            _log.info("model '%s': sequence %s released after %.1f s idle", self.model_name, key,
                      self.policy.idle_ns / 1e9)
        for owner, job in ready:
            self._dispatch(owner, job, direct=False)
        return len(released)

    def _sweep_until_closed(self) -> None:
        interval = min(self.policy.idle_ns / 4e9, _SWEEP_CAP_S)
        while not self._closed.wait(interval):
            try:
                self.sweep()
            except Exception:
                _log.exception("model '%s': sequence sweep failed", self.model_name)

    def close(self) -> None:
        """Refuse new requests; answer every job still waiting for its turn with 503."""
        with self._lock:
            self._closed.set()
            waiting = [job for sequence in self._sequences.values() for job in sequence.pending]
            self._waiting = 0
            for sequence in self._sequences.values():
                sequence.pending.clear()
                sequence.ending = True
            self._backlog.clear()
        for job in waiting:
            job.finish(Unavailable(f"model '{self.model_name}' was unloaded before the request could run"))
