"""protocol/ is sans-IO: importing all of it pulls in no socket, thread, loop or process module.

Run in a fresh interpreter, so that what the test process has imported already cannot hide
an import; every module of the package is imported, not only its ``__init__``.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import evserve.protocol

# Modules that would mean protocol/ does I/O or concurrency itself.
FORBIDDEN = (
    "socket", "ssl", "select", "selectors", "asyncio", "uvloop", "threading", "_thread",
    "concurrent.futures", "multiprocessing", "subprocess", "evserve.server", "evserve.gpu",
)

# The third-party libraries protocol/ builds on are imported before the baseline: what they
# import is theirs (NumPy on a free-threaded build imports threading for its own locks).
PROBE = """
import importlib, json, sys
import msgpack, numpy, orjson
before = set(sys.modules)
for name in {names!r}:
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def protocol_modules() -> list[str]:
    package = evserve.protocol
    return [package.__name__] + [
        f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
    ]


def test_protocol_modules_import_no_io_or_concurrency() -> None:
    names = protocol_modules()
    assert len(names) > 10, names  # the probe really sees the package
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(names=names)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    imported = set(json.loads(out))
    assert set(names) <= imported
    leaked = sorted(name for name in imported if name in FORBIDDEN or name.startswith(("asyncio.", "multiprocessing.")))
    assert leaked == []
