"""The state of one HttpConnection: three enums, each with its own table of allowed moves.

Theory of operation
-------------------
1. **Three questions, three enums, no flags.** Where is the connection in its life
   (:class:`Lifecycle`)? What is the parser receiving, which decides the read deadline
   (:class:`Phase`)? Where is the reply to the request being answered (:class:`Answer`)? Each
   question has exactly one answer at any moment, so each is one enum value. The answers
   are independent, which is why they are three enums and not one product of states.
2. **Every move is listed here.** The tables below hold every allowed move, as h11's
   ``_state.py`` does. HttpConnection writes each variable in exactly one method
   (``_set_lifecycle``, ``_set_phase`` and ``_set_answer``), and that method checks the move
   against its table. Any other move raises :class:`IllegalTransition`. Such a move is a bug in
   evserve, never something a client did: a client's framing or limit error moves Phase to
   FAILED, and that move is legal from every live phase.
3. **Lifecycle only moves forward.** Every move in :data:`LIFECYCLE_MOVES` goes to a larger
   value (``tests/server/test_connection_state.py`` checks this). So ``lifecycle >= CLOSING``
   reads "a close has begun", and the hot path tests it with one integer comparison.
4. **How the three combine.**

   * A reply may keep the connection open only if Lifecycle is OPEN, Phase is not FAILED and
     the request itself allows keep-alive.
   * The read deadline that Phase selects runs only while the server owes nothing. That means
     Answer is IDLE, no request is queued, and no close has begun.
   * While Answer is PAUSED or STREAMING, Lifecycle is OPEN or DRAINING. Nothing closes a
     connection that owes a paused reply; only a lost transport or an abort ends it (the send
     deadline, or a peer found gone).

The enums are IntEnums only for speed. Their hash and comparisons are C-level, so a table
check costs tens of nanoseconds. Code compares members with ``is``; it never uses their numbers,
except for the forward order of Lifecycle.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "ANSWER_ALLOWED",
    "ANSWER_MOVES",
    "LIFECYCLE_ALLOWED",
    "PHASE_ALLOWED",
    "LIFECYCLE_MOVES",
    "PHASE_MOVES",
    "Answer",
    "IllegalTransition",
    "Lifecycle",
    "Phase",
]


class IllegalTransition(RuntimeError):
    """A move that the tables below do not allow: a bug in evserve (h11's LocalProtocolError)."""

    def __init__(self, old: enum.Enum, new: enum.Enum) -> None:
        super().__init__(f"{type(old).__name__} cannot move from {old.name} to {new.name}")
        self.old = old
        self.new = new


class Lifecycle(enum.IntEnum):
    """Where the connection is in its life. Decides whether replies may keep it open."""

    __hash__ = int.__hash__  # C-level and consistent with int equality (Enum's is a Python function)

    OPEN = 0  # requests are read and answered; a reply may keep the connection open
    DRAINING = 1  # the client half-closed or the server is stopping: the reply now owed is the last
    CLOSING = 2  # transport.close() is called, or the transport was already closing (an abort)
    LINGERING = 3  # FIN sent with input unread: read and discard until the client's EOF or a bound
    CLOSED = 4  # connection_lost has run; nothing is written again


class Phase(enum.IntEnum):
    """What the parser is receiving. Decides which read deadline applies (deadlines.py)."""

    __hash__ = int.__hash__

    HEAD = 0  # waiting for or receiving a request head (head deadline)
    BODY = 1  # receiving a body (idle gap and minimum rate)
    IDLE = 2  # between requests on a keep-alive connection (keep-alive timeout)
    FAILED = 3  # the parser stopped (framing, limit, Upgrade or a read deadline): nothing more is parsed


class Answer(enum.IntEnum):
    """Where the reply to the request being answered stands (one request is answered at a time)."""

    __hash__ = int.__hash__

    IDLE = 0  # no request is being answered; the next queued one may be taken up
    HANDLING = 1  # taken from the queue: its handler runs, or its reply is written, on the loop thread
    PAUSED = 2  # the handler paused it: a live Ticket is out and the reply comes back through defer
    STREAMING = 3  # the ticket wrote a chunked head; chunks follow until Ticket.end()


LIFECYCLE_MOVES: dict[Lifecycle, frozenset[Lifecycle]] = {
    # eof_received with replies owed, or begin_drain while busy.
    Lifecycle.OPEN: frozenset(
        {Lifecycle.DRAINING, Lifecycle.CLOSING, Lifecycle.LINGERING, Lifecycle.CLOSED},
    ),
    Lifecycle.DRAINING: frozenset({Lifecycle.CLOSING, Lifecycle.LINGERING, Lifecycle.CLOSED}),
    Lifecycle.CLOSING: frozenset({Lifecycle.CLOSED}),
    Lifecycle.LINGERING: frozenset({Lifecycle.CLOSED}),
    Lifecycle.CLOSED: frozenset(),
}

PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    # A head without a body completes straight to IDLE.
    Phase.HEAD: frozenset({Phase.BODY, Phase.IDLE, Phase.FAILED}),
    Phase.BODY: frozenset({Phase.IDLE, Phase.FAILED}),
    # Garbage where the next request should start fails from IDLE.
    Phase.IDLE: frozenset({Phase.HEAD, Phase.FAILED}),
    Phase.FAILED: frozenset(),
}

ANSWER_MOVES: dict[Answer, frozenset[Answer]] = {
    Answer.IDLE: frozenset({Answer.HANDLING}),
    # An inline reply goes back to IDLE; Request.pause() moves to PAUSED.
    Answer.HANDLING: frozenset({Answer.IDLE, Answer.PAUSED}),
    # Ticket.finish() goes back to IDLE; Ticket.start_stream() moves to STREAMING.
    Answer.PAUSED: frozenset({Answer.IDLE, Answer.STREAMING}),
    Answer.STREAMING: frozenset({Answer.IDLE}),
}


def _allowed(moves: dict[Any, frozenset[Any]]) -> tuple[int, ...]:
    """The tables as bitmasks indexed by state value: bit ``n`` set means "may move to value n".

    The hot path checks moves with these: indexing a tuple and shifting an int are C-level,
    while hashing an enum member (a dict key or frozenset lookup) calls ``Enum.__hash__``, a
    Python function. They are derived from the tables above, never written by hand.
    """
    size = max(int(state) for state in moves) + 1
    masks = [0] * size
    for state, targets in moves.items():
        for target in targets:
            masks[state] |= 1 << target
    return tuple(masks)


LIFECYCLE_ALLOWED = _allowed(LIFECYCLE_MOVES)
PHASE_ALLOWED = _allowed(PHASE_MOVES)
ANSWER_ALLOWED = _allowed(ANSWER_MOVES)
