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
    def __init__(self, manager: ModelManager, *, sync_control: bool = False) -> None:
        self.manager = manager
        self.sync_control = sync_control

    def index(self, request: Request, route: Route) -> Response:
        body = parse_json_body(request.body)
        ready_only = False
        if isinstance(body, dict) and "ready" in body:
            ready_only = body["ready"]
            if not isinstance(ready_only, bool):
                raise BadRequest("Invalid value for 'ready': expected a boolean")
        elif body is not None and not isinstance(body, dict):
            raise BadRequest("Invalid value for 'ready': expected a boolean")
        return json_reply(self.manager.index(ready_only))

    def load(self, request: Request, route: Route) -> Response | None:
        assert route.model is not None
        params = _parameters(parse_json_body(request.body))
        return self._control(request, self.manager.load, self.manager.submit_load, route.model, params)

    def unload(self, request: Request, route: Route) -> Response | None:
        assert route.model is not None
        params = _parameters(parse_json_body(request.body))
        dependents = params.get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise BadRequest(f"Unable to parse 'unload_dependents': expected a boolean, got {dependents!r}")
        return self._control(request, self.manager.unload, self.manager.submit_unload, route.model, dependents)

    def _control(
        self,
        request: Request,
        blocking: Callable[[str, Any], None],
        submit: Callable[[str, Any, Callable[[ProtocolError | None], None]], None],
        model: str,
        argument: Any,
    ) -> Response | None:
        """Pause, hand the operation to the control executor, reply through the ticket when done."""
        if self.sync_control:
            blocking(model, argument)
            return empty_reply()
        ticket = request.pause()
        try:
            submit(model, argument, _reply_when_done(ticket))
        except ProtocolError as exc:
            ticket.finish(error_reply(exc))
        return None

    def named_control(self, request: Request, route: Route) -> Response:
        return Response.error(501, "'repository_name' specification is not supported")
