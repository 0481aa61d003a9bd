"""The model table that loop threads read: immutable records, replaced as a whole on change.

Why snapshots: loop threads answer health, metadata and routing questions on every request
and must never wait on a lock that a slow load or unload holds. The manager therefore
publishes the whole model table as frozen records in a fresh dict and swaps the reference
(copy-on-write); a reader takes one reference and sees a consistent table, either before or
after a change, never half of one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from evserve.gpu.execution.version import ModelVersion

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNLOADED_REASON = "unloaded"


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

    # The highest READY version (what a request without a version gets), or None; derived once,
    # since a record is immutable and every such request asks.
    latest_ready: ModelVersion | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for number in sorted(self.versions, reverse=True):
            entry = self.versions[number]
            if entry.state == READY and entry.served is not None:
                object.__setattr__(self, "latest_ready", entry.served)
                return

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
