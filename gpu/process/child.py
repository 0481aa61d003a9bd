"""The child side of a process instance: ``python -m evserve.gpu.process.child SOCKET_FD ARENA_FD ARENA_BYTES``.

It imports the model with the same python-backend adapter the server uses in-process
(:class:`~evserve.gpu.python_backend.model.PythonModel`), so a model behaves the same in either
isolation. The main thread reads the server's frames and executes batches in order; a client
that leaves is seen through its cancellation flag in the arena (``request.is_cancelled()``), so
no message has to reach a busy child. Responses sent while their batch is open go through the
arena; a response sent later (a decoupled model answering from its own thread) goes inline,
because the server may already have handed the arena to the next batch. The answers a
default-mode batch produces go out in one frame with the count of batches done, and those of a
burst of small pipelined batches together (one write, one wake-up of the server:
:meth:`Child.execute`).

The child exits when the server's end of the socket closes (the kernel closes it when the server
dies in any way), and a watchdog thread exits it within a second of the server's death even
while ``execute`` runs for ever, so a child is never orphaned. (``PR_SET_PDEATHSIG`` would not
do: it fires when the *thread* that spawned the child exits, and load threads come and go.)
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import sys
import threading
import time
import traceback
from typing import Any

from evserve.gpu import host_memory
from evserve.gpu.execution.contract import CANCELLED, ExecRequest
from evserve.gpu.model_loader import describe
from evserve.gpu.process.arena import CANCEL_FLAGS, Arena, Bump
from evserve.gpu.process.bls_link import ChildLink
from evserve.gpu.process.frames import FrameReader, FrameWriter, encode
from evserve.gpu.process.instance_priority import LOADING_NICE
from evserve.gpu.process.tensors import pack_result, unpack_input
from evserve.gpu.python_backend import bls
from evserve.gpu.python_backend.model import PythonModel
from evserve.gpu.python_backend.pb_utils import metrics
from evserve.gpu.repository.model_config import ModelConfig
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, RequestedOutput

_log = logging.getLogger("evserve.child")

# How long a pipelined frame's answers may wait to go out together (see Child.execute). Answers
# sent early let the server encode and write them on another core while the round goes on. With
# no other core to run on (the server and this child pinned to one), an early send buys no
# overlap and costs two switches of process, whose cold caches made a simple request cost ~15 µs
# more (caller and child, rounds of 16): alone, the answers wait for up to FLUSH_ALONE_NS.
FLUSH_AFTER_NS = 200_000
FLUSH_ALONE_NS = 1_000_000
# How often the flusher thread looks for answers held too long behind a slow batch (see _flush_late).
LATE_CHECK_S = 0.02
_FOREVER = 1 << 62


class Child:
    def __init__(self, sock: socket.socket, arena: Arena) -> None:
        self.sock = sock
        self.writer = FrameWriter(sock)
        self.reader = FrameReader(sock)
        self.arena = arena
        self.instance: Any = None
        self.decoupled = False
        # The arena belongs to the open batch; a response outside it goes inline.
        self._arena_lock = threading.Lock()
        self._bump: Bump | None = None
        # Answers of default-mode batches held to go out together, with the count of batches done
        # since the last send (Child.execute); all of it under _arena_lock.
        self._held: list[list[Any]] = []
        self._flush_after_ns = FLUSH_AFTER_NS if _usable_cores() > 1 else max(FLUSH_AFTER_NS, FLUSH_ALONE_NS)
        self._held_since = _FOREVER  # monotonic ns the oldest held answer was made
        self._done = 0
        self._sent_at = 0  # monotonic ns of the last send
        self._holding = False  # whether the main thread's answers are held now (in a default-mode batch)
        self._round_started = threading.Event()  # wakes the flusher; a round is open while _bump is set
        threading.Thread(target=self._flush_late, name="evserve-child-flusher", daemon=True).start()
        self._batch_start = 0  # monotonic ns a pipelined batch began, when it is not its frame's first
        # The model's BLS calls go to the server and their answers come back on the socket. Whoever
        # holds the read token reads the next frame: this thread between batches, or a model thread
        # waiting for a BLS answer (this one, inside execute). A BLS answer goes to its caller; any
        # other frame a waiter reads is left in `_deferred` for serve(), in order.
        self._read_token = threading.Lock()
        self._deferred: collections.deque[dict[str, Any] | None] = collections.deque()
        self.bls = ChildLink(self.writer, arena, self._read_for_waiter)
        bls.install_gateway(self.bls)

    def _read(self) -> dict[str, Any] | None:
        """The next frame (the read token held); None at EOF or on a bad frame, which ends the child."""
        try:
            message = self.reader.read()
        except Exception:
            _log.exception("bad frame from the server")
            message = None
        if message is None:
            self.bls.close()
        return message

    def _next_frame(self) -> dict[str, Any] | None:
        """serve()'s next frame: one a BLS waiter set aside, else one read here (BLS answers handed on)."""
        while True:
            if self._deferred:
                return self._deferred.popleft()
            with self._read_token:
                if self._deferred:
                    continue  # a waiter read it while we waited for the token
                message = self._read()
            if message is None or message["op"] != "bls_response":
                return message
            self.bls.deliver(message)

    def _read_for_waiter(self, wait: float) -> bool:
        """A BLS caller's turn at the socket: read one frame if one comes within ``wait`` seconds.
        False when another thread is reading (that thread hands our answer on)."""
        if not self._read_token.acquire(blocking=False):
            return False
        try:
            readable = self.reader.buffered() or select.select([self.sock], [], [], wait)[0]
            if not readable:
                return True  # our turn, and nothing came: the caller looks at its deadline
            message = self._read()
        finally:
            self._read_token.release()
        if message is not None and message["op"] == "bls_response":
            self.bls.deliver(message)
            return True
        self._deferred.append(message)  # for serve(); None too, which ends it
        return message is not None

    def serve(self) -> int:
        """Take the server's frames in order until it closes the socket or asks to finalize."""
        while True:
            message = self._next_frame()
            if message is None:
                return 0  # the server is gone or gave up on us: nothing is left to answer
            op = message["op"]
            if op == "init":
                self.init(message)
            elif op == "execute":
                self.execute(message)
            elif op == "is_ready":
                self.is_ready(message)
            elif op == "finalize":
                self.finalize()
                return 0

    # -- operations -----------------------------------------------------------------------------

    def init(self, message: dict[str, Any]) -> None:
        try:
            if message["kind"] == "GPU":
                import cupy

                cupy.cuda.Device(message["device_id"]).use()
            model = PythonModel.import_version(message["model_dir"], message["name"], message["version"])
            self.instance = model.create_instance(
                ModelConfig(message["config"]), message["version"], message["kind"], message["device_id"],
                message["repository_dir"], message["instance_name"],
            )
        except BaseException as exc:
            self.writer.send({"op": "init_error", "message": describe(exc), "traceback": traceback.format_exc()})
            return
        finally:
            if message.get("restore_priority") is not None:  # the server lowered us for the load
                _restore_priorities(*message["restore_priority"])
        self.decoupled = self.instance.decoupled
        self.writer.send({"op": "ready", "has_is_ready": self.instance.has_readiness_check})
        frame = self._metrics_frame()
        if frame:  # families made in initialize
            self.writer.send_encoded(frame)

    def execute(self, message: dict[str, Any]) -> None:
        """Run the frame's batches in order (the server pipelines several when requests queue up).

        The answers they produce are held and sent in one frame with the count of batches done:
        after the last batch, or after a batch that ends the flush window (``FLUSH_AFTER_NS``,
        or ``FLUSH_ALONE_NS`` on one core) or more after the last send, so a burst of small
        requests costs the server one wake-up. A batch that runs long cannot hold back the
        answers before it: the flusher thread sends them once the oldest has waited the window
        (:meth:`_flush_late`). A batch after the first whose clients all left by the time its
        turn comes is not run: it is answered as cancelled, as the worker answers one that
        leaves while queued.
        """
        batches = message["batches"]
        last = len(batches) - 1
        with self._arena_lock:
            self._bump = Bump(self.arena, message["inputs_end"])
        self._round_started.set()
        try:
            for index, batch in enumerate(batches):
                # A batch after the first waited behind the ones before it: the server's queue time.
                started = time.monotonic_ns() if index else 0
                jobs = [self._job(request) for request in batch]
                self._batch_start = started
                if index and all(job.cancelled() for job in jobs):
                    for job in jobs:
                        job.finish(ProtocolError(CANCELLED, 400))
                    jobs = []
                self._holding = not self.decoupled  # a decoupled model's answers go out as sent
                try:
                    if jobs:
                        self.instance.execute(jobs)
                finally:
                    with self._arena_lock:
                        self._holding = False
                        self._batch_start = 0
                        self._done += 1
                        if index == last or time.monotonic_ns() - self._sent_at >= self._flush_after_ns:
                            self._flush()
        finally:
            with self._arena_lock:
                self._bump = None
                if self._held or self._done:  # a batch raised past the model (BaseException)
                    self._flush()

    def _flush(self) -> None:
        """Send the held answers and the count of batches done in one frame (``_arena_lock`` held).
        The custom metrics go first: they are current before any of these requests is answered."""
        answers = encode({"op": "answers", "items": self._held, "done": self._done})
        self.writer.send_encoded(self._metrics_frame() + answers)
        self._held = []
        self._done = 0
        self._held_since = _FOREVER
        self._sent_at = time.monotonic_ns()

    def _flush_late(self) -> None:
        """The flusher thread: while a round runs, send held answers whose time is up (the main
        thread is inside a long ``execute``). It looks every ``LATE_CHECK_S``, so an answer waits
        at most about that much longer behind a slow batch. Looking more often is not free under
        the GIL: at every 2 ms, its wake-ups forced the main thread off the core 5,000 times in
        5 s and cost a simple request ~45 µs more; at every 20 ms, nothing measurable."""
        while True:
            self._round_started.wait()
            time.sleep(LATE_CHECK_S)
            with self._arena_lock:
                if self._held and time.monotonic_ns() - self._held_since >= self._flush_after_ns:
                    try:
                        self._flush()
                    except OSError:
                        return  # the server is gone: the main thread sees it too
                if self._bump is None:  # the round is over
                    self._round_started.clear()

    def _job(self, header: list[Any]) -> ExecRequest:
        """The job of one request header (``ProcessInstance._pack_batch`` wrote it)."""
        rid, model_name, model_version, id_, parameters, inputs, outputs, stream = header
        request = InferRequest(
            model_name, model_version, id_, parameters or {}, [unpack_input(t, self.arena) for t in inputs],
            [RequestedOutput(name) for name in outputs] if outputs is not None else None,
        )
        flags, slot = self.arena.view, rid % CANCEL_FLAGS

        def cancelled() -> bool:
            return flags[slot] != 0

        if stream:
            return ExecRequest(request, _unused, cancelled, lambda result, final: self._send(rid, result, final))
        return ExecRequest(request, lambda result: self._send(rid, result, True), cancelled)

    def _metrics_frame(self) -> bytes:
        """The model's custom metrics as a frame (nothing when it has none): sent with every batch's
        "done", so /metrics shows them as of the instance's last batch. A model without custom
        metrics pays one empty registry walk."""
        families = metrics.snapshot()
        return encode({"op": "metrics", "families": families}) if families else b""

    def _send(self, rid: int, result: Any, final: bool) -> None:
        """One answer for ``ProcessInstance._answer``: held for the round's frame, or sent at once."""
        with self._arena_lock:
            answer = [rid, final, self._batch_start, pack_result(result, self._bump)]
            if self._holding:
                if not self._held:
                    self._held_since = time.monotonic_ns()
                self._held.append(answer)
                return
        self.writer.send_encoded(encode({"op": "answers", "items": [answer], "done": 0}))

    def is_ready(self, message: dict[str, Any]) -> None:
        try:
            answer: dict[str, Any] = {"value": bool(self.instance.is_ready())}
        except BaseException as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        self.writer.send({"op": "ready_answer", "seq": message["seq"], **answer})

    def finalize(self) -> None:
        error = None
        try:
            self.instance.finalize()
        except BaseException as exc:
            error = describe(exc)
        self.writer.send({"op": "finalized", "error": error})


def _usable_cores() -> int:
    """CPUs this child may run on: its affinity mask, which it inherits from the server."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _restore_priorities(nice: int, policy: int | None) -> None:
    """After the load: every thread still at ``LOADING_NICE`` (this one, and those the model started
    in ``initialize``, which inherit it) back to the server's own policy and priority
    (``instance_priority.py`` says why). The policy first: leaving SCHED_IDLE is judged at the
    thread's nice value, which is still the loading one."""
    for entry in os.listdir("/proc/self/task"):
        try:
            tid = int(entry)
            if os.getpriority(os.PRIO_PROCESS, tid) == LOADING_NICE:
                if policy is not None:
                    os.sched_setscheduler(tid, policy, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (ValueError, OSError):  # a thread that ended meanwhile
            continue


def _unused(result: Any) -> None:
    raise AssertionError("a streamed job completes through its stream callback")


def _exit_with_server(server_pid: int) -> None:
    """Watchdog thread: once the server is gone (we were re-parented), leave at once."""
    while True:
        time.sleep(1.0)
        if os.getppid() != server_pid:
            os._exit(0)


def main(argv: list[str]) -> int:
    sock_fd, arena_fd, arena_bytes = (int(value) for value in argv[:3])
    host_memory.reuse_large_blocks()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s")
    threading.Thread(target=_exit_with_server, args=(os.getppid(),), name="evserve-child-watchdog",
                     daemon=True).start()
    sock = socket.socket(fileno=sock_fd)
    child = Child(sock, Arena(arena_bytes, arena_fd))
    try:
        return child.serve()
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
