"""The model repository extension (index, load, unload) against a real server in explicit mode.

Why: this is the API that writes client bytes to disk and runs client-chosen model code, and
the one whose failures Triton's clients parse by text (``failed to load``). Every model a test
touches is its own, so the tests do not depend on their order even though the module shares one
server. Part of it goes through tritonclient (``load_model(config=..., files=...)``,
``unload_model``, ``get_model_repository_index``) so the real client's encoding is exercised.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import (
    IDENTITY_MODEL,
    SIMPLE_SUM,
    announce_then_sleep,
    call,
    copy_simple,
    identity_infer,
    index,
    post_json,
    simple_infer,
    wait_for,
    write_identity,
)
from tests.evserve_process import EvserveProcess

NOT_EXPLICIT = "explicit model load / unload is not allowed if polling is enabled"
DRAIN_SECONDS = 1.5
INIT_LOG = "counted-initialize.log"
DRAIN_MARKER = "draining-execute-started"
IDENTITY_JSON_CONFIG = {
    "backend": "python",
    "max_batch_size": 0,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
}


class Setup:
    def __init__(self, server: EvserveProcess, repository: Path, scratch: Path) -> None:
        self.server = server
        self.repository = repository
        # The server's TMPDIR: where `file:` overrides are materialized (and must stay).
        self.scratch = scratch

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    repository = tmp_path_factory.mktemp("repo")
    copy_simple(repository)
    for name in ("steady", "resized"):
        copy_simple(repository, name)
    for name in ("never_loaded", "loadable", "unloadable", "idle", "renamed"):
        write_identity(repository, name)
    write_identity(repository, "failing", initialize='raise RuntimeError("boom: the weights are missing")')
    write_identity(repository, "fixable", initialize='raise RuntimeError("not yet")')
    write_identity(repository, "draining", execute=announce_then_sleep(repository / DRAIN_MARKER, DRAIN_SECONDS))
    write_identity(repository, "slow_loader", initialize=f"time.sleep({DRAIN_SECONDS})")
    write_identity(repository, "counted", initialize=f"open({str(repository / INIT_LOG)!r}, 'a').write('init\\n')")
    scratch = tmp_path_factory.mktemp("server-tmp")
    server = EvserveProcess("--threads", "2", "--model-control-mode", "explicit", "--load-model", "simple",
                            "--load-model", "steady", "--model-repository", str(repository),
                            env={"TMPDIR": str(scratch)})
    with server:
        yield Setup(server, repository, scratch)
    # Everything the `file:` overrides wrote is gone once the server has stopped.
    assert list(scratch.iterdir()) == []


@pytest.fixture()
def client(setup: Setup) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(setup.server.url, network_timeout=60)
    yield c
    c.close()


def load(setup: Setup, name: str, parameters: dict | None = None) -> tuple[int, str]:
    body = {} if parameters is None else {"parameters": parameters}
    reply = post_json(setup.port, f"/v2/repository/models/{name}/load", body)
    return reply.status, reply.error if reply.body else ""


# ---------------------------------------------------------------------------------- index


def test_index_with_an_empty_body(setup: Setup) -> None:
    reply = call(setup.port, "POST", "/v2/repository/index", b"")
    assert reply.status == 200
    rows = reply.json()
    assert [row["name"] for row in rows] == sorted(row["name"] for row in rows)
    names = {row["name"] for row in rows}
    assert {"simple", "steady", "never_loaded", "failing", "idle"} <= names


def test_index_of_the_real_client(client: httpclient.InferenceServerClient) -> None:
    rows = {row["name"]: row for row in client.get_model_repository_index()}
    assert rows["simple"] == {"name": "simple", "version": "1", "state": "READY"}


def test_never_loaded_model_has_only_its_name(setup: Setup) -> None:
    assert index(setup.port)["never_loaded"] == {"name": "never_loaded"}


def test_index_ready_filter(setup: Setup) -> None:
    rows = index(setup.port, {"ready": True})
    assert "simple" in rows and "never_loaded" not in rows
    assert all(row["state"] == "READY" for row in rows.values())
    assert "never_loaded" in index(setup.port, {"ready": False})


@pytest.mark.parametrize("body", [b'{"ready": true}' + b" " * 400_000, b'{"ready": "x"' + b" " * 400_000 + b"}"])
def test_large_repository_bodies_are_answered_from_the_offload_pool(setup: Setup, body: bytes) -> None:
    """Bodies over 256 KiB are parsed off the loop thread; the answer is the same."""
    reply = call(setup.port, "POST", "/v2/repository/index", body)
    if b'"x"' in body:
        assert (reply.status, reply.error) == (400, "Invalid value for 'ready': expected a boolean")
    else:
        assert reply.status == 200 and all(row["state"] == "READY" for row in reply.json())


@pytest.mark.parametrize("payload", [{"ready": "yes"}, {"ready": 1}, {"ready": None}], ids=["str", "int", "null"])
def test_index_ready_must_be_a_boolean(setup: Setup, payload: dict) -> None:
    reply = post_json(setup.port, "/v2/repository/index", payload)
    assert reply.status == 400
    assert reply.error == "Invalid value for 'ready': expected a boolean"


# ---------------------------------------------------------------------------------- load


def test_load_then_ready(setup: Setup, client: httpclient.InferenceServerClient) -> None:
    assert not client.is_model_ready("loadable")
    client.load_model("loadable")
    assert client.is_model_ready("loadable")
    assert index(setup.port)["loadable"] == {"name": "loadable", "version": "1", "state": "READY"}
    reply = identity_infer(setup.port, "loadable", [1.0, 2.0])
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == [1.0, 2.0]


def test_load_with_a_config_override(setup: Setup, client: httpclient.InferenceServerClient) -> None:
    assert not client.is_model_ready("resized")
    client.load_model("resized", config=json.dumps({"max_batch_size": 16}))
    config = call(setup.port, "GET", "/v2/models/resized/config").json()
    assert config["max_batch_size"] == 16
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert simple_infer(setup.port, "resized").json()["outputs"][0]["data"] == SIMPLE_SUM


@pytest.mark.parametrize(("override", "needle"), [
    ('"parameters"::{"config": {{"max_batch_size": "16"}}}', "failed to load"),  # Triton's example client
    ('{"max_batch_size": -3}', "max_batch_size"),
    ('{"input": [{"name": "INPUT0", "data_type": "TYPE_BOGUS", "dims": [16]}]}', "TYPE_BOGUS"),
], ids=["malformed-json", "negative-max-batch-size", "unknown-data-type"])
def test_bad_config_override_keeps_the_old_version_serving(setup: Setup, override: str, needle: str) -> None:
    status, error = load(setup, "steady", {"config": override})
    assert status == 400
    assert needle in error
    assert "steady" in error
    assert call(setup.port, "GET", "/v2/models/steady/ready").status == 200
    assert call(setup.port, "GET", "/v2/models/steady/config").json()["max_batch_size"] == 8
    assert simple_infer(setup.port, "steady").json()["outputs"][0]["data"] == SIMPLE_SUM
    assert index(setup.port)["steady"]["state"] == "READY"


def test_load_of_a_missing_model(setup: Setup, client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.load_model("no_such_model")
    assert info.value.status() == "400"
    assert "failed to load 'no_such_model'" in info.value.message()
    assert "no_such_model" not in index(setup.port)


def test_load_of_a_model_whose_initialize_raises(setup: Setup) -> None:
    status, error = load(setup, "failing")
    assert status == 400
    assert "boom: the weights are missing" in error
    row = index(setup.port)["failing"]
    assert row["state"] == "UNAVAILABLE"
    assert "boom: the weights are missing" in row["reason"]
    assert call(setup.port, "GET", "/v2/models/failing/ready").status == 400
    # The other models are untouched.
    assert index(setup.port)["simple"]["state"] == "READY"
    assert simple_infer(setup.port).json()["outputs"][0]["data"] == SIMPLE_SUM


def test_override_naming_another_model_is_refused(setup: Setup) -> None:
    status, error = load(setup, "renamed", {"config": json.dumps({"name": "other", **IDENTITY_JSON_CONFIG})})
    assert status == 400
    assert "name" in error
    assert call(setup.port, "GET", "/v2/models/other/ready").status == 400


@pytest.mark.parametrize("name", ["..", "."])
def test_load_name_with_traversal_is_400(setup: Setup, name: str) -> None:
    status, error = load(setup, name)
    assert status == 400
    assert "path traversal" in error


def test_load_again_after_fixing_the_files(setup: Setup) -> None:
    status, error = load(setup, "fixable")
    assert status == 400 and "not yet" in error
    model_py = setup.repository / "fixable" / "1" / "model.py"
    model_py.write_text(IDENTITY_MODEL.format(initialize="pass", execute="pass"))
    assert load(setup, "fixable") == (200, "")
    assert index(setup.port)["fixable"] == {"name": "fixable", "version": "1", "state": "READY"}
    assert identity_infer(setup.port, "fixable", [7.0]).json()["outputs"][0]["data"] == [7.0]


def test_reload_of_an_unchanged_model_is_a_no_op(setup: Setup) -> None:
    log = setup.repository / INIT_LOG
    assert load(setup, "counted") == (200, "")
    assert load(setup, "counted") == (200, "")
    assert log.read_text().count("init") == 1
    config = setup.repository / "counted" / "config.pbtxt"
    config.write_text(config.read_text() + "\n# edited\n")
    assert load(setup, "counted") == (200, "")
    assert log.read_text().count("init") == 2
    assert identity_infer(setup.port, "counted", [1.0]).status == 200


def test_index_shows_loading_while_initialize_runs(setup: Setup) -> None:
    results: dict[str, tuple[int, str]] = {}
    thread = threading.Thread(target=lambda: results.update(load=load(setup, "slow_loader")))
    thread.start()
    try:
        # Fails (after the timeout) if the load finished without the index ever showing LOADING.
        wait_for(lambda: index(setup.port).get("slow_loader", {}).get("state") == "LOADING", DRAIN_SECONDS + 5,
                 "the index to show LOADING")
        assert call(setup.port, "GET", "/v2/models/slow_loader/ready").status != 200
        assert call(setup.port, "GET", "/v2/health/live").status == 200
    finally:
        thread.join(30)
    assert results["load"] == (200, "")
    assert index(setup.port)["slow_loader"]["state"] == "READY"


@pytest.mark.parametrize("parameters", [
    {"config": 7},
    {"unknown_key": "x"},
    {"file:1/model.py": "cGFzcw=="},  # `file:` without `config`
    {"config": json.dumps(IDENTITY_JSON_CONFIG), "file:1/model.py": "not base64!"},
], ids=["config-not-a-string", "unknown-key", "file-without-config", "file-not-base64"])
def test_load_with_bad_parameters_is_400(setup: Setup, parameters: dict) -> None:
    status, _ = load(setup, "never_loaded", parameters)
    assert status == 400
    assert index(setup.port)["never_loaded"] == {"name": "never_loaded"}


# ---------------------------------------------------------------------------------- file: overrides


def test_file_override_creates_a_new_model(setup: Setup, client: httpclient.InferenceServerClient) -> None:
    source = IDENTITY_MODEL.format(initialize="pass", execute="pass").encode()
    client.load_model("uploaded", config=json.dumps({"name": "uploaded", **IDENTITY_JSON_CONFIG}),
                      files={"file:1/model.py": source})
    assert client.is_model_ready("uploaded")
    reply = identity_infer(setup.port, "uploaded", [4.0, 5.0, 6.0])
    assert reply.status == 200 and reply.json()["outputs"][0]["data"] == [4.0, 5.0, 6.0]
    assert not (setup.repository / "uploaded").exists(), "overrides must never be written into the repository"
    # The overrides live under the server's TMPDIR (what makes the escape checks below meaningful).
    assert list(setup.scratch.glob("evserve-overrides-*/model-*/1/model.py"))
    assert index(setup.port)["uploaded"]["state"] == "READY"


@pytest.mark.parametrize("relative", ["../../escape.py", "1/../../../escape.py", "../escape.py", "ABSOLUTE"])
def test_file_override_cannot_escape(setup: Setup, relative: str) -> None:
    target = setup.scratch / "abs-escape.py"
    if relative == "ABSOLUTE":
        relative = str(target)
    source = IDENTITY_MODEL.format(initialize="pass", execute="pass")
    status, error = load(setup, "escaper", {
        "config": json.dumps({"name": "escaper", **IDENTITY_JSON_CONFIG}),
        "file:1/model.py": base64.b64encode(source.encode()).decode(),
        f"file:{relative}": base64.b64encode(b"print('escaped')").decode(),
    })
    assert status == 400
    assert "failed to load" in error
    assert not target.exists()
    assert not (setup.scratch / "escape.py").exists()
    assert list(setup.scratch.rglob("*escape*")) == []
    assert call(setup.port, "GET", "/v2/models/escaper/ready").status != 200


# ---------------------------------------------------------------------------------- unload


def test_unload(setup: Setup, client: httpclient.InferenceServerClient) -> None:
    client.load_model("unloadable")
    assert identity_infer(setup.port, "unloadable", [1.0]).status == 200
    client.unload_model("unloadable")
    reply = identity_infer(setup.port, "unloadable", [1.0])
    assert reply.status != 200 and reply.error
    assert not client.is_model_ready("unloadable")
    row = index(setup.port)["unloadable"]
    assert (row["state"], row["reason"]) == ("UNAVAILABLE", "unloaded")
    # Loading again brings it back.
    client.load_model("unloadable")
    assert identity_infer(setup.port, "unloadable", [2.0]).status == 200


def test_unload_lets_the_request_in_flight_finish(setup: Setup) -> None:
    assert load(setup, "draining") == (200, "")
    results: dict[str, object] = {}

    def infer() -> None:
        reply = identity_infer(setup.port, "draining", [9.0])
        results.update(status=reply.status, data=reply.json()["outputs"][0]["data"])

    thread = threading.Thread(target=infer)
    thread.start()
    wait_for((setup.repository / DRAIN_MARKER).exists, 10, "the request to reach execute")
    reply = post_json(setup.port, "/v2/repository/models/draining/unload", {})
    # Triton answers an unload once it has started: the execute still has ~1.5 s to go.
    assert reply.status == 200
    assert thread.is_alive(), "the unload reply should not wait for the request in flight"
    assert identity_infer(setup.port, "draining", [1.0]).status != 200  # new requests are refused at once
    thread.join(30)
    assert (results["status"], results["data"]) == (200, [9.0])
    wait_for(lambda: index(setup.port)["draining"].get("state") == "UNAVAILABLE", 10, "the unload to finish")
    assert 'model="draining"' not in call(setup.server.metrics_port, "GET", "/metrics").body.decode()


def test_file_override_folders_are_removed_on_reload_and_unload(setup: Setup) -> None:
    source = base64.b64encode(IDENTITY_MODEL.format(initialize="pass", execute="pass").encode()).decode()
    parameters = {"config": json.dumps({"name": "transient", **IDENTITY_JSON_CONFIG}), "file:1/model.py": source}

    def folders() -> set[Path]:
        return {path.parents[1] for path in setup.scratch.glob("evserve-overrides-*/model-*/1/model.py")}

    before = folders()
    assert load(setup, "transient", parameters) == (200, "")
    first = folders() - before
    assert len(first) == 1
    assert load(setup, "transient", parameters) == (200, "")
    wait_for(lambda: not (first & folders()), 10, "the replaced override folder to be removed")
    assert len(folders() - before) == 1
    assert post_json(setup.port, "/v2/repository/models/transient/unload", {}).status == 200
    wait_for(lambda: folders() <= before, 10, "the override folder to be removed after unload")
    status, error = load(setup, "transient")  # nothing of it is left to load from
    assert status == 400 and "failed to load" in error


def test_unload_of_a_model_that_is_not_loaded(setup: Setup, client: httpclient.InferenceServerClient) -> None:
    client.unload_model("idle")
    reply = post_json(setup.port, "/v2/repository/models/idle/unload", {})
    assert (reply.status, reply.body) == (200, b"")


@pytest.mark.parametrize("value", ["yes", 1, None, {}], ids=["str", "int", "null", "object"])
def test_unload_dependents_must_be_a_boolean(setup: Setup, value: object) -> None:
    reply = post_json(setup.port, "/v2/repository/models/simple/unload", {"parameters": {"unload_dependents": value}})
    assert reply.status == 400
    assert "unload_dependents" in reply.error
    assert call(setup.port, "GET", "/v2/models/simple/ready").status == 200


@pytest.mark.parametrize("action", ["load", "unload"])
def test_named_repository_is_501(setup: Setup, action: str) -> None:
    reply = call(setup.port, "POST", f"/v2/repository/xyz/models/simple/{action}", b"")
    assert reply.status == 501
    assert "repository_name" in reply.error
    assert call(setup.port, "GET", "/v2/models/simple/ready").status == 200


def test_server_stayed_healthy(setup: Setup) -> None:
    assert setup.server.proc is not None and setup.server.proc.poll() is None
    assert call(setup.port, "GET", "/v2/health/live").status == 200
    assert simple_infer(setup.port).json()["outputs"][0]["data"] == SIMPLE_SUM


# ---------------------------------------------------------------------------------- none mode


@pytest.fixture(scope="module")
def none_mode() -> Iterator[EvserveProcess]:
    with EvserveProcess("--threads", "1") as proc:
        yield proc


@pytest.mark.parametrize("action", ["load", "unload"])
def test_control_outside_explicit_mode_is_503(none_mode: EvserveProcess, action: str) -> None:
    reply = call(none_mode.port, "POST", f"/v2/repository/models/simple/{action}", b"")
    assert reply.status == 503
    assert NOT_EXPLICIT in reply.error
    assert call(none_mode.port, "GET", "/v2/models/simple/ready").status == 200
    assert index(none_mode.port)["simple"]["state"] == "READY"


def test_real_client_sees_503_outside_explicit_mode(none_mode: EvserveProcess) -> None:
    with httpclient.InferenceServerClient(none_mode.url) as c, pytest.raises(InferenceServerException) as info:
        c.load_model("simple")
    assert info.value.status() == "503"


def test_a_model_added_on_disk_is_listed_by_the_next_index(setup: Setup) -> None:
    copy_simple(setup.repository, "just_added")
    assert index(setup.port)["just_added"] == {"name": "just_added"}
    shutil.rmtree(setup.repository / "just_added")
    assert "just_added" not in index(setup.port)
