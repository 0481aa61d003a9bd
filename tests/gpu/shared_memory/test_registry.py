"""The region registry: keys, ranges, limits, reference counts and unmapping, on real POSIX shared memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np
import pytest

from evserve.gpu.shared_memory import Leases, RegionRegistry, system
from evserve.gpu.shared_memory.registry import SYSTEM
from evserve.protocol.errors import BadRequest, NotFound
from evserve.protocol.shared_memory import ShmRef


@pytest.fixture()
def segment() -> Iterator[shared_memory.SharedMemory]:
    made = shared_memory.SharedMemory(name=f"evtest_{os.getpid()}", create=True, size=4096)
    yield made
    made.close()
    made.unlink()


def test_keys_are_one_posix_name(segment: shared_memory.SharedMemory) -> None:
    assert system.check_key("r", "abc") == "/abc" and system.check_key("r", "/abc") == "/abc"
    for bad in ("", "/", "a/b", "/../x", "..", ".", "x\0y", "/" + "y" * 256):
        with pytest.raises(BadRequest, match="invalid key"):
            system.check_key("r", bad)
    with pytest.raises(BadRequest, match="reserved prefix"):
        system.check_key("r", "/triton_python_backend_shm_region_7")


def test_ranges_are_checked_at_register_and_at_use(segment: shared_memory.SharedMemory) -> None:
    with pytest.raises(BadRequest, match="invalid args"):
        system.open_region("r", segment.name, 4000, 200)
    registry = RegionRegistry(max_regions=4, max_region_bytes=1 << 20)
    registry.add(system.open_region("r", segment.name, 3, 100))  # not page-aligned: fine
    segment.buf[3:7] = b"\x01\x02\x03\x04"
    leases = Leases(registry)
    assert bytes(leases(ShmRef("r", 4))) == b"\x01\x02\x03\x04"
    with pytest.raises(BadRequest, match="Invalid offset for shared memory region: 'r'"):
        leases(ShmRef("r", 4, 100))
    with pytest.raises(BadRequest, match="Invalid offset \\+ byte size"):
        leases(ShmRef("r", 8, 96))
    with pytest.raises(NotFound):
        leases(ShmRef("nope", 4))
    leases.release()


def test_limits(segment: shared_memory.SharedMemory) -> None:
    registry = RegionRegistry(max_regions=2, max_region_bytes=1024)
    with pytest.raises(BadRequest, match="exceeds the limit of 1024 bytes"):
        registry.check_new("big", 2048)
    for name in ("a", "b"):
        registry.check_new(name, 8)
        registry.add(system.open_region(name, segment.name, 0, 8))
    with pytest.raises(BadRequest, match="already in manager"):
        registry.check_new("a", 8)
    with pytest.raises(BadRequest, match="--client-shm-max-regions"):
        registry.check_new("c", 8)
    registry.close()
    assert registry.status(SYSTEM, None) == []


def test_unregister_waits_for_the_last_lease(segment: shared_memory.SharedMemory) -> None:
    registry = RegionRegistry(max_regions=4, max_region_bytes=1 << 20)
    registry.add(system.open_region("r", segment.name, 0, 64))
    first, second = Leases(registry), Leases(registry)
    first(ShmRef("r", 8))
    second(ShmRef("r", 8))
    registry.unregister(SYSTEM, "r")
    assert [r["name"] for r in registry.status(SYSTEM, None)] == ["r"]  # still listed, still usable
    first.release()
    assert registry.status(SYSTEM, None)
    second.release()
    assert registry.status(SYSTEM, None) == []
    with pytest.raises(NotFound):
        Leases(registry)(ShmRef("r", 8))


def test_an_array_kept_past_unregister_stays_readable(segment: shared_memory.SharedMemory) -> None:
    """The mapping cannot be closed under a live array; it goes when the array goes."""
    registry = RegionRegistry(max_regions=4, max_region_bytes=1 << 20)
    registry.add(system.open_region("r", segment.name, 0, 64))
    leases = Leases(registry)
    kept = np.frombuffer(leases(ShmRef("r", 16)), dtype=np.int32)
    segment.buf[:4] = np.int32(41).tobytes()
    leases.release()
    registry.unregister(SYSTEM, "r")
    assert registry.status(SYSTEM, None) == [] and int(kept[0]) == 41
    del kept
