"""``--cpu-scheduling``: every thread of the server and of its model processes runs under the policy.

The policy is set once, on the main thread, before anything starts (server/cpu_scheduling.py);
these tests read each thread's policy back from the kernel, in a real server whose model runs in
a child process, so a thread or a child that escaped it would show.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import simple_infer
from tests.e2e.test_process_isolation import children
from tests.evserve_process import EvserveProcess

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH") or not Path("/proc/self/task").is_dir(), reason="Linux scheduling policies"
)


def policies(pid: int) -> set[int]:
    """The scheduling policy of every thread of ``pid`` and of its child processes' threads."""
    found: set[int] = set()
    for process in (pid, *children(pid)):
        for task in Path(f"/proc/{process}/task").iterdir():
            try:
                found.add(os.sched_getscheduler(int(task.name)))
            except OSError:  # a thread that ended meanwhile
                continue
    return found


@pytest.mark.parametrize(("flag", "policy"), [((), "SCHED_BATCH"), (("--cpu-scheduling", "normal"), "SCHED_OTHER")])
def test_every_thread_and_model_process_runs_under_the_policy(flag: tuple[str, ...], policy: str) -> None:
    server = EvserveProcess(
        "--model-isolation", "process", "--model-control-mode", "explicit", "--load-model", "simple", *flag
    ).start()
    try:
        assert simple_infer(server.port).status == 200  # the worker and the child have served a request
        assert server.proc is not None
        assert children(server.proc.pid), "the model runs in a child process"
        assert policies(server.proc.pid) == {getattr(os, policy)}
        assert policy in server.output()  # the start-up log says which policy it runs under
    finally:
        server.stop()
