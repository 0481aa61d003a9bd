"""Model instances in child processes: the same answers, and crashes, hangs and spins contained.

Every test runs a real evserve and looks at its real process tree (``/proc``): children are
counted, killed models are watched being restarted, and no child may outlive its model.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    IDENTITY_CONFIG,
    SIMPLE_SUM,
    call,
    identity_infer,
    index,
    post_json,
    simple_infer,
    wait_for,
    write_identity,
)
from tests.evserve_process import EvserveProcess

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")

# An identity model whose input value picks how it misbehaves: 1 exits, 2 segfaults, 3 hangs.
MISBEHAVE = """
        value = int(pb_utils.get_input_tensor_by_name(requests[0], "INPUT0").as_numpy().reshape(-1)[0])
        if value == 1:
            import os; os._exit(3)
        if value == 2:
            import ctypes; ctypes.string_at(0)
        if value == 3:
            time.sleep(60)
        if value == 4:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                pass
"""


def process_parameters(*extra: tuple[str, str]) -> str:
    pairs = [("EVSERVE_MODEL_ISOLATION", "process"), *extra]
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in pairs)


def children(pid: int) -> set[int]:
    """The server's child processes (every thread may have spawned some)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    config = IDENTITY_CONFIG.format(name="fragile") + process_parameters(("EVSERVE_EXECUTE_TIMEOUT_SECS", "2"))
    write_identity(tmp_path, "fragile", execute=MISBEHAVE.strip(), config=config)
    tiny = IDENTITY_CONFIG.format(name="tiny") + process_parameters(("EVSERVE_ARENA_BYTES", "4096"))
    write_identity(tmp_path, "tiny", config=tiny)
    two = "\ninstance_group [ { count: 2 kind: KIND_CPU } ]"
    spin = IDENTITY_CONFIG.format(name="spin") + process_parameters() + two
    write_identity(tmp_path, "spin", execute=MISBEHAVE.strip(), config=spin)
    write_identity(tmp_path, "inproc")
    return tmp_path


@pytest.fixture()
def server(repository: Path) -> Iterator[EvserveProcess]:
    with EvserveProcess("--threads", "2", "--model-repository", str(repository)) as proc:
        yield proc


def server_pid(server: EvserveProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def test_the_bundled_models_answer_the_same_in_processes() -> None:
    with EvserveProcess("--threads", "1", "--model-isolation", "process") as server:
        reply = simple_infer(server.port)
        assert reply.status == 200, reply.body
        assert reply.json()["outputs"][0]["data"] == SIMPLE_SUM
        strings = {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": [str(i) for i in range(16)]}
        ones = {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 16], "data": ["1"] * 16}
        reply = post_json(server.port, "/v2/models/simple_string/infer", {"inputs": [strings, ones]})
        assert reply.status == 200, reply.body
        assert reply.json()["outputs"][0]["data"] == [str(i + 1) for i in range(16)]
        # One child per instance of every bundled model.
        assert len(children(server_pid(server))) >= 5


def test_concurrent_requests_to_a_child_are_each_executed_and_counted() -> None:
    """Under load a process instance takes queued requests to its child in rounds: every request
    is still answered with its own outputs, and counted as its own execution, as Triton counts."""
    with EvserveProcess("--threads", "1", "--model-isolation", "process", "--model-control-mode", "explicit",
                        "--load-model", "simple") as server:
        replies: list[tuple[int, int, Any]] = []

        def client(offset: int) -> None:
            for n in range(25):
                base = offset * 100 + n
                inputs = [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [base] * 16},
                          {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]
                reply = post_json(server.port, "/v2/models/simple/infer", {"inputs": inputs})
                replies.append((base, reply.status, reply.json()))

        clients = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert len(replies) == 400
        for base, status, body in replies:
            assert status == 200, body
            assert body["outputs"][0]["data"] == [base + 1] * 16  # its own answer, not a neighbour's
        stats = call(server.port, "GET", "/v2/models/simple/stats").json()["model_stats"][0]
        assert stats["inference_count"] == stats["execution_count"] == 400
        assert stats["inference_stats"]["success"]["count"] == 400
        assert stats["inference_stats"]["compute_infer"]["count"] == 400


def test_a_parameter_puts_one_model_in_a_process(server: EvserveProcess) -> None:
    pid = server_pid(server)
    # fragile, tiny and two spin instances run in children; inproc in the server.
    assert len(children(pid)) == 4
    assert identity_infer(server.port, "inproc", [5.0]).status == 200
    assert identity_infer(server.port, "fragile", [5.0]).json()["outputs"][0]["data"] == [5.0]


@pytest.mark.parametrize(("value", "how"), [(1.0, "exited with status 3"), (2.0, "signal 11 (SIGSEGV)")])
def test_a_crash_fails_its_request_with_500_and_the_instance_restarts(
    server: EvserveProcess, value: float, how: str
) -> None:
    pid = server_pid(server)
    before = children(pid)
    started = time.monotonic()
    reply = identity_infer(server.port, "fragile", [value])
    assert reply.status == 500
    assert "model 'fragile'" in reply.error and how in reply.error, reply.error
    assert time.monotonic() - started < 5
    assert call(server.port, "GET", "/v2/health/live").status == 200
    assert identity_infer(server.port, "inproc", [7.0]).status == 200  # other models are untouched
    reply = identity_infer(server.port, "fragile", [5.0])  # a fresh child answers
    assert reply.status == 200, reply.body
    after = children(pid)
    assert len(after) == len(before) and after != before, "the crashed child is replaced, not added to"


def test_a_hung_execute_is_killed_at_its_timeout(server: EvserveProcess) -> None:
    started = time.monotonic()
    reply = identity_infer(server.port, "fragile", [3.0])
    elapsed = time.monotonic() - started
    assert reply.status == 500 and "execute timeout of 2 s" in reply.error, reply.error
    assert 1.5 < elapsed < 10
    assert identity_infer(server.port, "fragile", [5.0]).status == 200


def test_a_request_larger_than_the_arena_is_413(server: EvserveProcess) -> None:
    reply = identity_infer(server.port, "tiny", [1.0] * 2048)  # 8 KiB of FP32 into a 4 KiB arena
    assert reply.status == 413 and "shared memory" in reply.error, reply.error
    assert identity_infer(server.port, "tiny", [1.0] * 16).status == 200


def test_spinning_instances_do_not_stall_the_server(server: EvserveProcess) -> None:
    """Two instances spin pure Python for 3 s; health and another model keep answering at once."""
    spins = [threading.Thread(target=identity_infer, args=(server.port, "spin", [4.0])) for _ in range(2)]
    for thread in spins:
        thread.start()
    time.sleep(0.3)  # both executes are spinning now
    health, other = [], []
    for _ in range(10):
        started = time.monotonic()
        assert call(server.port, "GET", "/v2/health/live").status == 200
        health.append(time.monotonic() - started)
        started = time.monotonic()
        assert identity_infer(server.port, "inproc", [1.0]).status == 200
        other.append(time.monotonic() - started)
    for thread in spins:
        thread.join(30)
    assert statistics.median(health) < 0.1, health
    assert statistics.median(other) < 0.1, other


def test_unload_and_stop_leave_no_child_behind(repository: Path) -> None:
    explicit = ("--model-control-mode", "explicit", "--load-model", "fragile", "--load-model", "spin")
    with EvserveProcess("--threads", "1", "--model-repository", str(repository), *explicit) as server:
        pid = server_pid(server)
        first = children(pid)
        assert len(first) == 3
        assert call(server.port, "POST", "/v2/repository/models/spin/unload").status == 200
        wait_for(lambda: len(children(pid)) == 1, 10, "the spin children to exit")
        gone = first - children(pid)
        assert len(gone) == 2 and not any(alive(p) for p in gone)
        last = children(pid)
    assert server.proc is not None and server.proc.returncode is not None
    assert not any(alive(p) for p in last), "a child outlived the server"


def test_a_server_killed_outright_takes_its_children_with_it(repository: Path) -> None:
    server = EvserveProcess("--threads", "1", "--model-repository", str(repository)).start()
    try:
        assert server.proc is not None
        kids = children(server.proc.pid)
        assert kids
        server.proc.kill()
        server.proc.wait()
        wait_for(lambda: not any(alive(p) for p in kids), 10, "the children to exit after the server")
    finally:
        server.stop()
        os.unlink(server.log.name)


def test_a_crash_loop_gives_up_with_503_and_the_version_becomes_unavailable(server: EvserveProcess) -> None:
    statuses = [identity_infer(server.port, "fragile", [1.0], timeout=30).status for _ in range(6)]
    assert statuses == [500] * 5 + [503]
    # From then on the version is UNAVAILABLE with the reason, as a failed load would be.
    reply = identity_infer(server.port, "fragile", [5.0])
    assert reply.status == 404 and "has no available versions" in reply.error, reply.error
    row = index(server.port)["fragile"]
    assert row["state"] == "UNAVAILABLE" and "crashed 5 times" in row["reason"], row
    assert call(server.port, "GET", "/v2/models/fragile/ready").status != 200
    assert identity_infer(server.port, "inproc", [1.0]).status == 200


def test_metrics_show_each_child_memory_and_restarts(server: EvserveProcess) -> None:
    def sample(name: str, instance: str) -> float:
        text = call(server.metrics_port, "GET", "/metrics").body.decode()
        prefix = f'{name}{{model="fragile",version="1",instance="{instance}"}} '
        line = next(line for line in text.splitlines() if line.startswith(prefix))
        return float(line[len(prefix):])

    assert sample("evserve_model_instance_rss_bytes", "fragile_0") > 1 << 20
    assert sample("evserve_model_instance_restarts_total", "fragile_0") == 0
    assert identity_infer(server.port, "fragile", [1.0]).status == 500
    assert identity_infer(server.port, "fragile", [5.0]).status == 200
    assert sample("evserve_model_instance_restarts_total", "fragile_0") == 1
    text = call(server.metrics_port, "GET", "/metrics").body.decode()
    assert 'model="inproc"' not in "".join(line for line in text.splitlines() if "evserve_model_instance" in line)
