"""The response cache: identical requests answered from memory, without running the model.

Triton's ``--cache-config local,size=N`` with ``response_cache { enable: true }`` in a model's
config. One :class:`ResponseCache` serves the whole server: an LRU of successful responses,
bounded in bytes; each served version that enables it gets a :class:`ModelCache`, which its
``ModelVersion.submit`` asks first. A hit is answered right there (it never reaches the model's
queue or workers); a miss goes on to the queue with its completion wrapped, so that its answer
is stored on the way back.

What makes two requests identical. The key hashes (BLAKE2b, 128 bits) the model version, every
input's name, datatype, shape and bytes, the names of the requested outputs, and the request
parameters the model can read. Triton's own key is the model, version and the inputs' names and
bytes only, so on Triton a request of the same bytes in another shape, or asking for other
outputs, gets the first request's answer; here it runs the model. How outputs are returned
(binary or JSON, shared memory, classification) is applied to the cached response per request,
so it is not part of the key. The version's key also names the load it belongs to: a reloaded
model never answers from its predecessor's entries (they age out).

What is stored. Successful responses only, their output arrays copied (the model may reuse its
buffers; a process instance's outputs live in a shared arena) and marked read-only, since every
hit shares them. An error is never cached (Triton 2.51 caches a model's error response as an
empty success). An entry costs its arrays' bytes plus a small fixed overhead; one larger than
the whole cache is not stored.

Threads. Lookups run on whichever thread submits (a loop thread, or a model's thread for BLS):
for a small request that is cheaper than any hand-off. Hashing a large input, or encoding a
large cached reply, would stall a loop thread, so those requests go to the cache's own thread,
which looks up, then answers or queues for the model. The LRU and its counters sit under one
lock, held for a dictionary operation; the cache is safe without the GIL.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evserve.gpu.execution.contract import ExecRequest, Result
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, InferResponse, OutputTensor

if TYPE_CHECKING:
    from evserve.gpu.execution.stats import ModelStats

_log = logging.getLogger(__name__)

# Requests (inputs) and replies (cached outputs) larger than this are handled on the cache's
# thread, not the submitting one: hashing or encoding them takes longer than a loop may stall.
INLINE_BYTES = 64 * 1024
# Bookkeeping charged per entry and per output on top of the array bytes.
ENTRY_OVERHEAD = 256
OUTPUT_OVERHEAD = 64

# Request parameters Triton consumes itself: they cannot change what the model answers.
_NOT_FOR_THE_MODEL = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output", "headers"}
)

_loads = itertools.count(1)


def parse_cache_config(specs: list[str]) -> int:
    """The cache size in bytes from Triton's ``--cache-config local,size=N`` values (0: no cache).

    Raises ValueError with the flag's name for anything else: evserve has only the local cache.
    """
    size = 0
    for spec in specs:
        name, comma, setting = spec.partition(",")
        if not comma:
            raise ValueError(f"--cache-config expects <cache>,<key>=<value>, got '{spec}'")
        if name != "local":
            raise ValueError(f"--cache-config: unknown cache '{name}': evserve has only the 'local' cache")
        key, eq, value = setting.partition("=")
        if not eq or key != "size":
            raise ValueError(f"--cache-config: the local cache takes size=<bytes>, got '{setting}'")
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"--cache-config: size must be a positive number of bytes, got '{value}'")
        size = int(value)
    return size


def _bytes_of(data: np.ndarray) -> int:
    if data.dtype.kind == "O":
        return sum(len(item) for item in data.flat) + 8 * data.size
    return int(data.nbytes)


def _update_with(digest: Any, data: np.ndarray) -> None:
    """Feed a tensor's bytes to the digest: raw for numbers, length-prefixed elements for BYTES."""
    if data.dtype.kind == "O":
        for item in data.flat:
            value = item if isinstance(item, bytes) else str(item).encode()
            digest.update(len(value).to_bytes(8, "little"))
            digest.update(value)
        return
    try:
        digest.update(data)  # hashlib reads the array's buffer, and releases the GIL on large ones
    except (BufferError, TypeError, ValueError):
        digest.update(np.ascontiguousarray(data))  # not contiguous: one copy


def _by_name(tensor: Any) -> str:
    return tensor.name


def request_key(scope: bytes, request: InferRequest) -> bytes:
    """The 16-byte key of ``request`` for the version ``scope`` names (see the module docstring)."""
    digest = hashlib.blake2b(scope, digest_size=16)
    inputs = request.inputs
    for tensor in sorted(inputs, key=_by_name) if len(inputs) > 1 else inputs:
        digest.update(f"\0i{tensor.name}\0{tensor.datatype}\0{tensor.shape}\0".encode())
        _update_with(digest, tensor.data)
    outputs = request.outputs
    names = sorted(output.name for output in outputs) if outputs else None
    parameters = request.parameters
    if parameters:
        parameters = sorted((k, type(v).__name__, v) for k, v in parameters.items() if k not in _NOT_FOR_THE_MODEL)
    digest.update(f"\0o{names!r}\0p{parameters or None!r}".encode())
    return digest.digest()


def request_bytes(request: InferRequest) -> int:
    """The input bytes a key would hash (a BYTES tensor of many elements counts as large at once)."""
    total = 0
    for tensor in request.inputs:
        data = tensor.data
        if data.dtype.kind != "O":
            total += data.nbytes
        elif data.size > 1024:
            return INLINE_BYTES + 1
        else:
            total += _bytes_of(data)
    return total


# A stored answer: (outputs as (name, datatype, shape, read-only array), parameters as (key, value)
# pairs, bytes charged). Only tuples, scalars and arrays: the garbage collector stops tracking such
# tuples, so a cache of a hundred thousand entries adds nothing to its full passes (an instance of a
# class, or a tuple holding a dict, stays tracked for good).
Entry = tuple[tuple[tuple[str, str, tuple[int, ...], np.ndarray], ...], tuple[tuple[str, Any], ...], int]


def entry_of(response: InferResponse) -> Entry:
    """``response`` as a cache entry: its outputs copied and read-only, since every hit shares them."""
    outputs = []
    nbytes = ENTRY_OVERHEAD
    for output in response.outputs:
        data = output.data.copy()
        data.setflags(write=False)
        outputs.append((output.name, output.datatype, tuple(output.shape), data))
        nbytes += OUTPUT_OVERHEAD + len(output.name) + _bytes_of(data)
    return tuple(outputs), tuple(response.parameters.items()), nbytes


def answer_from(entry: Entry, request: InferRequest) -> InferResponse:
    """The entry as the response to ``request`` (its id; fresh objects around the shared arrays)."""
    outputs, parameters, _ = entry
    return InferResponse(
        request.model_name, request.model_version, request.id,
        [OutputTensor(name, datatype, shape, data) for name, datatype, shape, data in outputs], dict(parameters),
    )


@dataclass(frozen=True, slots=True)
class CacheCounters:
    """The whole cache's counters (Triton's ``nv_cache_*`` gauges); durations in ns."""

    capacity: int
    used: int
    entries: int
    lookups: int
    hits: int
    misses: int
    evictions: int
    lookup_ns: int
    insert_ns: int


class ResponseCache:
    """The server's response cache: ``capacity`` bytes of LRU entries, shared by every cached model."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("the response cache needs a positive size in bytes")
        self.capacity = capacity
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._used = 0
        self._lookups = self._hits = self._evictions = 0
        self._lookup_ns = self._insert_ns = 0
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def lookup(self, key: bytes, since: int) -> tuple[Entry | None, int]:
        """The entry under ``key`` (now the most recent), and the ns since ``since`` (the lookup's start)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
            self._lookups += 1
            elapsed = time.monotonic_ns() - since
            self._lookup_ns += elapsed
        return entry, elapsed

    def insert(self, key: bytes, entry: Entry, since: int) -> tuple[bool, int]:
        """Store ``entry``, evicting the least recently used; False when it is larger than the cache."""
        nbytes = entry[2]
        with self._lock:
            stored = nbytes <= self.capacity
            if stored:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._used -= old[2]
                entries = self._entries
                while entries and self._used + nbytes > self.capacity:
                    _, evicted = entries.popitem(last=False)
                    self._used -= evicted[2]
                    self._evictions += 1
                entries[key] = entry
                self._used += nbytes
            elapsed = time.monotonic_ns() - since
            self._insert_ns += elapsed
        return stored, elapsed

    def counters(self) -> CacheCounters:
        with self._lock:
            return CacheCounters(
                self.capacity, self._used, len(self._entries), self._lookups, self._hits,
                self._lookups - self._hits, self._evictions, self._lookup_ns, self._insert_ns,
            )

    def offload(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the cache's thread (started on first use; a daemon, it holds no state)."""
        self._jobs.put((fn, args))
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="evserve-response-cache", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            fn, args = self._jobs.get()
            try:
                fn(*args)
            except Exception:
                _log.exception("response cache work failed")


class ModelCache:
    """One served version's use of the response cache: its key scope, its statistics, its queue.

    ``submit`` is the version's own submit, which calls :meth:`serve` first; a job this cache has
    already looked up passes through :meth:`serve` untouched, so the cache's thread can hand a
    miss back to ``submit``.
    """

    __slots__ = ("cache", "stats", "scope", "submit")

    def __init__(self, cache: ResponseCache, name: str, version: str, stats: ModelStats,
                 submit: Callable[[ExecRequest], None]) -> None:
        self.cache = cache
        self.stats = stats
        self.scope = f"{name}\0{version}\0{next(_loads)}".encode()
        self.submit = submit

    def serve(self, job: ExecRequest) -> bool:
        """True when ``job`` is answered from the cache (or handed to the cache's thread to decide).

        False: a miss; the job goes on to the model's queue, and its answer will be stored.
        """
        if isinstance(job.complete, _Store) or isinstance(job.stream, _Store):
            return False  # looked up already: this is the cache's thread queueing a miss
        started = time.monotonic_ns()
        if request_bytes(job.request) > INLINE_BYTES:
            self.cache.offload(self._serve_here, job, started)
            return True
        return self._look_up(job, started, inline=True)

    def _serve_here(self, job: ExecRequest, started: int) -> None:
        """On the cache's thread: look up, then answer, or queue for the model (errors answer the job)."""
        if self._look_up(job, started, inline=False):
            return
        try:
            self.submit(job)
        except ProtocolError as exc:
            job.on_finish = None  # the version has counted the refusal already
            job.finish(exc)

    def _look_up(self, job: ExecRequest, started: int, *, inline: bool) -> bool:
        since = time.monotonic_ns()
        key = request_key(self.scope, job.request)
        entry, lookup_ns = self.cache.lookup(key, since)
        if entry is None:
            store = _Store(self, key, lookup_ns, job)
            if job.stream is not None:
                job.stream = store
            else:
                job.complete = store
            return False
        if inline and entry[2] > INLINE_BYTES:
            self.cache.offload(self._answer, job, entry, started, since - started, lookup_ns)
        else:
            self._answer(job, entry, started, since - started, lookup_ns)
        return True

    def _answer(self, job: ExecRequest, entry: Entry, started: int, queue_ns: int, lookup_ns: int) -> None:
        # Counted before the answer goes out, so statistics read after the reply include it.
        self.stats.record_cache_hit(time.monotonic_ns() - started, queue_ns, lookup_ns)
        job.finish(answer_from(entry, job.request))

    def store(self, key: bytes, response: InferResponse, lookup_ns: int) -> None:
        """A miss's successful answer: stored, and the miss counted with its lookup and insert time."""
        since = time.monotonic_ns()
        stored, insert_ns = self.cache.insert(key, entry_of(response), since)
        if not stored:
            _log.debug("response of model version %r not cached: larger than the cache (%d bytes)",
                       self.scope, self.cache.capacity)
        self.stats.record_cache_miss(lookup_ns + insert_ns)


class _Store:
    """A missed job's completion (or stream callback): stores a successful final answer, then delivers it."""

    __slots__ = ("owner", "key", "lookup_ns", "deliver", "streaming")

    def __init__(self, owner: ModelCache, key: bytes, lookup_ns: int, job: ExecRequest) -> None:
        self.owner = owner
        self.key = key
        self.lookup_ns = lookup_ns
        self.streaming = job.stream is not None
        self.deliver: Callable[..., None] = job.stream if job.stream is not None else job.complete

    def __call__(self, result: Result | None, final: bool = True) -> None:
        if final and isinstance(result, InferResponse):
            try:
                self.owner.store(self.key, result, self.lookup_ns)
            except Exception:
                _log.exception("storing a response in the cache failed")
        if self.streaming:
            self.deliver(result, final)
        else:
            self.deliver(result)
