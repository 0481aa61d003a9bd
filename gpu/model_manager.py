"""The model manager: which models exist, their states, loading, unloading and safe reloads.

Two kinds of callers with opposite needs share this object:

* Loop threads ask cheap questions on every request (``get``, ``ready``, ``index``, metadata).
  They read an immutable snapshot (:mod:`evserve.gpu.model_records`) through one attribute read
  and never take a lock that a load holds, so a model whose ``initialize`` takes a minute cannot
  stall a health probe (Triton issues 8635/8958).
* Control work (startup loading, the load/unload API, poll-mode rescans) does disk I/O and runs
  model code. It runs on the startup thread, the poll thread, or the bounded model-control
  executor, serialised per model by a per-model lock; the manager-wide lock is held only for
  dict swaps.

Nothing here leans on the GIL: snapshots are published by one attribute assignment under the
publish lock, per-model state is touched only under its slot's lock, and the two bags written by
several control threads without a lock (``_startup_errors``, ``_background``) see only single
dict/set operations, which are atomic on free-threaded builds too.

A reload is a safe swap: the new version is built and initialised while the old one serves,
then the snapshot is switched in one assignment, and only then does the old version stop
accepting, drain (bounded by ``unload_timeout``) and finalize, on a background thread.

Where Triton is ambiguous: loading a model that is not in any repository is 400
``failed to load 'm', failed to poll from model repository`` (Triton: 500), since naming a
missing model is a client mistake; bad parameter types and unknown parameter keys are 400 too.
A load's ``done`` fires once the new version serves (the old one retires after); an unload's
``done`` fires as soon as the unload has started (Triton's rule): the model already refuses new
requests, and draining and ``finalize()`` go on in the background.

Ensembles follow Triton's dependency rules: loading one loads the models its steps run, unloading
a model unloads the ensembles that run it, and unloading an ensemble with ``unload_dependents``
also unloads its step models that no other loaded ensemble runs. Dependencies are loaded on the
loading thread, one model's lock at a time, never while an unload holds another model's lock.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from evserve.gpu.execution.ensemble import EnsembleVersion
from evserve.gpu.execution.version import ModelVersion
from evserve.gpu.model_control import (
    NOT_EXPLICIT,
    STOPPING,
    ControlExecutor,
    Done,
    split_load_parameters,
    validate_load_name,
    validate_unload_dependents,
)
from evserve.gpu.model_loader import LoadFailure, ModelLoader, describe, load_in_parallel, retire
from evserve.gpu.model_records import (
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADED_REASON,
    UNLOADING,
    ModelRecord,
    VersionState,
    index_rows,
)
from evserve.gpu.options import ModelManagerOptions
from evserve.gpu.python_backend import bls
from evserve.gpu.repository.config_parse import ModelConfigError, parse_json_config
from evserve.gpu.repository.file_override import materialize
from evserve.gpu.repository.scan import ModelSource, fingerprint, scan_repositories
from evserve.protocol.errors import BadRequest, NotFound, ProtocolError, Unavailable

_log = logging.getLogger(__name__)



class _Slot:
    """Control-side bookkeeping of one model; only touched with ``lock`` held."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served: dict[int, ModelVersion] = {}
        # Fingerprint of the repository directory the served versions came from; None after an
        # override load (so the next plain load always reloads) or when nothing is served.
        self.fingerprint: str | None = None
        # Fingerprint whose load failed: poll mode does not retry it until the files change.
        self.failed_fingerprint: str | None = None
        self.override_dir: str | None = None


class ModelManager:
    """Owns every model of the repositories; see the module docstring for the threading rules."""

    def __init__(self, repositories: Iterable[str], options: ModelManagerOptions | None = None) -> None:
        options = options if options is not None else ModelManagerOptions()
        self.options = options
        self.repositories = list(repositories)
        self.control_mode = options.control_mode
        self.startup_models = list(options.startup_models)
        self.poll_secs = options.poll_secs
        self.strict_readiness = options.strict_readiness
        self.unload_timeout = options.unload_timeout
        self.load_thread_count = max(1, options.load_thread_count)
        self._loader = ModelLoader(options, self._instance_gave_up)
        self._loader.resolve = self.get
        self._loader.load_dependencies = self._load_dependencies
        # The ensembles each thread is loading right now: a cycle of ensembles fails instead of recursing.
        self._loading_chain = threading.local()
        # The server's response cache (--cache-config), or None; /metrics reads its counters.
        self.response_cache = self._loader.response_cache
        # Reader-visible state: replaced, never mutated (copy-on-write).
        self._records: dict[str, ModelRecord] = {}
        self._sources: dict[str, ModelSource] = {}
        self._unservable: dict[str, str] = {}
        self._healthy = True
        self._publish_lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._control = ControlExecutor(self.load_thread_count)
        self._startup_done = threading.Event()
        self._started = False  # mirrors _startup_done for ready(), which every health check calls
        self._startup_errors: dict[str, str] = {}
        self._stop_event = threading.Event()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._background: set[threading.Thread] = set()
        self._temp_root: str | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the startup models in the background and return at once."""
        bls.install(self)  # models' InferenceRequest.exec() reach the other models through this manager
        self._spawn(self._startup, "evserve-startup")

    def wait_startup(self, timeout: float | None = None) -> bool:
        """Block until startup loading has finished (True) or ``timeout`` passed (False)."""
        return self._startup_done.wait(timeout)

    def startup_errors(self) -> dict[str, str]:
        """Models that failed to load at startup, with the reason (the CLI exits on any)."""
        return dict(self._startup_errors)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling, refuse control, drain and finalize every model, all within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        bls.uninstall(self)
        self._stopping = True
        self._stop_event.set()
        self._control.close(self._left(deadline))
        for thread in list(self._threads):
            thread.join(self._left(deadline))
        slots = self._held_slots(deadline)
        for slot in slots:
            for version in slot.served.values():
                version.close()
        for name, slot in list(self._slots.items()):
            if slot in slots:
                served = list(slot.served.values())
                retire(name, served, slot.override_dir, self._left(deadline))
                slot.served, slot.override_dir = {}, None
                if served:
                    self._publish(name, ModelRecord(name, {
                        v.version: VersionState(v.version, UNAVAILABLE, UNLOADED_REASON) for v in served
                    }))
                slot.lock.release()
        for thread in list(self._background):
            thread.join(self._left(deadline))
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)

    def _held_slots(self, deadline: float) -> list[_Slot]:
        """Take every model lock that frees up before the deadline (a stuck load keeps its own)."""
        held = []
        for name, slot in list(self._slots.items()):
            if slot.lock.acquire(timeout=self._left(deadline)):
                held.append(slot)
            else:
                _log.error("model '%s' is still loading or unloading at shutdown; left as is", name)
        return held

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # ---- reader API: loop threads, O(1)-ish, never blocks --------------------------------------

    def live(self) -> bool:
        return not self._stopping

    def ready(self) -> bool:
        """Startup finished, not stopping, and (strict readiness) every known model healthy."""
        if self._stopping or not self._started:
            return False
        return self._healthy or not self.strict_readiness

    def _record(self, name: str) -> ModelRecord:
        record = self._records.get(name)
        if record is None:
            # 404, as the real Triton answers on infer, metadata, config and generate.
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        return record

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The served version for a request; raises with Triton's texts and our statuses."""
        record = self._record(name)
        if not version:
            served = record.latest_ready
            if served is None:
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return served
        entry = record.versions.get(int(version)) if version.isdigit() else None
        if entry is None:
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
        if entry.state != READY or entry.served is None:
            raise Unavailable(f"Request for unknown model: '{name}' version {version} is not at ready state")
        return entry.served

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model (version) is READY; False for an unknown model or version (Triton's /ready)."""
        record = self._records.get(name)
        if record is None:
            return False
        if not version:
            return record.latest_ready is not None
        entry = record.versions.get(int(version)) if version.isdigit() else None
        return entry is not None and entry.state == READY

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Model metadata: the requested version, or every READY version with the latest's tensors."""
        served = self.get(name, version)
        if version:
            return served.config.metadata([served.version_str])
        record = self._records.get(name)
        versions = [v.version_str for v in record.ready_versions()] if record is not None else []
        return served.config.metadata(versions or [served.version_str])

    def config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The completed config (``/config`` body) of the version a request would use."""
        return self.get(name, version).config.raw

    def ready_versions(self, name: str | None = None, version: str | None = None) -> list[ModelVersion]:
        """READY versions for ``/stats``: all models, one model, or one version.

        An unknown or unready model is 400 ``requested model 'm' is not available`` (Triton).
        """
        records = self._records
        if name is None:
            return [v for _, record in sorted(records.items()) for v in record.ready_versions()]
        record = records.get(name)
        found = record.ready_versions() if record is not None else []
        if not found:
            raise BadRequest(f"requested model '{name}' is not available")
        if version:
            found = [v for v in found if v.version_str == version]
            if not found:
                raise BadRequest(f"requested model version is not available for model '{name}'")
        return found

    def model_names(self) -> set[str]:
        """Every model name the repository or the manager knows (loaded or not)."""
        return set(self._records) | set(self._sources) | set(self._unservable)

    def custom_metric_families(self) -> list[tuple[str, str, int, list[tuple[str, dict[str, str], float]]]]:
        """The models' pb_utils.MetricFamily series (name, description, kind, samples), for /metrics:
        those of this process's models, then the latest each process-isolated instance shipped."""
        from evserve.gpu.python_backend.pb_utils import metrics

        found = metrics.snapshot()
        for version in self.ready_versions():
            for worker in version.workers:
                found.extend(getattr(worker.instance, "custom_metrics", ()))
        return found

    def refresh(self) -> None:
        """Rescan the repositories now (disk I/O: never call it on a loop thread)."""
        self._rescan()

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """The repository index from the last scan, sorted by name then version.

        It never touches the disk; the index handler calls :meth:`refresh` first, on the offload pool.
        """
        names = set(self._sources) | set(self._unservable)
        return index_rows(self._records, names, ready_only)

    # ---- model control API -----------------------------------------------------------------

    def submit_load(self, name: str, parameters: dict[str, Any] | None, done: Done) -> None:
        """Validate on the caller's thread, then load on the control executor; ``done`` fires there.

        Raises at once (ProtocolError) for the wrong mode, a bad name or parameter, or when
        ``load_thread_count`` control operations are already running (503, not queued).
        """
        self._require_control()
        validate_load_name(name)
        config_text, files = split_load_parameters(name, parameters)
        self._control.submit(lambda: self._load(name, config_text, files), done)

    def submit_unload(self, name: str, unload_dependents: bool, done: Done) -> None:
        """Like :meth:`submit_load`, but ``done`` fires as soon as the unload has started.

        That is Triton's reply: the model already refuses new requests (UNLOADING); draining
        and ``finalize()`` go on in the background and keep their control slot until they end,
        so the concurrency limit still counts them.
        """
        self._require_control()
        dependents = validate_unload_dependents(unload_dependents)
        replied = False

        def reply_once(error: ProtocolError | None) -> None:
            nonlocal replied  # both calls come from the same control thread, in order
            if not replied:
                replied = True
                done(error)

        self._control.submit(lambda: self.unload(name, dependents, started=lambda: reply_once(None)), reply_once)

    def _require_control(self) -> None:
        if self.control_mode != "explicit":
            raise Unavailable(NOT_EXPLICIT)
        if self._stopping:
            raise Unavailable(STOPPING)

    def load(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Blocking load (startup, poll, tests); raises ProtocolError on failure."""
        validate_load_name(name)
        config_text, files = split_load_parameters(name, parameters)
        self._load(name, config_text, files)

    def unload(self, name: str, unload_dependents: bool = False, started: Callable[[], None] | None = None) -> None:
        """Blocking unload: UNLOADING, drain in-flight (bounded), finalize, UNAVAILABLE "unloaded".

        ``started`` is called once the model refuses new requests. Unloading a model that is not
        loaded succeeds. The ensembles that run the model are unloaded first; with
        ``unload_dependents``, an ensemble's step models that no other loaded ensemble runs follow it.
        """
        slot = self._slots.get(name)
        if slot is None:
            return
        for ensemble in self._ensembles_running(name):
            self.unload(ensemble)
        steps = set().union(*(v.dependencies for v in slot.served.values() if isinstance(v, EnsembleVersion)))
        self._unload_one(name, slot, started)
        if unload_dependents:
            still_used = set().union(*self._ensemble_dependencies().values())
            for step in sorted(steps - still_used):
                self.unload(step, unload_dependents=True)

    def _ensemble_dependencies(self) -> dict[str, set[str]]:
        """The models each loaded ensemble runs."""
        found: dict[str, set[str]] = {}
        for model, slot in list(self._slots.items()):
            for version in list(slot.served.values()):
                if isinstance(version, EnsembleVersion):
                    found.setdefault(model, set()).update(version.dependencies)
        return found

    def _ensembles_running(self, name: str) -> list[str]:
        return sorted(ensemble for ensemble, steps in self._ensemble_dependencies().items() if name in steps)

    def _load_dependencies(self, ensemble: str, models: list[str]) -> list[str]:
        """Load each model an ensemble needs that is not ready; return those still not available."""
        chain: list[str] = getattr(self._loading_chain, "names", None) or []
        if ensemble in chain:
            return models  # a cycle of ensembles: none of them can ever be ready
        self._loading_chain.names = [*chain, ensemble]
        try:
            for model in models:
                if not self.model_ready(model) and model not in chain:
                    try:
                        self._load(model, None, {})
                    except ProtocolError as exc:
                        _log.error("ensemble '%s': step model '%s' did not load: %s", ensemble, model, exc.message)
        finally:
            self._loading_chain.names = chain
        return [model for model in models if not self.model_ready(model)]

    def _unload_one(self, name: str, slot: _Slot, started: Callable[[], None] | None) -> None:
        with slot.lock:
            record = self._records.get(name)
            served = list(slot.served.values())
            if not served and record is None:
                return
            if served:
                self._publish(name, ModelRecord(name, {
                    v.version: VersionState(v.version, UNLOADING) for v in served
                }))
                for version in served:
                    version.close()  # new requests to it are refused from here on
            if started is not None:
                started()
            errors = retire(name, served, slot.override_dir, self.unload_timeout)
            slot.served, slot.override_dir, slot.fingerprint = {}, None, None
            numbers = [v.version for v in served] or (list(record.versions) if record is not None else [])
            self._publish(name, ModelRecord(
                name,
                {n: VersionState(n, UNAVAILABLE, UNLOADED_REASON) for n in numbers},
                "" if numbers else UNAVAILABLE,
                "" if numbers else UNLOADED_REASON,
            ))
        if errors:
            raise BadRequest(f"failed to unload '{name}': {'; '.join(errors)}")

    # ---- loading -------------------------------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        with self._publish_lock:
            return self._slots.setdefault(name, _Slot())

    def _load(self, name: str, config_text: str | None, files: dict[str, str], *, poll: bool = False) -> None:
        if self._stopping:
            raise Unavailable(STOPPING)
        self._rescan()
        if not files and name not in self._sources and name not in self._unservable:
            raise BadRequest(_not_in_repository(name))  # before a slot exists: client names cost nothing
        slot = self._slot(name)
        with slot.lock:
            if self._stopping:
                raise Unavailable(STOPPING)
            config_override = self._parse_override(name, config_text)
            model_dir, fresh_dir = self._model_dir(name, files)
            digest = None if config_override is not None or files else fingerprint(model_dir)
            if slot.served and digest is not None and digest == slot.fingerprint:
                return  # unchanged: reloading is a no-op
            if poll and digest is not None and digest == slot.failed_fingerprint:
                return  # this exact content already failed; wait for the next edit
            try:
                built = self._loader.build(name, model_dir, config_override,
                                           lambda selected: self._show_loading(name, slot, selected))
            except LoadFailure as failure:
                if fresh_dir is not None:
                    shutil.rmtree(fresh_dir, ignore_errors=True)
                slot.failed_fingerprint = digest
                self._publish_failure(name, slot, failure)
                raise BadRequest(f"load failed for model '{name}': {failure.reason}") from None
            self._swap(name, slot, built, digest, fresh_dir)

    def _parse_override(self, name: str, config_text: str | None) -> dict | None:
        if config_text is None:
            return None
        try:
            return parse_json_config(config_text, "config")
        except ModelConfigError as exc:
            # "failed to load" is what Triton's clients look for (simple_http_model_control.py).
            raise BadRequest(f"failed to load '{name}': {exc}") from None

    def _model_dir(self, name: str, files: dict[str, str]) -> tuple[str, str | None]:
        """(directory to load from, the fresh override directory to own or None)."""
        if files:
            fresh = materialize(name, files, self._override_root())
            return fresh, fresh
        source = self._sources.get(name)
        if source is not None:
            return source.path, None
        if name in self._unservable:
            failure = LoadFailure(self._unservable[name])
            self._publish_failure(name, self._slot(name), failure)
            raise BadRequest(f"load failed for model '{name}': {failure.reason}")
        raise BadRequest(_not_in_repository(name))

    def _override_root(self) -> str:
        with self._publish_lock:
            if self._temp_root is None:
                self._temp_root = tempfile.mkdtemp(prefix="evserve-overrides-")
            return self._temp_root

    def _show_loading(self, name: str, slot: _Slot, selected: list[int]) -> None:
        """A first load shows its versions LOADING; a reload keeps showing the serving ones READY."""
        if not slot.served:
            self._publish(name, ModelRecord(name, {v: VersionState(v, LOADING) for v in selected}))

    def _swap(self, name: str, slot: _Slot, built: dict[int, ModelVersion], digest: str | None,
              fresh_dir: str | None) -> None:
        """Publish the new versions in one assignment, then retire the old ones in the background."""
        if self._stopping:
            retire(name, list(built.values()), fresh_dir, 0.0)
            raise Unavailable(STOPPING)
        old, old_dir = list(slot.served.values()), slot.override_dir
        for version in old:
            version.successor = built.get(version.version)
        slot.served, slot.fingerprint, slot.failed_fingerprint, slot.override_dir = built, digest, None, fresh_dir
        rows = {v.version: VersionState(v.version, UNAVAILABLE, UNLOADED_REASON) for v in old}
        rows.update({n: VersionState(n, READY, "", v) for n, v in built.items()})
        self._publish(name, ModelRecord(name, rows))
        for version in old:
            version.close()
        if old:
            self._retire_in_background(name, old, old_dir)

    def _publish_failure(self, name: str, slot: _Slot, failure: LoadFailure) -> None:
        """A failed first load shows UNAVAILABLE + reason; a failed reload keeps the old serving."""
        if slot.served:
            _log.error("reload of model '%s' failed, the previous version keeps serving: %s", name, failure.reason)
            return
        if failure.versions:
            record = ModelRecord(name, {v: VersionState(v, UNAVAILABLE, failure.reason) for v in failure.versions})
        else:
            record = ModelRecord(name, {}, UNAVAILABLE, failure.reason)
        self._publish(name, record)

    # ---- retiring versions ----------------------------------------------------------------------

    def _retire_in_background(self, name: str, versions: list[ModelVersion], override_dir: str | None) -> None:
        def run() -> None:
            try:
                retire(name, versions, override_dir, self.unload_timeout)
            finally:
                self._background.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"evserve-retire-{name}", daemon=True)
        self._background.add(thread)
        thread.start()

    # ---- snapshots ---------------------------------------------------------------------------

    def _instance_gave_up(self, name: str, version: ModelVersion, reason: str) -> None:
        """An instance of a served version can no longer run (its process kept crashing): show
        the version UNAVAILABLE with the reason until the model is loaded again."""
        with self._publish_lock:
            record = self._records.get(name)
            entry = record.versions.get(version.version) if record is not None else None
            if record is None or entry is None or entry.served is not version:
                return  # already replaced or unloaded
            versions = {**record.versions, version.version: VersionState(version.version, UNAVAILABLE, reason)}
            self._set_record(name, ModelRecord(name, versions, record.state, record.reason))

    def _publish(self, name: str, record: ModelRecord) -> None:
        with self._publish_lock:
            self._set_record(name, record)

    def _set_record(self, name: str, record: ModelRecord) -> None:
        """Publish a new snapshot with ``record`` for ``name`` (the publish lock is held)."""
        records = dict(self._records)
        records[name] = record
        self._healthy = all(r.is_healthy() for r in records.values())
        self._records = records

    def _rescan(self) -> None:
        """Refresh the cached repository listing (disk I/O: control threads only)."""
        try:
            sources, unservable = scan_repositories(self.repositories)
        except OSError as exc:
            _log.error("cannot scan the model repositories: %s", exc)
            return
        with self._publish_lock:
            self._sources, self._unservable = sources, unservable

    def _already_failed(self, name: str, reason: str) -> bool:
        """Whether the model is already shown (or kept serving) despite ``reason``: nothing to redo."""
        slot = self._slots.get(name)
        record = self._records.get(name)
        return bool(slot and slot.served) or (record is not None and record.reason == reason)

    # ---- startup and polling --------------------------------------------------------------------

    def _startup(self) -> None:
        try:
            self._rescan()
            names = self._startup_names()
            load_in_parallel(self._startup_load, names, self.load_thread_count, lambda: self._stopping)
        except Exception:
            _log.exception("startup loading failed")
        finally:
            self._started = True
            self._startup_done.set()
        if self.control_mode == "poll" and not self._stopping:
            self._poll_loop()

    def _startup_names(self) -> list[str]:
        everything = sorted(set(self._sources) | set(self._unservable))
        if self.control_mode != "explicit" or self.startup_models == ["*"]:
            return everything
        return list(dict.fromkeys(self.startup_models))

    def _startup_load(self, name: str) -> None:
        try:
            self.load(name)
        except Exception as exc:
            reason = exc.message if isinstance(exc, ProtocolError) else describe(exc)
            _log.error("failed to load model '%s': %s", name, reason)
            self._startup_errors[name] = reason

    def _poll_loop(self) -> None:
        while not self._stop_event.wait(self.poll_secs):
            try:
                self.poll()
            except Exception:
                _log.exception("repository poll failed")

    def poll(self) -> None:
        """One poll pass: load added or changed models, unload removed ones (blocking)."""
        self._rescan()
        present = set(self._sources) | set(self._unservable)
        for name in sorted(present):
            if self._stopping:
                return
            if name in self._unservable and self._already_failed(name, self._unservable[name]):
                continue
            try:
                self._load(name, None, {}, poll=True)
            except Exception as exc:
                _log.error("poll: model '%s': %s", name, exc.message if isinstance(exc, ProtocolError) else exc)
        for name, slot in list(self._slots.items()):
            if name not in present and slot.served and slot.override_dir is None:
                self.unload(name)


def _not_in_repository(name: str) -> str:
    # Triton's text; a 400 here, since naming a model that does not exist is a client mistake.
    return f"failed to load '{name}', failed to poll from model repository"
