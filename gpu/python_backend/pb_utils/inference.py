"""``InferenceRequest``, ``InferenceResponse`` and the decoupled response sender."""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from evserve.gpu.python_backend.pb_utils.datatypes import (
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
)
from evserve.gpu.python_backend.pb_utils.errors import TritonError, TritonModelException
from evserve.gpu.python_backend.pb_utils.tensor import Tensor


def _checked_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of request/response parameters, refused unless keys are str and values bool/int/str."""
    if not parameters:
        return {}
    if not isinstance(parameters, dict):
        raise TritonModelException(f"Expect parameters to be a dict, found type {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, (bool, int, str)):
            raise TritonModelException(f"Expect parameters values to have type bool/int/str, found type {type(value)}")
    return dict(parameters)


def _json(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters) if parameters else "{}"


class PreferredMemory:
    """Where a BLS caller would like outputs placed (accepted; outputs are host arrays)."""

    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class MemoryType(enum.IntEnum):
    TRITONSERVER_MEMORY_GPU = 0
    TRITONSERVER_MEMORY_CPU = 1


TRITONSERVER_MEMORY_GPU = MemoryType.TRITONSERVER_MEMORY_GPU
TRITONSERVER_MEMORY_CPU = MemoryType.TRITONSERVER_MEMORY_CPU



class InferenceResponse:
    """A model's answer to one request: output tensors, or an error."""

    __slots__ = ("_output_tensors", "_error", "_parameters")

    def __init__(
        self,
        output_tensors: Sequence[Tensor] = (),
        error: TritonError | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(output_tensors, (list, tuple)):
            raise TritonModelException('"output_tensors" must be a list.')
        if not all(type(tensor) is Tensor for tensor in output_tensors):  # the common case in one pass
            for tensor in output_tensors:
                if not isinstance(tensor, Tensor):
                    raise TritonModelException(
                        f'"output_tensors" must contain pb_utils.Tensor objects, found type {type(tensor)}'
                    )
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException(f'"error" must be a pb_utils.TritonError, found type {type(error)}')
        self._output_tensors = list(output_tensors)
        self._error = error
        self._parameters = _checked_parameters(parameters) if parameters else {}

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        """The response parameters as a JSON string (Triton returns a string, not a dict)."""
        return _json(self._parameters)


def _never_cancelled() -> bool:
    return False


class InferenceResponseSender:
    """Sends responses for one request, with Triton's rules on counts and the FINAL flag.

    A decoupled model may send any number of responses and then FINAL. A default-mode model
    (allowed since Triton 24.06) sends exactly one response, with FINAL or followed by a bare
    FINAL. Nothing may follow FINAL. ``deliver`` (set by evserve) receives each accepted send,
    under this sender's lock so that responses keep their order.
    """

    __slots__ = ("_decoupled", "_deliver", "_is_cancelled", "_lock", "_closed", "_sent")

    def __init__(
        self,
        decoupled: bool | None,
        deliver: Callable[[InferenceResponse | None, int], None] | None = None,
        is_cancelled: Callable[[], bool] = _never_cancelled,
    ) -> None:
        self._decoupled = decoupled
        self._deliver = deliver
        self._is_cancelled = is_cancelled
        self._lock = threading.Lock()
        self._closed = False
        self._sent = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set to zero."
            )
        if response is not None and type(response) is not InferenceResponse and not isinstance(
            response, InferenceResponse
        ):
            raise TritonModelException(
                f"Unable to send response. Expected an InferenceResponse, found type {type(response)}"
            )
        with self._lock:
            self._count(response, flags)
            if self._deliver is not None:
                self._deliver(response, flags)

    def _count(self, response: InferenceResponse | None, flags: int) -> None:
        if self._decoupled is None:
            raise TritonModelException(
                "Unable to send response. Response sender has no reference to the decoupled state of the model."
            )
        if not self._decoupled:
            if response is not None and self._sent > 0:
                raise TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send more than one response."
                )
            if response is None and self._sent == 0:
                raise TritonModelException(
                    "Unable to send response. Non-decoupled model cannot send complete final before sending a response."
                )
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self._closed = True
        self._sent += 1

    def is_cancelled(self) -> bool:
        return self._is_cancelled()

    def _close(self) -> None:
        """Refuse further sends: the request has been answered (or failed) by evserve."""
        with self._lock:
            self._closed = True


class InferenceRequest:
    """A request as ``execute`` receives it, or one a model builds for BLS (``exec``/``async_exec``).

    The constructor has Triton's BLS signature. evserve builds the requests it hands to
    ``execute`` with :meth:`_received`.
    """

    __slots__ = (
        "_request_id", "_correlation_id", "_inputs", "_requested_output_names", "_model_name", "_model_version",
        "_flags", "_timeout", "_parameters", "_release_flags", "_sender", "_is_cancelled",
    )

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: Sequence[Tensor] = (),
        requested_output_names: Iterable[str] = (),
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: object = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(correlation_id, (int, str)):
            raise TritonModelException("Correlation ID must be integer or string")
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._inputs = list(inputs)
        self._requested_output_names = set(requested_output_names)
        self._model_name = model_name
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._parameters = _json(_checked_parameters(parameters))
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._sender = InferenceResponseSender(None)
        self._is_cancelled: Callable[[], bool] = _never_cancelled

    @classmethod
    def _received(
        cls,
        *,
        request_id: str,
        correlation_id: int | str,
        inputs: list[Tensor],
        requested_output_names: frozenset[str],
        model_name: str,
        model_version: int,
        flags: int,
        parameters_json: str,
        sender: InferenceResponseSender,
        is_cancelled: Callable[[], bool],
    ) -> InferenceRequest:
        """A request from a client (parameters may include doubles, which BLS ones may not).

        Built field by field: this runs for every request, and the public constructor's checks
        and defaults (a sender of its own, parameter validation) are for BLS requests.
        """
        request = cls.__new__(cls)
        request._request_id = request_id
        request._correlation_id = correlation_id
        request._inputs = inputs
        request._requested_output_names = requested_output_names
        request._model_name = model_name
        request._model_version = model_version
        request._flags = flags
        request._timeout = 0
        request._parameters = parameters_json
        request._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        request._sender = sender
        request._is_cancelled = is_cancelled
        return request

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        """Request parameters as a JSON string (sequence/priority/timeout keys are not included)."""
        return self._parameters

    def requested_output_names(self) -> set[str]:
        """The outputs the client asked for (all of the model's when it named none); a set, as in Triton.

        A fresh set on each call: what evserve keeps is shared and immutable.
        """
        return set(self._requested_output_names)

    def get_response_sender(self) -> InferenceResponseSender:
        return self._sender

    def is_cancelled(self) -> bool:
        return self._is_cancelled()

    def set_release_flags(self, flags: int) -> None:
        self._release_flags = flags

    def exec(self, decoupled: bool = False) -> Any:
        """Run the request on another served model (BLS, gpu/python_backend/bls.py); errors come back as responses."""
        from evserve.gpu.python_backend import bls

        return bls.exec_request(self, decoupled)

    def async_exec(self, decoupled: bool = False) -> Any:
        """``await request.async_exec()``: :meth:`exec` without holding the caller's event loop."""
        from evserve.gpu.python_backend import bls

        return bls.async_exec_request(self, decoupled)


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input called ``name``; None when the request does not carry it."""
    for tensor in inference_request.inputs():
        if tensor._name == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output called ``name``; None when it has none."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None
