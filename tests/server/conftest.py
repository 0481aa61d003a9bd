"""Fixtures for the HTTP layer tests: an in-process server with small handlers on named paths.

Why these handlers: each one exercises one side of the hand-off contract that the real API
server depends on. ``/echo`` answers inline on the loop thread (it echoes the body; ``pad=N``
adds N bytes); ``/slow`` pauses and lets a thread-pool worker call ``ticket.finish`` (the proof
that a reply made on another thread is written by the owning loop thread); ``/slow-then-tick``
also runs a deadline check right after that reply; ``/stream`` drives
``start_stream``/``send``/``end`` from a worker; ``/cancel-probe`` records whether
``ticket.cancelled()`` turns true once the client has gone; ``/never`` pauses forever (for
stop's timeout); ``/whoami`` answers with the loop thread's index.

Ownership is checked two ways for every test that starts a server: ``DEBUG_OWNERSHIP`` is on, and every transport
a connection receives is wrapped in a spy that records a violation whenever it is used from a
thread other than the connection's loop thread. Errors logged by the server or by the event
loops also fail the test that caused them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest

import evserve.server.loop_thread as loop_thread
from evserve.server.config import Limits
from evserve.server.connection import HttpConnection
from evserve.server.exchange import Request, Response, Ticket
from evserve.server.http_server import HTTPServer
from evserve.server.loop_thread import LoopThread
from tests.wire import Client

# Requests that one 4 KiB parser slice can complete at once, beyond max_pipelined_requests: the
# queue is checked between slices, so this is the most it may overshoot ("GET / HTTP/1.0" + CRLFs).
PARSE_AHEAD_SLACK = 4096 // len(b"GET / HTTP/1.0\r\n\r\n")
# What one read of the event loop may add on top of a high-water mark (uvloop reads up to 256 KiB).
ONE_READ = 256 * 1024
# Transport methods that must only ever be called on the owning loop thread.
_OWNED_METHODS = ("write", "writelines", "close", "abort", "pause_reading", "resume_reading")


@dataclass
class OwnershipLog:
    """What the transport spies saw during one test."""

    violations: list[str] = field(default_factory=list)
    writes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, owner: LoopThread, method: str) -> None:
        with self.lock:
            if method in ("write", "writelines"):
                self.writes += 1
            if threading.get_ident() != owner.ident:
                self.violations.append(f"transport.{method} on {threading.current_thread().name}, owner {owner.name}")


OWNERSHIP = OwnershipLog()


class TransportSpy:
    """Stands in for a connection's transport and checks the calling thread of every owned method."""

    def __init__(self, transport: Any, owner: LoopThread) -> None:
        self._transport = transport
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._transport, name)
        if name not in _OWNED_METHODS:
            return attr

        def checked(*args: Any) -> Any:
            OWNERSHIP.record(self._owner, name)
            return attr(*args)

        return checked


@dataclass
class Probe:
    """What /cancel-probe saw: set once the worker has watched the ticket."""

    ticket: Ticket
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class ProbeServer(HTTPServer):
    """An HTTPServer whose handlers are the probes above; one thread pool stands in for the workers."""

    def __init__(self, *, threads: int, limits: Limits, workers: int = 16) -> None:
        super().__init__("127.0.0.1", 0, threads=threads, limits=limits)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="probe-worker")
        self.quit = threading.Event()
        # Paths in the order handle() saw them (any thread may read).
        self.arrivals: queue.Queue[str] = queue.Queue()
        self.handler_violations: list[str] = []
        self.probes: dict[str, Probe] = {}
        self.held: list[Ticket] = []
        self.stopped = False
        self.routes: dict[str, Callable[[Request, dict[str, str]], Response | None]] = {
            "/echo": self._echo,
            "/hello": self._hello,
            "/whoami": self._whoami,
            "/slow": self._slow,
            "/slow-then-tick": self._slow_then_tick,
            "/stream": self._stream,
            "/cancel-probe": self._cancel_probe,
            "/never": self._never,
        }

    # ---------------------------------------------------------------- handlers (loop thread)

    def handle(self, request: Request) -> Response | None:
        if threading.get_ident() != request.owner.ident:
            self.handler_violations.append(f"handle({request.path}) on {threading.current_thread().name}")
        route = self.routes.get(request.path)
        if route is None:
            response = Response.error(404, "Not Found")
        else:
            response = route(request, {key: values[-1] for key, values in parse_qs(request.query).items()})
        # Announced once the route has set up its state (probes, held tickets).
        self.arrivals.put(request.path + ("?" + request.query if request.query else ""))
        return response

    @staticmethod
    def _echo(request: Request, query: dict[str, str]) -> Response:
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("X-Method", request.method),
            ("X-Query", request.query),
            ("X-Version", request.version),
            ("X-Header-Count", str(len(request.headers))),
            ("X-Thread", str(request.owner.index)),
        ]
        # pad=N adds N bytes to the reply, to fill the socket buffers of a client that does not read.
        return Response(200, headers, [bytes(request.body), b"p" * int(query.get("pad", "0"))])

    @staticmethod
    def _hello(request: Request, query: dict[str, str]) -> Response:
        return Response(200, [("Content-Type", "text/plain")], [b"hello, ", b"world"])

    @staticmethod
    def _whoami(request: Request, query: dict[str, str]) -> Response:
        return Response(200, [("Content-Type", "text/plain")], [str(request.owner.index).encode()])

    def _slow(self, request: Request, query: dict[str, str]) -> None:
        ticket = request.pause()
        delay = int(query.get("ms", "100")) / 1000
        body = b"slow " + request.query.encode() + b" " + bytes(request.body)

        def work() -> None:
            self.quit.wait(delay)
            ticket.finish(Response(200, [("Content-Type", "text/plain"), ("X-Query", request.query)], [body]))

        self.pool.submit(work)
        return None

    def _slow_then_tick(self, request: Request, query: dict[str, str]) -> None:
        """Like /slow, but a deadline check runs right after the reply, before the connection resumes.

        The loop thread's tick can land there in production; here it always does (deferred jobs run
        in order in one pass, the resume is a later ``call_soon``).
        """
        ticket = request.pause()
        owner = request.owner
        delay = int(query.get("ms", "100")) / 1000

        def check_now() -> None:
            now = owner.loop.time()
            for conn in list(self._conns[owner.index]):
                conn.check_deadlines(now)

        def work() -> None:
            self.quit.wait(delay)
            ticket.finish(Response(200, [("Content-Type", "text/plain")], [b"slow then tick"]))
            owner.defer(check_now)

        self.pool.submit(work)
        return None

    def _stream(self, request: Request, query: dict[str, str]) -> None:
        ticket = request.pause()
        parts = int(query.get("n", "4"))
        delay = int(query.get("ms", "10")) / 1000

        def work() -> None:
            ticket.start_stream(200, [("Content-Type", "text/plain"), ("X-Query", request.query)])
            for index in range(parts):
                self.quit.wait(delay)
                ticket.send(b"part %d\n" % index)
                ticket.send(b"")  # an empty send must not end the stream
            ticket.end()

        self.pool.submit(work)
        return None

    def _cancel_probe(self, request: Request, query: dict[str, str]) -> None:
        probe = Probe(request.pause())
        self.probes[query.get("id", "")] = probe

        def work() -> None:
            deadline = time.monotonic() + float(query.get("wait", "5"))
            while not probe.ticket.cancelled() and time.monotonic() < deadline and not self.quit.is_set():
                self.quit.wait(0.01)
            probe.cancelled = probe.ticket.cancelled()
            # The reply of a cancelled ticket must be dropped quietly.
            probe.ticket.finish(Response(200, [], [b"too late"]))
            probe.done.set()

        self.pool.submit(work)
        return None

    def _never(self, request: Request, query: dict[str, str]) -> None:
        self.held.append(request.pause())
        return None

    # ---------------------------------------------------------------- test helpers (any thread)

    def wait_arrivals(self, count: int, timeout: float = 5.0) -> list[str]:
        """Block until ``count`` more requests have reached handle(); return their paths."""
        deadline = time.monotonic() + timeout
        return [self.arrivals.get(timeout=max(0.01, deadline - time.monotonic())) for _ in range(count)]

    def connections(self) -> list[HttpConnection]:
        """The live connections, read on their own loop threads."""
        found: list[HttpConnection] = []
        for index, thread in enumerate(self.loops):
            found += thread.run_sync(lambda i=index: list(self._conns[i]), timeout=5)
        return found

    def stop(self, timeout: float) -> None:
        self.stopped = True
        super().stop(timeout)

    def shutdown(self) -> None:
        self.quit.set()
        if not self.stopped:
            self.stop(timeout=3.0)
        self.pool.shutdown(wait=True, cancel_futures=True)


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def _ownership_checks() -> Iterator[None]:
    """DEBUG_OWNERSHIP on, and a spy around every transport, for every module that starts a server.

    Module-scoped and pulled in by ``make_server`` rather than autouse, so the other tests in this
    directory (defer, loop thread) see the flag and the class as they are.
    """
    saved_flag = loop_thread.DEBUG_OWNERSHIP
    original = HttpConnection.connection_made

    def connection_made(self: HttpConnection, transport: Any) -> None:
        original(self, TransportSpy(transport, self.owner))

    loop_thread.DEBUG_OWNERSHIP = True
    HttpConnection.connection_made = connection_made  # type: ignore[method-assign]
    try:
        yield
    finally:
        HttpConnection.connection_made = original  # type: ignore[method-assign]
        loop_thread.DEBUG_OWNERSHIP = saved_flag


@pytest.fixture
def _clean_run(request: pytest.FixtureRequest, _ownership_checks: None) -> Iterator[None]:
    """Fail the test on an ownership violation or on an error logged by the server or a loop.

    A test marked xfail (a known server bug) already fails in its call; its teardown is not judged.
    """
    handler = _ErrorLog()
    loggers = [logging.getLogger(name) for name in ("evserve", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    OWNERSHIP.violations.clear()
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    if request.node.get_closest_marker("xfail") is None:
        assert OWNERSHIP.violations == []
        assert [record.getMessage() for record in handler.records] == []


ServerFactory = Callable[..., ProbeServer]


@pytest.fixture
def make_server(_clean_run: None) -> Iterator[ServerFactory]:
    """Start ProbeServers with given thread counts and limits; all are stopped after the test."""
    servers: list[ProbeServer] = []

    def factory(threads: int = 2, limits: Limits | None = None) -> ProbeServer:
        server = ProbeServer(threads=threads, limits=limits or Limits())
        server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.shutdown()
    for server in servers:
        assert server.handler_violations == []


@pytest.fixture
def server(make_server: ServerFactory) -> ProbeServer:
    return make_server()


@pytest.fixture(params=[1, 4], ids=lambda n: f"threads={n}")
def any_server(request: pytest.FixtureRequest, make_server: ServerFactory) -> ProbeServer:
    """The same test against one loop thread and several."""
    return make_server(threads=request.param)


@pytest.fixture
def connect(make_server: ServerFactory) -> Iterator[Callable[..., Client]]:
    """Open clients that are closed before the servers stop."""
    clients: list[Client] = []

    def opener(server: ProbeServer, timeout: float = 5.0) -> Client:
        client = Client(server.port, timeout=timeout)
        clients.append(client)
        return client

    yield opener
    for client in clients:
        client.close()
