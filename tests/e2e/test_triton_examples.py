"""Triton's own example clients must run unchanged against ``evserve --server-name triton``.

The clients live in the triton-inference-server/client repository (src/python/examples),
which is not part of evserve: point ``EVSERVE_TRITON_EXAMPLES`` at a folder holding them to
run these tests; without it they are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from tests.evserve_process import EvserveProcess

EXAMPLES = os.environ.get("EVSERVE_TRITON_EXAMPLES", "")
pytestmark = pytest.mark.skipif(not EXAMPLES, reason="set EVSERVE_TRITON_EXAMPLES to Triton's example clients")

INFERENCE_CLIENTS = (
    "simple_http_infer_client.py",
    "simple_http_async_infer_client.py",
    "simple_http_aio_infer_client.py",
    "simple_http_string_infer_client.py",
    "simple_http_health_metadata.py",
    "simple_http_sequence_sync_infer_client.py",
)


def _run(script: str, server: EvserveProcess) -> subprocess.CompletedProcess[str]:
    path = Path(EXAMPLES) / script
    return subprocess.run([sys.executable, str(path), "-u", server.url], capture_output=True, text=True, timeout=120)


def test_inference_clients_run_unchanged() -> None:
    with EvserveProcess("--server-name", "triton") as server:
        for script in INFERENCE_CLIENTS:
            done = _run(script, server)
            assert done.returncode == 0, f"{script}:\n{done.stdout}\n{done.stderr}"


# simple_http_model_control.py insists on a repository of exactly seven models, as Triton's own
# example repository is; the bundled one holds more, so it runs on seven of them.
SEVEN_MODELS = ("simple", "simple_string", "simple_identity", "identity_fp32", "identity_all", "repeat_int32",
                "simple_sequence")


def test_model_control_client_runs_unchanged(tmp_path: Path) -> None:
    for name in SEVEN_MODELS:
        shutil.copytree(Path(EXAMPLE_REPOSITORY) / name, tmp_path / name)
    with EvserveProcess("--server-name", "triton", "--model-control-mode", "explicit",
                        "--model-repository", str(tmp_path)) as server:
        done = _run("simple_http_model_control.py", server)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert "PASS: model control" in done.stdout


SHARED_MEMORY_CLIENTS = (
    "simple_http_shm_client.py",
    "simple_http_shm_string_client.py",
    "reuse_infer_objects_client.py",  # imports tritonclient.grpc, then speaks HTTP
)


def test_shared_memory_clients_run_unchanged() -> None:
    pytest.importorskip("tritonclient.grpc", reason="reuse_infer_objects_client.py imports tritonclient.grpc")
    with EvserveProcess("--server-name", "triton", "--allow-client-shm=true") as server:
        for script in SHARED_MEMORY_CLIENTS:
            done = _run(script, server)
            assert done.returncode == 0, f"{script}:\n{done.stdout}\n{done.stderr}"
