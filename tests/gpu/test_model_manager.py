"""ModelManager: control modes, startup, the index, readiness, request routing and shutdown.

Every test builds real repositories under tmp_path (config.pbtxt + <version>/model.py) and loads
them through the real config and python-backend modules, so what is pinned here is what the
HTTP layer will see. Model behaviour (sleeps, failures, a tag to tell reloads apart, an events
file recording initialize/finalize) is chosen through config ``parameters``; the model and the
repository helpers live in tests/gpu/model_fixtures.py, shared with the model-control tests.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evserve.gpu import EXAMPLE_REPOSITORY
from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.model_manager import ModelManager
from evserve.gpu.repository.scan import DUPLICATE_REASON
from evserve.protocol.errors import BadRequest, NotFound, ProtocolError, Unavailable
from evserve.protocol.types import InferRequest, InferResponse, InputTensor
from tests.gpu.model_fixtures import config_text, infer, manager_factory, submit, tag_of, wait_for, write_model


@pytest.fixture
def make_manager() -> Iterator[Callable[..., ModelManager]]:
    with manager_factory() as make:
        yield make


def index_of(manager: ModelManager, ready_only: bool = False) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for row in manager.index(ready_only):
        rows.setdefault(row["name"], []).append(row)
    return rows


# ---- modes ---------------------------------------------------------------------------------


def test_none_mode_loads_every_model(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    write_model(tmp_path, "a", tag="A")
    write_model(tmp_path, "b", tag="B")
    manager = make_manager(tmp_path)
    assert manager.ready() and manager.live()
    assert manager.startup_errors() == {}
    assert manager.index() == [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "version": "1", "state": "READY"},
    ]
    assert tag_of(infer(manager, "a")) == "A" and tag_of(infer(manager, "b", "1")) == "B"


def test_explicit_mode_loads_only_the_named_models(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    for name in ("a", "b", "c"):
        write_model(tmp_path, name)
    manager = make_manager(tmp_path, control_mode="explicit", startup_models=["b"])
    assert manager.index() == [{"name": "a"}, {"name": "b", "version": "1", "state": "READY"}, {"name": "c"}]
    assert manager.index(ready_only=True) == [{"name": "b", "version": "1", "state": "READY"}]
    assert manager.ready()
    with pytest.raises(NotFound, match="Request for unknown model: 'a' is not found"):
        manager.get("a")


def test_explicit_star_loads_everything(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    for name in ("a", "b"):
        write_model(tmp_path, name)
    manager = make_manager(tmp_path, control_mode="explicit", startup_models=["*"])
    assert [row["state"] for row in manager.index()] == ["READY", "READY"]


def test_explicit_startup_model_missing_is_a_startup_error(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager(tmp_path, control_mode="explicit", startup_models=["ghost"])
    assert manager.startup_errors() == {"ghost": "failed to load 'ghost', failed to poll from model repository"}


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_load_and_unload_are_refused_outside_explicit_mode(
    tmp_path: Path, make_manager: Callable[..., ModelManager], mode: str
) -> None:
    write_model(tmp_path, "a")
    manager = make_manager(tmp_path, control_mode=mode, poll_secs=60)
    for call in (lambda: manager.submit_load("a", {}, print), lambda: manager.submit_unload("a", False, print)):
        with pytest.raises(Unavailable) as info:
            call()
        assert info.value.status == 503
        assert info.value.message == "explicit model load / unload is not allowed if polling is enabled"


# ---- startup and readiness -----------------------------------------------------------------


def test_start_returns_at_once_and_server_is_not_ready_while_loading(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    write_model(tmp_path, "slow", init_sleep=0.5)
    manager = make_manager(tmp_path, start=False)
    started = time.monotonic()
    manager.start()
    assert time.monotonic() - started < 0.2
    assert manager.live() and not manager.ready()
    wait_for(lambda: manager.index() == [{"name": "slow", "version": "1", "state": "LOADING"}], 2)
    with pytest.raises(NotFound, match="'slow' has no available versions"):
        manager.get("slow")
    assert manager.wait_startup(10)
    assert manager.ready()


def test_failed_model_is_unavailable_with_reason_and_blocks_strict_readiness(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    write_model(tmp_path, "good")
    write_model(tmp_path, "bad", init_raise="cannot start")
    manager = make_manager(tmp_path)
    rows = index_of(manager)
    assert rows["bad"] == [{"name": "bad", "version": "1", "state": "UNAVAILABLE", "reason": "cannot start"}]
    assert manager.startup_errors() == {"bad": "load failed for model 'bad': cannot start"}
    assert not manager.ready()
    assert manager.model_ready("good") and not manager.model_ready("bad")
    relaxed = make_manager(tmp_path, strict_readiness=False)
    assert relaxed.ready()


def test_broken_config_is_a_model_level_failure(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    write_model(tmp_path, "broken", extra="not_a_field: 1\n")
    manager = make_manager(tmp_path)
    (row,) = manager.index()
    assert row["state"] == "UNAVAILABLE" and "version" not in row
    assert "config.pbtxt" in row["reason"] and "not_a_field" in row["reason"]


def test_duplicate_model_across_repositories(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    first, second = tmp_path / "r1", tmp_path / "r2"
    write_model(first, "twin")
    write_model(second, "twin")
    write_model(first, "solo")
    manager = make_manager(first, second)
    rows = index_of(manager)
    assert rows["twin"] == [{"name": "twin", "state": "UNAVAILABLE", "reason": DUPLICATE_REASON}]
    assert rows["solo"][0]["state"] == "READY"
    assert "twin" in manager.startup_errors() and not manager.ready()


def test_unsupported_backend(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    write_model(tmp_path, "onnx", backend="onnxruntime")
    manager = make_manager(tmp_path)
    (row,) = manager.index()
    assert row["state"] == "UNAVAILABLE" and row["reason"] == "unsupported backend 'onnxruntime'"


def test_model_without_versions_fails_to_load(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.pbtxt").write_text(config_text("empty"))
    manager = make_manager(tmp_path)
    assert "at least one version must be available" in manager.index()[0]["reason"]


# ---- routing -------------------------------------------------------------------------------


def test_get_errors_follow_triton_texts_and_our_statuses(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    write_model(tmp_path, "m", versions=(1, 2, 3), extra="version_policy { specific { versions: [ 1, 3 ] } }\n")
    manager = make_manager(tmp_path, control_mode="explicit", startup_models=["m"])
    assert manager.get("m").version == 3 and manager.get("m", "1").version == 1
    with pytest.raises(NotFound) as unknown:
        manager.get("nope")
    assert unknown.value.status == 404 and unknown.value.message == "Request for unknown model: 'nope' is not found"
    with pytest.raises(NotFound) as version:
        manager.get("m", "2")
    assert version.value.message == "Request for unknown model: 'm' version 2 is not found"
    # /ready answers 400 "Model version not ready" for both, as Triton does.
    assert not manager.model_ready("m", "7") and not manager.model_ready("nope")
    manager.unload("m")
    with pytest.raises(Unavailable) as unready:
        manager.get("m", "3")
    assert unready.value.message == "Request for unknown model: 'm' version 3 is not at ready state"
    with pytest.raises(NotFound, match="'m' has no available versions"):
        manager.get("m")
    assert not manager.model_ready("m", "3") and not manager.model_ready("m")


def test_metadata_config_and_stats_views(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    write_model(tmp_path, "m", versions=(1, 2), extra="version_policy { all { } }\n")
    manager = make_manager(tmp_path)
    metadata = manager.metadata("m")
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "python"
    assert manager.metadata("m", "1")["versions"] == ["1"]
    assert manager.config("m")["name"] == "m" and manager.config("m")["backend"] == "python"
    infer(manager, "m", "2")
    assert [v.version for v in manager.ready_versions()] == [1, 2]
    (two,) = manager.ready_versions("m", "2")
    assert two.stats.snapshot()["inference_stats"]["success"]["count"] == 1
    with pytest.raises(BadRequest, match="requested model 'x' is not available"):
        manager.ready_versions("x")


def test_index_sees_a_model_added_on_disk_after_refresh(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager(tmp_path, control_mode="explicit")
    assert manager.index() == []
    write_model(tmp_path, "late")
    assert manager.index() == []  # index() itself never touches the disk
    manager.refresh()
    assert manager.index() == [{"name": "late"}]


def test_example_repository_serves(make_manager: Callable[..., ModelManager]) -> None:
    manager = make_manager(Path(EXAMPLE_REPOSITORY))
    assert manager.ready() and manager.startup_errors() == {}
    served = manager.get("simple")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [InputTensor("INPUT0", "INT32", a.shape, a), InputTensor("INPUT1", "INT32", a.shape, a)]
    box: queue.Queue[Any] = queue.Queue()
    served.submit(ExecRequest(InferRequest("simple", "1", inputs=inputs), box.put))
    result = box.get(timeout=10)
    assert isinstance(result, InferResponse)
    outputs = {o.name: o.data for o in result.outputs}
    assert (outputs["OUTPUT0"] == 2 * a).all() and (outputs["OUTPUT1"] == 0).all()


def test_dynamic_batching_gathers_queued_requests(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    events = tmp_path / "events.txt"
    write_model(
        tmp_path / "repo",
        "b",
        max_batch_size=8,
        extra="dynamic_batching { }\n",
        exec_sleep=0.3,
        log_batches=1,
        events=events,
    )
    manager = make_manager(tmp_path / "repo")
    first = submit(manager, "b")
    wait_for(lambda: "batch 1 " in events.read_text() if events.exists() else False)
    rest = [submit(manager, "b") for _ in range(4)]
    for box in [first, *rest]:
        assert isinstance(box.get(timeout=10), InferResponse)
    assert [line for line in events.read_text().splitlines() if line.startswith("batch")] == ["batch 1 ", "batch 4 "]
    assert manager.get("b").stats.snapshot()["execution_count"] == 2


def test_full_model_queue_answers_503(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    extra = "dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n"
    write_model(tmp_path, "q", max_batch_size=1, extra=extra, exec_sleep=0.3)
    manager = make_manager(tmp_path)
    running = submit(manager, "q")
    time.sleep(0.1)
    queued = submit(manager, "q")
    with pytest.raises(Unavailable) as info:
        submit(manager, "q")
    assert info.value.status == 503 and info.value.message == "Exceeds maximum queue size"
    for box in (running, queued):
        assert isinstance(box.get(timeout=5), InferResponse)


# ---- shutdown ------------------------------------------------------------------------------


def test_stop_drains_in_flight_requests_and_finalizes(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    events = tmp_path / "events.txt"
    write_model(tmp_path / "repo", "m", tag="t", exec_sleep=0.3, events=events)
    manager = make_manager(tmp_path / "repo")
    pending = submit(manager, "m")
    time.sleep(0.05)
    manager.stop(5)
    assert isinstance(pending.get(timeout=1), InferResponse)
    assert events.read_text().splitlines() == ["init t", "finalize t"]
    assert not manager.ready() and not manager.live()
    with pytest.raises(Unavailable):
        manager.submit_load("m", {}, print)
    with pytest.raises(ProtocolError):
        submit(manager, "m")
