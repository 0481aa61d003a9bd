"""Errors that carry their HTTP status, and Triton's error-code → status table.

One table decides the status of every failure (Triton's ``HttpCodeFromError``): the
handlers never pick numbers of their own. Client mistakes are 4xx, always, so the body is
``{"error": "<message>"}`` and never a traceback.
"""

from __future__ import annotations

import enum

import orjson


class TritonCode(enum.IntEnum):
    """Triton's error codes (TRITONSERVER_Error_Code), as the python backend names them."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7


_STATUS_OF_CODE = {
    TritonCode.INTERNAL: 500,
    TritonCode.NOT_FOUND: 404,
    TritonCode.UNAVAILABLE: 503,
    TritonCode.UNSUPPORTED: 501,
}


def status_of_code(code: int) -> int:
    """HTTP status for a Triton error code: INTERNAL 500, NOT_FOUND 404, UNAVAILABLE 503,
    UNSUPPORTED 501, everything else (INVALID_ARG, UNKNOWN, ALREADY_EXISTS, CANCELLED) 400."""
    try:
        return _STATUS_OF_CODE.get(TritonCode(code), 400)
    except ValueError:
        return 400


class ProtocolError(Exception):
    """A failure the client is told about: ``status`` and ``{"error": message}``."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers

    def body(self) -> bytes:
        return error_body(self.message)


class BadRequest(ProtocolError):
    status = 400


class NotFound(ProtocolError):
    status = 404



class PayloadTooLarge(ProtocolError):
    status = 413


class Unavailable(ProtocolError):
    status = 503


class Unsupported(ProtocolError):
    status = 501


class UnsupportedMediaType(ProtocolError):
    status = 415


def error_body(message: str) -> bytes:
    """The compact one-key JSON object every non-2xx reply carries."""
    return orjson.dumps({"error": message})
