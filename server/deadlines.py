"""The deadlines of one connection and the phase clock they run on.

Each loop thread's tick calls ``HttpConnection.check_deadlines`` on its own connections, so
the timers cost one callback per thread, not one per connection. :meth:`Deadlines.check`
decides which deadline has passed, and the connection acts on the result:

* **Read deadlines** (Phase, connection_state.py) bound how long the *client* may take.
  HEAD has Envoy's request_headers_timeout, from the head's first byte (or from accept, or
  from the last reply) to its end. BODY has nginx's client_body_timeout gap between two
  reads plus Apache's MinRate floor once that much time has passed. IDLE has the keep-alive
  timeout. They run only while the server owes nothing: time spent waiting for the server (a
  paused request, a stream, a request queued behind one) never counts against the client.
  So while a reply is owed they are suspended, and :meth:`Deadlines.restart` restarts them
  when the reply is written.
* **Send deadline** (nginx send_timeout): a client whose unread replies have filled the
  transport's write buffer for that long is dropped. Reading is paused then, so the read
  deadlines cannot catch it.
* **Peer gone.** While a paused request's reading is paused, the loop sees no EOF or RST. The
  kernel's TCP state says whether the client has left, so that its ticket is cancelled.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from typing import TYPE_CHECKING

from evserve.server.connection_state import Phase

if TYPE_CHECKING:
    from evserve.server.config import Limits
    from evserve.server.flow_control import FlowControl
    from evserve.server.request_cycle import RequestCycle

__all__ = ["Deadlines", "Expired", "peer_gone"]

# tcpi_state values (linux/tcp.h): the peer reset (CLOSE) or sent its FIN (CLOSE_WAIT).
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8

_HEAD, _BODY, _IDLE = Phase.HEAD, Phase.BODY, Phase.IDLE


class Expired(enum.Enum):
    """Which deadline passed, and so what the connection does."""

    PEER_GONE = "peer gone"  # cancel the paused request's ticket and abort
    SEND = "send"  # abort: the client stopped reading its replies
    READ = "read"  # answer 408 and close: a head or body came too slowly
    KEEP_ALIVE = "keep-alive"  # close silently: idle between requests for too long


_PEER_GONE, _SEND, _READ, _KEEP_ALIVE = Expired.PEER_GONE, Expired.SEND, Expired.READ, Expired.KEEP_ALIVE


class Deadlines:
    """The phase clock of one connection and the four deadlines measured on it (owning loop only).

    ``phase_since`` is when the current Phase began. The connection writes it whenever its Phase
    moves; :meth:`restart` writes it when a reply is out.
    """

    __slots__ = ("_loop", "_limits", "phase_since")

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits) -> None:
        self._loop = loop
        self._limits = limits
        self.phase_since = loop.time()

    def restart(self, phase: Phase, cycle: RequestCycle) -> None:
        """A reply is out: the read deadlines were suspended while it was owed, so they start over."""
        now = self._loop.time()
        self.phase_since = now
        if phase is _BODY:
            cycle.last_body = now
            cycle.body_started = now

    def check(
        self,
        now: float,
        phase: Phase,
        cycle: RequestCycle,
        flow: FlowControl,
        transport: asyncio.Transport | None,
        *,
        paused: bool,
        owed: bool,
    ) -> Expired | None:
        """The deadline that has passed at ``now``, if any; the first that applies wins.

        ``paused``: a ticket is out for the request being answered. ``owed``: a reply is owed or
        a close has begun, so the read deadlines are suspended.
        """
        limits = self._limits
        if paused and flow.read_paused and peer_gone(transport):
            return _PEER_GONE
        if flow.write_paused and now - flow.write_paused_since > limits.send_timeout:
            return _SEND
        if owed:
            return None
        if phase is _HEAD:
            return _READ if now - self.phase_since > limits.head_timeout else None
        if phase is _BODY:
            stalled = now - cycle.last_body > limits.body_timeout
            elapsed = now - cycle.body_started
            too_slow = elapsed > limits.body_timeout and cycle.body_got / elapsed < limits.body_min_rate
            return _READ if stalled or too_slow else None
        if phase is _IDLE and now - self.phase_since > limits.keepalive_timeout:
            return _KEEP_ALIVE
        return None


def peer_gone(transport: asyncio.Transport | None) -> bool:
    """Reading is paused, so EOF/RST go unseen: ask the kernel for the TCP state (Linux)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return False
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)
