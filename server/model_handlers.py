"""Per-model endpoints: metadata, config and stats (inline), ready (inline unless the model has
is_ready(), then on the offload pool) and infer (handed off).

Inference follows Triton's path: the body is decompressed, decoded and validated here on
the loop thread, the connection is paused, and the job goes into the model's bounded queue
(full → 503 at once). Compressed bodies and large JSON heads are paused first and decoded
on the offload pool instead, so the loop thread's other connections are not kept waiting on
zlib or a long parse (the GIL still serialises pure-Python work; see offload.py). The
worker runs ``execute`` and encodes the reply (JSON head plus tensor buffers, compressed if
asked) on its own thread; the ticket defers the finished reply to the loop thread that owns
the connection.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from evserve.gpu.execution.contract import ExecRequest, ServedModel
from evserve.gpu.shared_memory import NO_LEASES, Leases, RegionRegistry
from evserve.protocol.compression import decompress
from evserve.protocol.errors import ProtocolError
from evserve.protocol.infer_codec import decode_infer_request, encode_infer_response, parse_header_length
from evserve.protocol.paths import Route
from evserve.protocol.types import InferRequest, InferResponse
from evserve.server.config import Config
from evserve.server.exchange import Request, Response, Ticket
from evserve.server.offload import HEAVY_BODY, OffloadPool
from evserve.server.responses import empty_reply, error_reply, json_reply
from evserve.server.trace import Trace, TraceManager, mark_compute, start_trace

if TYPE_CHECKING:
    from evserve.gpu.model_manager import ModelManager

log = logging.getLogger("evserve.server")

DECOUPLED_ON_INFER = "HTTP end point doesn't support models with decoupled transaction policy"


def is_msgpack(request: Request) -> bool:
    content_type = request.header("content-type")
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/msgpack"


class ModelHandlers:
    def __init__(
        self, manager: ModelManager, config: Config, offload: OffloadPool, shm: RegionRegistry, traces: TraceManager
    ) -> None:
        self.manager = manager
        self.traces = traces
        self.max_input_size = config.limits.max_input_size
        self.offload = offload
        self.shm = shm
        pattern = config.header_forward_pattern
        # --http-header-forward-pattern: request headers whose name matches reach the model as parameters.
        self.forward = re.compile(pattern, re.IGNORECASE) if pattern else None

    def metadata(self, request: Request, route: Route) -> Response:
        assert route.model is not None
        return json_reply(self.manager.metadata(route.model, route.version))

    def ready(self, request: Request, route: Route) -> Response | None:
        """READY state, then the model's own is_ready() (if it has one) off the loop thread."""
        assert route.model is not None
        if not self.manager.model_ready(route.model, route.version):
            return Response.error(400, "Model version not ready")
        served = self.manager.get(route.model, route.version)
        if not served.has_readiness_check:
            return empty_reply()
        ticket = request.pause()
        try:
            self.offload.submit(_answer_readiness, ticket, served)
        except ProtocolError as exc:
            ticket.finish(error_reply(exc))
        return None

    def config(self, request: Request, route: Route) -> Response:
        assert route.model is not None
        return json_reply(self.manager.config(route.model, route.version))

    def stats(self, request: Request, route: Route) -> Response:
        """The statistics extension: every ready version, one model's, or one version's."""
        versions = self.manager.ready_versions(route.model, route.version)
        return json_reply({"model_stats": [version.stats_entry() for version in versions]})

    def infer(self, request: Request, route: Route) -> Response | None:
        assert route.model is not None
        version = self.manager.get(route.model, route.version)
        if version.decoupled:
            return Response.error(501, DECOUPLED_ON_INFER)
        if request.repeated:
            for name in ("inference-header-content-length", "content-encoding"):
                if name in request.repeated:
                    return Response.error(400, f"more than one {name} header")
        body = _InferBody(request)
        if self.forward is not None:
            body.forwarded = {name: value for name, value in request.headers if self.forward.search(name)}
        # The shared-memory regions the request names stay mapped until its reply is encoded. A body
        # whose head never says "shared_memory_region" names none: it shares the stateless NO_LEASES.
        leases = Leases(self.shm) if body.heavy or body.names_region else NO_LEASES
        if body.heavy:
            # Decompression or a large JSON parse would stall this loop's other connections.
            ticket = request.pause()
            try:
                self.offload.submit(self._decode_and_submit, ticket, version, body, leases, request)
            except ProtocolError as exc:
                ticket.finish(error_reply(exc))
            return None
        infer_request = self._decode(version, body, leases)
        traced = self._sample(request, version, infer_request) if self.traces.active else None
        # Submitted once this loop iteration's requests are all decoded: one worker wake-up per burst.
        request.owner.after_burst(
            self._submit, request.pause(), version, infer_request, body.accept_encoding, leases, traced
        )
        return None

    def _sample(self, request: Request, version: ServedModel, infer_request: InferRequest) -> Trace | None:
        """Start a trace if this request is sampled; it rides on the request and its completion."""
        return start_trace(self.traces, request, version.name, version.version_str, infer_request)

    def _decode(self, version: ServedModel, body: _InferBody, leases: Leases) -> InferRequest:
        try:
            data = decompress(body.data, body.content_encoding, self.max_input_size)
            decoded = decode_infer_request(
                data,
                header_length=parse_header_length(body.header_length, len(data)),
                msgpack=body.msgpack,
                signature=version.signature,
                max_input_size=self.max_input_size,
                shm=leases,
            )
        except BaseException:
            leases.release()
            raise
        if body.forwarded:
            decoded.parameters = {**decoded.parameters, **body.forwarded}
        return decoded

    def _decode_and_submit(
        self, ticket: Ticket, version: ServedModel, body: _InferBody, leases: Leases, request: Request
    ) -> None:
        """On the offload pool: decode, then queue for the model like the inline path.

        The paused request is read and its trace set here; the loop thread reads it back only when
        the reply comes through the ticket's defer, which orders the two.
        """
        try:
            infer_request = self._decode(version, body, leases)
        except ProtocolError as exc:
            ticket.finish(error_reply(exc))
            return
        traced = self._sample(request, version, infer_request) if self.traces.active else None
        self._submit(ticket, version, infer_request, body.accept_encoding, leases, traced)

    @staticmethod
    def _submit(
        ticket: Ticket, version: ServedModel, infer_request: InferRequest, accept: str | None, leases: Leases,
        traced: Trace | None = None,
    ) -> None:
        completion = _Completion(ticket, infer_request, accept, version, leases)
        job = ExecRequest(request=infer_request, complete=completion, cancelled=ticket.cancelled)
        if traced is not None:
            completion.trace = (traced, job)
        try:
            version.submit(job)
        except ProtocolError as exc:
            leases.release()
            ticket.finish(error_reply(exc))


def _answer_readiness(ticket: Ticket, served: ServedModel) -> None:
    ready = served.check_ready()
    ticket.finish(empty_reply() if ready else Response.error(400, "Model version not ready"))


class _InferBody:
    """What decoding needs from the request, taken on the loop thread (the request stays there)."""

    __slots__ = (
        "data", "content_encoding", "header_length", "msgpack", "accept_encoding", "heavy", "names_region",
        "forwarded",
    )

    def __init__(self, request: Request) -> None:
        self.data = request.body
        fields = request.fields
        encoding = fields.get("content-encoding")
        self.content_encoding = encoding
        self.header_length = fields.get("inference-header-content-length")
        self.msgpack = "content-type" in fields and is_msgpack(request)
        self.accept_encoding = fields.get("accept-encoding")
        self.forwarded: dict[str, str] | None = None  # headers passed on to the model as parameters
        compressed = encoding is not None and encoding.strip().lower() not in ("", "identity")
        # A compressed body may inflate to --http-max-input-size whatever its size on the wire.
        head = self._head_length()
        self.heavy = compressed or head > HEAVY_BODY
        # Whether the (uncompressed) head mentions a shared-memory region: a scan of the head only.
        self.names_region = self.data.find(b"shared_memory_region", 0, head) >= 0

    def _head_length(self) -> int:
        """Bytes of JSON (or msgpack) to parse: the header part of a binary body, else all of it."""
        if self.header_length is not None and self.header_length.strip().isdigit():
            length = int(self.header_length)
            return length if length > 0 else 0
        return len(self.data)


class _Completion:
    """Runs on the worker thread when the model has answered: encode, then defer the reply."""

    __slots__ = ("ticket", "request", "accept_encoding", "served", "leases", "trace")

    def __init__(
        self, ticket: Ticket, request: InferRequest, accept_encoding: str | None, served: ServedModel, leases: Leases
    ) -> None:
        self.ticket = ticket
        self.request = request
        self.accept_encoding = accept_encoding
        self.served = served
        self.leases = leases
        self.trace: tuple[Trace, ExecRequest] | None = None

    def _labels(self) -> dict[str, list[str]] | None:
        """Class labels for classification outputs, read here on the worker thread (disk I/O)."""
        outputs = self.request.outputs
        if not outputs:
            return None
        wanted = [o.name for o in outputs if o.classification > 0]
        if not wanted:
            return None
        return {name: self.served.labels(name) for name in wanted}

    def __call__(self, result: InferResponse | ProtocolError) -> None:
        if self.trace is not None:
            mark_compute(*self.trace)
            if self.trace[0].tensors is not None and isinstance(result, InferResponse):
                for output in result.outputs:
                    self.trace[0].add_tensor("TENSOR_BACKEND_OUTPUT", output.name, output.datatype, output.shape,
                                             output.data)
        try:
            self._answer(result)
        finally:
            self.leases.release()  # outputs are in their regions now; an unregistered region may go

    def _answer(self, result: InferResponse | ProtocolError) -> None:
        if isinstance(result, ProtocolError):
            self.ticket.finish(error_reply(result))
            return
        try:
            reply = encode_infer_response(
                result,
                self.request,
                accept_encoding=self.accept_encoding,
                batched=self.served.max_batch_size > 0,
                labels=self._labels(),
            )
        except ProtocolError as exc:
            self.ticket.finish(error_reply(exc))
            return
        except Exception:
            log.exception("encoding the reply of model '%s' failed", self.request.model_name)
            self.ticket.finish(Response.error(500, "failed to encode the inference response"))
            return
        self.ticket.finish(Response(reply.status, reply.headers, reply.buffers))
