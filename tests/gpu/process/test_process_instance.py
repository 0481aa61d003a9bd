"""ProcessInstance against a real child process: the python-backend contract holds across the boundary.

Decoupled streams, responses sent after ``execute`` returned (they travel inline, the arena having
moved on), ``async def execute``, a client that leaves (``request.is_cancelled()`` in the child),
``is_ready`` and ``finalize`` errors: each behaves as the in-process instance does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.process.instance import ChildSpec, ProcessInstance
from evserve.gpu.python_backend.importer import PythonModelError
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, InferResponse, InputTensor

IO = {
    "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
}

STREAMER = """
import asyncio, threading, time
import numpy as np
import triton_python_backend_utils as pb_utils
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

def response(value):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.float32))])

class TritonPythonModel:
    def initialize(self, args):
        self.ready = True

    def is_ready(self):
        return self.ready

    def execute(self, requests):
        for request in requests:
            mode = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            sender = request.get_response_sender()
            if mode == 0:      # three responses, then a bare FINAL, all during execute
                for i in range(3):
                    sender.send(response(float(i)))
                sender.send(flags=FINAL)
            elif mode == 1:    # answered from another thread after execute returned
                threading.Thread(target=self.later, args=(sender,)).start()
            elif mode == 2:    # waits for the client to leave
                self.wait_for_cancel(request, sender)
            elif mode == 3:    # the same, after execute returned
                threading.Thread(target=self.wait_for_cancel, args=(request, sender)).start()
        return None

    def wait_for_cancel(self, request, sender):
        deadline = time.monotonic() + 10
        while not request.is_cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        sender.send(response(-1.0 if request.is_cancelled() else -2.0), flags=FINAL)

    def later(self, sender):
        time.sleep(0.2)
        sender.send(response(42.0), flags=FINAL)

    def finalize(self):
        raise pb_utils.TritonModelException("finalize refused")
"""

ASYNC_MODEL = """
import asyncio
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        await asyncio.sleep(0.01)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                .as_numpy() * 3)]) for r in requests]
"""

BROKEN_INIT = """
class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("no weights here")
    def execute(self, requests):
        return []
"""


def spec(tmp_path: Path, source: str, *, decoupled: bool = False, name: str = "m") -> ChildSpec:
    version_dir = tmp_path / name / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    config: dict[str, Any] = {"name": name, "backend": "python", "max_batch_size": 0, **IO}
    if decoupled:
        config["model_transaction_policy"] = {"decoupled": True}
    return ChildSpec(name, 1, config, str(tmp_path / name), "CPU", 0, f"{name}_0", 1 << 20, None)


def request(value: float) -> InferRequest:
    data = np.array([value], dtype=np.float32)
    return InferRequest("m", "1", inputs=[InputTensor("IN", "FP32", data.shape, data)])


class Stream:
    def __init__(self) -> None:
        self.items: list[tuple[Any, bool]] = []
        self.done = threading.Event()

    def __call__(self, item: InferResponse | ProtocolError | None, final: bool) -> None:
        self.items.append((item, final))
        if final:
            self.done.set()

    def values(self) -> list[tuple[float | None, bool]]:
        return [(None if item is None else float(item.outputs[0].data[0]), final) for item, final in self.items]


@pytest.fixture()
def streamer(tmp_path: Path):
    instance = ProcessInstance(spec(tmp_path, STREAMER, decoupled=True))
    yield instance
    with pytest.raises(PythonModelError, match="finalize refused"):
        instance.finalize()


def test_a_decoupled_stream_crosses_in_order(streamer: ProcessInstance) -> None:
    stream = Stream()
    streamer.execute([ExecRequest(request(0), lambda r: None, stream=stream)])
    assert stream.done.wait(5)
    assert stream.values() == [(0.0, False), (1.0, False), (2.0, False), (None, True)]


def test_a_response_after_execute_returned_arrives(streamer: ProcessInstance) -> None:
    stream = Stream()
    streamer.execute([ExecRequest(request(1), lambda r: None, stream=stream)])
    assert not stream.done.is_set()
    streamer.execute([ExecRequest(request(0), lambda r: None, stream=Stream())])  # the arena moves on
    assert stream.done.wait(5)
    assert stream.values() == [(42.0, True)]


def test_a_client_that_leaves_is_cancelled_in_the_child(streamer: ProcessInstance) -> None:
    stream = Stream()
    left = threading.Event()
    job = ExecRequest(request(2), lambda r: None, cancelled=left.is_set, stream=stream)
    runner = threading.Thread(target=streamer.execute, args=([job],))
    runner.start()
    time.sleep(0.3)
    left.set()
    runner.join(5)
    assert stream.done.wait(5)
    assert stream.values() == [(-1.0, True)]


def test_a_client_that_leaves_after_execute_returned_is_cancelled_too(streamer: ProcessInstance) -> None:
    stream = Stream()
    left = threading.Event()
    streamer.execute([ExecRequest(request(3), lambda r: None, cancelled=left.is_set, stream=stream)])
    assert not stream.done.is_set()  # execute has returned; the answer is still to come
    time.sleep(0.3)
    left.set()
    assert stream.done.wait(5)
    assert stream.values() == [(-1.0, True)]


def test_is_ready_runs_in_the_child(streamer: ProcessInstance) -> None:
    assert streamer.has_readiness_check
    assert streamer.check_ready() is True


def test_async_execute_crosses(tmp_path: Path) -> None:
    instance = ProcessInstance(spec(tmp_path, ASYNC_MODEL))
    results: list[Any] = []
    instance.execute([ExecRequest(request(2.0), results.append)])
    assert [r.outputs[0].data.tolist() for r in results] == [[6.0]]
    instance.finalize()


def test_a_failing_initialize_fails_the_load_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(PythonModelError, match="ValueError: no weights here"):
        ProcessInstance(spec(tmp_path, BROKEN_INIT))


RECORDER = """
import os, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.calls = []

    def execute(self, requests):
        values = [float(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()[0]) for r in requests]
        self.calls.append(values)
        if values[0] < 0:
            time.sleep(0.3)  # the first request of a round holds the child while a client leaves
        # OUT: the input itself (a view of the arena), then every call so far, one per element.
        out = pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()
        history = np.array([v for call in self.calls for v in [len(call), *call]], np.float32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out if len(out) > 1 else history)])
                for _ in requests]
"""


def test_a_round_runs_each_batch_as_its_own_execute_in_order(tmp_path: Path) -> None:
    instance = ProcessInstance(spec(tmp_path, RECORDER))
    results: list[Any] = []
    batches = [[ExecRequest(request(float(n)), results.append)] for n in range(1, 6)]
    instance.execute_many(batches)
    assert len(results) == 5
    # Five executes of one request each, in the order they were handed over.
    assert results[-1].outputs[0].data.tolist() == [1, 1.0, 1, 2.0, 1, 3.0, 1, 4.0, 1, 5.0]
    instance.finalize()


def test_batches_that_do_not_fit_together_go_in_the_next_round(tmp_path: Path) -> None:
    small = spec(tmp_path, RECORDER)
    # Room for one 600 KiB input and its output view, not for two inputs.
    instance = ProcessInstance(ChildSpec(**{**small.__dict__, "arena_bytes": 700 << 10}))
    results: list[Any] = []
    big = [np.full(150_000, float(n), dtype=np.float32) for n in range(3)]
    batches = [[ExecRequest(InferRequest("m", "1", inputs=[InputTensor("IN", "FP32", a.shape, a)]), results.append)]
               for a in big]
    instance.execute_many(batches)
    assert [float(r.outputs[0].data[0]) for r in results] == [0.0, 1.0, 2.0]
    assert all(r.outputs[0].data.shape == (150_000,) for r in results)
    instance.finalize()


def test_a_pipelined_request_whose_client_left_is_not_run(tmp_path: Path) -> None:
    instance = ProcessInstance(spec(tmp_path, RECORDER))
    results: list[Any] = []
    left = threading.Event()
    first = ExecRequest(request(-1.0), results.append)
    gone = ExecRequest(request(7.0), results.append, cancelled=left.is_set)
    last = ExecRequest(request(8.0), results.append)
    runner = threading.Thread(target=instance.execute_many, args=([[first], [gone], [last]],))
    runner.start()
    left.set()  # while the first one runs in the child; the worker raises the flag at its next tick
    runner.join(10)
    assert isinstance(results[1], ProtocolError) and results[1].message == "Request was cancelled"
    assert results[1].status == 400
    # The child never ran it: two executes, of the first and the last request.
    assert results[2].outputs[0].data.tolist() == [1, -1.0, 1, 8.0]
    instance.finalize()


NICE_PROBE = """
import os, threading
import numpy as np
import triton_python_backend_utils as pb_utils

def nice():
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

def policy():
    return os.sched_getscheduler(threading.get_native_id())

class TritonPythonModel:
    def initialize(self, args):
        self.loading = (nice(), policy())
        self.helper_nice = []
        self.go = threading.Event()
        self.helper = threading.Thread(target=self.watch, daemon=True)  # inherits the loading priority
        self.helper.start()

    def watch(self):
        self.go.wait()
        self.helper_nice.extend((nice(), policy()))

    def execute(self, requests):
        self.go.set()
        self.helper.join(5)
        values = np.array([*self.loading, *self.helper_nice, nice(), policy()], np.float32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", values)]) for _ in requests]
"""


@pytest.fixture(params=["SCHED_OTHER", "SCHED_BATCH"])
def server_policy(request: pytest.FixtureRequest) -> Iterator[int]:
    """This thread (which starts the child, as a server's load thread does) under each policy evserve runs."""
    policy = getattr(os, request.param)
    before = os.sched_getscheduler(0)
    os.sched_setscheduler(0, policy, os.sched_param(0))
    yield policy
    os.sched_setscheduler(0, before, os.sched_param(0))


def test_a_child_loads_at_the_lowest_priority_and_serves_at_the_servers(tmp_path: Path, server_policy: int) -> None:
    from evserve.gpu.process.instance_priority import LOADING_NICE, lower_for_loading

    server_nice = os.getpriority(os.PRIO_PROCESS, 0)
    probe = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        if lower_for_loading(probe.pid) is None:
            pytest.skip("this process may not raise a priority again (no CAP_SYS_NICE, low RLIMIT_NICE)")
    finally:
        probe.kill()
        probe.wait()
    instance = ProcessInstance(spec(tmp_path, NICE_PROBE))
    results: list[Any] = []
    instance.execute([ExecRequest(request(0.0), results.append)])
    loading, loading_policy, helper, helper_policy, serving, serving_policy = results[0].outputs[0].data.tolist()
    assert loading == LOADING_NICE
    assert loading_policy == os.SCHED_IDLE  # a waking serving thread preempts it, even under SCHED_BATCH
    assert helper == serving == server_nice  # the model's own thread got the server's priority back too
    assert helper_policy == serving_policy == server_policy
    instance.finalize()


SOMETIMES_SLOW = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        value = float(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()[0])
        if value >= 100:
            time.sleep(value / 100)  # 100 -> one second; 1000 -> ten
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.float32))])
                for _ in requests]
"""


def test_a_batch_killed_at_the_timeout_fails_alone(tmp_path: Path) -> None:
    timed = spec(tmp_path, SOMETIMES_SLOW)
    instance = ProcessInstance(ChildSpec(**{**timed.__dict__, "execute_timeout": 1.0}))
    results: list[Any] = []
    fast = [float(n) for n in range(1, 13)]
    instance.execute_many([[ExecRequest(request(value), results.append)] for value in [*fast, 1000.0]])
    # The small ones were answered before the last ran past the timeout and its process was killed.
    assert [float(r.outputs[0].data[0]) for r in results[:-1]] == fast
    assert isinstance(results[-1], ProtocolError) and "execute timeout" in results[-1].message
    instance.finalize()
