"""``TritonError`` and ``TritonModelException``, as models raise and inspect them."""

from __future__ import annotations

from evserve.protocol.errors import TritonCode


class TritonError(Exception):
    """An error a model reports for one request: ``InferenceResponse(error=TritonError(...))``.

    The code picks the HTTP status (INVALID_ARG → 400, UNAVAILABLE → 503, ...). Triton's class is
    not an exception; evserve's also may be raised from ``execute``, which then fails the whole
    batch with this code and message instead of a 500.
    """

    UNKNOWN = TritonCode.UNKNOWN
    INTERNAL = TritonCode.INTERNAL
    NOT_FOUND = TritonCode.NOT_FOUND
    INVALID_ARG = TritonCode.INVALID_ARG
    UNAVAILABLE = TritonCode.UNAVAILABLE
    UNSUPPORTED = TritonCode.UNSUPPORTED
    ALREADY_EXISTS = TritonCode.ALREADY_EXISTS
    CANCELLED = TritonCode.CANCELLED

    def __init__(self, message: str, code: int = TritonCode.INTERNAL) -> None:
        if message is None:
            raise TypeError("TritonError: message must not be None")
        super().__init__(message)
        self._message = str(message)
        self._code = TritonCode(code)

    def message(self) -> str:
        return self._message

    def code(self) -> TritonCode:
        return self._code

    def __str__(self) -> str:
        return self._message


class TritonModelException(Exception):
    """Raised by the backend API on misuse, and by models to fail initialize/execute/finalize."""

    def message(self) -> str:
        """The message, as Triton's older python implementation offered it."""
        return str(self)
