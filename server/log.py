"""Logging: the ``evserve`` logger tree, Triton's settings and formats, and the live ``/v2/logging`` switch.

The settings are Triton's (``--log-file``, ``--log-info``, ``--log-warning``, ``--log-error``,
``--log-verbose``, ``--log-format``) and all but the file can be changed while serving through
``POST /v2/logging``. A filter on the one handler applies them per record, so a change takes
effect at once on every thread. Verbose level 1 and above turns on DEBUG for evserve's loggers and
one ``evserve.access`` line per reply (method, path, status, bytes); the hot path checks one
module-level bool, so at level 0 the access log costs nothing.

Formats: ``default`` is Triton's glog shape (``I1203 19:43:56.647862 2236 file.py:26] message``);
``ISO8601`` is ``2026-12-03T19:43:56Z I 2236 file.py:26] message``. Control characters in a
message (a client's header value, say) are escaped, so no client can forge a log line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

access = logging.getLogger("evserve.access")
# Read on every reply; written only by apply() (an atomic store), on any thread.
ACCESS_LOG = False

FORMATS = ("default", "ISO8601")
_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
                 logging.CRITICAL: "E"}
_ESCAPES = {i: f"\\x{i:02x}" for i in range(32)}
_ESCAPES[127] = "\\x7f"


@dataclass(frozen=True)
class LogSettings:
    """Triton's logging settings, in the shape ``GET /v2/logging`` answers."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class _Switch(logging.Filter):
    """Drops the records the current settings turn off (the settings object is swapped whole)."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        settings = self.settings
        level = record.levelno
        if level >= logging.ERROR:
            return settings.log_error
        if level >= logging.WARNING:
            return settings.log_warning
        if level >= logging.INFO:
            return settings.log_info
        return settings.log_verbose_level > 0


class _TritonFormatter(logging.Formatter):
    def __init__(self, settings_of: _Switch) -> None:
        super().__init__()
        self._switch = settings_of
        self._pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().translate(_ESCAPES)  # one record, one line: nothing can forge another
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        letter = _LEVEL_LETTER.get(record.levelno, "I")
        where = f"{record.filename}:{record.lineno}"
        if self._switch.settings.log_format == "ISO8601":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            return f"{stamp} {letter} {self._pid} {where}] {message}"
        local = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        return f"{letter}{time.strftime('%m%d %H:%M:%S', local)}.{micros:06d} {self._pid} {where}] {message}"


_lock = threading.Lock()
_switch = _Switch(LogSettings())


def configure(settings: LogSettings | None = None) -> None:
    """Install the handler (stderr, or ``log_file``) and apply ``settings``; once, at start."""
    settings = settings or LogSettings()
    handler: logging.Handler
    handler = logging.FileHandler(settings.log_file) if settings.log_file else logging.StreamHandler(sys.stderr)
    handler.addFilter(_switch)
    handler.setFormatter(_TritonFormatter(_switch))
    root = logging.getLogger("evserve")
    root.handlers[:] = [handler]
    root.propagate = False
    apply(settings)


def current() -> LogSettings:
    return _switch.settings


def apply(settings: LogSettings) -> None:
    """Make ``settings`` the live ones (any thread)."""
    global ACCESS_LOG
    with _lock:
        _switch.settings = settings
        logging.getLogger("evserve").setLevel(logging.DEBUG if settings.log_verbose_level > 0 else logging.INFO)
        ACCESS_LOG = settings.log_verbose_level > 0


def update(**changes: Any) -> LogSettings:
    """Change some settings (already validated) and return the new ones."""
    with _lock:
        new = replace(_switch.settings, **changes)
    apply(new)
    return new


def log_access(method: str, path: str, version: str, status: int, length: int) -> None:
    access.debug('"%s %s HTTP/%s" %d %d', method, path, version, status, length, stacklevel=2)
