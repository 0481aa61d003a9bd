"""CUDA shared-memory regions: a client's ``cudaIpcMemHandle_t`` opened with CuPy on the named device.

Registration follows Triton: ``raw_handle.b64`` must decode to the 64 bytes of a
``cudaIpcMemHandle_t``; the handle is opened with ``cudaIpcOpenMemHandle`` on ``device_id`` and
closed again at unregister. Without CuPy or a device, registration fails with a clear reason and
status lists nothing (PROTOCOL.md Appendix B.6).

Inference through a CUDA region is refused for now (501): handing the device bytes to a GPU
instance without a host round trip (DLPack into ``pb_utils.Tensor``) needs a device to build
and prove it on.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from evserve.gpu.shared_memory.registry import CUDA, Region
from evserve.protocol.errors import BadRequest, Unsupported

IPC_HANDLE_BYTES = 64
BAD_HANDLE = "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t"


def decode_handle(b64: object) -> bytes:
    if not isinstance(b64, str):
        raise BadRequest(BAD_HANDLE)
    try:
        handle = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(BAD_HANDLE) from None
    if len(handle) != IPC_HANDLE_BYTES:
        raise BadRequest(BAD_HANDLE)
    return handle


def _cupy(name: str) -> Any:
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CuPy, no driver, no device: all the same to the client
        raise BadRequest(
            f"failed to register CUDA shared memory region '{name}': CUDA is not available on this server ({exc})"
        ) from None
    if count < 1:
        raise BadRequest(f"failed to register CUDA shared memory region '{name}': no CUDA device is visible")
    return cupy


def open_region(name: str, handle: bytes, device_id: int, byte_size: int) -> Region:
    """Open the client's IPC handle (``decode_handle``'s bytes) on ``device_id``; 400 with the reason when
    that cannot be done."""
    cupy = _cupy(name)
    if device_id >= cupy.cuda.runtime.getDeviceCount():
        raise BadRequest(f"failed to register CUDA shared memory region '{name}': device {device_id} does not exist")
    try:
        with cupy.cuda.Device(device_id):
            pointer = cupy.cuda.runtime.ipcOpenMemHandle(handle)
    except Exception as exc:
        raise BadRequest(f"failed to register CUDA shared memory region '{name}': {exc}") from None

    def close() -> None:
        with cupy.cuda.Device(device_id):
            cupy.cuda.runtime.ipcCloseMemHandle(pointer)

    entry = {"name": name, "device_id": device_id, "byte_size": byte_size}
    return Region(name, CUDA, entry, memoryview(b""), check=_device_bytes_refused(name), close=close)


def _device_bytes_refused(name: str) -> Any:
    def check() -> None:
        raise Unsupported(
            f"shared memory region '{name}' is a CUDA region: inference through CUDA shared memory is not supported "
            "by this server yet; use a system shared memory region or send the tensor in the request"
        )

    return check
