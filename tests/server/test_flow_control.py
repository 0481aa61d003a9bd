"""FlowControl alone, then the bounds it keeps on a whole connection (no sockets).

Why: the flood tests in test_http_limits.py and test_handoff.py check the bounds through
real sockets, where timing decides how much arrives per read. Here every read is chosen, so
each bound and each idempotent switch is checked exactly.
"""

from __future__ import annotations

from evserve.server.config import Limits
from evserve.server.exchange import Response

# harness_fixture is imported for pytest, which registers it here as the ``h`` fixture.
from tests.server.mock_connection import Harness, MockLoop, harness_fixture, make_flow, queries  # noqa: F401
from tests.wire import get


def test_flow_control_pause_and_resume_are_idempotent() -> None:
    flow, transport, _ = make_flow()
    flow.pause_reading()
    flow.pause_reading()
    assert transport.read_paused and transport.pause_calls == 1
    flow.resume_reading()
    flow.resume_reading()
    assert not transport.read_paused and transport.resume_calls == 1


def test_flow_control_pause_writing_keeps_its_start_and_pauses_reading_once() -> None:
    loop = MockLoop()
    flow, transport, _ = make_flow(loop)
    flow.pause_writing()
    loop.now += 5
    flow.pause_writing()
    assert flow.write_paused and flow.write_paused_since == 1000.0
    assert transport.pause_calls == 1
    flow.resume_reading_if_room()
    assert transport.read_paused, "reading stays paused while writing is"
    flow.resume_writing()
    flow.resume_reading_if_room()
    assert not transport.read_paused


def test_flow_control_keeps_bytes_and_pauses_above_the_high_water_mark() -> None:
    flow, transport, _ = make_flow(high_water=8)
    flow.keep(b"12345678")
    assert not transport.read_paused, "at the mark is not above it"
    flow.keep(b"9")
    assert transport.read_paused
    flow.resume_reading_if_room()
    assert transport.read_paused, "still above the mark"
    assert flow.take_stash() == b"123456789" and not flow.stash
    flow.resume_reading_if_room()
    assert not transport.read_paused


def test_flow_control_schedules_one_resume_however_often_asked() -> None:
    loop = MockLoop()
    flow, _, resumed = make_flow(loop)
    flow.schedule_resume()
    flow.schedule_resume()
    assert len(loop.soon) == 1
    loop.run_soon()
    assert resumed == [1]
    flow.schedule_resume()
    flow.detach()
    loop.run_soon()
    assert resumed == [1], "a resume scheduled before the transport went is cancelled"


def test_pipelined_flood_behind_a_paused_request_is_bounded_then_answered() -> None:
    limits = Limits(max_pipelined_requests=4, read_high_water=1024)
    h = Harness(limits=limits)
    flood = b"".join(get(f"/echo?{index}") for index in range(200))
    h.feed(get("/pause?first") + flood[:3000])
    h.feed(flood[3000:])
    flow = h.conn._flow
    assert len(flow.ready) <= limits.max_pipelined_requests + 4096 // len(get("/echo?0"))
    assert len(flow.stash) > limits.read_high_water and h.transport.read_paused
    assert h.seen == ["first"]
    h.tickets[0].finish(Response(200, [("X-Query", "first")]))
    h.settle()
    assert queries(h.replies()) == ["first", *[str(index) for index in range(200)]]
    assert not h.transport.read_paused and not flow.stash and not flow.ready


def test_write_pause_holds_replies_until_resume(h: Harness) -> None:
    h.conn.pause_writing()
    assert h.transport.read_paused
    h.feed(get("/echo?held"))
    assert h.transport.buffer == b""
    h.conn.resume_writing()
    assert h.transport.buffer == b"", "resume_writing schedules, it does not answer inline"
    h.settle()
    assert queries(h.replies()) == ["held"] and not h.transport.read_paused
