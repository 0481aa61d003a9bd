"""BLS from a process-isolated instance: the child's ``exec()`` runs on the server, over the instance's socket.

A child has no model manager, so its BLS requests travel to the server as frames, and the server
runs them exactly as it runs an in-process model's (:class:`evserve.gpu.python_backend.bls.BlsGateway`:
the same lookup, checks, queues, statistics and self-call refusal). Answers travel back as frames,
each response as it comes (decoupled callees stream). Tensors go inline in the frames (msgpack
bytes, one copy each way): the instance's arena belongs to the open batch and cannot carry them.

The frames:

* child → server ``{"op": "bls", "call", "target", "inputs", "decoupled"}``; ``{"op": "bls_cancel",
  "call"}`` when the model stopped waiting (its timeout): the callee's job then sees itself cancelled.
* server → child ``{"op": "bls_response", "call", "final", "result"}``.

In the child the socket has no reader thread of its own (a hand-off per batch would cost every
request): a caller waiting for its answer takes turns at reading the socket with the child's main
loop (:meth:`evserve.gpu.process.child.Child._read_for_waiter`), and whoever reads a
``bls_response`` hands it to its call (:meth:`ChildLink.deliver`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from evserve.gpu.process.arena import Arena
from evserve.gpu.process.frames import FrameWriter
from evserve.gpu.process.tensors import pack, pack_result, unpack_input, unpack_result
from evserve.gpu.python_backend import bls, pb_utils
from evserve.protocol.errors import ProtocolError

SERVER_GONE = "BLS request failed: the server closed this model instance's connection"


# While another thread reads the socket, how long a caller waits on its queue before it looks again.
_TURN = 0.05


class _RemoteCall(bls.Call):
    """A call whose callee runs on the server; abandoning it tells the server."""

    __slots__ = ("link", "number")

    def __init__(self, link: ChildLink, number: int) -> None:
        super().__init__()
        self.link = link
        self.number = number

    def next_answer(self, timeout: float) -> tuple[Any, bool]:
        """The next answer. When no other thread is reading the socket, this one reads frames (for
        at most a slice at a time); otherwise the reader hands the answer on, and the wait on the
        queue ends as it arrives."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.answers.get_nowait()
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise queue.Empty
            if self.link.read_turn(min(left, _TURN)):
                continue
            try:
                return self.answers.get(timeout=min(left, _TURN))
            except queue.Empty:
                continue

    def abandon(self) -> None:
        super().abandon()
        self.link.cancel(self.number)


class ChildLink:
    """The child's BLS gateway: sends requests to the server and routes its answers to the callers."""

    def __init__(self, writer: FrameWriter, arena: Arena, read_turn: Callable[[float], bool]) -> None:
        self._writer = writer
        self._arena = arena
        # Read a frame off the socket, waiting at most the given seconds for one; False when
        # another thread is reading (it hands our answers on).
        self.read_turn = read_turn
        self._numbers = itertools.count(1)
        self._calls: dict[int, _RemoteCall] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, request: pb_utils.InferenceRequest, decoupled: bool) -> bls.Call | pb_utils.InferenceResponse:
        from evserve.gpu.python_backend.instance import host_tensor

        inputs = []
        for tensor in request._inputs:
            host = host_tensor(tensor)
            inputs.append(pack(host.name, host.datatype, tuple(int(d) for d in host.shape), host.data, None))
        call = _RemoteCall(self, next(self._numbers))
        with self._lock:
            if self._closed:
                return pb_utils.InferenceResponse(error=pb_utils.TritonError(SERVER_GONE))
            self._calls[call.number] = call
        target = {
            "model_name": request._model_name, "model_version": request._model_version,
            "output_names": sorted(request._requested_output_names), "request_id": request._request_id,
            "parameters": bls.request_parameters(request),
        }
        try:
            self._writer.send({"op": "bls", "call": call.number, "target": target, "inputs": inputs,
                               "decoupled": decoupled})
        except OSError:
            with self._lock:
                self._calls.pop(call.number, None)
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(SERVER_GONE))
        return call

    def deliver(self, message: dict[str, Any]) -> None:
        """A ``bls_response`` frame (the reader thread): hand it to the waiting call."""
        final = bool(message["final"])
        with self._lock:
            call = self._calls.pop(message["call"], None) if final else self._calls.get(message["call"])
        if call is not None:
            call.answers.put((unpack_result(message["result"], self._arena), final))

    def cancel(self, number: int) -> None:
        with self._lock:
            known = self._calls.pop(number, None) is not None
        if known:
            try:
                self._writer.send({"op": "bls_cancel", "call": number})
            except OSError:
                pass  # the server is gone; nothing runs the callee any more

    def close(self) -> None:
        """The server's end closed: every waiting call ends with an error."""
        with self._lock:
            self._closed = True
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            call.answers.put((ProtocolError(SERVER_GONE, 500), True))


class ServerRelay:
    """The server's side of one process instance's BLS calls: runs them, streams their answers back."""

    def __init__(self, caller: tuple[str, str, int]) -> None:
        self.caller = caller
        self._active: set[int] = set()
        self._abandoned: set[int] = set()
        self._lock = threading.Lock()

    def call(self, writer: FrameWriter, arena: Arena, message: dict[str, Any]) -> None:
        number = message["call"]

        def reply(result: Any, final: bool) -> None:
            if final:
                with self._lock:
                    self._active.discard(number)
                    self._abandoned.discard(number)
            try:
                writer.send({"op": "bls_response", "call": number, "final": final,
                             "result": pack_result(result, None)})
            except OSError:
                pass  # the child is gone; its instance fails what it held

        def cancelled() -> bool:
            return number in self._abandoned

        with self._lock:
            self._active.add(number)
        gate = bls.server_gateway()
        if gate is None:
            reply(ProtocolError("BLS request failed: the server is stopping", 503), True)
            return
        target = message["target"]
        inputs = [unpack_input(t, arena) for t in message["inputs"]]
        decoupled = bool(message["decoupled"])
        error = gate.submit_job(
            bls.BlsTarget(target["model_name"], target["model_version"], list(target["output_names"]),
                          dict(target["parameters"]), target["request_id"]),
            inputs, decoupled, self.caller, lambda result: reply(result, True), reply if decoupled else None,
            cancelled)
        if error is not None:
            reply(ProtocolError(error, 400), True)

    def cancel(self, message: dict[str, Any]) -> None:
        with self._lock:
            if message["call"] in self._active:  # not answered yet: its job will look
                self._abandoned.add(message["call"])
