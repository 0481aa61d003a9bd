"""Triton's checks: broken and invalid configs are refused with the file and the field named."""

from __future__ import annotations

import pytest

from evserve.gpu.repository.config_complete import complete_config
from evserve.gpu.repository.config_parse import ModelConfigError, parse_json_config, parse_pbtxt
from tests.gpu.repository.configs import SOURCE, complete_text

# -- broken files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('name: "simple"\nmax_batch_size: 8\ninput [ { name: "X" ', ["config.pbtxt:3:"]),
        ('name: "simple"\n  max_batch_sizes: 8', ["config.pbtxt:2:3", 'no field named "max_batch_sizes"']),
        ('input [ { name: "X" data_type: TYPE_FLOAT32 dims: [ 1 ] } ]', ["config.pbtxt:1:", "TYPE_FLOAT32"]),
        ("max_batch_size: 1\nmax_batch_size: 2", ["config.pbtxt:2:", "max_batch_size"]),
        ('input { name: "X" dims: [ "a" ] }', ["config.pbtxt:1:", "integer"]),
        ("version_policy { latest {} all {} }", ["config.pbtxt:1:", "oneof"]),
    ],
    ids=["syntax", "unknown-field", "bad-enum", "duplicate-field", "bad-dim-type", "two-policies"],
)
def test_unparsable_pbtxt_names_file_position_and_field(text: str, fragments: list[str]) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_pbtxt(text, SOURCE)
    message = str(info.value)
    assert message.startswith(SOURCE)
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ('name: "other"', "name", "unexpected directory name 'simple' for model 'other'"),
        ('backend: ""\nplatform: ""\ndefault_model_filename: "x.bin"', "backend", "'platform' or 'backend'"),
        ("max_batch_size: -1", "max_batch_size", "non-negative"),
        ("input [ { data_type: TYPE_FP32 dims: [ 1 ] } ]", "input[0].name", "must specify 'name'"),
        ('input [ { name: "A" dims: [ 1 ] } ]', "input[0].data_type", "'data_type'"),
        ('input [ { name: "A" data_type: TYPE_FP32 } ]', "input[0].dims", "must specify 'dims'"),
        ('input [ { name: "A" data_type: TYPE_FP32 dims: [ 0 ] } ]', "input[0].dims", "integer >= 1, or -1"),
        ('output [ { name: "A" data_type: TYPE_FP32 dims: [ 4, -2 ] } ]', "output[0].dims", "integer >= 1, or -1"),
        (
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input[1].name",
            "more than once",
        ),
        (
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 3 ] } } ]',
            "input[0].reshape",
            "different size for dims and reshape",
        ),
        (
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ 2, -1 ] reshape { shape: [ -1, 2 ] } } ]',
            "input[0].reshape",
            "different size for dims and reshape",
        ),
        (
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 2, -1 ] reshape { shape: [ -1, 2 ] } } ]',
            "input[0].reshape",
            "different number of variable-size dimensions",
        ),
        (
            'input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]',
            "input[0].reshape",
            "empty reshape for non-batching model",
        ),
        (
            'input [ { name: "A" data_type: TYPE_INT32 dims: [ 1 ] is_shape_tensor: true } ]',
            "input[0].is_shape_tensor",
            "TensorRT",
        ),
        (
            'input [ { name: "A" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 1 ] } ]',
            "input[0].format",
            "3 dims",
        ),
        (
            'output [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] label_filename: "../labels.txt" } ]',
            "output[0].label_filename",
            "outside model directory",
        ),
        (
            'output [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] label_filename: "/etc/passwd" } ]',
            "output[0].label_filename",
            "outside model directory",
        ),
        ("dynamic_batching { preferred_batch_size: [ 2 ] }", "dynamic_batching.preferred_batch_size", "<= max"),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            "dynamic_batching.default_priority_level",
            "[1, 2]",
        ),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 5 value { } } }",
            "dynamic_batching.priority_queue_policy",
            "[1, 2]",
        ),
        (
            "dynamic_batching { preserve_ordering: true "
            "default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 10 } }",
            "dynamic_batching.preserve_ordering",
            "DELAY",
        ),
        ("sequence_batching { direct { minimum_slot_utilization: 1.5 } }", "minimum_slot_utilization", "1.0"),
        # Triton 2.51's texts for control inputs.
        ('sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START '
         'int32_false_true: [ 1 ] } ] } ] }', "sequence_batching.control_input",
         "sequence batching control 'int32_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_START for "
         "simple"),
        ('sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }',
         "sequence_batching.control_input", "sequence batching must specify either 'int32_false_true', "
         "'fp32_false_true' or 'bool_false_true' for CONTROL_SEQUENCE_START for simple"),
        ('sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_END '
         'int32_false_true: [ 0, 1 ] fp32_false_true: [ 0, 1 ] } ] } ] }', "sequence_batching.control_input",
         "specifies more than one from 'int32_false_true', 'fp32_false_true' and 'bool_false_true' for "
         "CONTROL_SEQUENCE_END"),
        ('sequence_batching { control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID '
         'data_type: TYPE_FP32 } ] } ] }', "sequence_batching.control_input",
         "unexpected data type for control CONTROL_SEQUENCE_CORRID for simple. Allowed data types are TYPE_UINT64, "
         "TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"),
        ('sequence_batching { control_input [ { name: "A" control [ { kind: CONTROL_SEQUENCE_READY '
         'int32_false_true: [ 0, 1 ] } ] }, { name: "B" control [ { kind: CONTROL_SEQUENCE_READY '
         'int32_false_true: [ 0, 1 ] } ] } ] }', "sequence_batching.control_input",
         "sequence batching specifies multiple CONTROL_SEQUENCE_READY tensors for simple"),
        ('sequence_batching { control_input [ { control [ { kind: CONTROL_SEQUENCE_START '
         'int32_false_true: [ 0, 1 ] } ] } ] }', "sequence_batching.control_input",
         "sequence batching control tensor must have a name for simple"),
        (
            "model_transaction_policy { decoupled: true } response_cache { enable: true }",
            "response_cache",
            "Response Cache does not currently support model simple with 'decoupled' transaction policy. "
            "Please disable the response cache.",
        ),
        (
            "sequence_batching { } response_cache { enable: true }",
            "response_cache",
            "Response Cache does not currently support model simple with sequence batching scheduler. "
            "Please disable the response cache.",
        ),
        ("instance_group [ { kind: KIND_GPU } ]", "instance_group[0]", "no GPUs are available"),
        ("instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", "instance_group[0].gpus", "KIND_CPU"),
        ('instance_group [ { kind: KIND_CPU profile: [ "0" ] } ]', "instance_group[0].profile", "TensorRT"),
    ],
)
def test_invalid_config_names_file_and_field(text: str, field: str, problem: str) -> None:
    cfg = parse_pbtxt(text if "backend:" in text else 'backend: "python"\n' + text, SOURCE)
    with pytest.raises(ModelConfigError) as info:
        complete_config(cfg, "simple", SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: ")
    assert field in message
    assert problem in message


@pytest.mark.parametrize(
    ("dims", "shape", "max_batch_size"),
    [
        ("[ 2, 4, -1, 6 ]", "[ 8, -1, 1, 6 ]", 0),
        ("[ 1 ]", "[ ]", 4),
        ("[ 12 ]", "[ 3, 4 ]", 0),
        ("[ -1 ]", "[ -1 ]", 0),
    ],
)
def test_compatible_reshapes_are_accepted(dims: str, shape: str, max_batch_size: int) -> None:
    text = (
        f'name: "simple" backend: "python" max_batch_size: {max_batch_size} '
        f'input [ {{ name: "A" data_type: TYPE_FP32 dims: {dims} reshape {{ shape: {shape} }} }} ]'
    )
    assert "reshape" in complete_text(text)["input"][0]


def test_unknown_data_type_number_from_json_is_refused() -> None:
    cfg = parse_json_config('{"input": [{"name": "A", "data_type": 99, "dims": [1]}]}', "override")
    with pytest.raises(ModelConfigError, match=r"input\[0\]\.data_type"):
        complete_config({**cfg, "backend": "python"}, "simple", SOURCE)


def test_io_checks_can_wait_for_auto_complete() -> None:
    cfg = parse_pbtxt('backend: "python" input [ { name: "A" } ]', SOURCE)
    partial = complete_config(cfg, "simple", SOURCE, check_io=False)
    assert partial["name"] == "simple"
    with pytest.raises(ModelConfigError, match="data_type"):
        complete_config(partial, "simple", SOURCE)


def test_non_dict_config_is_refused() -> None:
    with pytest.raises(ModelConfigError, match="must be an object"):
        complete_config(["not", "a", "config"], "simple", SOURCE)  # type: ignore[arg-type]
