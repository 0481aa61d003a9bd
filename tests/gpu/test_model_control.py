"""Model control: the load/unload API, safe swaps, overrides, and poll mode.

What is pinned: the caller's thread only validates (the work runs on the bounded control
executor, which answers 503 at once when saturated); a reload never leaves readers without a
version and lets in-flight requests finish on the old one before it is finalized; an unload
drains then finalizes; a bad override or a broken reload keeps the old version serving; and
``file:`` overrides never write outside a fresh temporary model directory.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evserve.gpu.model_control import SATURATED
from evserve.gpu.model_manager import ModelManager
from evserve.gpu.repository.file_override import write_file
from evserve.protocol.errors import BadRequest, NotFound, ProtocolError, Unavailable
from tests.gpu.model_fixtures import (
    MODEL_PY,
    config_json,
    config_text,
    events_of,
    infer_tag,
    manager_factory,
    submit,
    tag_of,
    wait_for,
    write_model,
)


class Done:
    """A ``done`` callback that records its argument and the thread it ran on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: ProtocolError | None = None
        self.thread: str = ""

    def __call__(self, error: ProtocolError | None) -> None:
        self.error, self.thread = error, threading.current_thread().name
        self.event.set()

    def wait(self, timeout: float = 10.0) -> ProtocolError | None:
        assert self.event.wait(timeout), "done was never called"
        return self.error


@pytest.fixture
def make_manager() -> Iterator[Callable[..., ModelManager]]:
    with manager_factory(control_mode="explicit") as make:
        yield make


# ---- the control API -----------------------------------------------------------------------


def test_load_runs_on_the_control_executor_and_reports_through_done(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    write_model(tmp_path, "slow", init_sleep=0.4)
    manager = make_manager(tmp_path)
    done = Done()
    started = time.monotonic()
    manager.submit_load("slow", {}, done)
    assert time.monotonic() - started < 0.1
    assert not done.event.is_set()
    assert done.wait() is None
    assert done.thread.startswith("evserve-control") and done.thread != threading.current_thread().name
    assert manager.model_ready("slow")


def test_load_failures_reach_done_with_their_status(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    write_model(tmp_path, "bad", init_raise="cannot start")
    manager = make_manager(tmp_path)
    missing = Done()
    manager.submit_load("ghost", None, missing)
    error = missing.wait()
    assert isinstance(error, BadRequest)
    assert error.message == "failed to load 'ghost', failed to poll from model repository"
    failing = Done()
    manager.submit_load("bad", {}, failing)
    error = failing.wait()
    assert isinstance(error, BadRequest) and error.message == "load failed for model 'bad': cannot start"
    assert manager.index() == [{"name": "bad", "version": "1", "state": "UNAVAILABLE", "reason": "cannot start"}]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Model name cannot be empty"),
        ("   ", "Model name cannot be empty"),
        ("..", "model name must not contain path traversal characters"),
        ("../x", "model name must not contain path traversal characters"),
        ("a/b", "model name must not contain path traversal characters"),
        ("a\\b", "model name must not contain path traversal characters"),
        ("sp ace", "invalid model name"),
        ("x" * 129, "invalid model name"),
        ("%2e%2e%2fx", "invalid model name"),
    ],
)
def test_load_name_validation(
    tmp_path: Path, make_manager: Callable[..., ModelManager], name: str, message: str
) -> None:
    manager = make_manager(tmp_path)
    with pytest.raises(BadRequest, match=message.replace(".", r"\.")):
        manager.submit_load(name, {}, Done())
    unload = Done()
    manager.submit_unload(name, False, unload)  # unload does not validate names: nothing to unload
    assert unload.wait() is None


def test_odd_but_valid_name_is_just_not_found(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    manager = make_manager(tmp_path)
    done = Done()
    manager.submit_load("...", {}, done)
    assert "failed to poll from model repository" in done.wait().message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"config": 5}, "parameter 'config' must be a string"),
        ({"bogus": "x"}, "unexpected parameter 'bogus'"),
        ({"file:1/model.py": "eA=="}, "'config' parameter is required"),
        (["config"], "expected a JSON object"),
    ],
)
def test_load_parameter_validation(
    tmp_path: Path, make_manager: Callable[..., ModelManager], parameters: Any, message: str
) -> None:
    manager = make_manager(tmp_path)
    with pytest.raises(BadRequest, match=message) as info:
        manager.submit_load("m", parameters, Done())
    assert info.value.status == 400


def test_unload_dependents_must_be_a_boolean(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    manager = make_manager(tmp_path)
    with pytest.raises(BadRequest, match="Unable to parse 'unload_dependents'"):
        manager.submit_unload("m", "yes", Done())  # type: ignore[arg-type]


def test_saturated_control_executor_refuses_at_once(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    write_model(tmp_path, "slow", init_sleep=0.5)
    write_model(tmp_path, "other")
    manager = make_manager(tmp_path, load_thread_count=1)
    first = Done()
    manager.submit_load("slow", {}, first)
    started = time.monotonic()
    calls = [lambda: manager.submit_load("other", {}, Done()), lambda: manager.submit_unload("other", False, Done())]
    for call in calls:
        with pytest.raises(Unavailable) as info:
            call()
        assert info.value.status == 503 and info.value.message == SATURATED
    assert time.monotonic() - started < 0.1
    assert first.wait() is None
    second = Done()
    manager.submit_load("other", {}, second)
    assert second.wait() is None


# ---- reloads ---------------------------------------------------------------------------------


def test_reload_is_a_safe_swap(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    events = tmp_path / "events.txt"
    model_dir = write_model(tmp_path / "repo", "m", tag="old", exec_sleep=0.4, events=events)
    manager = make_manager(tmp_path / "repo", startup_models=["m"])
    in_flight = submit(manager, "m")
    time.sleep(0.05)
    (model_dir / "config.pbtxt").write_text(config_text("m", tag="new", init_sleep=0.2, events=events))

    misses: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                manager.get("m")
            except ProtocolError as exc:
                misses.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        manager.load("m")
    finally:
        stop.set()
        thread.join()
    assert misses == []
    assert infer_tag(manager, "m") == "new"
    assert tag_of(in_flight.get(timeout=5)) == "old"
    wait_for(lambda: "finalize old" in events_of(events))
    assert events_of(events) == ["init old", "init new", "finalize old"]
    assert manager.index() == [{"name": "m", "version": "1", "state": "READY"}]


def test_reload_of_an_unchanged_model_is_a_no_op(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    events = tmp_path / "events.txt"
    write_model(tmp_path / "repo", "m", tag="t", events=events)
    manager = make_manager(tmp_path / "repo", startup_models=["m"])
    before = manager.get("m")
    manager.load("m")
    assert manager.get("m") is before
    assert events_of(events) == ["init t"]


def test_failed_reload_keeps_the_old_version_serving(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    model_dir = write_model(tmp_path, "m", tag="old")
    manager = make_manager(tmp_path, startup_models=["m"])
    (model_dir / "config.pbtxt").write_text(config_text("m", tag="new", init_raise="boom"))
    with pytest.raises(BadRequest, match="load failed for model 'm': boom"):
        manager.load("m")
    assert infer_tag(manager, "m") == "old"
    assert manager.index() == [{"name": "m", "version": "1", "state": "READY"}] and manager.ready()


def test_config_override_good_then_bad(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    write_model(tmp_path, "m", tag="disk")
    manager = make_manager(tmp_path, startup_models=["m"])
    manager.load("m", {"config": json.dumps(config_json("m", tag="override"))})
    assert infer_tag(manager, "m") == "override"
    with pytest.raises(BadRequest, match="Invalid config override") as info:
        manager.load("m", {"config": "{not json"})
    assert info.value.status == 400
    bad_field = dict(config_json("m", tag="x"), no_such_field=1)
    with pytest.raises(BadRequest, match="Invalid config override"):
        manager.load("m", {"config": json.dumps(bad_field)})
    assert infer_tag(manager, "m") == "override"
    manager.load("m")  # a plain load after an override reloads from disk
    assert infer_tag(manager, "m") == "disk"


# ---- unload --------------------------------------------------------------------------------


def test_unload_drains_in_flight_then_finalizes(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    events = tmp_path / "events.txt"
    write_model(tmp_path / "repo", "m", tag="t", exec_sleep=0.4, events=events)
    manager = make_manager(tmp_path / "repo", startup_models=["m"])
    in_flight = submit(manager, "m")
    time.sleep(0.05)
    done = Done()
    manager.submit_unload("m", False, done)
    # Triton's reply: as soon as the unload has started, while the request is still running.
    assert done.wait() is None
    assert in_flight.empty()
    assert manager.index()[0]["state"] == "UNLOADING"
    with pytest.raises(NotFound, match="has no available versions"):
        manager.get("m")
    assert tag_of(in_flight.get(timeout=5)) == "t"
    wait_for(lambda: manager.index()[0]["state"] == "UNAVAILABLE", 5)
    assert events_of(events) == ["init t", "finalize t"]  # finalize ran after the request finished
    assert manager.index() == [{"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert manager.ready()  # unloaded models do not count against strict readiness
    manager.load("m")
    assert infer_tag(manager, "m") == "t"


def test_unloading_a_model_that_is_not_loaded_succeeds(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    write_model(tmp_path, "m")
    manager = make_manager(tmp_path)
    manager.unload("m")
    manager.unload("never-heard-of")
    assert manager.index() == [{"name": "m"}]


# ---- file overrides --------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_file_override_loads_from_a_fresh_temporary_directory(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    manager = make_manager(repo)
    parameters = {"config": json.dumps(config_json("fresh", tag="files")), "file:1/model.py": b64(MODEL_PY)}
    manager.load("fresh", parameters)
    assert infer_tag(manager, "fresh") == "files"
    model_dir = manager.get("fresh").config.model_dir
    assert not model_dir.startswith(str(tmp_path)) and os.path.isfile(os.path.join(model_dir, "1", "model.py"))
    assert list(repo.iterdir()) == []
    manager.unload("fresh")
    assert not os.path.exists(model_dir)


@pytest.mark.parametrize(
    "key",
    [
        "file:../../escaped.py",
        "file:/tmp/escaped.py",
        "file:1/../../escaped.py",
        "file:1//x",
        "file:./1/x",
        "file:1/a\0b",
    ],
)
def test_file_override_paths_that_leave_the_directory_are_refused(
    tmp_path: Path, make_manager: Callable[..., ModelManager], key: str
) -> None:
    manager = make_manager(tmp_path)
    parameters = {"config": json.dumps(config_json("m")), "file:1/model.py": b64(MODEL_PY), key: b64("pwned")}
    with pytest.raises(BadRequest, match="file path must stay within model directory") as info:
        manager.load("m", parameters)
    assert info.value.status == 400
    assert not any(p.name == "escaped.py" for p in tmp_path.parent.rglob("escaped.py"))
    assert not os.path.exists("/tmp/escaped.py")
    assert manager.index() == []


def test_file_override_with_an_overlong_component_or_bad_base64(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    manager = make_manager(tmp_path)
    config = json.dumps(config_json("m"))
    with pytest.raises(BadRequest, match="failed to poll from model repository"):
        manager.load("m", {"config": config, "file:1/" + "a" * 256: b64("x")})
    with pytest.raises(BadRequest, match="not valid base64"):
        manager.load("m", {"config": config, "file:1/model.py": "***"})
    assert manager.live()


def test_write_file_refuses_symlink_escapes(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("safe")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadRequest, match="must stay within model directory"):
        write_file("m", str(model_dir), ["1", "victim.txt"], b"pwned")
    assert victim.read_text() == "safe"
    (model_dir / "2").mkdir()
    (model_dir / "2" / "link.txt").symlink_to(victim)
    write_file("m", str(model_dir), ["2", "link.txt"], b"replaced")  # replaces the link, not its target
    assert victim.read_text() == "safe" and (model_dir / "2" / "link.txt").read_text() == "replaced"
    assert not (model_dir / "2" / "link.txt").is_symlink()


# ---- poll mode -------------------------------------------------------------------------------


def test_poll_mode_follows_the_repository(tmp_path: Path, make_manager: Callable[..., ModelManager]) -> None:
    model_a = write_model(tmp_path, "a", tag="a1")
    manager = make_manager(tmp_path, control_mode="poll", poll_secs=0.2)
    assert infer_tag(manager, "a") == "a1"

    write_model(tmp_path, "b", tag="b1")  # added
    wait_for(lambda: manager.model_ready("b") if "b" in {r["name"] for r in manager.index(True)} else False)

    (model_a / "config.pbtxt").write_text(config_text("a", tag="a2"))  # changed
    wait_for(lambda: infer_tag(manager, "a") == "a2")

    (model_a / "config.pbtxt").write_text(config_text("a", tag="a3") + "not_a_field: 1\n")  # broken
    time.sleep(0.6)
    assert infer_tag(manager, "a") == "a2"
    assert {"name": "a", "version": "1", "state": "READY"} in manager.index()

    for path in sorted((tmp_path / "b").rglob("*"), reverse=True):  # removed
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "b").rmdir()
    wait_for(lambda: {"name": "b", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in manager.index())
    assert manager.ready()


def test_poll_mode_loads_and_unloads_version_directories(
    tmp_path: Path, make_manager: Callable[..., ModelManager]
) -> None:
    model_dir = write_model(tmp_path, "m", versions=(1,), tag="t")
    manager = make_manager(tmp_path, control_mode="poll", poll_secs=0.2)
    assert manager.get("m").version == 1
    (model_dir / "2").mkdir()
    (model_dir / "2" / "model.py").write_text(MODEL_PY)
    wait_for(lambda: manager.get("m").version == 2)
    assert manager.index() == [
        {"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "m", "version": "2", "state": "READY"},
    ]
