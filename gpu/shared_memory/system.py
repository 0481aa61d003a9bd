"""System (POSIX) shared-memory regions: a checked key, one mapping from offset 0, a registered slice.

Why map from 0 and slice: ``mmap`` needs a page-aligned offset, and Triton passes the client's
offset straight through, so a region registered at offset 4 fails there with EINVAL. Mapping
``offset + byte_size`` bytes from the start of the object and slicing works for any offset.

Keys are POSIX shared-memory names only: an optional leading ``/`` and one path component, never
``.`` or ``..``, so a key cannot reach a file outside the shared-memory namespace. Keys with the
python backend's reserved prefix are refused, as Triton refuses them.
"""

from __future__ import annotations

import _posixshmem
import mmap
import os
from typing import Any

from evserve.gpu.shared_memory.registry import SYSTEM, Region
from evserve.protocol.errors import BadRequest

RESERVED_PREFIX = "triton_python_backend_shm_region_"
_NAME_MAX = 255


def check_key(name: str, key: str) -> str:
    """The key as shm_open wants it (with its leading slash), or 400 with why it is refused."""
    body = key[1:] if key.startswith("/") else key
    if body.startswith(RESERVED_PREFIX):
        raise BadRequest(
            f"cannot register shared memory region '{name}' with key '{key}' as the key contains the reserved prefix "
            f"'{RESERVED_PREFIX}'"
        )
    if not body or "/" in body or "\0" in body or body in (".", "..") or len(body) > _NAME_MAX:
        raise BadRequest(
            f"failed to register shared memory region '{name}': invalid key '{key}' (a POSIX shared memory name: "
            "an optional leading '/' and up to 255 characters without '/')"
        )
    return "/" + body


def open_region(name: str, key: str, offset: int, byte_size: int) -> Region:
    """Open and map ``key``'s ``[offset, offset + byte_size)``; 400 when it does not exist or is too small."""
    shm_name = check_key(name, key)
    try:
        fd = _posixshmem.shm_open(shm_name, os.O_RDWR, 0)
    except OSError as exc:
        raise BadRequest(f"Unable to open shared memory region: '{key}': {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if offset + byte_size > size:
            raise BadRequest(f"failed to register shared memory region '{name}': invalid args")
        mapping = mmap.mmap(fd, offset + byte_size) if offset + byte_size else None
    except BaseException:
        os.close(fd)
        raise
    end = offset + byte_size

    def check() -> None:
        # A client that shrinks the object under a mapping makes every read past the end a SIGBUS.
        if os.fstat(fd).st_size < end:
            raise BadRequest(f"shared memory region '{name}' was truncated below its registered size")

    def close() -> None:
        os.close(fd)
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # a model still holds an array over it: unmapped when that array goes

    view = memoryview(mapping)[offset:end] if mapping is not None else memoryview(b"")
    entry: dict[str, Any] = {"name": name, "key": key, "offset": offset, "byte_size": byte_size}
    return Region(name, SYSTEM, entry, view, check=check, close=close)
