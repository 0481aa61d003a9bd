"""Tensors in client shared-memory regions: the request parameters, and the bytes in and out.

An input or a requested output may name a registered region instead of carrying data
(Triton's shared-memory extension): ``shared_memory_region``, ``shared_memory_byte_size`` and
the optional ``shared_memory_offset`` in its ``parameters``. This module reads those parameters
with Triton's texts and moves the bytes; which regions exist, and keeping their memory mapped
while a request uses them, is the server's business (``gpu/shared_memory``). The decoder asks a
:data:`Resolver` for a view of ``[offset, offset + byte_size)`` of the named region and never
sees a mapping, a file or a lock, so this module stays free of I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evserve.protocol.errors import BadRequest, NotFound

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
KEYS = frozenset({REGION, BYTE_SIZE, OFFSET})
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class ShmRef:
    """Where a tensor lives: ``byte_size`` bytes at ``offset`` into region ``region``."""

    region: str
    byte_size: int
    offset: int = 0


Resolver = Callable[[ShmRef], memoryview]
"""The server's lookup: a view of the referenced bytes (kept mapped until the request ends).

It raises :class:`~evserve.protocol.errors.ProtocolError` with Triton's texts: 404 for an unknown
region, 400 for an offset or size outside it.
"""


def _uint64(params: dict[str, Any], key: str, default: int | None) -> int:
    value = params.get(key, default)
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:
        raise BadRequest(f"Unable to parse '{key}': attempt to access JSON non-unsigned-integer as unsigned-integer")
    return value


def shm_ref(params: dict[str, Any]) -> ShmRef | None:
    """The region a tensor's ``parameters`` name, or None when they name none."""
    if REGION not in params:
        return None
    region = params[REGION]
    if not isinstance(region, str):
        raise BadRequest(f"Unable to parse '{REGION}': attempt to access JSON non-string as string")
    offset = _uint64(params, OFFSET, 0)
    if BYTE_SIZE not in params:
        raise BadRequest(f"Invalid offset + byte size for shared memory region: '{region}'")  # Triton's text
    byte_size = _uint64(params, BYTE_SIZE, None)
    if offset + byte_size > _UINT64_MAX:
        raise BadRequest(f"Integer overflow detected: byte_size {byte_size} + offset {offset} in region '{region}'")
    return ShmRef(region, byte_size, offset)


def unresolvable(ref: ShmRef) -> memoryview:
    """The resolver of a server without client shared memory: no region is ever found."""
    raise NotFound(f"Unable to find shared memory region: '{ref.region}'")


def check_output_ref(name: str, params: dict[str, Any]) -> ShmRef | None:
    """An output's region, refusing what cannot go with it (Triton's texts)."""
    ref = shm_ref(params)
    if ref is None:
        return None
    # tritonclient sends binary_data: false beside a region; only a true one (or a class count) clashes.
    for other in ("binary_data", "classification"):
        if params.get(other):
            raise BadRequest(f"Output can't set both '{REGION}' and '{other}'")
    return ref


def write_output(name: str, region: memoryview, payload: bytes | memoryview, size: int) -> None:
    """Copy an output's wire bytes into its region's view; 400 when the region is too small."""
    if size > region.nbytes:
        raise BadRequest(
            f"shared memory size specified with the request for output '{name}' ({region.nbytes} bytes) should be at "
            f"least {size} bytes to hold the results"
        )
    if size:
        region[:size] = payload
