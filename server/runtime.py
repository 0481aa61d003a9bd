"""What the interpreter and the machine allow: the GIL, usable cores, and the loop-thread count.

Why the loop-thread count depends on the cores. Loop threads beyond the usable cores cannot add
throughput: they only queue, with the GIL for the GIL, without it (a free-threaded 3.14t) for a
core, and every connection they own waits with them. Measured on one core with the GIL and
``--threads 8``: the same instructions per request as one thread, but each loop thread spent
about half its time runnable and waiting, a p99 of 29 ms against 1.4 ms, and 0.8x the
throughput. Measured on two cores on 3.14t: ``--threads 8`` had a p99 of 98 ms against 1.9 ms
with one thread and 4.7 ms with two (bench/README.md). So evserve runs at most one loop thread
per usable core, and says so at start; ``--cap-threads-to-cores=false`` runs all N. On a
machine with the cores (evhtp's setting), N is served as asked.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from importlib import metadata


def gil_enabled() -> bool:
    """Whether the GIL is on in this process (always True before CPython 3.13)."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a cgroup cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def loop_thread_count(requested: int, *, cap_to_cores: bool) -> int:
    """How many loop threads to run for ``--threads requested`` (see the module docstring)."""
    if not cap_to_cores:
        return requested
    return max(1, min(requested, usable_cores()))


def free_threaded_build() -> bool:
    """Whether this CPython was built without the GIL (``--disable-gil``, the 3.13t/3.14t builds)."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def describe_interpreter() -> str:
    """One line for the start-up log: the version, the build and the GIL's state."""
    version = ".".join(map(str, sys.version_info[:3]))
    if not free_threaded_build():
        return f"CPython {version} with the GIL"
    state = "GIL on (a module re-enabled it, or PYTHON_GIL=1)" if gil_enabled() else "GIL off"
    return f"CPython {version} free-threaded build, {state}"


def server_version() -> str:
    """evserve's installed version (``GET /v2`` and ``--version``)."""
    try:
        return metadata.version("evserve")
    except metadata.PackageNotFoundError:
        return "0.0.0"
