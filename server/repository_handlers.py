"""The model repository extension: index, load, unload.

Load and unload never run on a loop thread (the bug behind Triton issues 8635 and 8958):
the connection is paused, the work goes to the model manager's control executor, and its
``done`` callback defers the reply back to the owning loop. When the executor is full the
manager refuses at once (503). ``sync_control`` forces the blocking path on the loop thread;
it exists only so the starvation test can show that the test catches the bug.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evserve.protocol.errors import BadRequest, ProtocolError
from evserve.protocol.paths import Route
from evserve.server.exchange import Request, Response, Ticket
from evserve.server.offload import HEAVY_BODY, OffloadPool
from evserve.server.responses import empty_reply, error_reply, json_reply, parse_json_body

if TYPE_CHECKING:
    from evserve.gpu.model_manager import ModelManager


def _parameters(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    return params


def _reply_when_done(ticket: Ticket) -> Callable[[ProtocolError | None], None]:
    def done(error: ProtocolError | None) -> None:
        ticket.finish(empty_reply() if error is None else error_reply(error))

    return done


class RepositoryHandlers:
    """Each request is answered through its ticket. The index always runs on the offload pool (it
    rescans the repositories); a load or unload body over HEAVY_BODY (a load carrying ``file:``
    contents, say) is parsed there too."""

    def __init__(self, manager: ModelManager, offload: OffloadPool, *, sync_control: bool = False) -> None:
        self.manager = manager
        self.offload = offload
        self.sync_control = sync_control

    def index(self, request: Request, route: Route) -> Response | None:
        # The repositories are rescanned for every index (a model just added on disk is listed at
        # once); that is disk I/O, so it always runs on the offload pool.
        return self._answer(request, self._index, request.body, off_loop=True)

    def load(self, request: Request, route: Route) -> Response | None:
        assert route.model is not None
        return self._answer(request, self._load, route.model, request.body)

    def unload(self, request: Request, route: Route) -> Response | None:
        assert route.model is not None
        return self._answer(request, self._unload, route.model, request.body)

    def named_control(self, request: Request, route: Route) -> Response:
        return Response.error(501, "'repository_name' specification is not supported")

    # ------------------------------------------------------------------ the work

    def _index(self, ticket: Ticket, body: bytearray) -> Response:
        document = parse_json_body(body)
        ready_only = False
        if isinstance(document, dict) and "ready" in document:
            ready_only = document["ready"]
            if not isinstance(ready_only, bool):
                raise BadRequest("Invalid value for 'ready': expected a boolean")
        elif document is not None and not isinstance(document, dict):
            raise BadRequest("Invalid value for 'ready': expected a boolean")
        self.manager.refresh()
        return json_reply(self.manager.index(ready_only))

    def _load(self, ticket: Ticket, model: str, body: bytearray) -> Response | None:
        params = _parameters(parse_json_body(body))
        if self.sync_control:
            self.manager.load(model, params)
            return empty_reply()
        self.manager.submit_load(model, params, _reply_when_done(ticket))
        return None

    def _unload(self, ticket: Ticket, model: str, body: bytearray) -> Response | None:
        dependents = _parameters(parse_json_body(body)).get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise BadRequest(f"Unable to parse 'unload_dependents': expected a boolean, got {dependents!r}")
        if self.sync_control:
            self.manager.unload(model, dependents)
            return empty_reply()
        self.manager.submit_unload(model, dependents, _reply_when_done(ticket))
        return None

    # ------------------------------------------------------------------ where it runs

    def _answer(
        self, request: Request, work: Callable[..., Response | None], *args: Any, off_loop: bool = False
    ) -> None:
        """Pause, then run ``work(ticket, *args)`` here, or on the offload pool for a large body
        or when ``off_loop`` says the work itself is slow."""
        ticket = request.pause()
        if not off_loop and len(request.body) <= HEAVY_BODY:
            _run(ticket, work, args)
            return
        try:
            self.offload.submit(_run, ticket, work, args)
        except ProtocolError as exc:
            ticket.finish(error_reply(exc))


def _run(ticket: Ticket, work: Callable[..., Response | None], args: tuple[Any, ...]) -> None:
    """Run ``work``; a Response (or error) answers the ticket now, None means ``done`` will."""
    try:
        response = work(ticket, *args)
    except ProtocolError as exc:
        response = error_reply(exc)
    if response is not None:
        ticket.finish(response)
