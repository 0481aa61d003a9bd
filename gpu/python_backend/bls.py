"""Business Logic Scripting: a model's ``InferenceRequest(...).exec()`` runs another served model.

The call goes through the same path as an HTTP request: the target version is looked up in the
model manager, the inputs are checked against its signature with the same checks and texts, and
the job is submitted to its queue, so batching, queue limits and statistics apply. Tensors pass
by reference (the caller's arrays become the callee's inputs; the callee's outputs become the
caller's response), with no copy or serialization in between.

Waits are bounded, so a model can never hang its worker for good:

* a model that calls its own version while holding that version's only instance would wait on
  itself: refused at once;
* every other wait ends after the request's ``timeout`` (microseconds; Triton's BLS argument) or
  ``DEFAULT_WAIT`` seconds, and the job is then cancelled (its model sees ``is_cancelled()``).

Failures come back as a response whose ``has_error()`` is true, never as an exception, as in
Triton. A model in a process-isolated instance has no manager in its process: its calls go to the
server over the instance's socket (:mod:`evserve.gpu.process.bls_link`) and take the same path
there, its tensors copied once each way through the frames.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from evserve.gpu.execution.contract import Completion, ExecRequest, StreamCallback
from evserve.gpu.python_backend import pb_utils
from evserve.protocol.errors import ProtocolError
from evserve.protocol.request_plan import check_tensors
from evserve.protocol.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from evserve.protocol.validate import check_outputs

if TYPE_CHECKING:
    from evserve.gpu.model_manager import ModelManager

DEFAULT_WAIT = 60.0

class Gateway(Protocol):
    """Where this process's BLS calls go: the manager (in the server) or the server (in a child)."""

    def submit(self, request: pb_utils.InferenceRequest, decoupled: bool) -> Call | pb_utils.InferenceResponse: ...


_gateway: Gateway | None = None
_gateway_lock = threading.Lock()
# The model version (name, version, instance count) whose execute runs on this thread, if any:
# set by the instance on its worker thread (each worker runs one instance for its life).
running_model = threading.local()


def install(manager: ModelManager) -> None:
    """Route BLS calls of this process's models to ``manager`` (called when it starts)."""
    global _gateway
    with _gateway_lock:
        _gateway = BlsGateway(manager)


def install_gateway(gate: Gateway) -> None:
    """Route BLS calls of this process's models through ``gate`` (a child process's link to the server)."""
    global _gateway
    with _gateway_lock:
        _gateway = gate


def uninstall(manager: ModelManager) -> None:
    global _gateway
    with _gateway_lock:
        if isinstance(_gateway, BlsGateway) and _gateway.manager is manager:
            _gateway = None


def gateway() -> Gateway | None:
    return _gateway


def server_gateway() -> BlsGateway | None:
    """The manager's gateway, in the server process (None in a child process)."""
    gate = _gateway
    return gate if isinstance(gate, BlsGateway) else None


def _error_response(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _response(result: InferResponse | ProtocolError | None) -> pb_utils.InferenceResponse:
    if result is None:
        return pb_utils.InferenceResponse()
    if isinstance(result, ProtocolError):
        return _error_response(result.message)
    tensors = [pb_utils.Tensor._wrap(o.name, o.data, o.datatype) for o in result.outputs]
    return pb_utils.InferenceResponse(output_tensors=tensors, parameters=dict(result.parameters) or None)


class Call:
    """One BLS request in flight: where its responses land, and whether its caller gave up."""

    __slots__ = ("answers", "abandoned")

    def __init__(self) -> None:
        self.answers: queue.SimpleQueue[tuple[InferResponse | ProtocolError | None, bool]] = queue.SimpleQueue()
        self.abandoned = False

    def cancelled(self) -> bool:
        return self.abandoned

    def next_answer(self, timeout: float) -> tuple[InferResponse | ProtocolError | None, bool]:
        """The next (result, final) pair; raises queue.Empty after ``timeout`` seconds."""
        return self.answers.get(timeout=timeout)

    def abandon(self) -> None:
        """The caller stopped waiting: the callee's job sees itself cancelled."""
        self.abandoned = True

    def complete(self, result: InferResponse | ProtocolError) -> None:
        self.answers.put((result, True))

    def stream(self, result: InferResponse | ProtocolError | None, final: bool) -> None:
        self.answers.put((result, final))


class BlsGateway:
    """Turns a model's ``pb_utils.InferenceRequest`` into a job of the target version, and back."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def submit(self, request: pb_utils.InferenceRequest, decoupled: bool) -> Call | pb_utils.InferenceResponse:
        """Queue the request; an error response when it cannot be (unknown model, bad inputs, full queue)."""
        from evserve.gpu.python_backend.instance import host_tensor

        inputs = []
        for tensor in request._inputs:
            host = host_tensor(tensor)
            inputs.append(InputTensor(host.name, host.datatype, tuple(int(d) for d in host.shape), host.data))
        call = Call()
        error = self.submit_job(
            BlsTarget(request._model_name, request._model_version, sorted(request._requested_output_names),
                      request_parameters(request), request._request_id),
            inputs, decoupled, getattr(running_model, "key", None), call.complete,
            call.stream if decoupled else None, call.cancelled)
        return _error_response(error) if error is not None else call

    def submit_job(self, target: BlsTarget, inputs: list[InputTensor], decoupled: bool,
                   caller: tuple[str, str, int] | None, complete: Completion, stream: StreamCallback | None,
                   cancelled: Callable[[], bool]) -> str | None:
        """Queue a BLS job whose answers go to ``complete``/``stream``; the error text when it cannot be.

        ``caller`` is the calling version (name, version, instance count): a version with one
        instance that calls itself would wait on itself, and is refused at once.
        """
        name = target.model_name
        version = "" if target.model_version in (-1, "", None) else str(target.model_version)
        try:
            served = self.manager.get(name, version or None)
        except ProtocolError as exc:
            return exc.message
        if caller is not None and caller == (served.name, served.version_str, 1):
            return (f"BLS request to model '{name}' would wait on itself: the calling model is that version's only "
                    "instance (add instances with instance_group { count: N })")
        if served.decoupled and not decoupled:
            return f"model '{name}' is decoupled: call exec(decoupled=True) to receive its responses"
        try:
            infer_request = _infer_request(target, inputs, served.signature)
        except ProtocolError as exc:
            return exc.message
        job = ExecRequest(request=infer_request, complete=complete, cancelled=cancelled, stream=stream)
        try:
            served.submit(job)
        except ProtocolError as exc:
            return exc.message
        return None


@dataclass(frozen=True, slots=True)
class BlsTarget:
    """What a BLS request names besides its tensors: the model, the outputs, the parameters, the id."""

    model_name: str
    model_version: int | str
    output_names: list[str]
    parameters: dict[str, Any]
    request_id: str = ""


def request_parameters(request: pb_utils.InferenceRequest) -> dict[str, Any]:
    """The request parameters a BLS request carries: its own, its sequence ID and flags, its timeout (µs)."""
    parameters = json.loads(request._parameters) if request._parameters else {}
    if request._correlation_id:
        parameters["sequence_id"] = request._correlation_id
    if request._flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
        parameters["sequence_start"] = True
    if request._flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
        parameters["sequence_end"] = True
    if request._timeout:
        parameters["timeout"] = request._timeout  # the callee's queue policy may use it, as on Triton
    return parameters


def wait_seconds(request: pb_utils.InferenceRequest) -> float:
    timeout_us = request._timeout or 0
    return timeout_us / 1e6 if timeout_us > 0 else DEFAULT_WAIT


def _timed_out(request: pb_utils.InferenceRequest, call: Call) -> pb_utils.InferenceResponse:
    call.abandon()
    return _error_response(f"BLS request to model '{request._model_name}' timed out after "
                           f"{wait_seconds(request):g} s")


def _infer_request(target: BlsTarget, inputs: list[InputTensor], signature: Any) -> InferRequest:
    """The protocol request for ``signature``'s model, checked as an HTTP request is."""
    check_tensors(inputs, signature)
    check_outputs(target.output_names, signature)
    return InferRequest(
        signature.name, signature.version, id=target.request_id, parameters=dict(target.parameters), inputs=inputs,
        outputs=[RequestedOutput(n) for n in target.output_names] or None,
    )


def exec_request(request: pb_utils.InferenceRequest, decoupled: bool) -> Any:
    """``InferenceRequest.exec()``: the response, or for ``decoupled=True`` an iterator of responses."""
    gate = gateway()
    if gate is None:
        raise pb_utils.TritonModelException("BLS needs a running server: this model was not loaded by one")
    call = gate.submit(request, decoupled)
    if isinstance(call, pb_utils.InferenceResponse):
        return iter([call]) if decoupled else call
    if decoupled:
        return _iterate(request, call)
    try:
        result, _ = call.next_answer(wait_seconds(request))
    except queue.Empty:
        return _timed_out(request, call)
    return _response(result)


def _iterate(request: pb_utils.InferenceRequest, call: Call) -> Iterator[pb_utils.InferenceResponse]:
    """A decoupled model's responses as they come; the last carries the final flag (maybe empty)."""
    while True:
        try:
            result, final = call.next_answer(wait_seconds(request))
        except queue.Empty:
            yield _timed_out(request, call)
            return
        if result is not None or final:
            yield _response(result)
        if final:
            return


async def async_exec_request(request: pb_utils.InferenceRequest, decoupled: bool) -> Any:
    """``await InferenceRequest.async_exec()``: the same, without holding the caller's event loop."""
    loop = asyncio.get_running_loop()
    if not decoupled:
        return await loop.run_in_executor(None, exec_request, request, False)
    responses = await loop.run_in_executor(None, lambda: list(exec_request(request, True)))
    return iter(responses)
