"""``GET/POST /v2/logging``: read and change the live logging settings (Triton's logging extension).

POST takes any subset of the settings; unknown keys are ignored, as Triton does, and the reply is
the settings after the change. ``log_file`` cannot be changed over the network (501, Triton's
text): a client must not choose where the server writes. Wrong types are 400 with Triton's text
(Triton answers 500 for them).
"""

from __future__ import annotations

from typing import Any

from evserve.protocol.errors import BadRequest, Unsupported
from evserve.protocol.paths import Route
from evserve.server import log as server_log
from evserve.server.exchange import Request, Response
from evserve.server.responses import json_reply, parse_json_body

_BOOLEANS = ("log_info", "log_warning", "log_error")


def _changes(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        return {}
    if "log_file" in body:
        raise Unsupported("log file location can not be updated through network protocol")
    changes: dict[str, Any] = {}
    for key in _BOOLEANS:
        if key in body:
            if type(body[key]) is not bool:
                raise BadRequest(f"Unable to parse '{key}': attempt to access JSON non-boolean as boolean")
            changes[key] = body[key]
    if "log_verbose_level" in body:
        level = body["log_verbose_level"]
        if type(level) is not int or level < 0:
            raise BadRequest(
                "Unable to parse 'log_verbose_level': attempt to access JSON non-unsigned-integer as unsigned-integer"
            )
        changes["log_verbose_level"] = level
    if "log_format" in body:
        if body["log_format"] not in server_log.FORMATS:
            raise BadRequest(f"invalid argument for --log_format, got: {body['log_format']}")
        changes["log_format"] = body["log_format"]
    return changes


def logging_settings(request: Request, route: Route) -> Response:
    if request.method == "POST":
        changes = _changes(parse_json_body(request.body))
        if changes:
            return json_reply(server_log.update(**changes).as_json())
    return json_reply(server_log.current().as_json())
