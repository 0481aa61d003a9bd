"""A loaded model version, and the immutable state snapshots that loop threads read.

Why snapshots: loop threads answer health, metadata and routing questions on every request
and must never wait on a lock that a slow load or unload holds. The
manager therefore publishes the whole model table as frozen records in a fresh dict and swaps the
reference (copy-on-write); a reader takes one reference and sees a consistent table, either
before or after a change, never half of one.

:class:`ModelVersion` groups what one loaded version needs at request time: its completed
config, its signature for request validation, its statistics, and the workers of its instances.
It routes each job to the worker with the least backlog and can be drained for an unload or a
swap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from evserve.gpu.worker import QUEUE_FULL, ExecJob, InstanceWorker, ModelStats
from evserve.protocol.errors import Unavailable
from evserve.protocol.types import ModelSignature

_log = logging.getLogger(__name__)

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNLOADED_REASON = "unloaded"


class ModelVersion:
    """One READY-able version: config, signature, stats and the workers of its instances."""

    def __init__(self, name: str, version: int, config: Any, workers: list[InstanceWorker],
                 stats: ModelStats, signature: ModelSignature, module: Any = None) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.workers = workers
        self.stats = stats
        self.signature = signature
        # The imported model code (python_model.PythonModel); released once every instance is finalized.
        self.module = module
        self.loaded_at = time.time()
        self.load_seconds = 0.0
        # Set when a reload replaced this version: late submits go to the replacement.
        self.successor: ModelVersion | None = None
        self._accepting = True

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def queued(self) -> int:
        return sum(w.queued for w in self.workers)

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet completed (queued + executing)."""
        return sum(w.backlog for w in self.workers)

    def stats_entry(self) -> dict[str, Any]:
        """This version's entry of the ``/stats`` reply (``model_stats`` list item)."""
        return {"name": self.name, "version": self.version_str, **self.stats.snapshot()}

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def submit(self, job: ExecJob) -> None:
        """Hand ``job`` to the least-busy instance; raise Unavailable (503) at once when all are full.

        A caller that looked this version up just before a reload swapped it out is forwarded to
        the replacement when it accepts the same tensors, so a reload never fails a request.
        """
        if not self._accepting:
            successor = self.successor
            if successor is not None and _same_tensors(successor.signature, self.signature):
                successor.submit(job)
                return
            raise Unavailable(
                f"Request for unknown model: '{self.name}' version {self.version} is not at ready state"
            )
        workers = self.workers if len(self.workers) == 1 else sorted(self.workers, key=lambda w: w.backlog)
        for worker in workers:
            try:
                worker.submit(job)
                return
            except Unavailable as exc:
                if exc.message != QUEUE_FULL:
                    raise
        self.stats.record_rejected()
        raise Unavailable(QUEUE_FULL)

    def close(self) -> None:
        """Stop accepting new requests; queued and running ones still finish."""
        self._accepting = False
        for worker in self.workers:
            worker.close()

    def drain(self, timeout: float) -> bool:
        """Close, then wait up to ``timeout`` s for in-flight requests; True when every worker exited."""
        self.close()
        deadline = time.monotonic() + timeout
        clean = True
        for worker in self.workers:
            clean = worker.stop(max(0.0, deadline - time.monotonic())) and clean
        return clean

    def finalize(self) -> list[str]:
        """Call every instance's ``finalize`` (after :meth:`drain`); returns the error texts.

        An instance whose worker is still stuck in ``execute`` is not finalized: finalizing model
        state under a running execute is worse than leaking it.
        """
        errors = []
        for worker in self.workers:
            if worker.alive:
                errors.append(f"instance of '{self.name}' version {self.version} still executing; not finalized")
                continue
            try:
                worker.instance.finalize()
            except BaseException as exc:  # model code; SystemExit must not end the server
                errors.append(f"{type(exc).__name__}: {exc}")
        for error in errors:
            _log.error("model '%s' version %d finalize: %s", self.name, self.version, error)
        if self.module is not None and not any(w.alive for w in self.workers):
            self.module.release()
            self.module = None
        return errors


def _same_tensors(a: ModelSignature, b: ModelSignature) -> bool:
    return a.inputs == b.inputs and a.outputs == b.outputs and a.max_batch_size == b.max_batch_size


@dataclass(frozen=True, slots=True)
class VersionState:
    """One version's row in the index: state, reason, and the served object when READY."""

    version: int
    state: str
    reason: str = ""
    served: ModelVersion | None = None


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """Everything readers need about one model, immutable; replaced as a whole on change.

    ``state``/``reason`` describe a failure that happened before any version was known (a broken
    config, a duplicate name); then ``versions`` may be empty and the index row has no version.
    """

    name: str
    versions: Mapping[int, VersionState] = field(default_factory=dict)
    state: str = ""
    reason: str = ""

    @property
    def latest_ready(self) -> ModelVersion | None:
        """The highest READY version (what a request without a version gets), or None."""
        for number in sorted(self.versions, reverse=True):
            entry = self.versions[number]
            if entry.state == READY and entry.served is not None:
                return entry.served
        return None

    def ready_versions(self) -> list[ModelVersion]:
        return [e.served for _, e in sorted(self.versions.items()) if e.state == READY and e.served is not None]

    def is_healthy(self) -> bool:
        """Counts for strict readiness: every version READY, or deliberately unloaded."""
        if self.state and self.state != READY:
            return self.reason == UNLOADED_REASON
        return all(e.state == READY or e.reason == UNLOADED_REASON for e in self.versions.values())


def index_rows(records: Mapping[str, ModelRecord], names: Iterable[str], ready_only: bool) -> list[dict[str, Any]]:
    """The repository index JSON rows, sorted by name then version.

    ``names`` are the models on disk; those without a record were never loaded and get only
    ``name`` (Triton's rule). A record without versions (a failure before any version was known)
    gives one row without ``version``.
    """
    rows: list[dict[str, Any]] = []
    for name in sorted(set(names) | set(records)):
        record = records.get(name)
        if record is None:
            if not ready_only:
                rows.append({"name": name})
        elif not record.versions:
            if not ready_only:
                rows.append(_row(name, None, record.state or UNAVAILABLE, record.reason))
        else:
            rows.extend(
                _row(name, str(number), entry.state, entry.reason)
                for number, entry in sorted(record.versions.items())
                if entry.state == READY or not ready_only
            )
    return rows


def _row(name: str, version: str | None, state: str, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name}
    if version is not None:
        row["version"] = version
    row["state"] = state
    if reason:
        row["reason"] = reason
    return row
