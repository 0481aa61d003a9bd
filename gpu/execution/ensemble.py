"""Ensembles: ``platform: "ensemble"`` models whose ``ensemble_scheduling`` steps run other served models.

An ensemble has no instances of its own. A request's inputs become the first named tensors of a
small dataflow graph; each step runs as soon as every tensor its ``input_map`` names exists,
as a job of its model's served version (the same queue, batching, sequence routing and statistics
as an HTTP request), and its ``output_map`` names the tensors it produces. Steps whose inputs are
ready run concurrently (fan-out), a step may wait on several others (fan-in), and the request is
answered once every step has answered. Tensors pass between steps by reference: no copy.

As on Triton: outputs come back sorted by name; a step's failure fails the request with the
step's status and ``in ensemble '<name>', <the step's message>``; the ensemble's statistics sum
its steps' compute times, and the step models keep their own statistics. An ensemble that runs a
decoupled step must be decoupled itself: each response of that step flows on through the steps
downstream of it, and each that comes out with every requested output is one of the ensemble's
responses (see :class:`_Branch`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evserve.gpu.execution.batching import request_rows
from evserve.gpu.execution.contract import ExecRequest, Result
from evserve.gpu.execution.stats import ModelStats
from evserve.gpu.execution.version import ModelVersion
from evserve.gpu.repository.config_parse import ModelConfigError
from evserve.protocol.errors import ProtocolError
from evserve.protocol.request_plan import check_tensors
from evserve.protocol.types import InferRequest, InferResponse, InputTensor, OutputTensor, RequestedOutput

if TYPE_CHECKING:
    from evserve.gpu.repository.model_config import ModelConfig

ENSEMBLE_PLATFORM = "ensemble"
# Resolves (model name, version or None for the latest) to its served version, or raises ProtocolError.
Resolver = Callable[[str, "str | None"], Any]


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One ``ensemble_scheduling.step``: which model runs, and how its tensors map to the ensemble's."""

    model_name: str
    model_version: int  # -1: the latest ready version
    input_map: dict[str, str]  # the step model's input -> ensemble tensor
    output_map: dict[str, str]  # the step model's output -> ensemble tensor

    @property
    def version(self) -> str | None:
        return str(self.model_version) if self.model_version >= 0 else None


def ensemble_steps(raw: dict) -> tuple[EnsembleStep, ...]:
    """The steps of a completed ensemble config, in config order."""
    return tuple(
        EnsembleStep(step["model_name"], int(step.get("model_version", -1)), dict(step.get("input_map", {})),
                     dict(step.get("output_map", {})))
        for step in raw.get("ensemble_scheduling", {}).get("step", ())
    )


def check_graph(name: str, raw: dict, steps: tuple[EnsembleStep, ...]) -> None:
    """Refuse a graph that cannot produce every output (Triton's texts where it has them)."""
    if not steps:
        raise ModelConfigError(f"ensemble '{name}' must have at least one step")
    inputs = {io["name"] for io in raw.get("input", ())}
    producers: dict[str, EnsembleStep] = {}
    for step in steps:
        if not step.model_name:
            raise ModelConfigError(f"ensemble '{name}': every step must name its model")
        if step.model_name == name:
            raise ModelConfigError(f"ensemble '{name}' cannot contain itself as a step")
        for tensor in step.output_map.values():
            if tensor in producers or tensor in inputs:
                raise ModelConfigError(
                    f"ensemble tensor '{tensor}' of ensemble '{name}' is written by more than one source")
            producers[tensor] = step
    available = set(inputs)
    waiting = list(steps)
    progress = True
    while progress:
        progress = False
        for step in list(waiting):
            if set(step.input_map.values()) <= available:
                available.update(step.output_map.values())
                waiting.remove(step)
                progress = True
    for output in (io["name"] for io in raw.get("output", ())):
        if output in available:
            continue
        missing = _first_unconnected(output, producers, available)
        raise ModelConfigError(f"output '{output}' for ensemble '{name}' is not written"
                               + (f": at least one of its depending tensors, '{missing}', is not connected"
                                  if missing is not None else ""))


def _first_unconnected(tensor: str, producers: dict[str, EnsembleStep], available: set[str]) -> str | None:
    """The first tensor upstream of ``tensor`` that nothing connects to the ensemble's inputs."""
    seen: set[str] = set()
    frontier = [tensor]
    while frontier:
        current = frontier.pop()
        step = producers.get(current)
        if step is None:
            return None if current == tensor else current
        for needed in step.input_map.values():
            if needed not in available and needed not in seen:
                seen.add(needed)
                if needed not in producers:
                    return needed
                frontier.append(needed)
    return None


class EnsembleVersion(ModelVersion):
    """A served ensemble version: no workers; each request runs its steps on the step models."""

    def __init__(self, name: str, version: int, config: ModelConfig, stats: ModelStats,
                 steps: tuple[EnsembleStep, ...], resolve: Resolver) -> None:
        super().__init__(name, version, config, [], stats, config.signature(str(version)))
        self.steps = steps
        self.resolve = resolve
        self._outputs = sorted(io["name"] for io in config.raw.get("output", ()))
        self._running = 0
        self._idle = threading.Condition()

    @property
    def dependencies(self) -> set[str]:
        """The models this ensemble's steps run."""
        return {step.model_name for step in self.steps}

    @property
    def in_flight(self) -> int:
        return self._running

    def _dispatch(self, job: ExecRequest) -> None:
        """Run an admitted job through the graph (ModelVersion.submit has admitted it: ready, not cached)."""
        with self._idle:
            self._running += 1
        _EnsembleRun(self, job).start()

    def finished(self) -> None:
        with self._idle:
            self._running -= 1
            if self._running == 0:
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        self.close()
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def finalize(self) -> list[str]:
        return []

    def requested_outputs(self, request: InferRequest) -> list[str]:
        """The outputs the reply carries, sorted by name as Triton sorts them."""
        if request.outputs:
            return sorted(out.name for out in request.outputs)
        return self._outputs


class _Branch:
    """One line of a request's data through the graph: its tensors, the steps still to run, those running.

    A request starts with one branch. Each response of a decoupled step forks a new branch with
    that response's tensors, in which the steps downstream run; the branch it forked from goes on
    with its other steps.
    """

    __slots__ = ("tensors", "waiting", "running")

    def __init__(self, tensors: dict[str, InputTensor], waiting: list[EnsembleStep]) -> None:
        self.tensors = tensors
        self.waiting = waiting
        self.running = 0


class _EnsembleRun:
    """One request through the graph: its branches, and the time spent.

    An ensemble that is not decoupled has one branch and answers once, when the branch is done. A
    decoupled ensemble (a decoupled step inside) answers once per branch that ends with every
    requested output, and ends with a bare FINAL once no branch is open, as Triton streams it.
    """

    __slots__ = ("ensemble", "job", "root", "open", "last", "lock", "t_submit", "queue_ns", "phases", "failed")
    # queue_ns: from arrival until the first step was handed to its model (the ensemble's own queue).

    def __init__(self, ensemble: EnsembleVersion, job: ExecRequest) -> None:
        self.ensemble = ensemble
        self.job = job
        self.root = _Branch({t.name: t for t in job.request.inputs}, list(ensemble.steps))
        self.open = 1  # branches not yet done
        self.last: InferResponse | None = None  # a decoupled ensemble's last answer, for a request that wants one
        self.lock = threading.Lock()
        self.t_submit = time.monotonic_ns()
        self.queue_ns = 0
        self.phases = [0, 0, 0]
        self.failed = False

    def start(self) -> None:
        with self.lock:
            ready = self._take_ready(self.root)
        now = time.monotonic_ns()
        self.queue_ns = now - self.t_submit
        self.job.compute_start = now  # a trace shows the steps' span as the ensemble's compute
        if not ready:  # nothing can run (an optional input left out): answer with what exists
            self._branch_done(self.root)
            return
        self._launch(self.root, ready)

    @staticmethod
    def _take_ready(branch: _Branch) -> list[EnsembleStep]:
        """Under the lock: the branch's waiting steps whose inputs all exist now."""
        tensors = branch.tensors
        ready = [step for step in branch.waiting if all(t in tensors for t in step.input_map.values())]
        for step in ready:
            branch.waiting.remove(step)
        branch.running += len(ready)
        return ready

    def _launch(self, branch: _Branch, steps: list[EnsembleStep]) -> None:
        for step in steps:
            try:
                served = self.ensemble.resolve(step.model_name, step.version)
                if served.decoupled and not self.ensemble.decoupled:
                    raise ProtocolError(f"model '{step.model_name}' is decoupled: an ensemble that runs it must be "
                                        "decoupled too (model_transaction_policy { decoupled: true })", 400)
                request = self._step_request(branch, step, served.signature)
                answer = _StepAnswer(self, branch, step)
                stream = answer.streamed if served.decoupled else None
                answer.step_job = ExecRequest(request, answer, cancelled=self.job.cancelled, stream=stream)
                served.submit(answer.step_job)
            except ProtocolError as exc:
                self._step_failed(exc)

    def _step_request(self, branch: _Branch, step: EnsembleStep, signature: Any) -> InferRequest:
        inputs = []
        for model_input, tensor_name in step.input_map.items():
            tensor = branch.tensors[tensor_name]
            inputs.append(InputTensor(model_input, tensor.datatype, tensor.shape, tensor.data))
        check_tensors(inputs, signature)
        request = self.job.request
        return InferRequest(signature.name, signature.version, id=request.id, parameters=request.parameters,
                            inputs=inputs, outputs=[RequestedOutput(name) for name in step.output_map])

    @staticmethod
    def _take_outputs(tensors: dict[str, InputTensor], step: EnsembleStep, result: InferResponse) -> None:
        for out in result.outputs:
            tensor = step.output_map.get(out.name)
            if tensor is not None:
                tensors[tensor] = InputTensor(tensor, out.datatype, out.shape, out.data)

    def _count_phases(self, step_job: ExecRequest, done_ns: int) -> None:
        """Under the lock: the step's compute-input and compute-output time, added to the ensemble's."""
        if step_job.compute_start < 0:
            return
        input_ns, _, output_ns = step_job.compute_split(step_job.compute_start, done_ns)
        self.phases[0] += input_ns
        self.phases[2] += output_ns

    def step_answered(self, branch: _Branch, step: EnsembleStep, step_job: ExecRequest, result: Result,
                      done_ns: int) -> None:
        """A step that answers once has answered."""
        if isinstance(result, ProtocolError):
            self._step_failed(result)
            return
        with self.lock:
            self._take_outputs(branch.tensors, step, result)
            self._count_phases(step_job, done_ns)
            branch.running -= 1
            ready = [] if self.failed else self._take_ready(branch)
            done = not self.failed and branch.running == 0 and not ready
        self._launch(branch, ready)
        if done:
            self._branch_done(branch)

    def step_streamed(self, branch: _Branch, step: EnsembleStep, step_job: ExecRequest, result: Result | None,
                      final: bool) -> None:
        """A decoupled step sent a response (forking a branch for it) and/or its FINAL."""
        if isinstance(result, ProtocolError):
            self._step_failed(result)
            return
        fork: _Branch | None = None
        ready: list[EnsembleStep] = []
        with self.lock:
            if self.failed:
                return
            if result is not None:
                tensors = dict(branch.tensors)
                self._take_outputs(tensors, step, result)
                fork = _Branch(tensors, list(branch.waiting))
                self.open += 1
                ready = self._take_ready(fork)
            if final:
                self._count_phases(step_job, time.monotonic_ns())
                branch.running -= 1
            parent_done = final and branch.running == 0
        if fork is not None:
            if ready:
                self._launch(fork, ready)
            else:
                self._branch_done(fork)
        if parent_done:
            self._branch_done(branch)

    def _step_failed(self, error: ProtocolError) -> None:
        with self.lock:
            first = not self.failed
            self.failed = True
        if first:
            self._end(ProtocolError(f"in ensemble '{self.ensemble.name}', {error.message}", error.status), ok=False)

    def _response(self, branch: _Branch) -> InferResponse | str:
        """The branch's answer, or the name of a requested output it lacks."""
        ensemble = self.ensemble
        request = self.job.request
        outputs = []
        for name in ensemble.requested_outputs(request):
            tensor = branch.tensors.get(name)
            if tensor is None:
                return name
            outputs.append(OutputTensor(name, tensor.datatype, tensor.shape, tensor.data))
        parameters = {key: request.parameters.get(key, default)
                      for key, default in (("sequence_id", 0), ("sequence_start", False), ("sequence_end", False))}
        return InferResponse(ensemble.name, ensemble.version_str, id=request.id, outputs=outputs,
                             parameters=parameters)

    def _branch_done(self, branch: _Branch) -> None:
        if self.failed:
            return
        response = self._response(branch)
        if not self.ensemble.decoupled:
            if isinstance(response, str):
                response = ProtocolError(f"in ensemble '{self.ensemble.name}', output '{response}' was not produced",
                                         500)
            self._end(response, ok=not isinstance(response, ProtocolError))
            return
        # Decoupled: a branch that ends without every requested output (one that forked) answers nothing.
        if not isinstance(response, str):
            if self.job.stream is not None:
                self.job.send(response)
            else:
                self.last = response
        with self.lock:
            self.open -= 1
            finished = self.open == 0 and not self.failed
        if finished:
            if self.job.stream is not None:
                self._end(None, ok=True)
            elif self.last is not None:
                self._end(self.last, ok=True)
            else:
                self._end(ProtocolError(f"in ensemble '{self.ensemble.name}', no response was produced", 500),
                          ok=False)

    def _end(self, result: Result | None, *, ok: bool) -> None:
        ensemble = self.ensemble
        total = time.monotonic_ns() - self.t_submit
        rows = request_rows(self.job.request, ensemble.max_batch_size)
        # As Triton splits an ensemble's time: its steps' input and output work, the rest (the steps'
        # queues and models, and the hand-offs between them) as infer; its own queue is the first hand-off.
        input_ns, output_ns = self.phases[0], self.phases[2]
        phases = (input_ns, max(total - self.queue_ns - input_ns - output_ns, 0), output_ns)
        if ok:
            ensemble.stats.record_request(True, total, self.queue_ns, phases, rows, sent_response=False)
            ensemble.stats.record_execution(rows, phases)
        else:
            ensemble.stats.record_request(False, total, -1, (-1, -1, -1), rows, reason="OTHER")
        try:
            self.job.finish(result)
        finally:
            ensemble.finished()


class _StepAnswer:
    """A step job's completion (and, for a decoupled step, its stream): back to its run and branch."""

    __slots__ = ("run", "branch", "step", "step_job")

    def __init__(self, run: _EnsembleRun, branch: _Branch, step: EnsembleStep) -> None:
        self.run = run
        self.branch = branch
        self.step = step
        self.step_job: ExecRequest = None  # type: ignore[assignment]  # set right after, before submit

    def __call__(self, result: Result) -> None:
        self.run.step_answered(self.branch, self.step, self.step_job, result, time.monotonic_ns())

    def streamed(self, result: Result | None, final: bool) -> None:
        self.run.step_streamed(self.branch, self.step, self.step_job, result, final)
