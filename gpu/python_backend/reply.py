"""One request's side of a batch: its ``pb_utils`` request and response sender, and its one answer.

A python-backend model answers a request by returning a response from ``execute``, by sending
through the request's response sender (decoupled models: any number of responses, then FINAL),
or not at all. :class:`Reply` turns whichever it was into the job's single terminal call, and
refuses what the model sends after that.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from evserve.gpu.execution.contract import ExecRequest, response_kind
from evserve.gpu.python_backend import pb_utils
from evserve.protocol.errors import ProtocolError, Unsupported
from evserve.protocol.types import InferResponse

if TYPE_CHECKING:
    from evserve.gpu.python_backend.instance import PythonModelInstance

# Request parameters Triton consumes itself; they never reach request.parameters().
_RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output", "headers"}
)


class Reply:
    """One request's side of a batch: its pb_utils request, its sender, and its single completion."""

    __slots__ = ("job", "_instance", "_streamed", "_last", "requested", "sender", "request")

    def __init__(self, instance: PythonModelInstance, job: ExecRequest) -> None:
        self.job = job
        self._instance = instance
        self._streamed = False
        self._last: InferResponse | ProtocolError | None = None
        request = job.request
        # No requested outputs (None or an empty list) means all of them, as in Triton.
        outputs = request.outputs
        self.requested = frozenset([out.name for out in outputs]) if outputs else instance.output_names
        self.sender = pb_utils.InferenceResponseSender(instance.decoupled, self._on_send, job.cancelled)
        wrap = pb_utils.Tensor._wrap
        if instance.reshapes_inputs:
            inputs = [wrap(t.name, instance.model_view(t.name, t.data), t.datatype) for t in request.inputs]
        else:
            inputs = [wrap(t.name, t.data, t.datatype) for t in request.inputs]
        parameters = request.parameters
        self.request = pb_utils.InferenceRequest._received(
            request_id=request.id,
            correlation_id=_correlation_id(parameters) if parameters else 0,
            inputs=inputs,
            requested_output_names=self.requested,
            model_name=request.model_name,
            model_version=instance.version,
            flags=_sequence_flags(parameters) if parameters else 0,
            parameters_json=_model_parameters(parameters) if parameters else "{}",
            sender=self.sender,
            is_cancelled=job.cancelled,
        )

    def _on_send(self, response: pb_utils.InferenceResponse | None, flags: int) -> None:
        """Called by the sender (under its lock) for every response it accepted."""
        job = self.job
        # A decoupled model's responses are timed one by one; a plain model's one response is the
        # request's own compute split (the worker derives it), so the common path pays nothing here.
        started = time.monotonic_ns() if job.on_response is not None and self._instance.decoupled else 0
        item = None if response is None else self._instance.convert(response, job.request, self.requested)
        final = flags == pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if started and not job.done:
            job.on_response(response_kind(item), started, time.monotonic_ns() - started)  # type: ignore[misc]
        if self.job.stream is not None:
            if final:
                self._finish(item)
            elif item is not None and not self.job.done:
                self._streamed = True
                self.job.send(item)
            return
        if item is not None:
            self._last = item
        if final:
            self._finish(self._last if self._last is not None else self._instance.no_response_error())

    @property
    def rescheduled(self) -> bool:
        return self.request._release_flags == pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE

    def settle(self) -> None:
        """After a default-mode ``execute`` returned: answer with what was sent, or an error."""
        if self.job.done and self.sender._closed:
            return  # answered with FINAL: the usual case, nothing left to settle
        if self.rescheduled:
            self.end(Unsupported("Request rescheduling (TRITONSERVER_REQUEST_RELEASE_RESCHEDULE) is not supported"))
        elif self.job.stream is not None and self._streamed:
            self.end(None)
        elif self._last is not None:
            self.end(self._last)
        else:
            self.end(self._instance.no_response_error())

    def end(self, result: InferResponse | ProtocolError | None) -> None:
        """Finish with ``result`` unless already finished, and refuse the model's later sends."""
        self.sender._close()
        self._finish(result)

    def _finish(self, result: InferResponse | ProtocolError | None) -> None:
        # The job's own guard makes this a no-op once the request is answered (execution/contract.py).
        self.job.finish(result)


def _model_parameters(parameters: dict[str, Any]) -> str:
    """JSON of the request parameters the model sees: all but those Triton consumes itself."""
    if not parameters:
        return "{}"
    # Compact, as Triton writes it: models that compare the string keep working.
    return json.dumps(
        {key: value for key, value in parameters.items() if key not in _RESERVED_PARAMETERS}, separators=(",", ":")
    )


def _correlation_id(parameters: dict[str, Any]) -> int | str:
    value = parameters.get("sequence_id", 0)
    return value if isinstance(value, (int, str)) else 0


def _sequence_flags(parameters: dict[str, Any]) -> int:
    flags = 0
    if parameters.get("sequence_start"):
        flags |= pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
    if parameters.get("sequence_end"):
        flags |= pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
    return flags
