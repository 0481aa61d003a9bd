"""Loading Triton's ModelConfig schema from tritonclient."""

from __future__ import annotations

import pytest

from evserve.gpu.repository import schema as config_schema

# -- the schema module ------------------------------------------------------------------------


def test_schema_is_loaded_once_under_its_own_name() -> None:
    assert config_schema.schema() is config_schema.schema()
    assert config_schema.schema().__name__ == "evserve_model_config_pb2"


def test_missing_tritonclient_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_schema.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(config_schema.SchemaUnavailable, match="tritonclient"):
        config_schema._schema_path()
