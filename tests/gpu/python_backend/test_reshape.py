"""Config ``reshape``: the model sees the reshaped tensors, the client sends and gets ``dims``."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.model_manager import ModelManager
from evserve.protocol.types import InferRequest, InferResponse, InputTensor

# The model reports the shape it was given (SEEN) and returns its input doubled, in that shape.
MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            seen = np.array(x.shape, dtype=np.int64)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x * 2), pb_utils.Tensor("SEEN", seen)]))
        return out
"""

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "IN" data_type: TYPE_INT32 dims: {dims} reshape: {{ shape: {reshape} }} }} ]
output [
  {{ name: "OUT" data_type: TYPE_INT32 dims: {dims} reshape: {{ shape: {reshape} }} }},
  {{ name: "SEEN" data_type: TYPE_INT64 dims: [ -1 ] }}
]
"""


def _run(tmp_path: Path, name: str, max_batch_size: int, dims: str, reshape: str, data: np.ndarray) -> InferResponse:
    (tmp_path / name / "1").mkdir(parents=True)
    config = CONFIG.format(name=name, max_batch_size=max_batch_size, dims=dims, reshape=reshape)
    (tmp_path / name / "config.pbtxt").write_text(config)
    (tmp_path / name / "1" / "model.py").write_text(MODEL_PY)
    manager = ModelManager([str(tmp_path)])
    manager.start()
    try:
        assert manager.wait_startup(30) and not manager.startup_errors(), manager.startup_errors()
        version = manager.get(name)
        done: queue.Queue[Any] = queue.Queue()
        request = InferRequest(name, "1", inputs=[InputTensor("IN", "INT32", data.shape, data)])
        version.submit(ExecRequest(request, done.put))
        result = done.get(timeout=10)
    finally:
        manager.stop(5)
    assert isinstance(result, InferResponse), result
    return result


def _outputs(result: InferResponse) -> dict[str, np.ndarray]:
    return {o.name: o.data for o in result.outputs}


def test_reshape_without_batching(tmp_path: Path) -> None:
    data = np.arange(4, dtype=np.int32)
    out = _outputs(_run(tmp_path, "square", 0, "[ 4 ]", "[ 2, 2 ]", data))
    assert list(out["SEEN"]) == [2, 2]
    np.testing.assert_array_equal(out["OUT"], data * 2)  # back in dims [4]


@pytest.mark.parametrize("batch", [1, 3])
def test_reshape_keeps_the_batch_dimension(tmp_path: Path, batch: int) -> None:
    """Triton's common form: dims [1] reshaped to a scalar per batch row."""
    data = np.arange(batch, dtype=np.int32).reshape(batch, 1)
    out = _outputs(_run(tmp_path, "scalars", 4, "[ 1 ]", "[ ]", data))
    assert list(out["SEEN"]) == [batch]
    assert out["OUT"].shape == (batch, 1)
    np.testing.assert_array_equal(out["OUT"], data * 2)
