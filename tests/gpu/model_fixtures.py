"""One configurable python-backend test model, its repositories, and the ModelManager helpers.

Why one module: the manager tests and the model-control tests build the same kind of repository
(config.pbtxt + <version>/model.py) around the same model, and two copies of that model drift
apart. The model's behaviour is chosen through config ``parameters`` so that one file serves
every test: ``tag`` (echoed in the TAG output, to tell reloads apart), ``events`` (a file that
records ``init <tag>``, ``finalize <tag>`` and, with ``log_batches``, ``batch <n> <tag>``),
``exec_sleep``, ``init_sleep``, ``finalize_sleep`` (seconds) and ``init_raise`` (a message that
``initialize`` raises).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.model_manager import ModelManager
from evserve.gpu.options import ModelManagerOptions
from evserve.protocol.types import InferRequest, InferResponse, InputTensor

MODEL_PY = """
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tag = params.get("tag", "")
        self.events = params.get("events")
        self.exec_sleep = float(params.get("exec_sleep", "0"))
        self.finalize_sleep = float(params.get("finalize_sleep", "0"))
        self.log_batches = bool(params.get("log_batches"))
        self._event("init")
        time.sleep(float(params.get("init_sleep", "0")))
        if params.get("init_raise"):
            raise pb_utils.TritonModelException(params["init_raise"])

    def _event(self, what):
        if self.events:
            with open(self.events, "a") as f:
                f.write(what + " " + self.tag + "\\n")

    def execute(self, requests):
        if self.log_batches:
            self._event("batch " + str(len(requests)))
        time.sleep(self.exec_sleep)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            tag = np.array([self.tag.encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", x), pb_utils.Tensor("TAG", tag)]))
        return responses

    def finalize(self):
        time.sleep(self.finalize_sleep)
        self._event("finalize")
"""


def config_text(name: str, backend: str = "python", max_batch_size: int = 0, **params: Any) -> str:
    """The model's config.pbtxt; ``params`` become string ``parameters`` read by MODEL_PY."""
    parameters = "".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n' for key, value in params.items()
    )
    return f'''name: "{name}"
backend: "{backend}"
max_batch_size: {max_batch_size}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [
  {{ name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] }},
  {{ name: "TAG" data_type: TYPE_STRING dims: [ 1 ] }}
]
{parameters}'''


def config_json(name: str, **params: Any) -> dict[str, Any]:
    """The same configuration in the JSON form that the load API's ``config`` override takes."""
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [2]}],
        "output": [
            {"name": "OUT", "data_type": "TYPE_FP32", "dims": [2]},
            {"name": "TAG", "data_type": "TYPE_STRING", "dims": [1]},
        ],
        "parameters": {key: {"string_value": str(value)} for key, value in params.items()},
    }


def write_model(repo: Path, name: str, versions: tuple[int, ...] = (1,), *, extra: str = "", **params: Any) -> Path:
    """``repo/name`` with MODEL_PY in each version; ``extra`` is appended to config.pbtxt verbatim."""
    model_dir = repo / name
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        (model_dir / str(version) / "model.py").write_text(MODEL_PY)
    (model_dir / "config.pbtxt").write_text(config_text(name, **params) + extra)
    return model_dir


@contextmanager
def manager_factory(**defaults: Any) -> Iterator[Callable[..., ModelManager]]:
    """``make(*repos, start=True, **options)`` builds managers (``options`` over ``defaults``); all stop on exit."""
    made: list[ModelManager] = []

    def make(*repos: Path, start: bool = True, **options: Any) -> ModelManager:
        manager = ModelManager([str(r) for r in repos], ModelManagerOptions(**{**defaults, **options}))
        made.append(manager)
        if start:
            manager.start()
            assert manager.wait_startup(20)
        return manager

    try:
        yield make
    finally:
        for manager in made:
            manager.stop(10)


def submit(manager: ModelManager, name: str, version: str | None = None) -> queue.Queue[Any]:
    """Send IN=[1, 2] (one row when the model batches); the queue receives the completion."""
    served = manager.get(name, version)
    data = np.array([1.0, 2.0], dtype=np.float32)
    if served.config.max_batch_size > 0:
        data = data.reshape(1, 2)
    request = InferRequest(name, served.version_str, inputs=[InputTensor("IN", "FP32", data.shape, data)])
    box: queue.Queue[Any] = queue.Queue()
    served.submit(ExecRequest(request, box.put))
    return box


def infer(manager: ModelManager, name: str, version: str | None = None) -> InferResponse:
    result = submit(manager, name, version).get(timeout=10)
    assert isinstance(result, InferResponse), result
    return result


def tag_of(result: Any) -> str:
    assert isinstance(result, InferResponse), result
    (tag,) = [o for o in result.outputs if o.name == "TAG"]
    return tag.data.reshape(-1)[0].decode()


def infer_tag(manager: ModelManager, name: str) -> str:
    return tag_of(infer(manager, name))


def events_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
