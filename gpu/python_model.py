"""Loading and running Triton python-backend models (``<model>/<version>/model.py``) in-process.

Why in-process: Triton runs each instance in a stub process and copies every tensor through
shared memory; evserve hands the model NumPy views of the request body instead, and the
instance's worker thread calls ``execute`` directly. This module is the adapter between
evserve's decoded requests (:mod:`evserve.protocol.types`) and the python-backend API
(:mod:`evserve.gpu.pb_utils`), and it enforces Triton's contract on what ``execute`` returns.

Importing model files. Triton imports ``model.py`` as ``<version>.model`` with the version and
model directories appended to ``sys.path``, one model per process. Here many models share one
process, so each version is imported under a unique package ``evserve_models.<name>_v<version>_<n>``
whose ``__path__`` is the version directory: relative imports (``from . import helper``) stay
private to the model, and plain sibling imports (``import helper``, at module level or inside
``initialize``/``execute``) are mapped to the same private copy by a per-model ``__import__``
(:func:`_model_builtins`), so two models that both ship ``helper.py`` each get their own and
``sys.path`` is never touched.

Completion contract. Every :class:`ExecRequest` is completed exactly once, whatever the model
does: raises, returns the wrong thing, sends through the response sender, or does nothing.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import importlib.machinery
import importlib.util
import inspect
import itertools
import json
import logging
import os
import re
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evserve.gpu import pb_utils
from evserve.protocol.errors import ProtocolError, Unsupported, status_of_code
from evserve.protocol.types import InferRequest, InferResponse, OutputTensor

_log = logging.getLogger(__name__)

# The bundled repository served when no --model-repository is given.
EXAMPLE_REPOSITORY = str(Path(__file__).resolve().parent / "example_repository")

_PACKAGE_ROOT = "evserve_models"
_MODEL_FILE = "model.py"
# Triton's bound on a model's is_ready() when model-ready asks.
READY_TIMEOUT = 5.0
_import_lock = threading.RLock()  # re-entered when model.py imports its siblings
_import_counter = itertools.count(1)

# Request parameters Triton consumes itself; they never reach request.parameters().
_RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output", "headers"}
)


class PythonModelError(Exception):
    """A model directory that cannot be imported as a python-backend model (the load fails)."""


class ModelConfigLike(Protocol):
    """What this module reads of :class:`evserve.gpu.model_config.ModelConfig`."""

    name: str
    raw: dict[str, Any]
    decoupled: bool


def _not_cancelled() -> bool:
    return False


@dataclass(slots=True)
class ExecRequest:
    """One request queued for a model instance, and where its answer goes.

    Exactly one terminal call is made: ``complete(result)`` when ``stream`` is None, else
    ``stream(result, True)``. With ``stream`` set (for streaming endpoints), each response a
    decoupled model sends is passed on as it is sent, as ``stream(response, False)``; the final
    call carries the response sent with FINAL, or None for a bare FINAL, or an error.
    """

    request: InferRequest
    complete: Callable[[InferResponse | ProtocolError], None]
    cancelled: Callable[[], bool] = _not_cancelled
    stream: Callable[[InferResponse | ProtocolError | None, bool], None] | None = None


# --------------------------------------------------------------------------------------------
# Importing


def _register_pb_utils() -> None:
    """Make ``import triton_python_backend_utils`` give models evserve's implementation."""
    sys.modules["triton_python_backend_utils"] = pb_utils


def _package_root() -> types.ModuleType:
    root = sys.modules.get(_PACKAGE_ROOT)
    if root is None:
        root = types.ModuleType(_PACKAGE_ROOT, "Namespace for the python-backend models evserve has loaded.")
        root.__path__ = []
        sys.modules[_PACKAGE_ROOT] = root
    return root


def _version_package(model_name: str, version: int, version_dir: str) -> types.ModuleType:
    """A fresh package whose ``__path__`` is the version directory (for relative imports)."""
    _package_root()
    safe = re.sub(r"[^0-9A-Za-z_]", "_", model_name)
    name = f"{_PACKAGE_ROOT}.{safe}_v{version}_{next(_import_counter)}"
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [version_dir]
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    return package


def _sibling_names(version_dir: str) -> set[str]:
    """Top-level modules the version directory provides: ``*.py`` files and regular packages.

    Names of standard-library modules are left out: those keep resolving to the standard
    library, as they do in Triton (which appends the directory to ``sys.path``), and are never
    hidden from other threads.
    """
    names = set()
    for entry in os.scandir(version_dir):
        if entry.is_file() and entry.name.endswith(".py") and entry.name != _MODEL_FILE:
            names.add(entry.name[:-3])
        elif entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")):
            names.add(entry.name)
    return names - sys.stdlib_module_names


def _model_builtins(package: str, siblings: set[str]) -> dict[str, Any]:
    """Builtins for a model's own modules: ``import helper`` finds the model's ``helper.py``.

    Triton runs one model per process with the version directory on ``sys.path``. Here many
    models share a process, so instead of ``sys.path`` every module of a model gets an
    ``__import__`` that maps the names of its sibling files to ``<package>.<name>``, its
    private copy. It applies for the model's whole life, so imports inside ``initialize`` or
    ``execute`` resolve the same way as imports at the top of ``model.py``.
    """
    table = dict(vars(builtins))
    real_import = builtins.__import__

    def model_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> types.ModuleType:
        top = name.partition(".")[0]
        if level != 0 or top not in siblings:
            return real_import(name, globals, locals, fromlist, level)
        module = _import_sibling(f"{package}.{name}", table)
        return module if fromlist else sys.modules[f"{package}.{top}"]

    table["__import__"] = model_import
    return table


def _import_sibling(full_name: str, table: dict[str, Any]) -> types.ModuleType:
    """Import ``<package>.<sibling>[.<sub>]``, giving each newly executed module the model's builtins."""
    parent, _, _ = full_name.rpartition(".")
    if parent and parent not in sys.modules:
        _import_sibling(parent, table)
    with _import_lock:
        module = sys.modules.get(full_name)
        if module is not None:
            return module
        spec = importlib.util.find_spec(full_name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named '{full_name.rpartition('.')[2]}'", name=full_name)
        module = importlib.util.module_from_spec(spec)
        module.__dict__["__builtins__"] = table
        sys.modules[full_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full_name]
            raise
        return module


def _drop_modules(prefix: str) -> None:
    for name in [name for name in sys.modules if name == prefix or name.startswith(prefix + ".")]:
        del sys.modules[name]


class PythonModel:
    """One imported version of a python-backend model: the ``TritonPythonModel`` class."""

    def __init__(self, name: str, version: int, model_dir: str, package: str, cls: type) -> None:
        self.name = name
        self.version = version
        self.model_dir = model_dir
        self.package = package
        self.cls = cls

    @classmethod
    def import_version(cls, model_dir: str, model_name: str, version: int) -> PythonModel:
        """Import ``<model_dir>/<version>/model.py`` under a name no other load shares."""
        version_dir = os.path.join(model_dir, str(version))
        path = os.path.join(version_dir, _MODEL_FILE)
        if not os.path.isfile(path):
            raise PythonModelError(f"unable to find '{path}' for model '{model_name}'")
        with _import_lock:
            _register_pb_utils()
            package = _version_package(model_name, version, version_dir)
            try:
                module = cls._exec_model_file(package.__name__, path, version_dir)
            except BaseException as exc:
                _drop_modules(package.__name__)
                if isinstance(exc, Exception):
                    raise PythonModelError(f"failed to import '{path}': {type(exc).__name__}: {exc}") from exc
                raise
        model_cls = getattr(module, "TritonPythonModel", None)
        if not isinstance(model_cls, type):
            _drop_modules(package.__name__)
            raise PythonModelError(f"'{path}' does not define class TritonPythonModel")
        if not callable(getattr(model_cls, "execute", None)):
            _drop_modules(package.__name__)
            raise PythonModelError(f"Python model '{path}' does not implement `execute` method.")
        return cls(model_name, version, model_dir, package.__name__, model_cls)

    @staticmethod
    def _exec_model_file(package: str, path: str, version_dir: str) -> types.ModuleType:
        spec = importlib.util.spec_from_file_location(f"{package}.model", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        module.__dict__["__builtins__"] = _model_builtins(package, _sibling_names(version_dir))
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    def auto_complete(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The config after ``TritonPythonModel.auto_complete_config`` (a copy; ``cfg`` is unchanged)."""
        hook = getattr(self.cls, "auto_complete_config", None)
        if hook is None:
            return json.loads(json.dumps(cfg))
        result = hook(pb_utils.ModelConfig({"name": self.name, **cfg}))
        if not isinstance(result, pb_utils.ModelConfig):
            raise pb_utils.TritonModelException(
                f"auto_complete_config function in model '{self.name}' must return a valid pb.ModelConfig object."
            )
        return json.loads(json.dumps(result.as_dict()))

    def create_instance(
        self,
        config: ModelConfigLike,
        version: int,
        kind: str,
        device_id: int,
        repository_dir: str,
        instance_name: str | None = None,
    ) -> PythonModelInstance:
        """Instantiate the model and run ``initialize(args)``; its exceptions propagate (load fails).

        ``repository_dir`` is what Triton passes as ``model_repository``: the model's own
        directory. ``kind`` is "CPU"/"GPU" (a "KIND_" prefix is dropped).
        """
        kind = kind.removeprefix("KIND_")
        instance_name = instance_name or f"{config.name}_0_0"
        model = self.cls()
        initialize = getattr(model, "initialize", None)
        if initialize is not None:
            initialize(
                {
                    "model_config": json.dumps(config.raw),
                    "model_instance_kind": kind,
                    "model_instance_name": instance_name,
                    "model_instance_device_id": str(device_id),
                    "model_repository": repository_dir,
                    "model_version": str(version),
                    "model_name": config.name,
                }
            )
        return PythonModelInstance(model, config, version, instance_name)

    def release(self) -> None:
        """Forget the imported modules (after every instance is finalized), so reloads start clean."""
        _drop_modules(self.package)


# --------------------------------------------------------------------------------------------
# Running


class _ContractError(Exception):
    """``execute`` broke the python-backend contract (its message is shown as is)."""


class _AsyncRunner:
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


class _Reply:
    """One request's side of a batch: its pb_utils request, its sender, and its single completion."""

    def __init__(self, instance: PythonModelInstance, job: ExecRequest) -> None:
        self.job = job
        self._instance = instance
        self._lock = threading.Lock()
        self._finished = False
        self._streamed = False
        self._last: InferResponse | ProtocolError | None = None
        request = job.request
        # No requested outputs (None or an empty list) means all of them, as in Triton.
        self.requested = frozenset(out.name for out in request.outputs) if request.outputs else instance.output_names
        self.sender = pb_utils.InferenceResponseSender(instance.decoupled, self._on_send, job.cancelled)
        self.request = pb_utils.InferenceRequest._received(
            request_id=request.id,
            correlation_id=_correlation_id(request.parameters),
            inputs=[pb_utils.Tensor._wrap(t.name, instance.model_view(t.name, t.data), t.datatype)
                    for t in request.inputs],
            requested_output_names=self.requested,
            model_name=request.model_name,
            model_version=_version_number(request.model_version),
            flags=_sequence_flags(request.parameters),
            parameters_json=_model_parameters(request.parameters),
            sender=self.sender,
            is_cancelled=job.cancelled,
        )

    def _on_send(self, response: pb_utils.InferenceResponse | None, flags: int) -> None:
        """Called by the sender (under its lock) for every response it accepted."""
        item = None if response is None else self._instance.convert(response, self.job.request, self.requested)
        final = flags == pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if self.job.stream is not None:
            if final:
                self._finish(item)
            elif item is not None and not self._finished:
                self._streamed = True
                _call_safely(self.job.stream, item, False)
            return
        if item is not None:
            self._last = item
        if final:
            self._finish(self._last if self._last is not None else self._instance.no_response_error())

    @property
    def rescheduled(self) -> bool:
        return self.request._release_flags == pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE

    def settle(self) -> None:
        """After a default-mode ``execute`` returned: answer with what was sent, or an error."""
        if self.rescheduled:
            self.end(Unsupported("Request rescheduling (TRITONSERVER_REQUEST_RELEASE_RESCHEDULE) is not supported"))
        elif self.job.stream is not None and self._streamed:
            self.end(None)
        elif self._last is not None:
            self.end(self._last)
        else:
            self.end(self._instance.no_response_error())

    def end(self, result: InferResponse | ProtocolError | None) -> None:
        """Finish with ``result`` unless already finished, and refuse the model's later sends."""
        self.sender._close()
        self._finish(result)

    def _finish(self, result: InferResponse | ProtocolError | None) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        if self.job.stream is not None:
            _call_safely(self.job.stream, result, True)
        else:
            assert result is not None
            _call_safely(self.job.complete, result)


def _call_safely(callback: Callable[..., None], *args: Any) -> None:
    """Run a completion callback; its failure is evserve's bug, logged, never the model's."""
    try:
        callback(*args)
    except Exception:
        _log.exception("completion callback failed")


def _model_parameters(parameters: dict[str, Any]) -> str:
    """JSON of the request parameters the model sees: all but those Triton consumes itself."""
    if not parameters:
        return "{}"
    return json.dumps({key: value for key, value in parameters.items() if key not in _RESERVED_PARAMETERS})


def _correlation_id(parameters: dict[str, Any]) -> int | str:
    value = parameters.get("sequence_id", 0)
    return value if isinstance(value, (int, str)) else 0


def _sequence_flags(parameters: dict[str, Any]) -> int:
    flags = 0
    if parameters.get("sequence_start"):
        flags |= pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
    if parameters.get("sequence_end"):
        flags |= pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
    return flags


def _version_number(version: str) -> int:
    return int(version) if version.isdigit() else -1


def _host_bytes_array(array: np.ndarray) -> np.ndarray:
    """BYTES data as the protocol carries it: an object array whose elements are all ``bytes``."""
    if array.dtype.kind == "O" and all(type(item) is bytes for item in array.flat):
        return array
    flat = np.empty(array.size, dtype=np.object_)
    flat[:] = [_plain_bytes(item) for item in array.flat]
    return flat.reshape(array.shape)


def _plain_bytes(item: Any) -> bytes:
    """An element as ``bytes`` proper (not ``np.bytes_``), text as UTF-8, as Triton serializes it."""
    if isinstance(item, bytes):
        return bytes(item)
    return str(item).encode("utf-8")


def _reshapes(entries: Any, key: str) -> dict[str, tuple[int, ...]]:
    return {entry["name"]: tuple(entry[key]["shape"]) for entry in entries if key in entry}


def _reshaped(array: np.ndarray, shape: tuple[int, ...], batched: bool) -> np.ndarray:
    """``array`` in ``shape`` (after its batch dimension when the model batches)."""
    target = (array.shape[0], *shape) if batched and array.ndim else shape
    return array.reshape(target)


def _output_tensor(tensor: pb_utils.Tensor) -> OutputTensor:
    array = tensor._array
    if not tensor.is_cpu():
        array = array.get()  # CuPy → NumPy: the wire needs host memory
    if tensor._datatype == "BYTES":
        array = _host_bytes_array(array)
    return OutputTensor(tensor.name(), tensor._datatype, tuple(array.shape), array)


class PythonModelInstance:
    """One initialized ``TritonPythonModel`` object; its worker thread calls :meth:`execute`."""

    def __init__(self, model: Any, config: ModelConfigLike, version: int, instance_name: str) -> None:
        self.model = model
        self.name = instance_name
        self.model_name = config.name
        self.version = version
        self.decoupled = bool(config.decoupled)
        self.output_names = frozenset(entry["name"] for entry in config.raw.get("output", ()))
        # Config `reshape`: the model sees inputs in the reshaped form and returns outputs in it;
        # the client sends and receives `dims` (Triton's rule). The batch dimension is kept.
        self._batched = config.max_batch_size > 0
        self._input_shapes = _reshapes(config.raw.get("input", ()), "reshape")
        self._output_dims = {
            name: tuple(entry["dims"])
            for name, entry in ((e["name"], e) for e in config.raw.get("output", ()))
            if "reshape" in entry
        }
        self._warned_outputs: set[str] = set()
        self._ready_lock = threading.Lock()
        self._ready_future: concurrent.futures.Future[bool] | None = None
        self._runner: _AsyncRunner | None = None

    # -- execute ------------------------------------------------------------------------------

    def execute(self, batch: list[ExecRequest]) -> None:
        """Run the model once on ``batch`` and complete every request in it exactly once."""
        if not batch:
            return
        replies = [_Reply(self, job) for job in batch]
        try:
            result = self.model.execute([reply.request for reply in replies])
            if inspect.iscoroutine(result):
                if self.decoupled:
                    self._async_runner().submit(result, lambda future: self._async_done(future, replies))
                    return
                result = self._async_runner().run(result)
            self._take_result(result, replies)
        except Exception as exc:
            self._fail_all(replies, exc)
        except BaseException:
            self._fail_all(replies, _ContractError("execution was interrupted"))
            raise

    def _take_result(self, result: Any, replies: list[_Reply]) -> None:
        """Apply Triton's checks to what ``execute`` returned, then answer each request."""
        if self.decoupled:
            if result is not None:
                raise _ContractError(
                    f"Python model '{self.model_name}' is using the decoupled mode and the execute function must "
                    "return None."
                )
            for reply in replies:
                if reply.rescheduled:
                    reply.settle()
            return
        if result is not None:
            self._check_result(result, len(replies))
            for reply, response in zip(replies, result, strict=True):
                if response is not None and not reply.rescheduled:
                    reply.sender.send(response, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        for reply in replies:
            reply.settle()

    @staticmethod
    def _check_result(result: Any, count: int) -> None:
        if not isinstance(result, list):
            raise _ContractError(f"Expected a list in the execute return, found type '{type(result)}'.")
        if len(result) != count:
            raise _ContractError(
                "Number of InferenceResponse objects do not match the number of InferenceRequest objects. "
                f"InferenceRequest(s) size is:{count}, and InferenceResponse(s) size is:{len(result)}"
            )
        for response in result:
            if response is not None and not isinstance(response, pb_utils.InferenceResponse):
                raise _ContractError(
                    "Expected an 'InferenceResponse' object in the execute function return list, found type "
                    f"'{type(response)}'."
                )

    def _async_done(self, future: concurrent.futures.Future[Any], replies: list[_Reply]) -> None:
        """A decoupled ``async def execute`` ended: fail what it left unanswered if it went wrong."""
        if future.cancelled():
            self._fail_all(replies, _ContractError("execution was cancelled"))
        elif future.exception() is not None:
            self._fail_all(replies, future.exception())
        else:
            try:
                self._take_result(future.result(), replies)
            except Exception as exc:
                self._fail_all(replies, exc)

    def _fail_all(self, replies: list[_Reply], exc: BaseException) -> None:
        error = self._batch_error(exc)
        for reply in replies:
            reply.end(error)

    def _batch_error(self, exc: BaseException) -> ProtocolError:
        """The error every unanswered request of a failed batch gets (Triton's wording)."""
        if isinstance(exc, pb_utils.TritonError):
            return ProtocolError(exc.message(), status_of_code(exc.code()))
        if isinstance(exc, _ContractError):
            detail = str(exc)
        else:
            detail = f"{type(exc).__name__}: {exc}"
            _log.error("model instance '%s' failed to execute", self.name, exc_info=exc)
        return ProtocolError(
            f"Failed to process the request(s) for model instance '{self.name}', message: {detail}", 500
        )

    def no_response_error(self) -> ProtocolError:
        if self.decoupled:
            return ProtocolError(f"model '{self.model_name}' sent no response for the request", 500)
        return ProtocolError(
            f"Failed to process the request(s) for model instance '{self.name}', message: execute returned None "
            "without sending a response through the request's response sender",
            500,
        )

    # -- reshape ---------------------------------------------------------------------------------

    def model_view(self, name: str, array: np.ndarray) -> np.ndarray:
        """An input as the model sees it: reshaped when its config says so (a view, no copy)."""
        shape = self._input_shapes.get(name)
        return array if shape is None else _reshaped(array, shape, self._batched)

    def client_view(self, name: str, array: np.ndarray) -> np.ndarray:
        """An output as the client sees it: back to the config's dims when it has a reshape."""
        dims = self._output_dims.get(name)
        return array if dims is None else _reshaped(array, dims, self._batched)

    # -- responses ------------------------------------------------------------------------------

    def convert(
        self, response: pb_utils.InferenceResponse, request: InferRequest, requested: frozenset[str]
    ) -> InferResponse | ProtocolError:
        """A pb_utils response as evserve's InferResponse (outputs pruned to those requested)."""
        error = response.error()
        if error is not None:
            return ProtocolError(error.message(), status_of_code(error.code()))
        try:
            outputs = [self._client_output(tensor) for tensor in self._kept_outputs(response, requested)]
        except Exception as exc:
            return ProtocolError(
                f"Failed to process the response of model instance '{self.name}': {type(exc).__name__}: {exc}", 500
            )
        return InferResponse(
            model_name=request.model_name,
            model_version=request.model_version,
            id=request.id,
            outputs=outputs,
            parameters=dict(response._parameters),
        )

    def _client_output(self, tensor: pb_utils.Tensor) -> OutputTensor:
        output = _output_tensor(tensor)
        if output.name in self._output_dims:
            output.data = self.client_view(output.name, output.data)
            output.shape = tuple(output.data.shape)
        return output

    def _kept_outputs(self, response: pb_utils.InferenceResponse, requested: frozenset[str]) -> list[pb_utils.Tensor]:
        """Triton drops outputs nobody requested; undeclared ones are dropped too, with a warning."""
        kept = []
        for tensor in response.output_tensors():
            name = tensor.name()
            if name in requested:
                kept.append(tensor)
            elif name not in self.output_names and name not in self._warned_outputs:
                self._warned_outputs.add(name)
                _log.warning(
                    "model '%s' returned output '%s', which its configuration does not declare; it is dropped",
                    self.model_name,
                    name,
                )
        return kept

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def has_readiness_check(self) -> bool:
        return getattr(self.model, "is_ready", None) is not None

    def check_ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """The model's ``is_ready()`` as model-ready uses it: shared in-flight call, bounded wait.

        Triton calls it with a 5 s timeout and lets concurrent checks share one call; a check that
        raises, returns a non-bool or runs past the timeout means "not ready". The call runs on its
        own daemon thread, so one that never returns holds that thread and nothing else.
        """
        if not self.has_readiness_check:
            return True
        with self._ready_lock:
            future = self._ready_future
            if future is None or future.done():
                future = concurrent.futures.Future()
                self._ready_future = future
                threading.Thread(target=self._run_is_ready, args=(future,), daemon=True,
                                 name=f"{self.name}-is_ready").start()
        try:
            return bool(future.result(timeout))
        except concurrent.futures.TimeoutError:
            _log.warning("model '%s': is_ready() did not answer within %.0f s", self.model_name, timeout)
        except Exception as exc:
            _log.warning("model '%s': is_ready() failed: %s: %s", self.model_name, type(exc).__name__, exc)
        return False

    def _run_is_ready(self, future: concurrent.futures.Future[bool]) -> None:
        try:
            future.set_result(self.is_ready())
        except BaseException as exc:
            future.set_exception(exc)

    def is_ready(self) -> bool:
        """The model's own ``is_ready()`` (sync or async); True when it has none."""
        check = getattr(self.model, "is_ready", None)
        if check is None:
            return True
        result = check()
        if inspect.iscoroutine(result):
            result = self._async_runner().run(result)
        if not isinstance(result, bool):
            raise pb_utils.TritonModelException("is_ready() must return a boolean value")
        return result

    def finalize(self) -> None:
        """Call the model's ``finalize()``; its exception is logged and re-raised (unload reports it)."""
        try:
            finalize = getattr(self.model, "finalize", None)
            if finalize is not None:
                finalize()
        except Exception:
            _log.exception("model instance '%s' failed to finalize", self.name)
            raise
        finally:
            if self._runner is not None:
                self._runner.close()
                self._runner = None

    def _async_runner(self) -> _AsyncRunner:
        if self._runner is None:
            self._runner = _AsyncRunner(self.name)
        return self._runner
