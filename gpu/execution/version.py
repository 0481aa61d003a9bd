"""One loaded model version: what it needs at request time, and how it is drained.

:class:`ModelVersion` groups its completed config, its signature for request validation, its
statistics, and the workers of its instances. It routes each job to the worker with the least
backlog and can be drained for an unload or a swap. It is what the manager's ``get`` hands to
the HTTP layer, which sees it as a :class:`~evserve.gpu.execution.contract.ServedModel`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from evserve.gpu.execution.contract import QUEUE_FULL, ExecRequest
from evserve.gpu.execution.stats import ModelStats
from evserve.gpu.execution.worker import InstanceWorker
from evserve.protocol.errors import Unavailable
from evserve.protocol.types import ModelSignature

if TYPE_CHECKING:
    from evserve.gpu.execution.response_cache import ModelCache
    from evserve.gpu.execution.sequence import SequenceBatcher
    from evserve.gpu.repository.model_config import ModelConfig

_log = logging.getLogger(__name__)


class ModelVersion:
    """One READY-able version: config, signature, stats and the workers of its instances."""

    def __init__(self, name: str, version: int, config: ModelConfig, workers: list[InstanceWorker],
                 stats: ModelStats, signature: ModelSignature, module: Any = None,
                 sequencer: SequenceBatcher | None = None) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.workers = workers
        self.stats = stats
        self.signature = signature
        # Read on every request; the config computes them from its raw dict each time.
        self.decoupled = bool(getattr(config, "decoupled", False))
        self.max_batch_size = int(getattr(config, "max_batch_size", signature.max_batch_size))
        # The imported model code (python_backend.model.PythonModel); released once every instance is finalized.
        self.module = module
        self.loaded_at = time.time()
        self.load_seconds = 0.0
        # Set when a reload replaced this version: late submits go to the replacement.
        self.successor: ModelVersion | None = None
        # A sequence model's router (sequence_batching): its jobs go to the instance of their sequence.
        self.sequencer = sequencer
        # The server's response cache, when this version's config enables it (set by the loader).
        self.response_cache: ModelCache | None = None
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


    @property
    def has_readiness_check(self) -> bool:
        """Whether any instance has its own ``is_ready()`` (then model-ready must ask it, off the loop)."""
        return any(worker.instance.has_readiness_check for worker in self.workers)

    def check_ready(self) -> bool:
        """Every instance's own readiness; blocks up to Triton's bound per instance."""
        return all(worker.instance.check_ready() for worker in self.workers if worker.instance.has_readiness_check)

    def child_processes(self) -> list[tuple[str, int, int]]:
        """(instance name, resident bytes, restarts) of each instance that runs in a child process."""
        found = []
        for worker in self.workers:
            rss = getattr(worker.instance, "rss_bytes", None)
            if rss is not None:
                found.append((worker.instance.name, rss(), worker.instance.restarts))
        return found

    def labels(self, output_name: str) -> list[str]:
        """Class labels of a classification output (read from disk once, then cached)."""
        return self.config.labels(output_name)

    def stats_entry(self) -> dict[str, Any]:
        """This version's entry of the ``/stats`` reply (``model_stats`` list item)."""
        return {"name": self.name, "version": self.version_str, **self.stats.snapshot()}

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        if self.sequencer is not None:
            self.sequencer.start()

    def submit(self, job: ExecRequest) -> None:
        """Hand ``job`` to the least-busy instance; raise Unavailable (503) at once when all are full.

        A caller that looked this version up just before a reload swapped it out is forwarded to
        the replacement when it accepts the same tensors, so a reload never fails a request. With
        the response cache, a hit is answered here and never reaches a worker.
        """
        if not self._accepting:
            successor = self.successor
            if successor is not None and _same_tensors(successor.signature, self.signature):
                successor.submit(job)
                return
            raise Unavailable(
                f"Request for unknown model: '{self.name}' version {self.version} is not at ready state"
            )
        if self.response_cache is not None and self.response_cache.serve(job):
            return  # answered from the cache, or being looked up on the cache's thread
        self._dispatch(job)

    def _dispatch(self, job: ExecRequest) -> None:
        """Queue an admitted job: to its sequence's instance, or to the least-busy one."""
        if self.sequencer is not None:
            try:
                self.sequencer.submit(job)
            except Unavailable as exc:
                if exc.message == QUEUE_FULL:
                    self.stats.record_rejected()
                raise
            return
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
        if self.sequencer is not None:
            self.sequencer.close()
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
                # A process instance can be abandoned safely: its process is killed, nothing leaks.
                kill = getattr(worker.instance, "kill", None)
                if kill is not None:
                    kill()
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
