"""The per-instance asyncio loop on which ``async def execute`` and ``async def is_ready`` run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any


class AsyncRunner:
    """The instance's event loop thread, for ``async def execute`` and ``async def is_ready``.

    Triton also gives each instance one loop: a decoupled model's coroutines overlap on it
    while the worker moves on to the next batch.
    """

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-asyncio", daemon=True)
        self._thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def submit(self, coroutine: Any, done: Callable[[concurrent.futures.Future[Any]], None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).add_done_callback(done)

    def close(self) -> None:
        """Cancel what still runs (its requests then fail), stop the loop and its thread."""
        asyncio.run_coroutine_threadsafe(_cancel_tasks(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _cancel_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
