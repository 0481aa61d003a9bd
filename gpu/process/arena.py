"""A bounded shared-memory arena, mapped by the server and one child: tensor bytes cross without a pipe.

Why one arena per instance with a bump allocator: an instance executes one batch at a time, so
the batch's inputs are laid out from offset 0, the child lays its outputs after them, and the
whole arena is free again once the batch is done (the parent copies outputs out as each
response arrives, before it lets the next batch in). No free lists, no fragmentation, and a
bound that is the arena's size. Backed by a ``memfd`` (Linux) passed to the child by file
descriptor, so nothing appears in /dev/shm and nothing is left behind if either side dies.
"""

from __future__ import annotations

import math
import mmap
import os

import numpy as np

ALIGN = 64
# The first bytes of the arena are cancellation flags, one per request id modulo their count:
# the server sets a request's flag when its client leaves, and request.is_cancelled() in the
# child reads it (no message, no thread to receive one). Tensors start after them.
CANCEL_FLAGS = 4096


class ArenaFull(Exception):
    """The tensors of one batch do not fit in the arena."""


class Arena:
    """``size`` bytes of shared memory; ``fd`` is what the child maps."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        if fd is None:
            fd = os.memfd_create("evserve-arena", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.fd = fd
        self._map = mmap.mmap(fd, size)
        self.view = memoryview(self._map)
        self.address = np.frombuffer(self._map, dtype=np.uint8).ctypes.data  # where this process mapped it

    def offset_of(self, array: np.ndarray) -> int:
        """Where ``array``'s bytes lie in the arena, or -1 when they are not a contiguous part of it
        (an output that is a view of an input, say, can then cross without being copied)."""
        if not array.flags.c_contiguous:
            return -1
        offset = array.ctypes.data - self.address
        return offset if 0 <= offset and offset + array.nbytes <= self.size else -1

    def write(self, offset: int, data: memoryview) -> None:
        self.view[offset : offset + data.nbytes] = data

    def array(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A NumPy view of the arena (no copy): valid until the batch it belongs to is done."""
        nbytes = math.prod(shape) * dtype.itemsize
        return np.frombuffer(self.view[offset : offset + nbytes], dtype=dtype).reshape(shape)

    def bytes_at(self, offset: int, nbytes: int) -> memoryview:
        return self.view[offset : offset + nbytes]

    def close(self) -> None:
        self.view.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a model still holds a view: the mapping goes when the last view does
        os.close(self.fd)


class Bump:
    """Hands out aligned regions of an arena from ``start`` up; ``ArenaFull`` past its end."""

    def __init__(self, arena: Arena, start: int = 0) -> None:
        self.arena = arena
        self.top = start

    def take(self, nbytes: int) -> int:
        offset = -(-self.top // ALIGN) * ALIGN
        if offset + nbytes > self.arena.size:
            raise ArenaFull(f"{offset + nbytes} bytes needed, the arena holds {self.arena.size}")
        self.top = offset + nbytes
        return offset
