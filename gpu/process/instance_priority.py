"""A child process loads its model at the lowest CPU priority, and serves at the server's.

Why. Loading a model (the interpreter starting, imports, weights, an ``initialize`` that
spins) is CPU work that nobody waits on as urgently as the requests other models are serving.
At the same priority, a 2 s spinning ``initialize`` loaded and unloaded over and over raised the
p99 latency of another model under load by half on a two-core machine
(``bench/model_control_latency.py --init-mode spin --isolation process``). At nice 19 the load
takes only the CPU time serving leaves idle.

How. The server lowers the child right after starting it (anyone may lower a process of their
own): nice 19, and the SCHED_IDLE policy where Linux has it. Nice alone is not enough once the
server runs under SCHED_BATCH (``server/cpu_scheduling.py``): a waking batch thread preempts no
running task but an idle-policy one, so serving threads waited out each slice of a spinning
load, and the p99 of the same benchmark rose to 3.7-4.5x steady; with the child under SCHED_IDLE,
1.04-1.33x. Linux nice values and policies are per thread and a new thread inherits its
parent's, so once the model is loaded the child gives every thread still at ``LOADING_NICE``
(its main thread, and those the model started in ``initialize``) the server's policy and
priority back. Raising a priority again, or leaving SCHED_IDLE, takes CAP_SYS_NICE or a high
enough RLIMIT_NICE: the server checks first, and where the child could not undo it, nothing is
lowered and the load runs at the server's priority, as it did before.
"""

from __future__ import annotations

import logging
import os
import resource
from typing import NamedTuple

_log = logging.getLogger(__name__)

LOADING_NICE = 19
_CAP_SYS_NICE = 23  # its bit in /proc/<pid>/status CapEff


class ServingPriority(NamedTuple):
    """What a child's threads get back once its model is loaded: the server's nice value and
    scheduling policy (None where the policy was left alone)."""

    nice: int
    policy: int | None


def lower_for_loading(pid: int) -> ServingPriority | None:
    """Lower process ``pid`` (just started, still single-threaded) to ``LOADING_NICE`` and
    SCHED_IDLE; return what its threads should get back once loaded, or None when it was left as
    it was."""
    if not hasattr(os, "setpriority"):
        return None
    try:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        if nice >= LOADING_NICE or not _may_raise_to(nice):
            return None
        os.setpriority(os.PRIO_PROCESS, pid, LOADING_NICE)
    except OSError as exc:  # the child already died, or the kernel refused: it loads as it is
        _log.debug("could not lower process %d for loading: %s", pid, exc)
        return None
    policy = None
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is not None:
        try:
            serving = os.sched_getscheduler(0)
            if serving in (os.SCHED_OTHER, getattr(os, "SCHED_BATCH", os.SCHED_OTHER)):  # not a real-time server
                os.sched_setscheduler(pid, idle, os.sched_param(0))
                policy = serving
        except OSError as exc:  # nice 19 alone, then
            _log.debug("could not give process %d the idle policy for loading: %s", pid, exc)
    return ServingPriority(nice, policy)


def _may_raise_to(nice: int) -> bool:
    """Whether a process with our credentials and limits may set a thread's nice value back to ``nice``."""
    try:
        if resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice:  # RLIMIT_NICE counts from 20 down
            return True
        with open("/proc/self/status") as status:
            caps = next(line.split()[1] for line in status if line.startswith("CapEff:"))
        return bool(int(caps, 16) >> _CAP_SYS_NICE & 1)
    except (OSError, StopIteration, ValueError):
        return False
