"""HttpConnection's state machine without sockets (uvicorn's tests/protocols/test_http.py style).

Why without sockets: the black-box tests (test_http_protocol.py, test_smuggling.py, ...) show
what a client sees, but they cannot tell which state the connection went through, or make a
move that no client can cause. Here a test feeds raw request bytes to ``data_received``,
steps the mock loop (mock_connection.py), and asserts on the bytes written and on the three
state enums of connection_state.py.
"""

from __future__ import annotations

import enum
import itertools
import logging
from typing import Any

import pytest

from evserve.server.config import Limits
from evserve.server.connection_state import (
    ANSWER_MOVES,
    LIFECYCLE_MOVES,
    PHASE_MOVES,
    Answer,
    IllegalTransition,
    Lifecycle,
    Phase,
)
from evserve.server.exchange import Response, Ticket

# harness_fixture is imported for pytest, which registers it here as the ``h`` fixture.
from tests.server.mock_connection import Harness, harness_fixture, queries  # noqa: F401
from tests.wire import chunked, get, parse_reply, request

# ---------------------------------------------------------------------------- the tables


TABLES: list[tuple[str, dict[Any, frozenset[Any]], type[enum.IntEnum]]] = [
    ("lifecycle", LIFECYCLE_MOVES, Lifecycle),
    ("phase", PHASE_MOVES, Phase),
    ("answer", ANSWER_MOVES, Answer),
]


@pytest.mark.parametrize(("name", "table", "states"), TABLES, ids=[t[0] for t in TABLES])
def test_every_state_has_a_row_and_every_move_ends_in_a_state(
    name: str, table: dict[Any, frozenset[Any]], states: type[enum.IntEnum]
) -> None:
    assert set(table) == set(states)
    for targets in table.values():
        assert targets <= set(states)


def test_lifecycle_only_moves_forward() -> None:
    """connection.py tests ``lifecycle >= CLOSING`` for 'a close has begun': that needs this order."""
    for old, targets in LIFECYCLE_MOVES.items():
        assert all(new > old for new in targets), old


def test_closed_and_failed_are_terminal_and_failed_is_reachable_from_every_live_phase() -> None:
    assert LIFECYCLE_MOVES[Lifecycle.CLOSED] == frozenset()
    assert PHASE_MOVES[Phase.FAILED] == frozenset()
    assert all(Phase.FAILED in PHASE_MOVES[phase] for phase in (Phase.HEAD, Phase.BODY, Phase.IDLE))
    # Every lifecycle state can end in CLOSED: connection_lost may come at any time.
    assert all(Lifecycle.CLOSED in LIFECYCLE_MOVES[s] for s in Lifecycle if s is not Lifecycle.CLOSED)


def _all_moves() -> list[Any]:
    cases = []
    for name, table, states in TABLES:
        for old, new in itertools.product(states, states):
            legal = new in table[old]
            case_id = f"{name}-{old.name}-{new.name}-{'ok' if legal else 'raises'}"
            cases.append(pytest.param(name, old, new, legal, id=case_id))
    return cases


@pytest.mark.parametrize(("name", "old", "new", "legal"), _all_moves())
def test_each_setter_allows_exactly_the_moves_in_its_table(
    h: Harness, name: str, old: Any, new: Any, legal: bool
) -> None:
    setattr(h.conn, f"_{name}", old)  # put the connection in ``old`` directly
    setter = getattr(h.conn, f"_set_{name}")
    if legal:
        setter(new)
        assert getattr(h.conn, name) is new
    else:
        with pytest.raises(IllegalTransition, match=f"from {old.name} to {new.name}"):
            setter(new)
        assert getattr(h.conn, name) is old


def test_a_second_connection_lost_is_an_illegal_move(h: Harness) -> None:
    h.lost()
    with pytest.raises(IllegalTransition):
        h.lost()


# ---------------------------------------------------------------------------- keep-alive and closing


def test_new_connection_waits_for_a_head(h: Harness) -> None:
    assert h.state == (Lifecycle.OPEN, Phase.HEAD, Answer.IDLE)
    assert not h.conn.busy and not h.conn.closed


def test_keep_alive_requests_are_answered_and_the_connection_stays(h: Harness) -> None:
    for index in range(3):
        h.feed(get(f"/echo?{index}"))
        (reply,) = h.replies()
        assert (reply.status, reply.header("x-query"), reply.closes) == (200, str(index), False)
        assert h.state == (Lifecycle.OPEN, Phase.IDLE, Answer.IDLE)
    assert not h.transport.closed and h.conn._served == 3


def test_a_head_in_pieces_moves_idle_to_head_then_back(h: Harness) -> None:
    h.feed(get("/echo?first"))
    h.replies()
    data = get("/echo?second")
    h.feed(data[:5])
    assert h.conn.phase is Phase.HEAD and h.conn.busy
    h.feed(data[5:])
    assert queries(h.replies()) == ["second"]
    assert h.conn.phase is Phase.IDLE and not h.conn.busy


def test_body_phase_lasts_until_the_body_is_complete(h: Harness) -> None:
    data = request("POST", "/echo?post", body=b"hello world")
    h.feed(data[:-4])
    assert h.state == (Lifecycle.OPEN, Phase.BODY, Answer.IDLE)
    h.feed(data[-4:])
    (reply,) = h.replies()
    assert reply.body == b"hello world"
    assert h.conn.phase is Phase.IDLE


def test_chunked_body_is_reassembled(h: Harness) -> None:
    h.feed(request("POST", "/echo?c", headers=(("Transfer-Encoding", "chunked"),)) + chunked(b"ab", b"cde"))
    assert [r.body for r in h.replies()] == [b"abcde"]


def test_connection_close_is_the_last_reply(h: Harness) -> None:
    h.feed(get("/echo?last", ("Connection", "close")))
    (reply,) = h.replies()
    assert reply.closes
    assert h.conn.lifecycle is Lifecycle.CLOSING and h.transport.closed
    h.lost()
    assert h.conn.closed and h.closed_calls == 1


def test_http10_closes_unless_keep_alive_is_asked(h: Harness) -> None:
    h.feed(request("GET", "/echo?kept", version="1.0", headers=(("Connection", "keep-alive"),)))
    (reply,) = h.replies()
    assert reply.header("connection") == "keep-alive" and not h.transport.closed
    h.feed(request("GET", "/echo?plain", version="1.0"))
    (reply,) = h.replies()
    assert reply.closes and h.transport.closed


def test_the_last_request_allowed_says_close() -> None:
    h = Harness(limits=Limits(max_requests_per_connection=2))
    h.feed(get("/echo?1") + get("/echo?2") + get("/echo?3"))
    replies = h.replies()
    assert queries(replies) == ["1", "2"] and [r.closes for r in replies] == [False, True]
    # The third request was unread input: lingering close, not an RST.
    assert h.conn.lifecycle is Lifecycle.LINGERING and h.transport.eof_written and not h.transport.closed


# ---------------------------------------------------------------------------- pipelining and pause


def test_pipelined_requests_are_answered_in_order_behind_a_paused_one(h: Harness) -> None:
    h.feed(get("/pause?0") + get("/echo?1") + get("/echo?2"))
    assert h.seen == ["0"], "nothing behind a paused request reaches a handler"
    assert h.state == (Lifecycle.OPEN, Phase.IDLE, Answer.PAUSED)
    assert len(h.conn._flow.ready) == 2 and h.transport.buffer == b""
    h.tickets[0].finish(Response(200, [("X-Query", "0")], [b"late"]))
    assert h.transport.buffer == b"", "the reply is written on the owning loop, through defer"
    h.owner.run_deferred()
    assert queries(h.replies()) == ["0"]
    assert h.seen == ["0"], "the next request is taken up on a later iteration, not inline"
    assert h.conn.answer is Answer.IDLE and len(h.loop.soon) == 1
    h.loop.run_soon()
    assert queries(h.replies()) == ["1", "2"] and h.seen == ["0", "1", "2"]


def test_a_second_finish_is_dropped_by_identity_alone(h: Harness) -> None:
    h.feed(get("/pause?a"))
    ticket = h.tickets[0]
    ticket.finish(Response(200, [("X-Query", "first")]))
    ticket.finish(Response(200, [("X-Query", "second")]))
    h.settle()
    assert queries(h.replies()) == ["first"]
    assert not hasattr(ticket, "_finished") and "_finished" not in Ticket.__slots__


def test_only_the_request_being_answered_can_be_paused_and_only_once(h: Harness) -> None:
    h.feed(get("/pause?a"))
    with pytest.raises(RuntimeError, match="only the request being answered"):
        h.conn._pause(h.conn._current)  # type: ignore[arg-type]
    assert h.conn.answer is Answer.PAUSED


def test_half_close_while_paused_closes_and_cancels_the_ticket(h: Harness) -> None:
    h.feed(get("/pause?a"))
    ticket = h.tickets[0]
    assert h.conn.eof_received() is False  # False: the transport closes itself
    assert not ticket.cancelled()
    h.lost()
    assert ticket.cancelled() and h.conn.closed
    ticket.finish(Response(200))
    h.settle()
    assert h.transport.buffer == b"", "the reply of a cancelled ticket is dropped"


def test_half_close_with_nothing_owed_closes(h: Harness) -> None:
    h.feed(get("/echo?a"))
    h.replies()
    assert h.conn.eof_received() is False


def test_half_close_with_a_reply_queued_drains_it_then_closes(h: Harness) -> None:
    h.conn.pause_writing()
    h.feed(get("/echo?queued"))
    assert h.transport.buffer == b"" and h.conn.busy, "nothing is answered while writing is paused"
    assert h.conn.eof_received() is True
    assert h.conn.lifecycle is Lifecycle.DRAINING
    h.conn.resume_writing()
    h.settle()
    (reply,) = h.replies()
    assert reply.header("x-query") == "queued" and reply.closes
    assert h.conn.lifecycle is Lifecycle.CLOSING and h.transport.closed


def test_ticket_cancel_is_public_and_idempotent(h: Harness) -> None:
    h.feed(get("/pause?a"))
    ticket = h.tickets[0]
    ticket.cancel()
    ticket.cancel()
    assert ticket.cancelled()


# ---------------------------------------------------------------------------- a failed parser


def test_garbage_is_answered_400_then_closed_lingering(h: Harness) -> None:
    h.feed(b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    (reply,) = h.replies()
    assert reply.status == 400 and reply.closes
    assert h.state == (Lifecycle.LINGERING, Phase.FAILED, Answer.IDLE)
    assert h.transport.eof_written and not h.transport.read_paused, "lingering reads and discards"
    (timer,) = h.loop.timers
    timer.fn(*timer.args)
    assert h.transport.closed


def test_after_a_parse_error_the_requests_before_it_are_answered_then_the_error(h: Harness) -> None:
    """Requests parsed before the error are answered in order (keep-alive), then the 400, which
    alone says Connection: close; nothing after the error is parsed (nginx does the same)."""
    bad = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n"
    h.feed(get("/echo?good") + bad + get("/echo?smuggled"))
    replies = h.replies()
    assert [r.status for r in replies] == [200, 400]
    assert queries(replies)[0] == "good" and not replies[0].closes and replies[1].closes
    assert h.seen == ["good"]
    assert h.conn.phase is Phase.FAILED and h.conn.lifecycle is Lifecycle.LINGERING


def test_a_parse_error_behind_a_paused_request_is_answered_after_its_reply(h: Harness) -> None:
    h.feed(get("/pause?slow") + b"GET /a b HTTP/1.1\r\n\r\n")
    assert h.state == (Lifecycle.OPEN, Phase.FAILED, Answer.PAUSED)
    assert h.transport.read_paused, "nothing more is read once the parser has failed"
    h.feed(get("/echo?ignored"))  # arrives anyway (already in flight): not parsed
    h.tickets[0].finish(Response(200, [("X-Query", "slow")]))
    h.settle()
    replies = h.replies()
    assert [r.status for r in replies] == [200, 400]
    assert queries(replies)[0] == "slow" and not replies[0].closes and replies[1].closes
    assert h.seen == ["slow"] and h.conn.lifecycle is Lifecycle.LINGERING


def test_upgrade_is_answered_then_closed(h: Harness) -> None:
    h.feed(get("/echo?up", ("Connection", "Upgrade"), ("Upgrade", "websocket")) + b"\x81\x05hello")
    replies = h.replies()
    assert queries(replies) == ["up"] and replies[0].closes and replies[0].status == 200
    assert h.conn.phase is Phase.FAILED and h.conn.lifecycle >= Lifecycle.CLOSING


def test_limit_errors_are_answered_with_their_status() -> None:
    h = Harness(limits=Limits(max_request_line=64, max_input_size=10))
    h.feed(get("/" + "x" * 100))
    assert [r.status for r in h.replies()] == [414]
    h = Harness(limits=Limits(max_request_line=64, max_input_size=10))
    h.feed(request("POST", "/echo", body=b"x" * 11))
    assert [r.status for r in h.replies()] == [413]


# ---------------------------------------------------------------------------- draining (server stop)


def test_begin_drain_closes_an_idle_connection_at_once(h: Harness) -> None:
    h.conn.begin_drain()
    assert h.conn.lifecycle is Lifecycle.CLOSING and h.transport.closed


def test_begin_drain_while_paused_makes_the_owed_reply_the_last(h: Harness) -> None:
    h.feed(get("/pause?owed"))
    h.conn.begin_drain()
    assert h.state == (Lifecycle.DRAINING, Phase.IDLE, Answer.PAUSED) and not h.transport.closed
    h.conn.begin_drain()  # a second stop order changes nothing
    assert h.conn.lifecycle is Lifecycle.DRAINING
    h.tickets[0].finish(Response(200, [("X-Query", "owed")]))
    h.settle()
    (reply,) = h.replies()
    assert reply.header("x-query") == "owed" and reply.closes and h.transport.closed


def test_begin_drain_mid_head_answers_that_request_then_closes(h: Harness) -> None:
    data = get("/echo?half")
    h.feed(data[:10])
    h.conn.begin_drain()
    assert h.conn.lifecycle is Lifecycle.DRAINING and not h.transport.closed
    h.feed(data[10:])
    (reply,) = h.replies()
    assert reply.header("x-query") == "half" and reply.closes and h.transport.closed


def test_draining_waits_for_a_request_that_arrives_in_several_reads(h: Harness) -> None:
    """A stop that lands mid-head answers that request however many reads the rest takes (the
    head deadline and the stop's own deadline still bound the wait)."""
    data = get("/echo?half")
    h.feed(data[:10])
    h.conn.begin_drain()
    h.feed(data[10:20])
    assert h.conn.lifecycle is Lifecycle.DRAINING and not h.transport.closed
    h.feed(data[20:])
    (reply,) = h.replies()
    assert reply.header("x-query") == "half" and reply.closes and h.transport.closed


# ---------------------------------------------------------------------------- streaming


def test_stream_start_chunks_end_then_keep_alive(h: Harness) -> None:
    h.feed(get("/pause?s"))
    ticket = h.tickets[0]
    ticket.send(b"too early")  # before start_stream: dropped
    ticket.start_stream(200, [("X-Query", "s")])
    ticket.start_stream(500, [])  # a second start is dropped
    h.settle()
    assert h.conn.answer is Answer.STREAMING
    ticket.send(b"one")
    ticket.send(b"")  # an empty send writes nothing (an empty chunk would end the body)
    ticket.send(b"two")
    ticket.end()
    ticket.end()  # a second end reaches a connection that no longer knows the ticket
    h.settle()
    (reply,) = h.replies()
    assert reply.chunked and reply.chunks == [b"one", b"two"] and not reply.closes
    assert h.state == (Lifecycle.OPEN, Phase.IDLE, Answer.IDLE)
    h.feed(get("/echo?after"))
    assert queries(h.replies()) == ["after"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_finish_after_start_stream_ends_the_stream_and_closes(h: Harness) -> None:
    h.feed(get("/pause?s"))
    ticket = h.tickets[0]
    ticket.start_stream(200, [])
    ticket.send(b"part")
    ticket.finish(Response(200, [], [b"complete"]))
    records = _Records()
    logger = logging.getLogger("evserve.server")
    logger.addHandler(records)
    try:
        h.settle()
    finally:
        logger.removeHandler(records)
    assert any("after starting a stream" in message for message in records.messages)
    reply, end = parse_reply(bytes(h.transport.buffer), eof=True)  # type: ignore[misc]
    assert reply.chunks == [b"part"] and end == len(h.transport.buffer)
    assert h.conn.lifecycle is Lifecycle.CLOSING


def test_stream_to_a_closing_request_says_close(h: Harness) -> None:
    h.feed(get("/pause?s", ("Connection", "close")))
    ticket = h.tickets[0]
    ticket.start_stream(200, [])
    ticket.end()
    h.settle()
    (reply,) = h.replies()
    assert reply.closes and h.transport.closed


def test_expect_100_continue_is_sent_when_the_request_is_next(h: Harness) -> None:
    head = request("POST", "/echo?e", headers=(("Expect", "100-continue"), ("Content-Length", "2")))
    h.feed(get("/pause?first") + head)
    assert h.transport.buffer == b"", "no 100 before the reply owed to the request before it"
    h.tickets[0].finish(Response(200, [("X-Query", "first")]))
    h.settle()
    first, interim = h.replies()
    assert first.header("x-query") == "first" and interim.status == 100
    h.feed(b"ok")
    assert [r.body for r in h.replies()] == [b"ok"]
