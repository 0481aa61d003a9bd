"""StreamWindow: a producer waits for room, the loop's release and unblock let it go, close frees it for good."""

from __future__ import annotations

import threading
import time

from evserve.server.stream_window import StreamWindow


def _acquire_in_thread(window: StreamWindow, size: int) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(window.acquire(size)), daemon=True)
    thread.start()
    return thread, result


def test_acquire_waits_while_the_window_is_full_and_release_lets_it_go() -> None:
    window = StreamWindow(100)
    assert window.acquire(60) and window.acquire(40)
    thread, result = _acquire_in_thread(window, 10)
    thread.join(0.2)
    assert thread.is_alive() and not result, "a full window must hold the producer"
    window.release(60)
    thread.join(5)
    assert result == [True] and window.pending == 50


def test_one_event_larger_than_the_window_goes_through_when_nothing_waits() -> None:
    window = StreamWindow(100)
    assert window.acquire(1000)
    thread, result = _acquire_in_thread(window, 1)
    thread.join(0.2)
    assert thread.is_alive()
    window.release(1000)
    thread.join(5)
    assert result == [True]


def test_block_holds_producers_until_unblock() -> None:
    window = StreamWindow(100)
    window.block()
    thread, result = _acquire_in_thread(window, 1)
    thread.join(0.2)
    assert thread.is_alive()
    window.unblock()
    thread.join(5)
    assert result == [True]


def test_close_wakes_every_waiter_and_refuses_later_sends() -> None:
    window = StreamWindow(10)
    window.acquire(10)
    waiters = [_acquire_in_thread(window, 5) for _ in range(3)]
    time.sleep(0.1)
    window.close()
    for thread, result in waiters:
        thread.join(5)
        assert result == [False]
    assert window.closed and not window.acquire(1)


def test_acquire_without_waiting_never_blocks() -> None:
    window = StreamWindow(10)
    window.block()
    assert window.acquire(50, wait=False) and window.pending == 50
