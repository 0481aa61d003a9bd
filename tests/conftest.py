"""Test-wide collection rules.

tritonclient's HTTP client (gevent) does not install or run on a free-threaded CPython. The
modules that use it as a client library are left out of collection there; the e2e suite still
drives a free-threaded server from the standard interpreter (EVSERVE_SERVER_PYTHON, see
tests/evserve_process.py), so those tests run against both builds.
"""

from __future__ import annotations

import importlib

NEEDS_TRITONCLIENT_HTTP = [
    "e2e/test_infer_tritonclient.py",
    "e2e/test_repository_api.py",
    "e2e/test_sequence_batching.py",
    "e2e/test_shared_memory.py",
    "protocol/test_codec_properties.py",
    "protocol/test_infer_codec.py",
]


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except (ImportError, RuntimeError):  # tritonclient raises RuntimeError without its http extra
        return False
    return True


collect_ignore = [] if _importable("tritonclient.http") else NEEDS_TRITONCLIENT_HTTP
