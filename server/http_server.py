"""HTTPServer: the base that owns the listening socket, the loop threads and the connections.

Theory of operation
-------------------
* **Accepting.** One acceptor thread blocks in ``poll()`` on the listening socket and on the
  read end of a socketpair (Triton's ``fds_[2]``/``break_ev_``). Each accepted socket goes to
  the loop thread with the fewest live connections, chosen and counted under one lock, so
  no loop thread ever holds more than one connection above another at the moment of
  assignment (evhtp's first-idle pick is what made Triton pin a client to one thread). The
  socket is handed over with ``defer`` and belongs to that loop thread for life.
* **Limits.** Beyond ``max_connections`` (kept below RLIMIT_NOFILE) an accepted socket gets
  a short 503 and is closed. On EMFILE/ENFILE the acceptor backs off instead of spinning.
* **Deadlines.** Each loop thread runs a tick that calls ``check_deadlines`` on its own
  connections: the timers cost one callback per thread, not one per connection.
* **Stop.** Stop closes the listening socket at once (new connections are refused), tells
  every connection to drain (idle ones close now, busy ones after the reply they owe),
  waits up to the timeout for the live count to reach zero, then aborts what is left and
  joins the threads.

Subclasses give the request handler (``handle``) and the thread count.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from evserve.server.config import Limits
from evserve.server.connection import HttpConnection
from evserve.server.exchange import Request, Response
from evserve.server.loop_thread import LoopThread

log = logging.getLogger("evserve.server")

_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 47\r\n"
    b'Connection: close\r\n\r\n{"error":"Server is at its connection limit"}\r\n'
)
# Spare descriptors for files, pipes and models beyond the sockets.
_FD_RESERVE = 128


class AddressInUse(OSError):
    """The port is taken: the CLI prints one line and exits non-zero."""


@dataclass(frozen=True, slots=True)
class ThreadStats:
    """What the metrics server shows per loop thread."""

    index: int
    live_connections: int
    requests: int


class HTTPServer:
    """Base class: address, port, SO_REUSEPORT, loop threads, live connection counts, Start/Stop."""

    thread_prefix = "evserve-http"

    def __init__(
        self,
        address: str,
        port: int,
        *,
        threads: int,
        limits: Limits,
        reuse_port: bool = False,
    ) -> None:
        self.address = address
        self.port = port
        self.reuse_port = reuse_port
        self.thread_count = threads
        self.limits = limits
        self.loops: list[LoopThread] = []
        # Live connections per loop thread, assigned and released under _conn_lock.
        self._live: list[int] = [0] * threads
        self._conn_lock = threading.Condition()
        self._accepting = False
        self._draining = False
        self._listener: socket.socket | None = None
        self._break_r, self._break_w = socket.socketpair()
        self._acceptor: threading.Thread | None = None
        # Connections of each loop thread; only that thread reads or writes its set.
        self._conns: list[set[HttpConnection]] = [set() for _ in range(threads)]
        self._max_connections = self._connection_cap(limits.max_connections)

    # ------------------------------------------------------------------ subclass interface

    def handle(self, request: Request) -> Response | None:
        raise NotImplementedError

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Bind, start the loop threads, then start accepting."""
        self._listener = self._bind()
        self.port = self._listener.getsockname()[1]
        for index in range(self.thread_count):
            thread = LoopThread(f"{self.thread_prefix}-{index}", index)
            thread.start()
            self.loops.append(thread)
            thread.defer(self._start_tick, index)
        self._accepting = True
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{self.thread_prefix}-accept", daemon=True)
        self._acceptor.start()

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((self.address, self.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AddressInUse(exc.errno, f"{self.address}:{self.port} is already in use") from exc
            raise
        # Triton's listen backlog.
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    @staticmethod
    def _connection_cap(configured: int) -> int:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return configured
        return max(1, min(configured, soft - _FD_RESERVE))

    # ------------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(self._break_r.fileno(), select.POLLIN)
        backoff_ms = -1
        while True:
            events = poller.poll(backoff_ms)
            backoff_ms = -1
            if any(fd == self._break_r.fileno() for fd, _ in events):
                break
            while True:
                try:
                    sock, _addr = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("accept: %s; backing off", os.strerror(exc.errno))
                        backoff_ms = 100
                        break
                    if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                        continue
                    raise
                if not self._accepting:
                    sock.close()  # stop() has begun: refuse, even what was already queued
                    continue
                self._assign(sock)
        listener.close()

    def _assign(self, sock: socket.socket) -> None:
        with self._conn_lock:
            total = sum(self._live)
            if total >= self._max_connections:
                index = -1
            else:
                index = min(range(self.thread_count), key=self._live.__getitem__)
                self._live[index] += 1
        if index < 0:
            self._refuse(sock)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.loops[index].defer(self._adopt, index, sock)
        except RuntimeError:
            self._release(index)
            sock.close()

    @staticmethod
    def _refuse(sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.send(_BUSY_REPLY)
        except OSError:
            pass
        sock.close()

    def _adopt(self, index: int, sock: socket.socket) -> None:
        """On loop thread ``index``: attach the accepted socket to a new connection."""
        thread = self.loops[index]

        def factory() -> HttpConnection:
            conn = HttpConnection(
                thread,
                self.handle,
                self.limits,
                on_close=lambda c: self._on_close(index, c),
            )
            return conn

        async def attach() -> None:
            try:
                _transport, conn = await thread.loop.connect_accepted_socket(factory, sock)
            except Exception:
                # The connection never started, so connection_lost will not release the slot.
                log.exception("attaching an accepted socket failed")
                sock.close()
                self._release(index)
                return
            if conn.closed:
                return  # closed (and released) before the attach returned
            self._conns[index].add(conn)
            if self._draining:
                # Accepted before stop() but attached after the drain order went round.
                conn.begin_drain()

        thread.loop.create_task(attach())

    def _on_close(self, index: int, conn: HttpConnection) -> None:
        self._conns[index].discard(conn)
        self._release(index)

    def _release(self, index: int) -> None:
        with self._conn_lock:
            self._live[index] -= 1
            self._conn_lock.notify_all()

    # ------------------------------------------------------------------ deadlines

    def _start_tick(self, index: int) -> None:
        limits = self.limits
        period = max(0.05, min(1.0, limits.head_timeout / 4, limits.body_timeout / 4, limits.keepalive_timeout / 4))
        loop = self.loops[index].loop

        def tick() -> None:
            now = loop.time()
            for conn in list(self._conns[index]):
                conn.check_deadlines(now)
            loop.call_later(period, tick)

        loop.call_later(period, tick)

    # ------------------------------------------------------------------ observing

    @property
    def accepting(self) -> bool:
        """False from the moment stop() begins: new connections are refused from then on."""
        return self._accepting

    def live_connections(self) -> int:
        with self._conn_lock:
            return sum(self._live)

    def thread_stats(self) -> list[ThreadStats]:
        with self._conn_lock:
            live = list(self._live)
        loops = self.loops
        return [
            ThreadStats(i, live[i], loops[i].requests if i < len(loops) else 0) for i in range(self.thread_count)
        ]

    def on_each_thread(self, fn: Callable[[int], None]) -> None:
        """Run ``fn(index)`` on every loop thread (through defer)."""
        for index, thread in enumerate(self.loops):
            thread.defer(fn, index)

    # ------------------------------------------------------------------ stop

    def stop_accepting(self) -> None:
        """Close the listening socket: connect() now fails at once."""
        if not self._accepting:
            return
        self._accepting = False
        try:
            self._break_w.send(b"\x00")
        except OSError:
            pass
        if self._acceptor is not None:
            self._acceptor.join()

    def stop(self, timeout: float) -> None:
        """Refuse new connections, drain for up to ``timeout`` seconds, close the rest, join."""
        if self._draining:
            return
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        self._draining = True
        self.on_each_thread(self._drain_thread)
        with self._conn_lock:
            while sum(self._live) > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._conn_lock.wait(min(left, 0.05))
        self.on_each_thread(self._abort_thread)
        with self._conn_lock:
            self._conn_lock.wait_for(lambda: sum(self._live) == 0, timeout=1.0)
        for thread in self.loops:
            thread.stop(timeout=5.0)
        self._break_r.close()
        self._break_w.close()

    def _drain_thread(self, index: int) -> None:
        for conn in list(self._conns[index]):
            conn.begin_drain()

    def _abort_thread(self, index: int) -> None:
        for conn in list(self._conns[index]):
            conn.abort()
