"""The deadlines of one connection on a clock the test moves (no sockets, no sleeping).

Why: test_timeouts.py proves the deadlines against real clients, but it needs real seconds
and a loaded machine's slack. Here the clock is a number, so each deadline is checked just
before and just after it passes, and the order of Deadlines.check is pinned down.
"""

from __future__ import annotations

from evserve.server.config import Limits
from evserve.server.connection_state import Lifecycle, Phase
from evserve.server.deadlines import Deadlines, Expired
from evserve.server.exchange import Response

# harness_fixture is imported for pytest, which registers it here as the ``h`` fixture.
from tests.server.mock_connection import Harness, MockLoop, harness_fixture, make_flow  # noqa: F401
from tests.wire import get


def test_head_deadline_answers_408_and_closes(h: Harness) -> None:
    h.feed(b"GET /echo HTTP/1.1\r\n")
    h.loop.now += h.limits.head_timeout + 0.1
    h.conn.check_deadlines(h.loop.now)
    assert [r.status for r in h.replies()] == [408]
    assert h.conn.phase is Phase.FAILED and h.conn.lifecycle is Lifecycle.LINGERING


def test_idle_keep_alive_is_closed_silently(h: Harness) -> None:
    h.feed(get("/echo?a"))
    h.replies()
    h.loop.now += h.limits.keepalive_timeout - 0.1
    h.conn.check_deadlines(h.loop.now)
    assert not h.transport.closed
    h.loop.now += 0.2
    h.conn.check_deadlines(h.loop.now)
    assert h.transport.closed and h.transport.buffer == b""


def test_read_deadlines_are_suspended_while_a_reply_is_owed_and_restart_after(h: Harness) -> None:
    h.feed(get("/pause?a"))
    h.loop.now += h.limits.keepalive_timeout * 3
    h.conn.check_deadlines(h.loop.now)
    assert not h.transport.closed
    h.tickets[0].finish(Response(200))
    h.owner.run_deferred()
    # A tick between the reply and the resume: the keep-alive clock restarted with the reply.
    h.conn.check_deadlines(h.loop.now)
    assert not h.transport.closed


def test_send_deadline_aborts_a_client_that_does_not_read(h: Harness) -> None:
    h.conn.pause_writing()
    h.loop.now += h.limits.send_timeout + 0.1
    h.conn.check_deadlines(h.loop.now)
    assert h.transport.aborted


class _GoneSocket:
    def getsockopt(self, *args: int) -> bytes:
        return bytes([8])  # TCP_CLOSE_WAIT


def test_a_peer_gone_while_reading_is_paused_cancels_the_ticket_and_aborts() -> None:
    h = Harness(sock=_GoneSocket())
    h.feed(get("/pause?a"))
    h.conn.check_deadlines(h.loop.now)
    assert not h.transport.aborted, "reading is not paused: EOF would be seen"
    h.conn._flow.pause_reading()
    h.conn.check_deadlines(h.loop.now)
    assert h.tickets[0].cancelled() and h.transport.aborted


def test_deadlines_check_order_and_verdicts() -> None:
    loop = MockLoop()
    limits = Limits()
    deadlines = Deadlines(loop, limits)  # type: ignore[arg-type]
    flow, _, _ = make_flow(loop)
    cycle = Harness().conn._cycle
    now = loop.now + limits.head_timeout + 1

    def check(phase: Phase, *, owed: bool = False) -> Expired | None:
        return deadlines.check(now, phase, cycle, flow, None, paused=False, owed=owed)

    assert check(Phase.HEAD) is Expired.READ
    assert check(Phase.HEAD, owed=True) is None
    assert check(Phase.FAILED) is None
    flow.pause_writing()
    now += limits.send_timeout
    assert check(Phase.HEAD, owed=True) is Expired.SEND
