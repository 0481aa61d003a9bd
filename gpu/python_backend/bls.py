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
Triton. Models in process-isolated instances have no manager in their process: there ``exec()``
raises, saying so.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.python_backend import pb_utils
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from evserve.protocol.validate import InputPlan, check_inputs, check_outputs, element_count

if TYPE_CHECKING:
    from evserve.gpu.model_manager import ModelManager

DEFAULT_WAIT = 60.0

_gateway: BlsGateway | None = None
_gateway_lock = threading.Lock()
# The model version (name, version, instance count) whose execute runs on this thread, if any:
# set by the instance on its worker thread (each worker runs one instance for its life).
running_model = threading.local()


def install(manager: ModelManager) -> None:
    """Route BLS calls of this process's models to ``manager`` (called when it starts)."""
    global _gateway
    with _gateway_lock:
        _gateway = BlsGateway(manager)


def uninstall(manager: ModelManager) -> None:
    global _gateway
    with _gateway_lock:
        if _gateway is not None and _gateway.manager is manager:
            _gateway = None


def gateway() -> BlsGateway | None:
    return _gateway


def _error_response(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _response(result: InferResponse | ProtocolError | None) -> pb_utils.InferenceResponse:
    if result is None:
        return pb_utils.InferenceResponse()
    if isinstance(result, ProtocolError):
        return _error_response(result.message)
    tensors = [pb_utils.Tensor._wrap(o.name, o.data, o.datatype) for o in result.outputs]
    return pb_utils.InferenceResponse(output_tensors=tensors, parameters=dict(result.parameters) or None)


class _Call:
    """One BLS request in flight: where its responses land, and whether its caller gave up."""

    __slots__ = ("answers", "abandoned")

    def __init__(self) -> None:
        self.answers: queue.SimpleQueue[tuple[InferResponse | ProtocolError | None, bool]] = queue.SimpleQueue()
        self.abandoned = False

    def cancelled(self) -> bool:
        return self.abandoned

    def complete(self, result: InferResponse | ProtocolError) -> None:
        self.answers.put((result, True))

    def stream(self, result: InferResponse | ProtocolError | None, final: bool) -> None:
        self.answers.put((result, final))


class BlsGateway:
    """Turns a model's ``pb_utils.InferenceRequest`` into a job of the target version, and back."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def submit(self, request: pb_utils.InferenceRequest, decoupled: bool) -> _Call | pb_utils.InferenceResponse:
        """Queue the request; an error response when it cannot be (unknown model, bad inputs, full queue)."""
        name = request._model_name
        version = "" if request._model_version in (-1, "", None) else str(request._model_version)
        try:
            served = self.manager.get(name, version or None)
        except ProtocolError as exc:
            return _error_response(exc.message)
        running = getattr(running_model, "key", None)
        if running is not None and running == (served.name, served.version_str, 1):
            return _error_response(
                f"BLS request to model '{name}' would wait on itself: the calling model is that version's only "
                "instance (add instances with instance_group { count: N })"
            )
        if served.decoupled and not decoupled:
            return _error_response(
                f"model '{name}' is decoupled: call exec(decoupled=True) to receive its responses"
            )
        try:
            infer_request = _infer_request(request, served.signature)
        except ProtocolError as exc:
            return _error_response(exc.message)
        call = _Call()
        job = ExecRequest(request=infer_request, complete=call.complete, cancelled=call.cancelled,
                          stream=call.stream if decoupled else None)
        try:
            served.submit(job)
        except ProtocolError as exc:
            return _error_response(exc.message)
        return call


def _wait_seconds(request: pb_utils.InferenceRequest) -> float:
    timeout_us = request._timeout or 0
    return timeout_us / 1e6 if timeout_us > 0 else DEFAULT_WAIT


def _timed_out(request: pb_utils.InferenceRequest, call: _Call) -> pb_utils.InferenceResponse:
    call.abandoned = True
    return _error_response(f"BLS request to model '{request._model_name}' timed out after "
                           f"{_wait_seconds(request):g} s")


def _infer_request(request: pb_utils.InferenceRequest, signature: Any) -> InferRequest:
    """The protocol request for ``signature``'s model, checked as an HTTP request is."""
    from evserve.gpu.python_backend.instance import host_tensor

    inputs = []
    plans = []
    for tensor in request._inputs:
        host = host_tensor(tensor)
        shape = tuple(int(d) for d in host.shape)
        plans.append(InputPlan(host.name, host.datatype, shape, element_count(host.name, shape)))
        inputs.append(InputTensor(host.name, host.datatype, shape, host.data))
    check_inputs(plans, signature)
    names = sorted(request._requested_output_names)
    check_outputs(names, signature)
    parameters = json.loads(request._parameters) if request._parameters else {}
    if request._correlation_id:
        parameters["sequence_id"] = request._correlation_id
    if request._flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
        parameters["sequence_start"] = True
    if request._flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
        parameters["sequence_end"] = True
    return InferRequest(
        signature.name, signature.version, id=request._request_id, parameters=parameters, inputs=inputs,
        outputs=[RequestedOutput(n) for n in names] or None,
    )


def exec_request(request: pb_utils.InferenceRequest, decoupled: bool) -> Any:
    """``InferenceRequest.exec()``: the response, or for ``decoupled=True`` an iterator of responses."""
    gate = gateway()
    if gate is None:
        raise pb_utils.TritonModelException(
            "BLS needs the server's model manager, which this process does not have (a process-isolated model "
            "instance): run this model with --model-isolation thread (or EVSERVE_MODEL_ISOLATION thread) to call "
            "other models"
        )
    call = gate.submit(request, decoupled)
    if isinstance(call, pb_utils.InferenceResponse):
        return iter([call]) if decoupled else call
    if decoupled:
        return _iterate(request, call)
    try:
        result, _ = call.answers.get(timeout=_wait_seconds(request))
    except queue.Empty:
        return _timed_out(request, call)
    return _response(result)


def _iterate(request: pb_utils.InferenceRequest, call: _Call) -> Iterator[pb_utils.InferenceResponse]:
    """A decoupled model's responses as they come; the last carries the final flag (maybe empty)."""
    while True:
        try:
            result, final = call.answers.get(timeout=_wait_seconds(request))
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
