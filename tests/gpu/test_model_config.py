"""Model configuration: config.pbtxt parsing, Triton's defaults and checks, the typed view.

The expected JSON shapes come from Triton's own ``/config`` replies for python models: proto
field names in declaration order, defaults printed, int64 fields as numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evserve.gpu import config_schema
from evserve.gpu.model_config import (
    DynamicBatching,
    InstanceGroup,
    ModelConfig,
    ModelConfigError,
    QueuePolicy,
    complete_config,
    parse_json_config,
    parse_pbtxt,
    read_config,
)
from evserve.protocol.types import TensorSpec

SOURCE = "/models/simple/config.pbtxt"

# Triton's qa `simple` model, served by the python backend.
SIMPLE_PBTXT = """
name: "simple"
backend: "python"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
"""


def complete_text(text: str, name: str = "simple", **kwargs: object) -> dict:
    return complete_config(parse_pbtxt(text, SOURCE), name, SOURCE, **kwargs)


def simple() -> dict:
    return complete_text(SIMPLE_PBTXT)


# -- parsing and the JSON form -----------------------------------------------------------------


def test_simple_config_completes_to_tritons_json_form() -> None:
    cfg = simple()
    assert cfg["name"] == "simple"
    assert cfg["backend"] == "python"
    assert cfg["platform"] == ""
    assert cfg["max_batch_size"] == 8
    assert cfg["version_policy"] == {"latest": {"num_versions": 1}}
    assert cfg["default_model_filename"] == "model.py"
    assert cfg["input"][0] == {
        "name": "INPUT0",
        "data_type": "TYPE_INT32",
        "format": "FORMAT_NONE",
        "dims": [16],
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
        "is_non_linear_format_io": False,
    }
    assert cfg["output"][1]["name"] == "OUTPUT1"
    assert cfg["output"][1]["label_filename"] == ""
    assert cfg["instance_group"] == [
        {
            "name": "simple",
            "kind": "KIND_CPU",
            "count": 1,
            "gpus": [],
            "secondary_devices": [],
            "profile": [],
            "passive": False,
            "host_policy": "",
        }
    ]
    assert cfg["optimization"]["input_pinned_memory"] == {"enable": True}
    assert cfg["optimization"]["output_pinned_memory"] == {"enable": True}
    assert cfg["parameters"] == {}
    assert cfg["model_warmup"] == []


def test_python_backend_gets_no_scheduler_or_transaction_policy_it_did_not_ask_for() -> None:
    cfg = simple()
    assert "dynamic_batching" not in cfg
    assert "sequence_batching" not in cfg
    assert "model_transaction_policy" not in cfg


def test_keys_follow_the_proto_declaration_order() -> None:
    keys = list(simple())
    assert keys[:8] == [
        "name",
        "platform",
        "backend",
        "runtime",
        "version_policy",
        "max_batch_size",
        "input",
        "output",
    ]
    assert keys.index("optimization") < keys.index("instance_group") < keys.index("default_model_filename")


def test_completion_is_idempotent() -> None:
    cfg = simple()
    assert complete_config(cfg, "simple", SOURCE) == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {"latest": {"num_versions": 1}}),
        ("version_policy { latest { num_versions: 2 } }", {"latest": {"num_versions": 2}}),
        ("version_policy { all {} }", {"all": {}}),
        ("version_policy { specific { versions: [ 1, 3 ] } }", {"specific": {"versions": [1, 3]}}),
        ("version_policy: { specific: { versions: 4 versions: 7 } }", {"specific": {"versions": [4, 7]}}),
    ],
)
def test_version_policy_forms(text: str, expected: dict) -> None:
    assert complete_text(SIMPLE_PBTXT + text)["version_policy"] == expected


def test_int64_fields_become_json_numbers() -> None:
    cfg = complete_text(
        """
        name: "m" backend: "python" max_batch_size: 4
        input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1, 6 ] reshape { shape: [ -1, 2, 3 ] } } ]
        output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 6 ] } ]
        dynamic_batching {
          max_queue_delay_microseconds: 100
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy { default_timeout_microseconds: 500 max_queue_size: 7 }
          priority_queue_policy { key: 1 value { default_timeout_microseconds: 9 timeout_action: DELAY } }
        }
        version_policy { specific { versions: [ 2 ] } }
        model_warmup [ {
          name: "w" batch_size: 1
          inputs { key: "IN" value { data_type: TYPE_FP32 dims: [ 6 ] zero_data: true } }
        } ]
        """,
        name="m",
    )
    assert cfg["input"][0]["dims"] == [-1, 6]
    assert cfg["input"][0]["reshape"] == {"shape": [-1, 2, 3]}
    assert cfg["version_policy"]["specific"]["versions"] == [2]
    batching = cfg["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 100
    assert batching["priority_levels"] == 3
    assert batching["default_priority_level"] == 2
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 500
    # JSON keys are strings; Triton keeps the priority level quoted.
    assert list(batching["priority_queue_policy"]) == ["1"]
    assert batching["priority_queue_policy"]["1"]["default_timeout_microseconds"] == 9
    assert cfg["model_warmup"][0]["inputs"]["IN"]["dims"] == [6]


def test_sequence_batching_int64_fields_and_defaults() -> None:
    cfg = complete_text(
        SIMPLE_PBTXT + "sequence_batching { oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 50 } }"
    )
    sequence = cfg["sequence_batching"]
    assert sequence["max_sequence_idle_microseconds"] == 1_000_000
    assert sequence["oldest"]["max_queue_delay_microseconds"] == 50
    assert sequence["oldest"]["preferred_batch_size"] == [8]


def test_schema_wide_int64_conversion_covers_fields_triton_forgets() -> None:
    cfg = parse_pbtxt(
        "instance_group [ { secondary_devices [ { kind: KIND_NVDLA device_id: 3 } ] } ] "
        'ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] }',
        SOURCE,
    )
    assert cfg["instance_group"][0]["secondary_devices"][0]["device_id"] == 3
    assert cfg["ensemble_scheduling"]["step"][0]["model_version"] == -1


def test_dynamic_batching_preferred_size_defaults_to_max_batch_size() -> None:
    cfg = complete_text(SIMPLE_PBTXT + "dynamic_batching { }")
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 0


def test_dynamic_batching_without_batching_keeps_no_preferred_size() -> None:
    cfg = complete_text('name: "m" backend: "python" dynamic_batching { }', name="m")
    assert cfg["dynamic_batching"]["preferred_batch_size"] == []


def test_parameters_pass_through() -> None:
    cfg = complete_text(SIMPLE_PBTXT + 'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/env.tar.gz" } }')
    assert cfg["parameters"] == {"EXECUTION_ENV_PATH": {"string_value": "/env.tar.gz"}}


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
        ("model_transaction_policy { decoupled: true } response_cache { enable: true }", "response_cache", "decoupled"),
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


# -- auto-fill --------------------------------------------------------------------------------


def test_name_is_filled_from_the_directory() -> None:
    assert complete_text('backend: "python"')["name"] == "simple"


def test_python_backend_is_detected_from_model_py(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("")
    cfg = complete_config({}, "simple", SOURCE, model_dir=str(tmp_path))
    assert cfg["backend"] == "python"
    assert cfg["default_model_filename"] == "model.py"


def test_without_model_py_there_is_no_backend(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    with pytest.raises(ModelConfigError, match="'platform' or 'backend'"):
        complete_config({}, "simple", SOURCE, model_dir=str(tmp_path))


def test_default_model_filename_implies_python() -> None:
    assert complete_text('default_model_filename: "model.py"')["backend"] == "python"


# -- instance groups --------------------------------------------------------------------------


def test_default_instance_group_is_one_per_gpu_when_there_are_gpus() -> None:
    cfg = complete_text(SIMPLE_PBTXT, gpu_count=2)
    assert cfg["instance_group"][0]["name"] == "simple"
    assert cfg["instance_group"][0]["kind"] == "KIND_GPU"
    assert cfg["instance_group"][0]["gpus"] == [0, 1]
    assert cfg["instance_group"][0]["count"] == 1


def test_unnamed_groups_are_numbered_and_counts_default_to_one() -> None:
    cfg = complete_text(SIMPLE_PBTXT + "instance_group [ { kind: KIND_CPU count: 3 }, { kind: KIND_CPU } ]")
    assert [(g["name"], g["count"]) for g in cfg["instance_group"]] == [("simple_0", 3), ("simple_1", 1)]


@pytest.mark.parametrize(
    ("group", "gpu_count", "kind", "gpus"),
    [
        ("{ kind: KIND_AUTO }", 0, "KIND_CPU", []),
        ("{ kind: KIND_AUTO }", 1, "KIND_GPU", [0]),
        ("{ kind: KIND_GPU gpus: [ 1 ] }", 2, "KIND_GPU", [1]),
        ("{ kind: KIND_MODEL }", 0, "KIND_MODEL", []),
    ],
)
def test_instance_group_kind_resolution(group: str, gpu_count: int, kind: str, gpus: list[int]) -> None:
    cfg = complete_text(SIMPLE_PBTXT + f"instance_group [ {group} ]", gpu_count=gpu_count)
    assert (cfg["instance_group"][0]["kind"], cfg["instance_group"][0]["gpus"]) == (kind, gpus)


def test_auto_group_naming_a_missing_gpu_falls_back_to_cpu_and_is_refused() -> None:
    # Triton's outcome too: KIND_AUTO becomes KIND_CPU, and a KIND_CPU group may not list GPUs.
    with pytest.raises(ModelConfigError, match="KIND_CPU but specifies one or more GPUs"):
        complete_text(SIMPLE_PBTXT + "instance_group [ { kind: KIND_AUTO gpus: [ 3 ] } ]", gpu_count=2)


def test_gpu_id_beyond_the_machine_is_refused() -> None:
    with pytest.raises(ModelConfigError, match=r"instance_group\[0\]\.gpus: .*invalid gpu id 2"):
        complete_text(SIMPLE_PBTXT + "instance_group [ { kind: KIND_GPU gpus: [ 2 ] } ]", gpu_count=2)


# -- JSON override ----------------------------------------------------------------------------


def test_json_override_equals_the_pbtxt_it_mirrors() -> None:
    from_json = parse_json_config(
        '{"name": "simple", "backend": "python", "max_batch_size": 8,'
        ' "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]},'
        ' {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": ["16"]}],'
        ' "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]},'
        ' {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]}]}',
        "load of 'simple'",
    )
    assert complete_config(from_json, "simple", SOURCE) == simple()


def test_json_override_takes_the_config_endpoint_output() -> None:
    assert complete_config(parse_json_config(json.dumps(simple()), "x"), "simple", SOURCE) == simple()


def test_json_override_enums_are_case_insensitive_like_triton() -> None:
    cfg = parse_json_config('{"backend": "python", "instance_group": [{"kind": "kind_cpu"}]}', "override")
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"


def test_json_override_accepts_camel_case_names() -> None:
    assert parse_json_config('{"maxBatchSize": 4}', "override")["max_batch_size"] == 4


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"max_batch_sise": 4}', 'no field named "max_batch_sise"'),
        ('{"max_batch_size": "four"}', "max_batch_size"),
        ('{"instance_group": [{"kind": "KIND_TPU"}]}', "KIND_TPU"),
        ('{"name": "a", "name": "b"}', "duplicate key"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_invalid_json_override_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_json_config(text, "load of 'simple'")
    message = str(info.value)
    assert message.startswith("Invalid config override: load of 'simple': ")
    assert fragment in message
    assert "Available Fields" not in message


# -- reading files ----------------------------------------------------------------------------


def test_read_config_parses_the_model_file(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(SIMPLE_PBTXT)
    assert read_config(str(tmp_path))["max_batch_size"] == 8


def test_read_config_without_a_file_is_none(tmp_path: Path) -> None:
    assert read_config(str(tmp_path)) is None


def test_read_config_prefers_the_named_config(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text("max_batch_size: 1")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "big.pbtxt").write_text("max_batch_size: 64")
    assert read_config(str(tmp_path), "big")["max_batch_size"] == 64
    assert read_config(str(tmp_path), "missing")["max_batch_size"] == 1


def test_read_config_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_bytes(b"name: \xff\xfe")
    with pytest.raises(ModelConfigError, match="config.pbtxt: not UTF-8"):
        read_config(str(tmp_path))
    (tmp_path / "config.pbtxt").write_text("max_batch_size: x")
    with pytest.raises(ModelConfigError, match=r"config\.pbtxt:1:"):
        read_config(str(tmp_path))


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
        priority_queue_policies={1: QueuePolicy("DELAY", 9, False, 0)},
    )
    assert model.input_config("INPUT1")["dims"] == [16]
    assert model.output_config("OUTPUT0")["data_type"] == "TYPE_INT32"
    assert model.input_config("nope") is None


def test_plain_model_is_not_decoupled_and_has_no_batcher() -> None:
    model = ModelConfig(simple())
    assert model.decoupled is False
    assert model.dynamic_batching is None


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


# -- the schema module ------------------------------------------------------------------------


def test_schema_is_loaded_once_under_its_own_name() -> None:
    assert config_schema.schema() is config_schema.schema()
    assert config_schema.schema().__name__ == "evserve_model_config_pb2"


def test_missing_tritonclient_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_schema.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(config_schema.SchemaUnavailable, match="tritonclient"):
        config_schema._schema_path()
