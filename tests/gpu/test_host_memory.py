"""The large-block allocator policy: applied where glibc takes it, never over an operator's own setting."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from evserve.gpu import host_memory

_CHECK = "from evserve.gpu.host_memory import reuse_large_blocks; print(reuse_large_blocks())"


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="glibc's mallopt is Linux-only")
def test_glibc_takes_the_policy() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert _run(env) == "True"


def test_an_operators_own_thresholds_are_left_alone() -> None:
    assert _run({**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}) == "False"
    assert host_memory.MMAP_THRESHOLD <= 32 << 20  # glibc refuses more on 64-bit
