"""A small bounded thread pool for request work too slow for a loop thread.

A loop thread that inflates a 64 MiB gzip body or parses megabytes of JSON stalls every
connection it owns. Such requests are paused and their slow part runs here instead
(decoding compressed bodies and JSON over HEAVY_BODY, the repository index's rescan, models'
is_ready()); the reply still goes back through the ticket to the owning loop. What this buys is bounded by the
GIL: zlib and NumPy copies release it and run beside the loops, but orjson's parse and the
list-to-array conversion of a huge JSON tensor hold it, so they still slow every thread down
while they run (they no longer block one loop's connections for their whole duration). The
binary tensor extension avoids that work altogether. The pool is bounded in both
threads and waiting jobs: when it is full the caller is told at once (503), as everywhere
else in evserve, rather than queuing without limit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from evserve.protocol.errors import Unavailable

log = logging.getLogger("evserve.server")

# A JSON body larger than this is parsed on the pool; below it a parse costs well under a
# millisecond and stays on the loop thread.
HEAVY_BODY = 256 * 1024


class OffloadPool:
    def __init__(self, threads: int, capacity: int, *, name: str = "evserve-offload") -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(capacity)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the pool; raise Unavailable at once when ``capacity`` jobs are pending."""
        if not self._slots.acquire(blocking=False):
            raise Unavailable("Server is busy decoding other requests; retry later")
        try:
            self._executor.submit(self._run, fn, args)
        except RuntimeError:
            self._slots.release()
            raise Unavailable("Server is shutting down") from None

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("offloaded request work failed")
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)
