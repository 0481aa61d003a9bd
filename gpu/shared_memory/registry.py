"""The registered regions, their reference counts, and the per-request leases that hold them.

A request resolves the regions its tensors name while it is decoded (on a loop thread or the
offload pool) and holds a lease on each until its reply is encoded (on the worker). Unregistering
a region that leases still hold only marks it (Triton since PR #7743): it stays listed and usable
until the last lease is released, and only then is it unmapped, so no request ever reads or writes
memory that is no longer mapped.

Thread-safety: one lock guards the table and every count; it is held for dictionary operations
and arithmetic only (mapping and unmapping happen outside it), so it is safe without the GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from evserve.protocol.errors import BadRequest, NotFound
from evserve.protocol.shared_memory import ShmRef, unresolvable

SYSTEM, CUDA = "system", "cuda"


class Region:
    """One registered region: its name, where its bytes are, and who uses it."""

    __slots__ = ("name", "kind", "status_entry", "byte_size", "view", "_check", "_close", "users", "removing")

    def __init__(
        self,
        name: str,
        kind: str,
        status_entry: dict[str, Any],
        view: memoryview,
        *,
        check: Callable[[], None] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.status_entry = status_entry  # the object /status lists (Triton's fields)
        self.byte_size = int(status_entry["byte_size"])
        self.view = view  # the registered bytes: [offset, offset + byte_size) of the object
        self._check = check  # raises when the region can no longer be read safely
        self._close = close
        self.users = 0
        self.removing = False

    def check(self) -> None:
        if self._check is not None:
            self._check()

    def close(self) -> None:
        """Unmap the region's memory; called once, when no lease is left.

        A model may still hold an array over an input it was given (numpy keeps the view alive).
        Then the mapping cannot be closed now; it is unmapped when the last such array goes, so
        nothing ever points into unmapped memory.
        """
        view, self.view = self.view, memoryview(b"")
        try:
            view.release()
        except BufferError:
            pass
        if self._close is not None:
            self._close()


class RegionRegistry:
    """Every registered region of the server, by name."""

    def __init__(self, *, max_regions: int, max_region_bytes: int) -> None:
        self.max_regions = max_regions
        self.max_region_bytes = max_region_bytes
        self._lock = threading.Lock()
        self._regions: dict[str, Region] = {}

    def check_new(self, name: str, byte_size: int) -> None:
        """Refuse a registration before anything is opened: a taken name, the count or size limit."""
        with self._lock:
            taken = name in self._regions
            count = len(self._regions)
        if taken:
            raise BadRequest(f"shared memory region '{name}' already in manager")
        if count >= self.max_regions:
            raise BadRequest(
                f"failed to register shared memory region '{name}': the server holds {count} regions, its limit "
                "(--client-shm-max-regions)"
            )
        if byte_size > self.max_region_bytes:
            raise BadRequest(
                f"failed to register shared memory region '{name}': byte_size {byte_size} exceeds the limit of "
                f"{self.max_region_bytes} bytes (--client-shm-max-region-size)"
            )

    def add(self, region: Region) -> None:
        with self._lock:
            if region.name not in self._regions:
                self._regions[region.name] = region
                return
        region.close()  # another registration of the name won the race
        raise BadRequest(f"shared memory region '{region.name}' already in manager")

    def status(self, kind: str, name: str | None) -> list[dict[str, Any]]:
        with self._lock:
            if name is None:
                return [dict(r.status_entry) for r in self._regions.values() if r.kind == kind]
            region = self._regions.get(name)
            if region is None or region.kind != kind:
                label = "system" if kind == SYSTEM else "cuda"
                raise NotFound(f"Unable to find {label} shared memory region: '{name}'")
            return [dict(region.status_entry)]

    def unregister(self, kind: str, name: str | None) -> None:
        """Unregister one region (unknown: nothing to do, as Triton) or every region of ``kind``."""
        to_close = []
        with self._lock:
            names = [n for n, r in self._regions.items() if r.kind == kind] if name is None else [name]
            for each in names:
                region = self._regions.get(each)
                if region is None or region.kind != kind:
                    continue
                if region.users:
                    region.removing = True  # the last lease removes it
                else:
                    del self._regions[each]
                    to_close.append(region)
        for region in to_close:
            region.close()

    def acquire(self, ref: ShmRef) -> tuple[Region, memoryview]:
        """The referenced bytes of a registered region, counted as in use until :meth:`release`."""
        with self._lock:
            region = self._regions.get(ref.region)
            if region is None:
                raise NotFound(f"Unable to find shared memory region: '{ref.region}'")
            size = region.byte_size
            if ref.offset >= size and ref.byte_size:
                raise BadRequest(f"Invalid offset for shared memory region: '{ref.region}'")
            if ref.offset + ref.byte_size > size:
                raise BadRequest(f"Invalid offset + byte size for shared memory region: '{ref.region}'")
            region.check()
            region.users += 1
            view = region.view[ref.offset : ref.offset + ref.byte_size]
        return region, view

    def release(self, region: Region) -> None:
        with self._lock:
            region.users -= 1
            last = region.users == 0 and region.removing
            if last and self._regions.get(region.name) is region:
                del self._regions[region.name]
        if last:
            region.close()

    def close(self) -> None:
        """Server stop: unmap every region no request holds."""
        for kind in (SYSTEM, CUDA):
            self.unregister(kind, None)


class Leases:
    """One request's regions: the decoder's resolver, and the release once the reply is written."""

    __slots__ = ("_registry", "_held")

    def __init__(self, registry: RegionRegistry) -> None:
        self._registry = registry
        self._held: list[Region] = []

    def __call__(self, ref: ShmRef) -> memoryview:
        region, view = self._registry.acquire(ref)
        self._held.append(region)
        return view

    def release(self) -> None:
        """Give every region back (idempotent): an unregistered one may then be unmapped."""
        held, self._held = self._held, []
        for region in held:
            self._registry.release(region)


class _NoLeases(Leases):
    """The resolver of a request whose body names no region: nothing to hold, nothing to release.

    Shared by every such request (it never holds anything), so the common path allocates nothing.
    """

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def __call__(self, ref: ShmRef) -> memoryview:
        return unresolvable(ref)

    def release(self) -> None:
        pass


NO_LEASES = _NoLeases()
