"""Completing a config: Triton's JSON form, defaults, auto-fill and instance groups.

The expected JSON shapes come from Triton's own ``/config`` replies for python models: proto
field names in declaration order, defaults printed, int64 fields as numbers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evserve.gpu.repository.config_complete import complete_config
from evserve.gpu.repository.config_parse import ModelConfigError, parse_pbtxt
from tests.gpu.repository.configs import SIMPLE_PBTXT, SOURCE, complete_text, simple

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
