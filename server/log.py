"""Logging setup: loggers ``evserve.error`` and ``evserve.access``, Triton-like verbosity.

``--log-verbose N`` > 0 turns on DEBUG for evserve's loggers; the default is INFO.
"""

from __future__ import annotations

import logging
import sys


def configure(verbose: int = 0) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s"))
    root = logging.getLogger("evserve")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 0 else logging.INFO)
    root.propagate = False
