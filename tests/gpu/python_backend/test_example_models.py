"""Every model of the bundled example repository, loaded the way the server loads it, and run."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.python_backend.instance import PythonModelInstance
from evserve.gpu.python_backend.model import PythonModel
from evserve.gpu.repository.config_complete import complete_config
from evserve.gpu.repository.config_parse import read_config
from evserve.gpu.repository.model_config import ModelConfig
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, InferResponse, InputTensor

MODELS = {
    "simple", "simple_string", "simple_identity", "identity_fp32", "identity_all", "gpu_add", "repeat_int32",
    "text_stream", "bls_simple", "simple_sequence", "sequence_accumulator",
}


def load_example(name: str, *, gpu_count: int = 0) -> tuple[ModelConfig, PythonModelInstance]:
    model_dir = os.path.join(EXAMPLE_REPOSITORY, name)
    source = os.path.join(model_dir, "config.pbtxt")
    cfg = complete_config(
        read_config(model_dir), name, source, model_dir=model_dir, gpu_count=gpu_count, check_io=False
    )
    module = PythonModel.import_version(model_dir, name, 1)
    config = ModelConfig(
        complete_config(module.auto_complete(cfg), name, source, model_dir=model_dir, gpu_count=gpu_count)
    )
    group = config.instance_groups[0]
    kind = "GPU" if group.kind == "KIND_GPU" else "CPU"
    device_id = group.gpus[0] if group.gpus else 0
    return config, module.create_instance(config, 1, kind, device_id, model_dir)


def infer(instance: PythonModelInstance, name: str, inputs: dict[str, tuple[str, np.ndarray]]) -> InferResponse:
    result = infer_result(instance, name, inputs)
    assert isinstance(result, InferResponse), result
    return result


def infer_result(
    instance: PythonModelInstance, name: str, inputs: dict[str, tuple[str, np.ndarray]]
) -> InferResponse | ProtocolError:
    results: list[Any] = []
    tensors = [InputTensor(key, datatype, array.shape, array) for key, (datatype, array) in inputs.items()]
    instance.execute([ExecRequest(InferRequest(name, "1", inputs=tensors), results.append)])
    assert len(results) == 1
    return results[0]


def outputs(response: InferResponse) -> dict[str, Any]:
    return {o.name: o for o in response.outputs}


def bytes_array(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    return np.array([str(v).encode() if not isinstance(v, bytes) else v for v in values], dtype=np.object_).reshape(
        shape
    )


# Models with no model.py of their own (they run the python models above); tests/e2e runs them.
ENSEMBLES = {"simple_ensemble"}


def test_the_repository_holds_the_documented_models() -> None:
    assert {entry for entry in os.listdir(EXAMPLE_REPOSITORY) if not entry.startswith(".")} == MODELS | ENSEMBLES


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_loads_with_a_python_backend_config(name: str) -> None:
    config, instance = load_example(name)
    assert config.name == name
    assert config.backend == "python"
    assert instance.is_ready()
    instance.finalize()


def test_simple() -> None:
    _, instance = load_example("simple")
    in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    in1 = np.ones((1, 16), dtype=np.int32)
    out = outputs(infer(instance, "simple", {"INPUT0": ("INT32", in0), "INPUT1": ("INT32", in1)}))
    assert out["OUTPUT0"].datatype == "INT32" and out["OUTPUT0"].shape == (1, 16)
    assert out["OUTPUT0"].data.tolist() == (in0 + in1).tolist()
    assert out["OUTPUT1"].data.tolist() == (in0 - in1).tolist()


def test_simple_completes_a_config_that_names_no_tensors() -> None:
    """A load-time `config` override such as {"max_batch_size": 16} keeps the model's tensors."""
    model_dir = os.path.join(EXAMPLE_REPOSITORY, "simple")
    module = PythonModel.import_version(model_dir, "simple", 1)
    partial = complete_config({"max_batch_size": 16}, "simple", "config", model_dir=model_dir, check_io=False)
    config = ModelConfig(complete_config(module.auto_complete(partial), "simple", "config", model_dir=model_dir))
    assert config.max_batch_size == 16
    assert [i["name"] for i in config.raw["input"]] == ["INPUT0", "INPUT1"]
    assert config.metadata(["1"])["outputs"][0]["shape"] == [-1, 16]


def test_repeat_int32_streams_one_response_per_element() -> None:
    config, instance = load_example("repeat_int32")
    assert config.decoupled
    streamed: list[tuple[Any, bool]] = []
    values_in = np.array([4, 5, 6], np.int32)
    request = InferRequest("repeat_int32", "1", inputs=[InputTensor("IN", "INT32", (3,), values_in)])
    instance.execute([ExecRequest(request, lambda r: None, stream=lambda r, final: streamed.append((r, final)))])
    values = [int(r.outputs[0].data[0]) for r, final in streamed if r is not None]
    assert values == [4, 5, 6]
    assert streamed[-1][1] is True and sum(final for _, final in streamed) == 1
    instance.finalize()


def test_simple_string() -> None:
    _, instance = load_example("simple_string")
    in0 = bytes_array(list(range(16)), (1, 16))
    in1 = bytes_array([1] * 16, (1, 16))
    out = outputs(infer(instance, "simple_string", {"INPUT0": ("BYTES", in0), "INPUT1": ("BYTES", in1)}))
    assert out["OUTPUT0"].datatype == "BYTES" and out["OUTPUT0"].shape == (1, 16)
    assert [int(v) for v in out["OUTPUT0"].data.flat] == [i + 1 for i in range(16)]
    assert [int(v) for v in out["OUTPUT1"].data.flat] == [i - 1 for i in range(16)]
    bad = bytes_array(["x"] * 16, (1, 16))
    error = infer_result(instance, "simple_string", {"INPUT0": ("BYTES", bad), "INPUT1": ("BYTES", in1)})
    assert isinstance(error, ProtocolError) and error.status == 400


def test_simple_identity_keeps_nul_bytes() -> None:
    _, instance = load_example("simple_identity")
    data = bytes_array([b"he\x00llo"] * 16, (1, 16))
    out = outputs(infer(instance, "simple_identity", {"INPUT0": ("BYTES", data)}))["OUTPUT0"]
    assert (out.datatype, out.shape) == ("BYTES", (1, 16))
    assert out.data.tolist() == data.tolist()


def test_identity_fp32_returns_the_input_without_copying() -> None:
    _, instance = load_example("identity_fp32")
    data = np.frombuffer(np.random.default_rng(0).random(262144, dtype=np.float32).tobytes(), dtype=np.float32)
    out = outputs(infer(instance, "identity_fp32", {"INPUT0": ("FP32", data)}))["OUTPUT0"]
    assert (out.datatype, out.shape) == ("FP32", (262144,))
    assert np.shares_memory(out.data, data)


ALL_TYPES = {
    "BOOL": np.array([True, False]),
    "UINT8": np.array([0, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -2.0], dtype=np.float16),
    "FP32": np.array([1.5, -0.25], dtype=np.float32),
    "FP64": np.array([1e300, -1e-300], dtype=np.float64),
    "BYTES": np.array([b"", b"\x00\xff"], dtype=np.object_),
    "BF16": np.array([0x3F80, 0xC000], dtype=np.uint16),  # bfloat16 1.0 and -2.0, carried as uint16
}


def test_identity_all_round_trips_every_datatype() -> None:
    _, instance = load_example("identity_all")
    inputs = {f"INPUT_{datatype}": (datatype, array) for datatype, array in ALL_TYPES.items()}
    out = outputs(infer(instance, "identity_all", inputs))
    assert set(out) == {f"OUTPUT_{datatype}" for datatype in ALL_TYPES}
    for datatype, array in ALL_TYPES.items():
        tensor = out[f"OUTPUT_{datatype}"]
        assert (tensor.datatype, tensor.shape) == (datatype, (2,))
        assert tensor.data.tolist() == array.tolist()


def test_identity_all_echoes_only_what_it_is_sent() -> None:
    _, instance = load_example("identity_all")
    out = outputs(infer(instance, "identity_all", {"INPUT_INT8": ("INT8", ALL_TYPES["INT8"])}))
    assert list(out) == ["OUTPUT_INT8"]


def test_gpu_add_on_the_cpu() -> None:
    config, instance = load_example("gpu_add")
    assert config.instance_groups[0].kind == "KIND_CPU"  # KIND_AUTO without a GPU
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([10.0, 20.0], dtype=np.float32)
    response = infer(instance, "gpu_add", {"A": ("FP32", a), "B": ("FP32", b)})
    assert outputs(response)["SUM"].data.tolist() == [11.0, 22.0]
    assert response.parameters == {"compute_device": "cpu"}
    error = infer_result(instance, "gpu_add", {"A": ("FP32", a), "B": ("FP32", np.zeros(3, np.float32))})
    assert isinstance(error, ProtocolError) and error.status == 400


@pytest.mark.gpu
def test_gpu_add_on_a_gpu() -> None:
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no CUDA device")
    config, instance = load_example("gpu_add", gpu_count=1)
    assert config.instance_groups[0].kind == "KIND_GPU"
    a = np.arange(1000, dtype=np.float32)
    response = infer(instance, "gpu_add", {"A": ("FP32", a), "B": ("FP32", a)})
    assert response.parameters == {"compute_device": "gpu"}
    assert outputs(response)["SUM"].data.tolist() == (a * 2).tolist()
