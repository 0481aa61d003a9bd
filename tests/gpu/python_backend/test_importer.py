"""Importing a model on a free-threaded build: a module that turns the GIL back on is named.

Runs in a fresh interpreter each time, because once an import has turned the GIL on it stays on
for the whole process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evserve.server.runtime import free_threaded_build

pytestmark = pytest.mark.skipif(not free_threaded_build(), reason="needs a free-threaded CPython (3.14t)")

# python-rapidjson comes with tritonclient and has not declared free-threading support.
CULPRIT = "rapidjson"

IMPORT_MODEL = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from evserve.gpu.python_backend.importer import import_model_file
import_model_file("m", 1, sys.argv[1])
print("GIL", sys._is_gil_enabled())
"""


def run(version_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", IMPORT_MODEL, str(version_dir)],
                          capture_output=True, text=True, timeout=60)


def turns_gil_on(module: str) -> bool:
    probe = f"import sys, {module}; print(sys._is_gil_enabled())"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"


def write_model(tmp_path: Path, imports: str) -> Path:
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(f"{imports}\n\nclass TritonPythonModel:\n    pass\n")
    return version_dir


def test_a_model_that_turns_the_gil_on_is_named(tmp_path: Path) -> None:
    if not turns_gil_on(CULPRIT):
        pytest.skip(f"{CULPRIT} now runs without the GIL: nothing here turns it on")
    result = run(write_model(tmp_path, f"import {CULPRIT}"))
    assert result.returncode == 0, result.stderr
    assert "GIL True" in result.stdout
    assert "importing model 'm' turned the GIL on" in result.stderr
    assert CULPRIT in result.stderr.split("turned the GIL on", 1)[1]


def test_a_model_that_keeps_the_gil_off_says_nothing(tmp_path: Path) -> None:
    result = run(write_model(tmp_path, "import numpy"))
    assert result.returncode == 0, result.stderr
    assert "GIL False" in result.stdout
    assert "GIL on" not in result.stderr


def test_importing_while_another_thread_imports_is_safe(tmp_path: Path) -> None:
    """sys.modules is read while other threads import (other loads, lazy imports): on a
    free-threaded build, iterating it directly can raise "dictionary changed size"."""
    import threading

    from evserve.gpu.python_backend.importer import drop_modules, import_model_file

    version_dir = write_model(tmp_path, "import numpy")
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            sys.modules[f"_evserve_churn_{n % 64}"] = sys  # type: ignore[assignment]
            sys.modules.pop(f"_evserve_churn_{(n + 32) % 64}", None)
            n += 1

    others = [threading.Thread(target=churn) for _ in range(2)]
    for thread in others:
        thread.start()
    try:
        for round_no in range(200):
            package, _ = import_model_file("m", round_no + 1, str(version_dir))
            drop_modules(package)
    finally:
        stop.set()
        for thread in others:
            thread.join()
        for n in range(64):
            sys.modules.pop(f"_evserve_churn_{n}", None)
