"""``pb_utils.Logger``: models' log lines go to the ``evserve.model`` logger."""

from __future__ import annotations

import enum
import logging

_log = logging.getLogger("evserve.model")


class Logger:
    """Model logging into evserve's log (logger ``evserve.model``), tagged with the caller's line."""

    class LogLevel(enum.IntEnum):
        INFO = 0
        WARNING = 1
        ERROR = 2
        VERBOSE = 3

    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        _emit(Logger.LogLevel(level), message)

    @staticmethod
    def log_info(message: str) -> None:
        _emit(Logger.LogLevel.INFO, message)

    @staticmethod
    def log_warn(message: str) -> None:
        _emit(Logger.LogLevel.WARNING, message)

    @staticmethod
    def log_error(message: str) -> None:
        _emit(Logger.LogLevel.ERROR, message)

    @staticmethod
    def log_verbose(message: str) -> None:
        _emit(Logger.LogLevel.VERBOSE, message)


_LOGGING_LEVEL = {
    Logger.LogLevel.INFO: logging.INFO,
    Logger.LogLevel.WARNING: logging.WARNING,
    Logger.LogLevel.ERROR: logging.ERROR,
    Logger.LogLevel.VERBOSE: logging.DEBUG,
}


def _emit(level: Logger.LogLevel, message: str) -> None:
    # stacklevel 3: past _emit and the Logger method, to the model's own line.
    _log.log(_LOGGING_LEVEL[level], "%s", message, stacklevel=3)
