"""Model ready asks the model's own is_ready() (Triton's python backend), off the loop thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import call
from tests.evserve_process import EvserveProcess

MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]

    {is_ready}
"""

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
"""

CHECKS = {
    "says_yes": "def is_ready(self):\n        return True",
    "says_no": "def is_ready(self):\n        return False",
    "says_no_async": "async def is_ready(self):\n        return False",
    "raises": "def is_ready(self):\n        raise RuntimeError('broken probe')",
    "no_check": "",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvserveProcess]:
    root: Path = tmp_path_factory.mktemp("repo")
    for name, check in CHECKS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(MODEL.format(is_ready=check))
    with EvserveProcess("--model-repository", str(root), "--threads", "1") as proc:
        yield proc


@pytest.mark.parametrize(
    ("model", "status"),
    [("says_yes", 200), ("no_check", 200), ("says_no", 400), ("says_no_async", 400), ("raises", 400)],
)
def test_model_ready_follows_is_ready(server: EvserveProcess, model: str, status: int) -> None:
    reply = call(server.port, "GET", f"/v2/models/{model}/ready")
    assert reply.status == status
    if status == 400:
        assert reply.error == "Model version not ready"
    assert call(server.port, "GET", "/v2/health/live").status == 200
