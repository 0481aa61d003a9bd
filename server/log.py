"""Logging setup: the ``evserve`` logger tree, and an access log that verbosity turns on.

``--log-verbose N`` > 0 turns on DEBUG for evserve's loggers and one ``evserve.access`` line per
reply (method, path, status, bytes). The hot path checks one module-level bool, so the access
log costs nothing while it is off.
"""

from __future__ import annotations

import logging
import sys

access = logging.getLogger("evserve.access")
# Read on every reply; set once by configure(), before any loop thread starts.
ACCESS_LOG = False


def configure(verbose: int = 0) -> None:
    global ACCESS_LOG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s"))
    root = logging.getLogger("evserve")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 0 else logging.INFO)
    root.propagate = False
    ACCESS_LOG = verbose > 0


def log_access(method: str, path: str, version: str, status: int, length: int) -> None:
    access.debug('"%s %s HTTP/%s" %d %d', method, path, version, status, length)
