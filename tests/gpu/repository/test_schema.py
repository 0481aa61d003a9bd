"""Loading Triton's ModelConfig schema from tritonclient."""

from __future__ import annotations

import threading
import time

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


def test_schema_is_loaded_once_when_threads_race(monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent first calls share one load (a second, concurrent load corrupts pure-Python protobuf)."""
    real = config_schema.schema()
    loads: list[int] = []

    def slow_load() -> object:
        loads.append(threading.get_ident())
        time.sleep(0.05)  # wide enough for every thread to arrive while the first one loads
        return real

    monkeypatch.setattr(config_schema, "_schema", None)
    monkeypatch.setattr(config_schema, "_load_schema", slow_load)
    start = threading.Barrier(8)
    results: list[object] = []

    def call() -> None:
        start.wait()
        results.append(config_schema.schema())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len(results) == 8 and all(result is real for result in results)
