"""The typed view of a completed config: metadata, signature, properties and label files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evserve.gpu.repository.config_parse import ModelConfigError
from evserve.gpu.repository.model_config import DynamicBatching, InstanceGroup, ModelConfig, QueuePolicy
from evserve.protocol.types import TensorSpec
from tests.gpu.repository.configs import SIMPLE_PBTXT, complete_text, simple

# -- the typed view ---------------------------------------------------------------------------


def test_metadata_adds_the_batch_dimension() -> None:
    meta = ModelConfig(simple()).metadata(["1", "2"])
    assert meta == {
        "name": "simple",
        "versions": ["1", "2"],
        "platform": "python",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
        ],
    }


def test_metadata_of_a_non_batching_model_keeps_dims_and_prefers_platform() -> None:
    cfg = complete_text(
        'name: "m" platform: "custom" backend: "python" '
        'input [ { name: "S" data_type: TYPE_STRING dims: [ -1 ] } ] '
        'output [ { name: "O" data_type: TYPE_BF16 dims: [ 2, 3 ] } ]',
        name="m",
    )
    meta = ModelConfig(cfg).metadata(["3"])
    assert meta["platform"] == "custom"
    assert meta["inputs"] == [{"name": "S", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "O", "datatype": "BF16", "shape": [2, 3]}]


def test_signature_carries_optional_and_reshape() -> None:
    cfg = complete_text(
        'name: "m" backend: "python" max_batch_size: 2 '
        'input [ { name: "A" data_type: TYPE_FP16 dims: [ 1 ] reshape { shape: [ ] } optional: true } ] '
        + 'output [ { name: "B" data_type: TYPE_UINT8 dims: [ 4 ] } ]',
        name="m",
    )
    signature = ModelConfig(cfg).signature("7")
    assert (signature.name, signature.version, signature.max_batch_size) == ("m", "7", 2)
    assert signature.inputs == (TensorSpec("A", "FP16", (1,), optional=True, reshape=()),)
    assert signature.outputs == (TensorSpec("B", "UINT8", (4,)),)


def test_typed_properties() -> None:
    cfg = complete_text(
        SIMPLE_PBTXT
        + 'parameters { key: "K" value { string_value: "V" } } '
        + "model_transaction_policy { decoupled: true } "
        + "instance_group [ { kind: KIND_CPU count: 2 } ] "
        + "dynamic_batching { max_queue_delay_microseconds: 300 preferred_batch_size: [ 4, 8 ] "
        + "default_queue_policy { max_queue_size: 5 default_timeout_microseconds: 70 allow_timeout_override: true } "
        + "priority_levels: 2 default_priority_level: 2 "
        + "priority_queue_policy { key: 1 value { timeout_action: DELAY default_timeout_microseconds: 9 } } }"
    )
    model = ModelConfig(cfg)
    assert model.name == "simple"
    assert model.raw is cfg
    assert (model.backend, model.platform, model.max_batch_size) == ("python", "", 8)
    assert model.decoupled is True
    assert model.parameters == {"K": "V"}
    assert model.version_policy == {"latest": {"num_versions": 1}}
    assert model.instance_groups == [InstanceGroup("simple_0", 2, "KIND_CPU", ())]
    assert model.dynamic_batching == DynamicBatching(
        max_queue_delay_us=300,
        preferred_batch_sizes=(4, 8),
        max_queue_size=5,
        default_timeout_us=70,
        timeout_action="REJECT",
        allow_timeout_override=True,
        preserve_ordering=False,
        priority_levels=2,
        default_priority_level=2,
        default_queue_policy=QueuePolicy("REJECT", 70, True, 5),
        priority_queue_policies={1: QueuePolicy("DELAY", 9, False, 0)},
    )
    assert model.input_config("INPUT1")["dims"] == [16]
    assert model.output_config("OUTPUT0")["data_type"] == "TYPE_INT32"
    assert model.input_config("nope") is None


def test_plain_model_is_not_decoupled_and_has_no_batcher() -> None:
    model = ModelConfig(simple())
    assert model.decoupled is False
    assert model.dynamic_batching is None
    assert model.response_cache is False


def test_response_cache_enable_is_read() -> None:
    assert ModelConfig(complete_text(SIMPLE_PBTXT + " response_cache { enable: true }")).response_cache is True


def test_label_file(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    cfg = complete_text(
        'name: "m" backend: "python" '
        'output [ { name: "L" data_type: TYPE_FP32 dims: [ 2 ] label_filename: "labels.txt" },'
        ' { name: "N" data_type: TYPE_FP32 dims: [ 2 ] } ]',
        name="m",
    )
    model = ModelConfig(cfg, str(tmp_path))
    assert model.label_file("L") == os.path.join(str(tmp_path), "labels.txt")
    assert model.label_file("N") is None
    assert model.label_file("missing") is None


def test_label_file_symlinked_out_of_the_model_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (tmp_path / "secret.txt").write_text("x")
    (model_dir / "labels.txt").symlink_to(tmp_path / "secret.txt")
    cfg = complete_text(
        'name: "m" backend: "python" '
        'output [ { name: "L" data_type: TYPE_FP32 dims: [ 2 ] label_filename: "labels.txt" } ]',
        name="m",
    )
    with pytest.raises(ModelConfigError, match="outside model directory"):
        ModelConfig(cfg, str(model_dir)).label_file("L")
