"""``/generate`` and ``/generate_stream``: the generate extension's flat JSON, one reply or an SSE stream.

The request path is infer's (model_handlers.py): decoded on the loop thread (or on the offload
pool when large), the connection paused, the job queued for the model. What differs is the
answer. The job carries a stream callback, so the engine reports every response the model
sends, as it sends it, on the model's thread:

* ``/generate_stream`` (:class:`EventStream`) turns each response into one Server-Sent Event
  and hands it to the ticket at once. The first response decides the status (an error first:
  its status and an error event; anything else: 200), a later error is a ``data: {"error"}``
  event inside the 200 stream, and the final flag ends the chunked body. The ticket's window
  (stream_window.py) bounds what waits for a slow reader: ``send`` blocks the model's thread,
  never a loop thread.
* ``/generate`` (:class:`SingleReply`) expects exactly one response. It answers once it has the
  final flag, or at once with an error when the model sends a second response. Triton answers
  that error with whatever status its first response had (often 200, or 200 with no response at
  all); evserve answers 400, a status that says the reply is an error.

A client that goes away cancels the ticket: ``is_cancelled()`` turns true for the model, and
what it sends after that is dropped without waiting.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from evserve.gpu.execution.contract import ExecRequest, Result, ServedModel
from evserve.protocol.errors import ProtocolError, error_body
from evserve.protocol.generate_codec import (
    EXACTLY_ONE,
    SSE_CONTENT_TYPE,
    decode_generate_request,
    encode_generate_response,
    sse_event,
)
from evserve.protocol.paths import Route
from evserve.protocol.types import InferRequest, InferResponse
from evserve.server.config import Config
from evserve.server.exchange import Request, Response, Ticket
from evserve.server.offload import HEAVY_BODY, OffloadPool
from evserve.server.responses import error_reply
from evserve.server.trace import Trace, TraceManager, mark_compute, start_trace

if TYPE_CHECKING:
    from evserve.gpu.model_manager import ModelManager

log = logging.getLogger("evserve.server")

ENCODING_REFUSED = "Unsupported content-encoding, only 'identity' is supported."
_SSE_HEADERS = [
    ("Content-Type", SSE_CONTENT_TYPE),
    # nginx buffers proxied replies unless told not to; events must reach the client as sent.
    ("X-Accel-Buffering", "no"),
]
_JSON_HEADERS = [("Content-Type", "application/json")]


class GenerateHandlers:
    def __init__(self, manager: ModelManager, config: Config, offload: OffloadPool, traces: TraceManager) -> None:
        self.manager = manager
        self.max_input_size = config.limits.max_input_size
        self.offload = offload
        self.traces = traces

    def generate(self, request: Request, route: Route) -> Response | None:
        return self._handle(request, route, stream=False)

    def generate_stream(self, request: Request, route: Route) -> Response | None:
        return self._handle(request, route, stream=True)

    def _handle(self, request: Request, route: Route, *, stream: bool) -> Response | None:
        assert route.model is not None
        version = self.manager.get(route.model, route.version)
        encoding = request.fields.get("content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            return Response.error(400, ENCODING_REFUSED)
        body = request.body
        if len(body) > HEAVY_BODY:
            # A large parse would stall this loop's other connections: decode on the offload pool.
            ticket = self._pause(request, stream)
            try:
                self.offload.submit(self._decode_and_submit, ticket, version, body, stream)
            except ProtocolError as exc:
                ticket.finish(error_reply(exc))
            return None
        infer_request = decode_generate_request(body, version.signature, self.max_input_size)
        traced = self._sample(request, version, infer_request) if self.traces.active else None
        request.owner.after_burst(_submit, self._pause(request, stream), version, infer_request, stream, traced)
        return None

    def _sample(self, request: Request, version: ServedModel, infer_request: InferRequest) -> Trace | None:
        return start_trace(self.traces, request, version.name, version.version_str, infer_request)

    @staticmethod
    def _pause(request: Request, stream: bool) -> Ticket:
        ticket = request.pause()
        if stream:
            ticket.open_window()
        return ticket

    def _decode_and_submit(self, ticket: Ticket, version: ServedModel, body: bytearray, stream: bool) -> None:
        try:
            infer_request = decode_generate_request(body, version.signature, self.max_input_size)
        except ProtocolError as exc:
            ticket.finish(error_reply(exc))
            return
        _submit(ticket, version, infer_request, stream)


def _submit(
    ticket: Ticket, version: ServedModel, infer_request: InferRequest, stream: bool, traced: Trace | None = None
) -> None:
    call: EventStream | SingleReply = EventStream(ticket, infer_request.id) if stream else SingleReply(
        ticket, infer_request.id
    )
    job = ExecRequest(request=infer_request, complete=call.complete, cancelled=call.cancelled, stream=call.on_response)
    if traced is not None:
        call.trace = (traced, job)
    try:
        version.submit(job)
    except ProtocolError as exc:
        ticket.finish(error_reply(exc))


def _encoded(result: InferResponse, request_id: str) -> bytes | ProtocolError:
    """The response's flat JSON, or the error that stands for it (an FP16 output, say)."""
    try:
        return encode_generate_response(result, result.id or request_id)
    except ProtocolError as exc:
        return exc
    except Exception:
        log.exception("encoding a generate response of model '%s' failed", result.model_name)
        return ProtocolError("failed to encode the inference response", 500)


class EventStream:
    """One ``/generate_stream`` request: each response the model sends becomes one SSE event.

    Called on the model's threads (a worker, the async runner, a process instance's reader, an
    unload). A lock keeps the events in the order they were produced and the head before them.
    """

    __slots__ = ("ticket", "request_id", "trace", "_lock", "_started", "_ended")

    def __init__(self, ticket: Ticket, request_id: str) -> None:
        self.ticket = ticket
        self.request_id = request_id
        self.trace: tuple[Trace, ExecRequest] | None = None
        self._lock = threading.Lock()
        self._started = False
        self._ended = False

    def cancelled(self) -> bool:
        return self.ticket.cancelled()

    def complete(self, result: Result) -> None:
        self.on_response(result, True)

    def on_response(self, result: Result | None, final: bool) -> None:
        with self._lock:
            if self._ended:
                return
            if result is not None:
                payload = result if isinstance(result, ProtocolError) else _encoded(result, self.request_id)
                if isinstance(payload, ProtocolError):
                    self._start(payload.status)
                    self.ticket.send(sse_event(error_body(payload.message)))
                else:
                    self._start(200)
                    self.ticket.send(sse_event(payload))
            if final:
                self._start(200)  # no response at all: an empty 200 stream
                self._ended = True
                if self.trace is not None:
                    mark_compute(*self.trace)
                self.ticket.end()

    def _start(self, status: int) -> None:
        """The first event decides the status (Triton's rule); later ones go into the open stream."""
        if not self._started:
            self._started = True
            self.ticket.start_stream(status, list(_SSE_HEADERS))


class SingleReply:
    """One ``/generate`` request: exactly one response is expected, answered as one JSON object."""

    __slots__ = ("ticket", "request_id", "trace", "_lock", "_held", "_answered")

    def __init__(self, ticket: Ticket, request_id: str) -> None:
        self.ticket = ticket
        self.request_id = request_id
        self.trace: tuple[Trace, ExecRequest] | None = None
        self._lock = threading.Lock()
        self._held: InferResponse | None = None
        self._answered = False

    def cancelled(self) -> bool:
        # Once answered (an error, or a second response refused) nothing the model sends is read.
        return self._answered or self.ticket.cancelled()

    def complete(self, result: Result) -> None:
        self.on_response(result, True)

    def on_response(self, result: Result | None, final: bool) -> None:
        with self._lock:
            if self._answered:
                return
            if isinstance(result, ProtocolError):
                self._answer(error_reply(result) if self._held is None else _exactly_one())
                return
            if result is not None:
                if self._held is not None:
                    self._answer(_exactly_one())
                    return
                self._held = result
            if final:
                held = self._held
                if held is None:
                    self._answer(_exactly_one())
                    return
                payload = _encoded(held, self.request_id)
                if isinstance(payload, ProtocolError):
                    self._answer(error_reply(payload))
                else:
                    self._answer(Response(200, list(_JSON_HEADERS), [payload]))

    def _answer(self, response: Response) -> None:
        self._answered = True
        if self.trace is not None:
            mark_compute(*self.trace)
        self.ticket.finish(response)


def _exactly_one() -> Response:
    return Response.error(400, EXACTLY_ONE)
