"""Turning a model directory into running versions, and retiring versions again.

Separate from the manager because this is the part that runs model code (``auto_complete_config``,
``initialize``, ``finalize``) and does disk I/O, and it has no business with model states or
snapshots: the manager decides *when* and under which lock; this module knows *how*. Every
failure of a load attempt, whatever raised it, comes out as one :class:`LoadFailure` whose
reason is what the index and the ``load failed for model 'm': ...`` reply show, after the
instances this attempt already initialised have been finalized again.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from evserve.gpu.execution import device
from evserve.gpu.execution.ensemble import ENSEMBLE_PLATFORM, EnsembleVersion, check_graph, ensemble_steps
from evserve.gpu.execution.queue_policy import QueueScheduling
from evserve.gpu.execution.response_cache import ModelCache, ResponseCache
from evserve.gpu.execution.sequence import SequenceBatcher, SequencePolicy
from evserve.gpu.execution.stats import ModelStats
from evserve.gpu.execution.version import ModelVersion
from evserve.gpu.execution.worker import InstanceWorker
from evserve.gpu.options import ISOLATIONS, ModelManagerOptions
from evserve.gpu.process import environment
from evserve.gpu.process.instance import ChildSpec, ProcessInstance
from evserve.gpu.python_backend.model import PythonModel, PythonModelError
from evserve.gpu.python_backend.pb_utils import TritonModelException
from evserve.gpu.repository.config_complete import PYTHON_BACKEND, complete_config
from evserve.gpu.repository.config_parse import ModelConfigError, read_config
from evserve.gpu.repository.model_config import DynamicBatching, ModelConfig
from evserve.gpu.repository.scan import available_versions, select_versions
from evserve.protocol.errors import ProtocolError

_log = logging.getLogger(__name__)

class LoadFailure(Exception):
    """A load attempt failed; ``versions`` are the versions it had selected (empty if unknown)."""

    def __init__(self, reason: str, versions: Iterable[int] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.versions = tuple(versions)


def describe(exc: BaseException) -> str:
    """The reason shown in the index and the load error: our own errors as is, others typed."""
    if isinstance(exc, (ModelConfigError, ProtocolError, PythonModelError, TritonModelException)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class ModelLoader:
    """Builds the selected versions of a model directory (config → import → initialise → workers)."""

    def __init__(self, options: ModelManagerOptions,
                 on_gave_up: Callable[[str, ModelVersion, str], None] | None = None) -> None:
        self.model_config_name = options.model_config_name
        self.disable_auto_complete = options.disable_auto_complete
        self.queue_capacity = options.queue_capacity
        self.isolation = options.isolation
        self.latency_summaries = options.latency_summaries
        # One response cache for the server (Triton's --cache-config), shared by every model that enables it.
        self.response_cache = ResponseCache(options.response_cache_bytes) if options.response_cache_bytes else None
        # Told when an instance of a served version gives up for good (the manager shows it).
        self.on_gave_up = on_gave_up
        # Set by the manager: how ensembles find their step models at request time, and how a load
        # brings up the models an ensemble needs (returns those that are still not available).
        self.resolve: Callable[[str, str | None], Any] | None = None
        self.load_dependencies: Callable[[str, list[str]], list[str]] = lambda name, models: models

    def build(self, name: str, model_dir: str, override: dict | None,
              on_selected: Callable[[list[int]], None]) -> dict[int, ModelVersion]:
        """Read and complete the config, import and initialise every version the policy selects.

        ``override`` replaces the config file (the load API's ``config``). ``on_selected`` is
        told the selected versions before any model code runs (the manager shows them LOADING).
        Raises :class:`LoadFailure`; nothing of the attempt is left running then.
        """
        source = "config" if override is not None else os.path.join(model_dir, "config.pbtxt")
        selected: list[int] = []
        modules: dict[int, PythonModel] = {}
        built: dict[int, ModelVersion] = {}
        try:
            cfg = override if override is not None else (read_config(model_dir, self.model_config_name) or {})
            gpus = device.gpu_count()
            cfg = complete_config(cfg, name, source, model_dir=model_dir, gpu_count=gpus, check_io=False)
            backend = cfg.get("backend") or cfg.get("platform", "")
            if backend == ENSEMBLE_PLATFORM:
                return self._build_ensemble(name, model_dir, cfg, source, on_selected)
            if backend != PYTHON_BACKEND:
                raise LoadFailure(f"unsupported backend '{backend}'")
            selected = select_versions(cfg.get("version_policy", {}), available_versions(model_dir))
            if not selected:
                raise LoadFailure(f"at least one version must be available under the version policy of model '{name}'")
            on_selected(selected)
            # A model with its own environment is imported only by its children (its imports may
            # exist only there), so its config must be complete: auto-complete needs the module.
            foreign = bool(cfg.get("parameters", {}).get(environment.PARAMETER, {}).get("string_value"))
            if not foreign:
                # Auto-complete runs once per model, with the newest selected version's model.py.
                modules[selected[-1]] = PythonModel.import_version(model_dir, name, selected[-1])
                if not self.disable_auto_complete:
                    cfg = modules[selected[-1]].auto_complete(cfg)
            config = ModelConfig(complete_config(cfg, name, source, model_dir=model_dir, gpu_count=gpus), model_dir)
            for number in selected:
                if number not in modules and not foreign:
                    modules[number] = PythonModel.import_version(model_dir, name, number)
                started = time.monotonic()
                built[number] = self._instantiate(name, number, config, modules.get(number), model_dir)
                built[number].load_seconds = time.monotonic() - started
        except BaseException as exc:
            for version in built.values():
                retire(name, [version], None, 0.0)
            for number, module in modules.items():
                if number not in built:
                    module.release()
            if isinstance(exc, LoadFailure):
                raise LoadFailure(exc.reason, exc.versions or selected) from None
            _log.info("load of model '%s' failed: %s", name, describe(exc))
            raise LoadFailure(describe(exc), selected) from None
        return built

    def _build_ensemble(self, name: str, model_dir: str, cfg: dict, source: str,
                        on_selected: Callable[[list[int]], None]) -> dict[int, ModelVersion]:
        """An ensemble's versions, once its graph is sound and every step model is available."""
        selected = select_versions(cfg.get("version_policy", {}), available_versions(model_dir))
        if not selected:
            raise LoadFailure(f"at least one version must be available under the version policy of model '{name}'")
        config = ModelConfig(complete_config(cfg, name, source, model_dir=model_dir), model_dir)
        steps = ensemble_steps(config.raw)
        check_graph(name, config.raw, steps)
        on_selected(selected)
        missing = self.load_dependencies(name, sorted({step.model_name for step in steps}))
        if missing:
            raise LoadFailure(
                f"ensemble {name} contains models that are not available or ambiguous: {', '.join(missing)}", selected)
        assert self.resolve is not None, "the manager sets the resolver before loading"
        if not config.decoupled and any(self.resolve(step.model_name, step.version).decoupled for step in steps):
            # As Triton: an ensemble that runs a decoupled model is decoupled itself (its config says so).
            cfg = {**cfg, "model_transaction_policy": {**cfg.get("model_transaction_policy", {}), "decoupled": True}}
            config = ModelConfig(complete_config(cfg, name, source, model_dir=model_dir), model_dir)
        built: dict[int, ModelVersion] = {}
        for number in selected:
            stats = ModelStats(latency_summaries=self.latency_summaries)
            built[number] = version = EnsembleVersion(name, number, config, stats, steps, self.resolve)
            self._attach_cache(version, config)
        return built

    def _attach_cache(self, version: ModelVersion, config: ModelConfig) -> None:
        """Give ``version`` the server's response cache when its config enables it."""
        if not config.response_cache:
            return
        if self.response_cache is not None:
            version.response_cache = ModelCache(self.response_cache, version.name, version.version_str,
                                                version.stats, version.submit)
        else:
            _log.warning("model '%s': response_cache is enabled but the server has no cache "
                         "(--cache-config local,size=BYTES); requests run uncached", version.name)

    def _instantiate(self, name: str, number: int, config: ModelConfig, module: PythonModel | None,
                     model_dir: str) -> ModelVersion:
        """Initialise every instance of one version and start its workers."""
        stats = ModelStats(latency_summaries=self.latency_summaries)
        batching = config.dynamic_batching
        sequencing = None
        if "sequence_batching" in config.raw:
            sequencing = SequencePolicy.from_config(config.raw, config.max_batch_size, model_dir)
            # Requests of different sequences on one instance batch as dynamic batching batches them.
            batching = DynamicBatching.from_json({
                "max_queue_delay_microseconds": sequencing.max_queue_delay_us,
                "preferred_batch_size": list(sequencing.preferred_batch_sizes),
            })
        # Priority levels and queue timeouts, or None for a plain FIFO, whose bound is max_queue_size.
        scheduling = QueueScheduling.from_settings(batching)
        capacity = self.queue_capacity
        if batching is not None and scheduling is None and batching.max_queue_size > 0:
            capacity = min(capacity, batching.max_queue_size)
        workers: list[InstanceWorker] = []
        built: list[ModelVersion] = []  # filled below; the hook needs the version it reports

        def gave_up(reason: str) -> None:
            if self.on_gave_up is not None and built:
                self.on_gave_up(name, built[0], reason)

        try:
            isolated = process_settings(config, self.isolation)
            for kind, device_id, instance_name in placements(config):
                if isolated is None:
                    assert module is not None, "a model run in-process is imported here"
                    instance = module.create_instance(config, number, kind, device_id, model_dir, instance_name)
                else:
                    instance = ProcessInstance(ChildSpec(
                        name, number, config.raw, model_dir, kind, device_id, instance_name, *isolated),
                        on_gave_up=gave_up)
                workers.append(InstanceWorker(
                    name, instance, capacity, batching, kind, device_id,
                    max_batch_size=config.max_batch_size, stats=stats,
                    thread_name=f"evserve-{instance_name}-v{number}", scheduling=scheduling,
                ))
        except BaseException:
            for worker in workers:
                _finalize_quietly(name, worker.instance)
            raise
        sequencer = None
        if sequencing is not None:  # as many requests may wait for their turn as the instances' queues hold
            sequencer = SequenceBatcher(name, sequencing, workers, config.max_batch_size,
                                        waiting_limit=capacity * len(workers))
        version = ModelVersion(name, number, config, workers, stats, config.signature(str(number)), module,
                               sequencer)
        self._attach_cache(version, config)
        built.append(version)
        version.start()
        return version


def placements(config: ModelConfig) -> list[tuple[str, int, str]]:
    """(kind, device id, instance name) of every instance: ``count`` per listed GPU for KIND_GPU,
    ``count`` on the CPU otherwise; names follow Triton's ``<group name>_<index>``."""
    result = []
    for group in config.instance_groups:
        if group.kind == "KIND_GPU":
            devices = [(device.KIND_GPU, gpu) for gpu in group.gpus for _ in range(group.count)]
        else:
            devices = [(device.KIND_CPU, 0)] * group.count
        result += [(kind, device_id, f"{group.name}_{i}") for i, (kind, device_id) in enumerate(devices)]
    return result


# Model config parameters of process isolation (Triton's python backend names its own, e.g.
# EXECUTION_ENV_PATH, the same way).
ISOLATION_PARAMETER = "EVSERVE_MODEL_ISOLATION"
ARENA_PARAMETER = "EVSERVE_ARENA_BYTES"
TIMEOUT_PARAMETER = "EVSERVE_EXECUTE_TIMEOUT_SECS"
DEFAULT_ARENA_BYTES = 64 << 20


def process_settings(config: ModelConfig, default: str) -> tuple[int, float | None, str] | None:
    """(arena bytes, execute timeout, interpreter) when the model's instances run in child processes, else None.

    A model that names an ``EXECUTION_ENV_PATH`` always runs in child processes, on that
    environment's interpreter. A bad value fails the load with the parameter's name (a model
    mistake, not a server one).
    """
    parameters = config.parameters
    env_path = parameters.get(environment.PARAMETER)
    python = environment.resolve(env_path, config.model_dir or "") if env_path else sys.executable
    isolation = "process" if env_path else parameters.get(ISOLATION_PARAMETER) or default
    if isolation not in ISOLATIONS:
        raise ModelConfigError(f"parameter {ISOLATION_PARAMETER} of model '{config.name}' must be thread or "
                               f"process, not '{isolation}'")
    if isolation == "thread":
        return None
    try:
        arena = int(parameters.get(ARENA_PARAMETER) or DEFAULT_ARENA_BYTES)
        timeout_text = parameters.get(TIMEOUT_PARAMETER)
        timeout = float(timeout_text) if timeout_text else None
    except ValueError as exc:
        raise ModelConfigError(f"model '{config.name}': bad process-isolation parameter: {exc}") from None
    if arena < 4096 or (timeout is not None and timeout <= 0):
        raise ModelConfigError(f"model '{config.name}': {ARENA_PARAMETER} must be at least 4096 and "
                               f"{TIMEOUT_PARAMETER} positive")
    return arena, timeout, python


def retire(name: str, versions: list[ModelVersion], override_dir: str | None, timeout: float) -> list[str]:
    """Stop accepting, drain (bounded by ``timeout`` overall), finalize; remove an override dir.

    Returns the finalize error texts (a ``TritonModelException`` in ``finalize`` fails an unload).
    """
    deadline = time.monotonic() + timeout
    for version in versions:
        version.close()
    errors: list[str] = []
    for version in versions:
        if not version.drain(max(0.0, deadline - time.monotonic())):
            _log.warning("model '%s' version %d: requests still running after %.1fs", name, version.version, timeout)
        errors.extend(version.finalize())
    if override_dir is not None:
        shutil.rmtree(override_dir, ignore_errors=True)
    return errors


def load_in_parallel(work: Callable[[str], None], names: list[str], threads: int,
                     stopping: Callable[[], bool]) -> None:
    """Run ``work(name)`` for every name on up to ``threads`` daemon threads and wait for all.

    Startup uses it so that ``--model-load-thread-count`` models initialise at once; daemon
    threads (not a ThreadPoolExecutor) so that a model stuck in ``initialize`` cannot hold the
    interpreter open at exit. ``work`` must not raise.
    """
    pending = list(reversed(names))
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                if not pending or stopping():
                    return
                name = pending.pop()
            work(name)

    workers = [threading.Thread(target=drain, name=f"evserve-load-{i}", daemon=True)
               for i in range(min(threads, len(names)))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _finalize_quietly(name: str, instance: Any) -> None:
    try:
        instance.finalize()
    except BaseException as exc:  # model code
        _log.error("model '%s': finalize after a failed load raised %s", name, describe(exc))
