"""The model-control executor and the cheap checks done before a load/unload is accepted.

Why a separate, bounded executor: Triton runs the load API on its HTTP threads, so a few slow
``initialize`` calls starve every other request (issues 8635/8958; the fix proposed in PR 8737
moves the call to a detached thread with a concurrency cap and answers 503 beyond it). Here a
load/unload is validated on the caller's thread (a loop thread, or the offload pool for a
large body), where only O(1) checks are allowed, then runs on one of
``--model-load-thread-count`` daemon threads. When all of them are busy the request is refused
at once with 503 instead of queuing: a queue would only hide the overload and let HTTP clients
time out with no reason (issue 6711). The threads are daemons so that a
model stuck in ``initialize`` cannot keep the process alive after shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from evserve.gpu.repository.file_override import FILE_PREFIX
from evserve.gpu.repository.scan import is_valid_model_name
from evserve.protocol.errors import BadRequest, ProtocolError, Unavailable

_log = logging.getLogger(__name__)

SATURATED = "Model control request rejected: too many concurrent load/unload requests"
NOT_EXPLICIT = "explicit model load / unload is not allowed if polling is enabled"
STOPPING = "Model control request rejected: the server is shutting down"
CONFIG_KEY = "config"

Done = Callable[[ProtocolError | None], None]


def validate_load_name(name: str) -> None:
    """Triton's load-name checks (not applied to unload: unloading an odd name just succeeds)."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("Model name cannot be empty or contain only whitespace")
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise BadRequest("model name must not contain path traversal characters")
    if not is_valid_model_name(name):
        # The repository scanner would never list such a name; a file: load must not create one.
        raise BadRequest(f"invalid model name '{name}': use letters, digits, '_', '.' and '-' (at most 128)")


def split_load_parameters(name: str, parameters: Any) -> tuple[str | None, dict[str, str]]:
    """(config override text or None, ``file:`` overrides) from the load request's parameters.

    Every value must be a string: Triton answers 500 for other types and for unknown keys, but
    these are client mistakes, so they are 400 here.
    """
    if parameters is None:
        return None, {}
    if not isinstance(parameters, Mapping):
        raise BadRequest("Unable to parse 'parameters': expected a JSON object")
    config: str | None = None
    files: dict[str, str] = {}
    for key, value in parameters.items():
        if key != CONFIG_KEY and not key.startswith(FILE_PREFIX):
            raise BadRequest(f"unexpected parameter '{key}'")
        if not isinstance(value, str):
            raise BadRequest(f"failed to load '{name}': parameter '{key}' must be a string")
        if key == CONFIG_KEY:
            config = value
        else:
            files[key] = value
    if files and config is None:
        raise BadRequest(f"failed to load '{name}': the 'config' parameter is required with 'file:' overrides")
    return config, files


def validate_unload_dependents(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"Unable to parse 'unload_dependents': expected a boolean, got {type(value).__name__}")
    return value


class ControlExecutor:
    """At most ``workers`` model-control operations at a time; the next one is refused (503)."""

    def __init__(self, workers: int) -> None:
        self.capacity = max(1, workers)
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._work: queue.SimpleQueue[tuple[Callable[[], None], Done] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, work: Callable[[], None], done: Done) -> None:
        """Run ``work`` on a control thread, then ``done(error or None)`` there; O(1), never blocks."""
        if self._closed:
            raise Unavailable(STOPPING)
        if not self._slots.acquire(blocking=False):
            raise Unavailable(SATURATED)
        with self._lock:
            if len(self._threads) < self.capacity:
                self._spawn_locked()
        self._work.put((work, done))

    def _spawn_locked(self) -> None:
        thread = threading.Thread(target=self._loop, name=f"evserve-control-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        while (item := self._work.get()) is not None:
            work, done = item
            error: ProtocolError | None = None
            try:
                work()
            except ProtocolError as exc:
                error = exc
            except BaseException as exc:  # model code ran here; the thread must survive it
                _log.exception("model control operation failed")
                error = ProtocolError(f"model control operation failed: {exc}", 500)
            finally:
                # Free the slot before replying, so a client that reacts to the reply at once is
                # not refused by its own finished request.
                self._slots.release()
            try:
                done(error)
            except Exception:
                _log.exception("model control completion callback failed")

    def close(self, timeout: float) -> None:
        """Refuse new work, let running operations finish for up to ``timeout`` s, end the threads."""
        self._closed = True
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
