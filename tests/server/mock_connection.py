"""Socket-free stand-ins for an HttpConnection's transport, loop and owner (uvicorn's MockTransport).

Why a plain module: three test modules drive connections through these mocks
(test_connection_state.py, test_flow_control.py, test_deadlines.py). They sit beside, not in,
tests/server/conftest.py, which starts real servers. ``MockTransport`` records what was
written and refuses what a real transport would not do twice. ``MockLoop`` runs
``call_soon``/``call_later`` callbacks only when a test steps it, on a clock the test moves.
``FakeOwner`` queues ``defer`` jobs the way a LoopThread's DeferQueue does. A module that
wants the ``h`` fixture imports ``harness_fixture``, and pytest then registers it there (as
with tests/server/loops.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from evserve.server.config import Limits
from evserve.server.connection import HttpConnection
from evserve.server.connection_state import Answer, Lifecycle, Phase
from evserve.server.exchange import Request, Response, Ticket
from evserve.server.flow_control import FlowControl
from tests.wire import Reply, parse_all


class MockTransport:
    """Records what the connection does to its transport; refuses what a real one would not do."""

    def __init__(self, *, sock: Any = None) -> None:
        self.buffer = bytearray()
        self.read_paused = False
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.pause_calls = 0
        self.resume_calls = 0
        self._sock = sock

    def write(self, data: bytes | memoryview) -> None:
        assert not self.closed, "write after close"
        self.buffer += data

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        for part in parts:
            self.write(part)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        assert not self.read_paused, "pause_reading called twice: flow control is not idempotent"
        self.read_paused = True
        self.pause_calls += 1

    def resume_reading(self) -> None:
        assert self.read_paused, "resume_reading while reading: flow control is not idempotent"
        self.read_paused = False
        self.resume_calls += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sock if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return 0


@dataclass
class MockHandle:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    when: float = 0.0
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class MockLoop:
    """A clock the test moves, and callbacks that run only when the test steps the loop."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.soon: list[MockHandle] = []
        self.timers: list[MockHandle] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> MockHandle:
        handle = MockHandle(fn, args)
        self.soon.append(handle)
        return handle

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> MockHandle:
        handle = MockHandle(fn, args, self.now + delay)
        self.timers.append(handle)
        return handle

    def run_soon(self) -> int:
        """One loop iteration: run the callbacks queued before it started."""
        batch, self.soon = self.soon, []
        for handle in batch:
            if not handle.cancelled:
                handle.fn(*handle.args)
        return len(batch)


class FakeOwner:
    """Stands in for LoopThread: owns the loop, queues defer() jobs as the DeferQueue does."""

    index = 0

    def __init__(self) -> None:
        self.loop = MockLoop()
        self.requests = 0
        self.deferred: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def assert_owner(self) -> None:
        pass

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        self.deferred.append((fn, args))

    def run_deferred(self) -> int:
        batch, self.deferred = self.deferred, []
        for fn, args in batch:
            fn(*args)
        return len(batch)


@dataclass
class Harness:
    """A connection wired to the mocks, with a handler that echoes, or pauses on /pause."""

    limits: Limits = field(default_factory=Limits)
    sock: Any = None
    owner: FakeOwner = field(default_factory=FakeOwner)
    seen: list[str] = field(default_factory=list)
    tickets: list[Ticket] = field(default_factory=list)
    closed_calls: int = 0

    def __post_init__(self) -> None:
        self.conn = HttpConnection(self.owner, self.handle, self.limits, on_close=self._on_close)  # type: ignore[arg-type]
        self.transport = MockTransport(sock=self.sock)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    @property
    def loop(self) -> MockLoop:
        return self.owner.loop

    def handle(self, req: Request) -> Response | None:
        self.seen.append(req.query)
        if req.path == "/pause":
            self.tickets.append(req.pause())
            return None
        return Response(200, [("X-Query", req.query)], [bytes(req.body)])

    def _on_close(self, conn: HttpConnection) -> None:
        self.closed_calls += 1

    def feed(self, data: bytes) -> None:
        self.conn.data_received(data)

    def settle(self) -> None:
        """Run deferred jobs and loop iterations until nothing is left to run."""
        while self.owner.run_deferred() + self.loop.run_soon():
            pass

    def replies(self) -> list[Reply]:
        """The replies written since the last call (each one complete)."""
        data = bytes(self.transport.buffer)
        self.transport.buffer.clear()
        return parse_all(data)

    def lost(self) -> None:
        """What the loop does once a closed transport is gone."""
        self.conn.connection_lost(None)

    @property
    def state(self) -> tuple[Lifecycle, Phase, Answer]:
        return self.conn.lifecycle, self.conn.phase, self.conn.answer


@pytest.fixture(name="h")
def harness_fixture() -> Harness:
    """A fresh connection with default limits, already connected to a MockTransport."""
    return Harness()


def queries(replies: list[Reply]) -> list[str | None]:
    """The X-Query header of each reply: the echo handler's way of naming the request answered."""
    return [reply.header("x-query") for reply in replies]


def make_flow(loop: MockLoop | None = None, **bounds: int) -> tuple[FlowControl, MockTransport, list[int]]:
    """A FlowControl on a MockTransport; the list grows by one each time it resumes its connection."""
    resumed: list[int] = []
    flow = FlowControl(
        loop or MockLoop(),  # type: ignore[arg-type]
        lambda: resumed.append(1),
        high_water=bounds.get("high_water", 8),
        max_ready=bounds.get("max_ready", 2),
    )
    transport = MockTransport()
    flow.attach(transport)  # type: ignore[arg-type]
    return flow, transport, resumed
