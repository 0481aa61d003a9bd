"""Small builders for the replies the handlers give, so status and body rules live in one place."""

from __future__ import annotations

from typing import Any

import orjson

from evserve.protocol.errors import ProtocolError
from evserve.protocol.json_codec import loads
from evserve.server.exchange import Response

JSON = [("Content-Type", "application/json")]


def json_reply(obj: Any, status: int = 200, *, shared: bool = False) -> Response:
    """``obj`` as a JSON reply; ``shared`` for a reply built once and sent many times."""
    return Response(status, list(JSON), [orjson.dumps(obj)], shared=shared)


# Replies are never changed once built, so the empty ones are built once per status. Shared by
# every loop thread: dict.setdefault is atomic (also without the GIL), so racing threads agree on one.
_EMPTY: dict[int, Response] = {}


def empty_reply(status: int = 200) -> Response:
    """Health and model-ready answer with an empty body, as Triton does."""
    reply = _EMPTY.get(status)
    if reply is None:
        reply = _EMPTY.setdefault(status, Response(status, shared=True))
    return reply


def error_reply(exc: ProtocolError) -> Response:
    return Response.error(exc.status, exc.message, exc.headers)


def parse_json_body(body: bytes | bytearray) -> Any:
    """An optional JSON body (tritonclient posts empty bodies): None when empty, else the object."""
    if not body or body.isspace():  # isspace scans without copying the body
        return None
    return loads(body)
