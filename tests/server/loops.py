"""The event loops the loop-level tests run on, and the bound on how long they wait for one.

Why a plain module: DeferQueue and LoopThread must behave the same on asyncio's loop and on
uvloop, so their tests share one parametrized ``loop_factory`` fixture. It sits beside, not in,
tests/server/conftest.py (the HTTP-layer server fixtures): only the two loop test modules use
it, and each says so by importing ``loop_factory_fixture``, which pytest then registers there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import uvloop

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

LOOP_FACTORIES: dict[str, LoopFactory] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

# Generous: a correct queue or loop answers in microseconds; this only bounds a hang.
WAIT = 10.0


@pytest.fixture(name="loop_factory", params=sorted(LOOP_FACTORIES))
def loop_factory_fixture(request: pytest.FixtureRequest) -> LoopFactory:
    """Each test that asks for ``loop_factory`` runs once per loop implementation."""
    return LOOP_FACTORIES[request.param]
