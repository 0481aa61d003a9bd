"""ProcessInstance: the server's proxy for a model instance that runs in a child process.

It stands behind the same ``ModelInstance`` contract as an in-process instance, so the worker
thread that owns it, the loop threads and ``server/`` do not change. The worker calls
:meth:`execute` (or :meth:`execute_many` with up to ``pipeline_depth`` queued batches): the
batches' inputs are written into the instance's arena, one header frame takes them all to the
child, which runs them in order, and the worker waits until the child says they are done (the
next round may then reuse the arena). Handing over a burst at once is what makes a small
request cheap here: each side wakes once per round, not once per request. For a default-mode
model the worker reads the child's frames itself until then (one thread, no hand-off: each
response is finished as it arrives); a decoupled model may answer at any time, so a reader
thread owns its socket instead.

Crash safety. A child that dies (exit, signal, segfault, out of memory) closes its socket; the
reader sees the EOF at once, fails every in-flight request with a 500 naming the model and how
the child died, and the next batch starts a fresh child after a back-off. After
``MAX_CRASHES`` crashes within ``CRASH_WINDOW`` seconds the instance gives up: it answers 503
with the reason, and tells its owner (the manager shows the version UNAVAILABLE) until the
model is loaded again. A batch that runs past the execute timeout gets
its child killed and is treated the same. Unload, reload and server stop finalize the child
and wait for it to exit (killing it past a bound), so no child outlives its model.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evserve.gpu.execution.contract import ExecRequest, response_kind
from evserve.gpu.process import environment
from evserve.gpu.process.arena import CANCEL_FLAGS, Arena, ArenaFull, Bump
from evserve.gpu.process.bls_link import ServerRelay
from evserve.gpu.process.frames import FrameReader, FrameWriter
from evserve.gpu.process.instance_priority import lower_for_loading
from evserve.gpu.process.tensors import pack, unpack_result
from evserve.gpu.python_backend.importer import PythonModelError
from evserve.gpu.repository.model_config import ModelConfig
from evserve.protocol.errors import ProtocolError, Unavailable

_log = logging.getLogger(__name__)

MAX_CRASHES = 5
CRASH_WINDOW = 60.0
FINALIZE_TIMEOUT = 30.0
READY_TIMEOUT = 5.0
_CANCEL_POLL = 0.1
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class ChildSpec:
    """Everything a child needs to import and initialise one instance."""

    model_name: str
    version: int
    config: dict[str, Any]
    model_dir: str
    kind: str
    device_id: int
    instance_name: str
    arena_bytes: int
    execute_timeout: float | None  # seconds; None waits for ever
    python: str = sys.executable  # the model's EXECUTION_ENV_PATH interpreter, if it names one


def describe_exit(code: int | None) -> str:
    """How a child ended, in words: 'exited with status 3', 'was killed by signal 11 (SIGSEGV)'."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


class _Child:
    """One running child: its process, its socket and its arena."""

    def __init__(self, spec: ChildSpec) -> None:
        self.arena = Arena(CANCEL_FLAGS + spec.arena_bytes)
        parent_sock, child_sock = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [*environment.child_command(spec.python),
                 str(child_sock.fileno()), str(self.arena.fd), str(self.arena.size)],
                pass_fds=(child_sock.fileno(), self.arena.fd), env=environment.child_environment(spec.python),
            )
        except BaseException:
            parent_sock.close()
            self.arena.close()
            raise
        finally:
            child_sock.close()
        self.sock = parent_sock
        self.serving_priority = lower_for_loading(self.proc.pid)  # back to this once the model is loaded
        self.writer = FrameWriter(parent_sock)
        self.reader = FrameReader(parent_sock)
        self.has_is_ready = False
        self.timed_out = False  # killed by the execute timeout, not crashed on its own
        self.ended = False  # its end has been handled (in-flight requests failed, arena closed)

    def initialize(self, spec: ChildSpec) -> None:
        """Import the model and run ``initialize`` in the child; raises PythonModelError on failure."""
        self.writer.send({
            "op": "init", "model_dir": spec.model_dir, "name": spec.model_name, "version": spec.version,
            "config": spec.config, "kind": spec.kind, "device_id": spec.device_id,
            "instance_name": spec.instance_name, "repository_dir": spec.model_dir,
            "restore_priority": list(self.serving_priority) if self.serving_priority is not None else None,
        })
        answer = self.reader.read()
        if answer is None:
            raise PythonModelError(f"the process of instance '{spec.instance_name}' {describe_exit(self.end())} "
                                   "while loading the model")
        if answer["op"] == "init_error":
            self.end()
            raise PythonModelError(answer["message"])
        self.has_is_ready = bool(answer["has_is_ready"])

    def end(self, timeout: float = 5.0) -> int | None:
        """Close the socket (the child exits on its EOF), reap the process (killing it past
        ``timeout``) and return its exit code."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the other side
        self.sock.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


class ProcessInstance:
    """A model instance in a child process (see the module docstring)."""

    def __init__(self, spec: ChildSpec, on_gave_up: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self._on_gave_up = on_gave_up
        self.name = spec.instance_name
        self._lock = threading.Lock()
        self._jobs: dict[int, ExecRequest] = {}
        self._ids = itertools.count(1)
        self._batch_done = threading.Event()
        self._batches_left = 0  # batches of the round in flight that the child has not done yet
        self._progress = 0.0  # monotonic time the child last finished a batch (the execute timeout's clock)
        self._ready_answers: dict[int, concurrent.futures.Future[bool]] = {}
        self._finalized: concurrent.futures.Future[str | None] | None = None
        self._crashes: list[float] = []
        self._gave_up: str | None = None
        self._closing = False
        self.restarts = 0
        # The model's pb_utils.MetricFamily series as its child last shipped them (for /metrics).
        self.custom_metrics: list[tuple[Any, ...]] = []
        # A decoupled model answers whenever it likes: a reader thread owns its socket. Otherwise
        # whoever sends (the worker, a readiness check, finalize) reads the answer, under _io_lock.
        config = ModelConfig(spec.config)
        self._reader_thread = config.decoupled
        instances = sum(group.count for group in config.instance_groups) or 1
        # The model's BLS calls, run here for the child (it has no model manager).
        self._bls = ServerRelay((spec.model_name, str(spec.version), instances))
        self._io_lock = threading.Lock()
        self._child: _Child | None = None
        self._start_child()

    # -- child lifecycle --------------------------------------------------------------------------

    def _start_child(self) -> None:
        child = _Child(self.spec)
        child.initialize(self.spec)  # raises: the load (or restart) fails with the model's reason
        self._child = child
        if self._reader_thread:
            threading.Thread(target=self._pump, args=(child, _never, self._cancel_tick(child)),
                             name=f"evserve-{self.name}-reader", daemon=True).start()

    def rss_bytes(self) -> int:
        """The child's resident memory (0 while no child runs), from /proc (Linux)."""
        pid = self.pid
        if pid is None:
            return 0
        try:
            with open(f"/proc/{pid}/statm") as statm:
                return int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            return 0

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.proc.pid if child is not None else None

    def _ensure_child(self) -> _Child | ProtocolError:
        """The running child, restarted after a crash (with back-off), or the error to answer."""
        child = self._child
        if child is not None and not self._reader_thread and child.proc.poll() is not None:
            self._child_ended(child)  # it died while idle, with nobody reading: notice it now
            child = None
        if child is not None:
            return child
        if self._closing:
            return Unavailable(f"model instance '{self.name}' is unloading")
        if self._gave_up is not None:
            return Unavailable(self._gave_up)
        now = time.monotonic()
        recent = [t for t in self._crashes if now - t < CRASH_WINDOW]
        if len(recent) >= MAX_CRASHES:
            self._gave_up = (f"model instance '{self.name}' crashed {len(recent)} times in {CRASH_WINDOW:.0f} s; "
                             "it stays unavailable until the model is loaded again")
            _log.error("%s", self._gave_up)
            if self._on_gave_up is not None:
                self._on_gave_up(self._gave_up)
            return Unavailable(self._gave_up)
        delay = min(0.25 * 2 ** (len(recent) - 1), 5.0) - (now - recent[-1]) if recent else 0.0
        if delay > 0:
            time.sleep(delay)
        try:
            self._start_child()
        except Exception as exc:
            self._crashes.append(time.monotonic())
            return ProtocolError(f"model instance '{self.name}' could not be restarted: {exc}", 500)
        self.restarts += 1
        _log.warning("model instance '%s' restarted (restart %d)", self.name, self.restarts)
        return self._child  # type: ignore[return-value]

    # -- execute ------------------------------------------------------------------------------

    # How many batches the worker may hand over at once (:meth:`execute_many`): a burst of small
    # requests then crosses to the child and back in one frame each way, and the server's threads
    # wake once per burst instead of once per request.
    pipeline_depth = 16

    def execute(self, batch: list[ExecRequest]) -> None:
        """Send ``batch`` to the child and wait until it is done (the worker thread only)."""
        self.execute_many([batch])

    def execute_many(self, batches: list[list[ExecRequest]]) -> None:
        """Run ``batches`` in the child, in order, each as one ``execute``; return when all are done.

        They go in rounds: as many as the arena holds inputs for cross in one frame; a batch that
        does not fit waits for the next round, and one that does not fit an empty arena fails 413.
        """
        child = self._ensure_child()
        if isinstance(child, ProtocolError):
            for batch in batches:
                for job in batch:
                    job.finish(child)
            return
        waiting = [batch for batch in batches if batch]
        while waiting:
            bump = Bump(child.arena, CANCEL_FLAGS)
            frame: list[list[list[Any]]] = []  # a batch is a list of request headers
            sent: list[tuple[int, ExecRequest]] = []
            while waiting:
                headers = self._pack_batch(waiting[0], bump, child.arena.view, sent, first=not frame)
                if headers is None:
                    break  # the arena is full: the rest go in the next round
                del waiting[0]
                if headers:
                    frame.append(headers)
            if frame:
                self._run_frame(child, frame, sent, bump.top)
                child = self._child  # type: ignore[assignment]
                if child is None and waiting:  # it died with the round: the rest start a new child
                    self.execute_many(waiting)
                    return

    def _pack_batch(self, batch: list[ExecRequest], bump: Bump, flags: memoryview, jobs: list[tuple[int, ExecRequest]],
                    *, first: bool) -> list[list[Any]] | None:
        """The request headers of ``batch`` (``Child._job`` reads them), its inputs written into the
        arena and its jobs added to ``jobs``; None when they do not fit and the round already holds
        others (the arena and ``jobs`` are left as they were)."""
        top, known = bump.top, len(jobs)
        headers: list[list[Any]] = []
        for job in batch:
            if job.done:
                continue
            try:
                inputs = [pack(t.name, t.datatype, tuple(t.shape), t.data, bump, spill=False)
                          for t in job.request.inputs]
            except ArenaFull as exc:
                if not first:
                    bump.top = top
                    del jobs[known:]
                    return None
                job.finish(ProtocolError(
                    f"request too large for the shared memory of model instance '{self.name}': {exc} "
                    "(raise the model's EVSERVE_ARENA_BYTES parameter)", 413))
                continue
            rid = next(self._ids)
            flags[rid % CANCEL_FLAGS] = 0
            request = job.request
            outputs = request.outputs
            headers.append([
                rid, request.model_name, request.model_version, request.id, request.parameters, inputs,
                [o.name for o in outputs] if outputs is not None else None, job.stream is not None,
            ])
            jobs.append((rid, job))
        return headers

    def _run_frame(self, child: _Child, frame: list[list[list[Any]]], sent: list[tuple[int, ExecRequest]],
                   inputs_end: int) -> None:
        """Send one round's batches and wait until the child has done them all (or died)."""
        with self._lock:
            self._jobs.update(sent)
            self._batches_left = len(frame)
            self._batch_done.clear()
        tick = self._batch_tick(child, sent)
        packed = time.monotonic_ns()
        for _, job in sent:
            job.input_end = packed  # the inputs are in the arena: the rest is the child's
        message = {"op": "execute", "inputs_end": inputs_end, "batches": frame}
        if self._reader_thread:
            self._send(child, message)
            while not self._batch_done.wait(_CANCEL_POLL):
                tick()
        else:
            with self._io_lock:
                self._send(child, message)
                self._pump(child, self._batch_done.is_set, tick)

    def _batch_tick(self, child: _Child, sent: list[tuple[int, ExecRequest]]) -> Callable[[], None]:
        """While a round runs: raise the flags of requests whose client left (the child reads them
        in ``request.is_cancelled()``), and kill the child once a batch has run past the execute
        timeout (each batch of the round gets the whole timeout: the clock restarts as one ends)."""
        timeout = self.spec.execute_timeout
        self._progress = time.monotonic()

        def tick() -> None:
            _raise_cancel_flags(child, sent)
            if timeout is not None and time.monotonic() > self._progress + timeout and not child.timed_out:
                _log.error("model instance '%s' ran past its execute timeout of %.1f s; killing its process",
                           self.name, timeout)
                child.timed_out = True
                child.kill()

        return tick

    def _cancel_tick(self, child: _Child) -> Callable[[], None]:
        """For the reader of a decoupled model: a request may outlive its batch (answered later
        from another thread), so its client leaving is watched for as long as it is in flight."""
        def tick() -> None:
            with self._lock:
                jobs = list(self._jobs.items())
            _raise_cancel_flags(child, jobs)

        return tick

    @staticmethod
    def _send(child: _Child, message: dict[str, Any]) -> None:
        try:
            child.writer.send(message)
        except OSError:
            pass  # the child is gone: reading its socket finds the EOF and fails what it held

    # -- the child's frames ----------------------------------------------------------------------

    def _pump(self, child: _Child, finished: Callable[[], bool], tick: Callable[[], None] | None = None) -> None:
        """Read and handle the child's frames until ``finished()`` or the child ends; ``tick`` runs
        every poll interval without a frame (without one, the read just blocks)."""
        while not finished():
            if tick is not None and not child.reader.buffered():
                try:
                    readable, _, _ = select.select([child.sock], [], [], _CANCEL_POLL)
                except (OSError, ValueError):  # the socket was closed under us (finalize, kill)
                    self._child_ended(child)
                    return
                if not readable:
                    tick()
                    continue
            try:
                message = child.reader.read()
            except Exception:
                _log.exception("model instance '%s': bad frame from its process", self.name)
                child.kill()
                message = None
            if message is None:
                self._child_ended(child)
                return
            self._handle(child, message)

    def _handle(self, child: _Child, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "answers":
            for rid, final, started, result in message["items"]:
                self._answer(child, rid, final, started, result)
            if message["done"]:
                self._progress = time.monotonic()
                with self._lock:
                    self._batches_left -= message["done"]
                    if self._batches_left <= 0:
                        self._batch_done.set()
        elif op == "metrics":
            self.custom_metrics = [tuple(family) for family in message["families"]]
        elif op == "bls":
            self._bls.call(child.writer, child.arena, message)
        elif op == "bls_cancel":
            self._bls.cancel(message)
        elif op == "ready_answer":
            future = self._ready_answers.pop(message["seq"], None)
            if future is not None:
                if "error" in message:
                    future.set_exception(RuntimeError(message["error"]))
                else:
                    future.set_result(bool(message["value"]))
        elif op == "finalized" and self._finalized is not None:
            self._finalized.set_result(message["error"])

    def _answer(self, child: _Child, rid: int, final: bool, started: int, header: list[Any]) -> None:
        """One response of request ``rid`` (``Child._send`` made it; ``started`` 0 or when its batch began)."""
        with self._lock:
            job = self._jobs.get(rid)
            if job is not None and final:
                del self._jobs[rid]
        if job is None:
            return
        if started > job.compute_start:
            # A pipelined batch that waited behind others in the child: that wait was queueing.
            job.compute_start = job.input_end = started
        arrived = time.monotonic_ns()
        result = unpack_result(header, child.arena)
        if self._reader_thread and job.on_response is not None and not job.done:
            # A decoupled model's responses are timed one by one; a plain model's one
            # response is its request's own compute split, as in-process (reply.py).
            job.on_response(response_kind(result), arrived, time.monotonic_ns() - arrived)
        if final:
            if job.output_start < 0:
                job.output_start = arrived
            job.finish(result)
        elif result is not None:
            job.send(result)  # type: ignore[arg-type]

    def _child_ended(self, child: _Child) -> None:
        """The child's socket closed: fail what it held; a crash unless we were finalizing it."""
        with self._lock:
            if child.ended:
                return
            child.ended = True
        code = child.end()
        finalizing = self._finalized is not None
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            if self._child is child:
                self._child = None
                self.custom_metrics = []  # they lived in that process
        if child.timed_out:
            how = f"ran past its execute timeout of {self.spec.execute_timeout:g} s and was killed"
        else:
            how = describe_exit(code)
        if not finalizing:
            self._crashes.append(time.monotonic())
            _log.error("model instance '%s' (pid %d) %s; %d request(s) in flight failed",
                       self.name, child.proc.pid, how, len(jobs))
        error = ProtocolError(f"model '{self.spec.model_name}' instance '{self.name}' process {how}", 500)
        for job in jobs:
            job.finish(error)
        for future in list(self._ready_answers.values()):
            if not future.done():
                future.set_exception(RuntimeError(f"process {how}"))
        self._ready_answers.clear()
        if self._finalized is not None and not self._finalized.done():
            self._finalized.set_result(None if code == 0 else f"process {how} during finalize")
        self._batch_done.set()
        child.arena.close()

    # -- readiness and lifecycle ------------------------------------------------------------------

    @property
    def has_readiness_check(self) -> bool:
        child = self._child
        return child is not None and child.has_is_ready

    def check_ready(self, timeout: float = READY_TIMEOUT) -> bool:
        child = self._child
        if child is None:
            return False
        if not child.has_is_ready:
            return True
        seq = next(self._ids)
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._ready_answers[seq] = future
        try:
            self._ask(child, {"op": "is_ready", "seq": seq}, future, timeout)
            return bool(future.result(0))
        except concurrent.futures.TimeoutError:
            _log.warning("model instance '%s': is_ready() did not answer within %.0f s", self.name, timeout)
        except Exception as exc:
            _log.warning("model instance '%s': is_ready() failed: %s", self.name, exc)
        finally:
            self._ready_answers.pop(seq, None)
        return False

    def finalize(self) -> None:
        """Run the model's ``finalize`` in the child, then make sure the process is gone."""
        self._closing = True
        child = self._child
        if child is None:
            return
        self._finalized = concurrent.futures.Future()
        try:
            self._ask(child, {"op": "finalize"}, self._finalized, FINALIZE_TIMEOUT)
            error = self._finalized.result(0)
        except (OSError, concurrent.futures.TimeoutError):
            error = f"process did not finalize within {FINALIZE_TIMEOUT:g} s; killed"
            child.kill()
        finally:
            self._child_ended(child)  # closes the socket and reaps the process
        if error:
            raise PythonModelError(error)

    def _ask(self, child: _Child, message: dict[str, Any], answer: concurrent.futures.Future[Any],
             timeout: float) -> None:
        """Send ``message`` and wait up to ``timeout`` for ``answer`` (read here, or by the reader)."""
        if self._reader_thread:
            child.writer.send(message)
            concurrent.futures.wait([answer], timeout)
            return
        deadline = time.monotonic() + timeout
        if not self._io_lock.acquire(timeout=timeout):
            return  # the worker is in a long execute: the answer cannot come in time
        try:
            child.writer.send(message)
            self._pump(child, lambda: answer.done() or time.monotonic() > deadline, _nothing)
        finally:
            self._io_lock.release()

    def kill(self) -> None:
        """Abandon the instance (its worker is stuck): kill the process, fail what it held."""
        self._closing = True
        child = self._child
        if child is not None:
            child.kill()


def _raise_cancel_flags(child: _Child, jobs: list[tuple[int, ExecRequest]]) -> None:
    """Raise the arena flag of each request whose client left (``request.is_cancelled()`` in the
    child reads it)."""
    flags = child.arena.view
    for rid, job in jobs:
        if not job.done and job.cancelled():
            flags[rid % CANCEL_FLAGS] = 1


def _never() -> bool:
    return False


def _nothing() -> None:
    pass
