"""One initialized ``TritonPythonModel`` object, run by its worker thread.

Why in-process: Triton runs each instance in a stub process and copies every tensor through
shared memory; evserve hands the model NumPy views of the request body instead, and the
instance's worker thread calls ``execute`` directly. This module is the adapter between
evserve's decoded requests (:mod:`evserve.protocol.types`) and the python-backend API
(:mod:`evserve.gpu.python_backend.pb_utils`): it applies the config's reshapes, enforces
Triton's contract on what ``execute`` returns, converts responses, and runs ``is_ready``.

Completion contract. Every job of a batch is finished exactly once, whatever the model does:
raises, returns the wrong thing, sends through the response sender, or does nothing (the
guard itself is the job's, :class:`evserve.gpu.execution.contract.ExecRequest`).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import threading
import time
from typing import Any, Protocol

import numpy as np

from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.python_backend import pb_utils
from evserve.gpu.python_backend.async_runner import AsyncRunner
from evserve.gpu.python_backend.bls import running_model
from evserve.gpu.python_backend.reply import Reply
from evserve.protocol.errors import ProtocolError, status_of_code
from evserve.protocol.types import InferRequest, InferResponse, OutputTensor

_log = logging.getLogger(__name__)

# Triton's bound on a model's is_ready() when model-ready asks.
READY_TIMEOUT = 5.0


class ModelConfigLike(Protocol):
    """What this package reads of :class:`evserve.gpu.repository.model_config.ModelConfig`."""

    name: str
    raw: dict[str, Any]
    decoupled: bool
    max_batch_size: int


class _ContractError(Exception):
    """``execute`` broke the python-backend contract (its message is shown as is)."""


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


def host_tensor(tensor: pb_utils.Tensor) -> OutputTensor:
    """A pb_utils tensor as the protocol carries it (host memory; BYTES as bytes): outputs and BLS inputs."""
    array = tensor._array
    if type(array) is not np.ndarray and not isinstance(array, np.ndarray):
        array = array.get()  # CuPy → NumPy: the wire needs host memory
    datatype = tensor._datatype
    if datatype == "BYTES":
        array = _host_bytes_array(array)
    return OutputTensor(tensor._name, datatype, array.shape, array)


class PythonModelInstance:
    """One initialized ``TritonPythonModel`` object; its worker thread calls :meth:`execute`."""

    def __init__(self, model: Any, config: ModelConfigLike, version: int, instance_name: str) -> None:
        self.model = model
        self.name = instance_name
        self.model_name = config.name
        self.version = version
        self.decoupled = bool(config.decoupled)
        instances = sum(int(group.get("count", 1)) for group in config.raw.get("instance_group", ())) or 1
        # Which version runs on the worker thread, for BLS's self-call check (bls.py).
        self._bls_key = (config.name, str(version), instances)
        # Outputs the model may return: its declared ones, and the outputs of its implicit sequence
        # state, which the sequence batcher takes off each response (gpu/execution/sequence.py).
        states = config.raw.get("sequence_batching", {}).get("state", ())
        self.output_names = frozenset(
            [entry["name"] for entry in config.raw.get("output", ())] + [state["output_name"] for state in states]
        )
        # Config `reshape`: the model sees inputs in the reshaped form and returns outputs in it;
        # the client sends and receives `dims` (Triton's rule). The batch dimension is kept.
        self._batched = config.max_batch_size > 0
        self._input_shapes = _reshapes(config.raw.get("input", ()), "reshape")
        self.reshapes_inputs = bool(self._input_shapes)
        self._output_dims = {
            name: tuple(entry["dims"])
            for name, entry in ((e["name"], e) for e in config.raw.get("output", ()))
            if "reshape" in entry
        }
        self._warned_outputs: set[str] = set()
        self._ready_lock = threading.Lock()
        self._ready_future: concurrent.futures.Future[bool] | None = None
        self._runner: AsyncRunner | None = None
        # execute (the worker thread) and is_ready (its own thread) may both need the loop first.
        self._runner_lock = threading.Lock()

    # -- execute ------------------------------------------------------------------------------

    def execute(self, batch: list[ExecRequest]) -> None:
        """Run the model once on ``batch`` and complete every request in it exactly once."""
        if not batch:
            return
        replies = [Reply(self, job) for job in batch]
        requests = [reply.request for reply in replies]
        running_model.key = self._bls_key  # this worker thread runs only this instance
        ready = time.monotonic_ns()
        for job in batch:
            job.input_end = ready  # the pb_utils requests and input tensors are built
        try:
            result = self.model.execute(requests)
            if type(result) is not list and inspect.iscoroutine(result):
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

    def _take_result(self, result: Any, replies: list[Reply]) -> None:
        """Apply Triton's checks to what ``execute`` returned, then answer each request."""
        if not self.decoupled:  # a decoupled model's outputs left with its sends: no output phase
            returned = time.monotonic_ns()
            for reply in replies:
                reply.job.output_start = returned
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

    def _async_done(self, future: concurrent.futures.Future[Any], replies: list[Reply]) -> None:
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

    def _fail_all(self, replies: list[Reply], exc: BaseException) -> None:
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
        error = response._error
        if error is not None:
            return ProtocolError(error.message(), status_of_code(error.code()))
        try:
            outputs = [host_tensor(tensor) for tensor in self._kept_outputs(response, requested)]
            if self._output_dims:
                outputs = [self._client_output(output) for output in outputs]
        except Exception as exc:
            return ProtocolError(
                f"Failed to process the response of model instance '{self.name}': {type(exc).__name__}: {exc}", 500
            )
        parameters = response._parameters
        return InferResponse(
            request.model_name, request.model_version, request.id, outputs, dict(parameters) if parameters else {}
        )

    def _client_output(self, output: OutputTensor) -> OutputTensor:
        if output.name in self._output_dims:
            output.data = self.client_view(output.name, output.data)
            output.shape = tuple(output.data.shape)
        return output

    def _kept_outputs(self, response: pb_utils.InferenceResponse, requested: frozenset[str]) -> list[pb_utils.Tensor]:
        """Triton drops outputs nobody requested; undeclared ones are dropped too, with a warning."""
        tensors = response._output_tensors
        kept = [tensor for tensor in tensors if tensor._name in requested]
        if len(kept) == len(tensors):
            return kept
        for tensor in tensors:
            name = tensor._name
            if name in requested:
                continue
            if name not in self.output_names and name not in self._warned_outputs:
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
            with self._runner_lock:
                runner, self._runner = self._runner, None
            if runner is not None:
                runner.close()

    def _async_runner(self) -> AsyncRunner:
        runner = self._runner
        if runner is None:
            with self._runner_lock:
                if self._runner is None:
                    self._runner = AsyncRunner(self.name)
                runner = self._runner
        return runner
