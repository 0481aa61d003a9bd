"""Parsing: JSON overrides of the load API and reading config files from a model directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evserve.gpu.repository.config_complete import complete_config
from evserve.gpu.repository.config_parse import ModelConfigError, parse_json_config, read_config
from tests.gpu.repository.configs import SIMPLE_PBTXT, SOURCE, simple

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
