"""HTTPAPIServer: the KServe v2 / Triton HTTP API on top of the HTTPServer base.

``handle`` is the router. It runs on the loop thread that owns the connection and only does
cheap work there: health, metadata and config are answered inline; inference, model control,
the repository index and is_ready() checks pause the connection and hand a ticket to the
model's queue, the model-control executor or the offload pool, whose reply comes back
through ``defer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from evserve.gpu.shared_memory import RegionRegistry
from evserve.protocol.errors import ProtocolError
from evserve.protocol.paths import METHODS, ROUTES, Endpoint, Route, match
from evserve.server.config import Config
from evserve.server.exchange import Request, Response
from evserve.server.generate_handlers import GenerateHandlers
from evserve.server.http_server import HTTPServer
from evserve.server.logging_handlers import logging_settings
from evserve.server.model_handlers import ModelHandlers
from evserve.server.offload import OffloadPool
from evserve.server.repository_handlers import RepositoryHandlers
from evserve.server.responses import empty_reply, error_reply, json_reply, parse_json_body
from evserve.server.restricted_api import restrictions_by_endpoint
from evserve.server.runtime import loop_thread_count, server_version
from evserve.server.shm_handlers import SharedMemoryHandlers
from evserve.server.trace import TraceManager

if TYPE_CHECKING:
    from evserve.gpu.model_manager import ModelManager

log = logging.getLogger("evserve.server")

# Extensions evserve implements, in Triton's order (metadata `extensions`).
EXTENSIONS = (
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "cuda_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
    "msgpack_tensor_data",
)


# Health answers with an empty body: 200, or 400 when not live/ready (Triton's statuses).
_OK, _NOT_OK = empty_reply(200), empty_reply(400)


class HTTPAPIServer(HTTPServer):
    """The v2 API (Triton's HTTPAPIServer)."""

    thread_prefix = "evserve-http"

    def __init__(self, config: Config, manager: ModelManager) -> None:
        super().__init__(
            config.http_address,
            config.http_port,
            threads=loop_thread_count(config.threads, cap_to_cores=config.cap_threads_to_cores),
            limits=config.limits,
            reuse_port=config.reuse_port,
        )
        self.config = config
        self.manager = manager
        # The drain grace (--drain-grace-secs): ready answers 400 while everything else is served.
        self.draining = False
        # Stop has begun: health answers 503 "Server exiting" on the connections still open.
        self.exiting = False
        self._restricted = restrictions_by_endpoint(config.restricted_apis)
        self._metadata = json_reply(
            {"name": config.server_name, "version": server_version(), "extensions": list(EXTENSIONS)}, shared=True
        )
        # Two threads: decoding releases the GIL in zlib and NumPy; 64 jobs bound the memory held.
        self.offload = OffloadPool(threads=2, capacity=64)
        self.shm_regions = RegionRegistry(
            max_regions=config.client_shm_max_regions, max_region_bytes=config.client_shm_max_region_size
        )
        shm = SharedMemoryHandlers(self.shm_regions, self.offload, allowed=config.allow_client_shm)
        self.traces = TraceManager(config.trace)
        models = ModelHandlers(manager, config, self.offload, self.shm_regions, self.traces)
        generate = GenerateHandlers(manager, config, self.offload, self.traces)
        repository = RepositoryHandlers(manager, self.offload, sync_control=config.sync_model_control)
        self._routes: dict[Endpoint, Callable[[Request, Route], Response | None]] = {
            Endpoint.HEALTH_LIVE: self._health_live,
            Endpoint.HEALTH_READY: self._health_ready,
            Endpoint.SERVER_METADATA: self._server_metadata,
            Endpoint.MODEL_METADATA: models.metadata,
            Endpoint.MODEL_READY: models.ready,
            Endpoint.MODEL_CONFIG: models.config,
            Endpoint.MODEL_STATS: models.stats,
            Endpoint.MODEL_INFER: models.infer,
            Endpoint.MODEL_GENERATE: generate.generate,
            Endpoint.MODEL_GENERATE_STREAM: generate.generate_stream,
            Endpoint.LOGGING: logging_settings,
            Endpoint.TRACE: self._trace_settings,
            Endpoint.MODEL_TRACE: self._trace_settings,
            Endpoint.SYSTEM_SHM: shm.handle,
            Endpoint.CUDA_SHM: shm.handle,
            Endpoint.REPOSITORY_INDEX: repository.index,
            Endpoint.REPOSITORY_LOAD: repository.load,
            Endpoint.REPOSITORY_UNLOAD: repository.unload,
            Endpoint.REPOSITORY_NAMED_CONTROL: repository.named_control,
        }

    def stop(self, timeout: float) -> None:
        super().stop(timeout)
        self.offload.shutdown()
        self.shm_regions.close()
        self.traces.stop()

    def handle(self, request: Request) -> Response | None:
        if self.draining:
            # Each reply of the grace closes its connection, so that keep-alive clients reconnect
            # through their balancer (to another replica) instead of being cut when the drain ends.
            request.keep_alive = False
        path = request.path
        route = ROUTES.get(path) or match(path)
        if route is None:
            return Response.error(404, "Not Found")
        if self._restricted:  # before the method check, as in Triton
            rule = self._restricted.get(route.endpoint)
            if rule is not None and request.fields.get(rule[0]) != rule[1]:
                return Response.error(403, f"This API is restricted, expecting header '{rule[2]}'")
        allowed = METHODS[route.endpoint]
        if request.method not in allowed and not (request.method == "HEAD" and "GET" in allowed):
            return Response.error(405, "Method Not Allowed")
        handler = self._routes.get(route.endpoint)
        if handler is None:
            return Response.error(501, f"the '{route.endpoint.value}' API is not supported by this server")
        try:
            return handler(request, route)
        except ProtocolError as exc:
            return error_reply(exc)

    # ------------------------------------------------------------------ health and metadata

    def _health_live(self, request: Request, route: Route) -> Response:
        if self.exiting:
            return Response.error(503, "Server exiting")
        return _OK if self.manager.live() else _NOT_OK

    def _health_ready(self, request: Request, route: Route) -> Response:
        if self.exiting:
            return Response.error(503, "Server exiting")
        return _OK if self.manager.ready() and not self.draining else _NOT_OK

    def _server_metadata(self, request: Request, route: Route) -> Response:
        return self._metadata

    def _trace_settings(self, request: Request, route: Route) -> Response:
        """``/v2[/models/{m}]/trace/setting``: the live trace settings, global or one model's (server/trace.py)."""
        model = route.model
        if model is not None and model not in self.manager.model_names():
            return Response.error(400, f"Request for unknown model : {model}")
        if request.method == "POST":
            return json_reply(self.traces.update(model, parse_json_body(request.body)).as_json())
        return json_reply(self.traces.settings(model).as_json())
