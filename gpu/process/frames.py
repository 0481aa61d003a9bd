"""Length-prefixed msgpack frames over a stream socket: the header channel to a child process.

Why msgpack over a socketpair: headers are small dicts of names, shapes and offsets; msgpack
encodes them in one C call each way, and a socketpair gives an EOF the moment the other side
dies, which is how a crash is noticed (no polling). Tensor bytes do not travel here unless they
cannot go through the arena (:mod:`.arena`).
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import msgpack

_LENGTH = struct.Struct("<I")
MAX_FRAME = 1 << 31


class FrameWriter:
    """Sends whole frames; safe from several threads (one lock per socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        self.send_encoded(encode(message))

    def send_encoded(self, frames: bytes) -> None:
        """Send frames already encoded (several at once: one syscall, one wake-up of the reader)."""
        with self._lock:
            self._sock.sendall(frames)


def encode(message: dict[str, Any]) -> bytes:
    """One whole frame: its length, then the msgpack map."""
    payload = msgpack.packb(message, use_bin_type=True)
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Reads whole frames from one thread; ``read`` returns None at EOF (the peer is gone)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self) -> dict[str, Any] | None:
        head = self._exactly(_LENGTH.size)
        if head is None:
            return None
        (length,) = _LENGTH.unpack(head)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes exceeds the limit")
        payload = self._exactly(length)
        if payload is None:
            return None
        message = msgpack.unpackb(payload, raw=False)
        if not isinstance(message, dict):
            raise ValueError("a frame must hold a map")
        return message

    def _exactly(self, count: int) -> bytes | None:
        buf = bytearray(count)
        view = memoryview(buf)
        got = 0
        while got < count:
            try:
                n = self._sock.recv_into(view[got:])
            except (ConnectionResetError, OSError):
                return None
            if n == 0:
                return None
            got += n
        return bytes(buf)
