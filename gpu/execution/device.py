"""Device selection for model instance workers: CuPy on a CUDA device, NumPy without one.

Why a module of its own: the server imports the engine eagerly, and importing CuPy costs
hundreds of milliseconds and initialises CUDA; on a machine without a GPU it may not even be
installed. So CuPy is imported lazily, the first time someone asks whether a GPU exists, and
every probe is guarded so that a broken CUDA install degrades to "no GPU" instead of a crash.

A worker thread enters one :class:`DeviceContext` for its whole life. On a GPU that selects the
instance's device and makes a private non-blocking stream current, so kernels of different
instances (and the legacy default stream) never serialise each other; on the CPU it does nothing.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType, TracebackType
from typing import Any

_log = logging.getLogger(__name__)

KIND_CPU = "CPU"
KIND_GPU = "GPU"

_probe_lock = threading.Lock()
_probed = False
_cupy: ModuleType | None = None
_count = 0


def _probe() -> None:
    """Import CuPy and count devices once; any failure means "no GPU"."""
    global _probed, _cupy, _count
    with _probe_lock:
        if _probed:
            return
        try:
            import cupy  # lazy on purpose: see the module docstring

            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:  # ImportError, CUDARuntimeError, a driver mismatch...
            _log.debug("no usable CUDA device: %s", exc)
            cupy, count = None, 0
        _cupy = cupy if count > 0 else None
        _count = count if _cupy is not None else 0
        _probed = True


def gpu_count() -> int:
    """Number of CUDA devices CuPy can use (0 without CuPy, a driver, or a device)."""
    _probe()
    return _count


def gpu_available() -> bool:
    """True when at least one CUDA device is usable through CuPy."""
    return gpu_count() > 0


def backend_name() -> str:
    """"cupy" when tensors can live on a GPU here, else "numpy" (the server logs it at start)."""
    return "cupy" if gpu_available() else "numpy"


def cupy_module() -> ModuleType | None:
    """The CuPy module when a GPU is usable, else None (so callers need no import guards)."""
    _probe()
    return _cupy


class DeviceContext:
    """Enter for the life of a worker thread: device + private CUDA stream on a GPU, no-op on CPU.

    ``kind`` is "GPU" or "CPU" (the resolved instance kind). A GPU kind on a machine without a
    usable device is treated as CPU, so a GPU repository still serves (slowly) on a laptop.
    ``stream`` is the CuPy stream while inside the context on a GPU, else None.
    """

    def __init__(self, kind: str, device_id: int = 0) -> None:
        self.kind = kind
        self.device_id = device_id
        self.stream: Any = None
        self._device: Any = None

    @property
    def on_gpu(self) -> bool:
        return self.kind == KIND_GPU and gpu_available()

    def __enter__(self) -> DeviceContext:
        cupy = cupy_module()
        if self.kind != KIND_GPU or cupy is None:
            return self
        self._device = cupy.cuda.Device(self.device_id)
        self._device.__enter__()
        try:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.stream.__enter__()
        except BaseException:
            self._device.__exit__(None, None, None)
            self._device = None
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.stream is not None:
            try:
                self.stream.synchronize()
            finally:
                self.stream.__exit__(exc_type, exc, tb)
                self.stream = None
        if self._device is not None:
            self._device.__exit__(exc_type, exc, tb)
            self._device = None
