"""The server's threads and child processes run under Linux's SCHED_BATCH policy by default.

Why. evserve works in bursts. A loop thread reads what its sockets hold, decodes it and hands
the burst to the workers in one go. A process instance's child runs a round of requests and
answers them with one write. When more threads want to run than there are cores, the default
policy (SCHED_OTHER) lets each wake-up preempt whatever runs. A client's next request breaks
into a child's round; a child's answer breaks into the loop thread's burst. Each switch between
processes costs both sides their caches. Under SCHED_BATCH a task that wakes waits until the
running one blocks or ends its slice, so each burst runs to its end. sched(7) names this case:
"a deterministic scheduling policy without interactivity causing extra preemptions (between the
workload's tasks)".

Measured with the server and its children pinned to one core and wrk on the other, simple JSON
on the bundled ``simple`` model (medians of 6 interleaved runs, CPU µs per request of the whole
process tree): process-isolated 180 → 152 µs, p99 6.5 → 5.3 ms; in-process no change beyond
the noise; health p99 0.8 → 1.5 ms (README, "Server behaviour").

What it costs. A woken thread may wait for another busy task on its core, for at most the
scheduler's slice (a few milliseconds): the health p99 above. On a machine with an idle core
nothing changes, because a woken task takes the idle core. A waking batch thread does preempt
a task under SCHED_IDLE, which is why a child loads its model under that policy
(``gpu/process/instance_priority.py``). ``--cpu-scheduling normal`` keeps SCHED_OTHER.

How. The policy belongs to each thread. A new thread takes its creator's policy, and so does a
child process. So it is set once at start, on every thread the process has by then (the main
thread, and any pool a library started at import, such as OpenBLAS's), and the loop threads,
the workers and the children take it from there. No privilege is needed to move from SCHED_OTHER
to SCHED_BATCH.
"""

from __future__ import annotations

import os

POLICIES = ("batch", "normal")


def apply(policy: str) -> str:
    """Put this process's threads (and so what they start) under ``policy``; say what was done, for the log."""
    if policy not in POLICIES:
        raise ValueError(f"unknown CPU scheduling policy '{policy}' (expected one of {', '.join(POLICIES)})")
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:  # not Linux
        return "CPU scheduling: the system's default (SCHED_BATCH is Linux's)"
    wanted = batch if policy == "batch" else os.SCHED_OTHER
    try:
        if os.sched_getscheduler(0) not in (os.SCHED_OTHER, batch):
            # Started under a real-time or idle policy on purpose: that choice stands.
            return "CPU scheduling: left as started (a policy other than SCHED_OTHER or SCHED_BATCH)"
        for thread in _threads():
            try:
                os.sched_setscheduler(thread, wanted, os.sched_param(0))
            except ProcessLookupError:  # it ended meanwhile
                continue
    except OSError as exc:
        return f"CPU scheduling: left as started ({exc.strerror or exc})"
    return f"CPU scheduling: {_NAMES[policy]}"


def _threads() -> list[int]:
    """This process's thread ids (the calling thread's alone where /proc is not there to list them)."""
    try:
        return [int(entry) for entry in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


_NAMES = {"batch": "SCHED_BATCH (a woken thread does not preempt a running one)", "normal": "SCHED_OTHER"}
