"""The one contract between the HTTP layer and the engine, and between a worker and an instance.

``server/`` imports this module and the model manager's public methods, nothing else of the
engine. A handler decodes a request, wraps it in an :class:`ExecRequest` and submits it to a
:class:`ServedModel` (what the manager's ``get`` returns); the engine answers through the
job's callbacks, on whatever thread it runs, and never touches a connection.

Behind a served model, each instance worker drives one :class:`ModelInstance`: a batch of
jobs in, every job finished. An in-process python-backend instance and a proxy to an instance
in a child process stand behind the same protocol, so neither ``server/`` nor the workers
change when the instance moves.

Exactly once. A job gets exactly one terminal call whoever makes it (the model's final
response, a failed batch, a cancellation, a drop at unload), because :meth:`ExecRequest.finish`
is the only way to make it and it lets only the first call through. Every other layer relies
on that guard instead of keeping its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, InferResponse, ModelSignature

_log = logging.getLogger(__name__)

QUEUE_FULL = "Exceeds maximum queue size"
CANCELLED = "Request was cancelled"

Result = InferResponse | ProtocolError
Completion = Callable[[Result], None]
StreamCallback = Callable[[Result | None, bool], None]


def _not_cancelled() -> bool:
    return False


class ExecRequest:
    """One request for a model, and where its answer goes.

    Exactly one terminal call is made (see the module docstring): ``complete(result)`` when
    ``stream`` is None, else ``stream(result, True)``. With ``stream`` set (streaming
    endpoints), each non-final response a decoupled model sends is passed on as it is sent,
    as ``stream(response, False)``; the final call carries the response sent with FINAL, or
    None for a bare FINAL, or an error. ``cancelled()`` turns true once the client has gone.

    ``on_finish`` is the engine's hook (statistics), called inside the terminal call, before
    the answer is delivered. The instance running the job marks when its inputs were ready for
    the model (``input_end``) and when the model's outputs began to be taken (``output_start``),
    in ``time.monotonic_ns()``, and reports each response it sends through ``on_response(kind,
    sent_at, output_ns)`` (kind ``"success"``, ``"fail"`` or ``"empty_response"``; the time the
    model handed it over; the ns spent taking its outputs): Triton's compute_input/infer/output
    split and its per-response statistics. Marks left at -1 mean "not measured".
    """

    __slots__ = (
        "request", "complete", "cancelled", "stream", "on_finish", "on_response", "compute_start", "input_end",
        "output_start", "_lock", "_done",
    )

    def __init__(
        self,
        request: InferRequest,
        complete: Completion,
        cancelled: Callable[[], bool] = _not_cancelled,
        stream: StreamCallback | None = None,
    ) -> None:
        self.request = request
        self.complete = complete
        self.cancelled = cancelled
        self.stream = stream
        self.on_finish: Callable[[Result | None], None] | None = None
        self.on_response: Callable[[str, int, int], None] | None = None
        self.compute_start = -1  # set by the worker when the job's batch starts
        self.input_end = -1
        self.output_start = -1
        self._lock = threading.Lock()
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the terminal call has been made."""
        return self._done

    def finish(self, result: Result | None) -> bool:
        """Make the terminal call with ``result``; False (and nothing happens) if it was made already.

        Safe from any thread: the flag is tested and set under the job's lock, so two threads
        racing to finish (a model's late response and an unload's drop, say) cannot both win.
        """
        with self._lock:
            if self._done:
                return False
            self._done = True
        # call_logged, inline: this runs once for every request.
        try:
            if self.on_finish is not None:
                self.on_finish(result)
        except Exception:
            _log.exception("completion callback failed")
        try:
            if self.stream is not None:
                self.stream(result, True)
            else:
                self.complete(result)  # type: ignore[arg-type]
        except Exception:
            _log.exception("completion callback failed")
        return True

    def compute_split(self, start: int, end: int) -> tuple[int, int, int]:
        """Triton's (compute_input, compute_infer, compute_output) ns of a job that ran from ``start``
        to ``end``, from the marks its instance left (a mark left unset counts as no time)."""
        input_end = self.input_end if self.input_end >= start else start
        output_start = self.output_start if self.output_start >= input_end else end
        return input_end - start, output_start - input_end, max(end - output_start, 0)

    def send(self, partial: InferResponse) -> None:
        """Pass on a non-final response of a streaming job; dropped once the job is finished."""
        if self.stream is not None and not self._done:
            call_logged(self.stream, partial, False)


def response_kind(result: Result | None) -> str:
    """A sent response's outcome for ``on_response``: success, fail, or empty_response (a bare final flag)."""
    return "empty_response" if result is None else "fail" if isinstance(result, ProtocolError) else "success"


def call_logged(callback: Callable[..., Any], *args: Any) -> None:
    """Run a completion callback; its failure is evserve's bug, logged, and never the caller's."""
    try:
        callback(*args)
    except Exception:
        _log.exception("completion callback failed")


class ModelInstance(Protocol):
    """What a worker needs of one model instance (in-process, or a proxy to a child process)."""

    def execute(self, batch: list[ExecRequest]) -> None:
        """Run the model once on ``batch``; every job in it is finished, now or later."""

    def finalize(self) -> None: ...

    @property
    def has_readiness_check(self) -> bool: ...

    def check_ready(self) -> bool:
        """The model's own readiness (Triton's bounded ``is_ready()``); may block, never on a loop thread."""


class ModelStatistics(Protocol):
    """The statistics a served version keeps (Triton's ``model_stats`` entry)."""

    def snapshot(self) -> dict[str, Any]: ...

    def failure_counts(self) -> dict[str, int]: ...


class ServedModel(Protocol):
    """What the HTTP layer may use of one loaded model version.

    ``submit`` and the cheap properties are called on loop threads and never block;
    ``check_ready`` and ``labels`` may block (they run on the offload pool or a worker).
    """

    name: str
    version_str: str
    signature: ModelSignature
    stats: ModelStatistics
    load_seconds: float

    decoupled: bool
    max_batch_size: int

    @property
    def queued(self) -> int: ...

    def submit(self, job: ExecRequest) -> None:
        """Queue ``job`` or raise :class:`~evserve.protocol.errors.ProtocolError` (503 when full) at once."""

    def stats_entry(self) -> dict[str, Any]: ...

    @property
    def has_readiness_check(self) -> bool: ...

    def check_ready(self) -> bool: ...

    def labels(self, output_name: str) -> list[str]:
        """Class labels of a classification output (disk I/O, cached): call off the loop threads."""


__all__ = [
    "CANCELLED",
    "QUEUE_FULL",
    "Completion",
    "ExecRequest",
    "ModelInstance",
    "ModelStatistics",
    "Result",
    "ServedModel",
    "StreamCallback",
    "call_logged",
    "response_kind",
]
