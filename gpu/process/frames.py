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
    """Reads whole frames from one thread; ``read`` returns None at EOF (the peer is gone).

    It reads what the socket has, up to ``CHUNK`` bytes at a time, and hands out the frames in it
    one by one: a burst of frames costs one ``recv`` (not two per frame), which is why a caller
    that waits with ``select`` must first ask :meth:`buffered` whether a frame is already here.
    """

    CHUNK = 1 << 18

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def buffered(self) -> bool:
        """Whether a whole frame is already read and waiting (``read`` will not block)."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _LENGTH.size:
            return False
        (length,) = _LENGTH.unpack_from(buf, pos)
        return len(buf) - pos - _LENGTH.size >= length

    def read(self) -> dict[str, Any] | None:
        if not self._fill(_LENGTH.size):
            return None
        (length,) = _LENGTH.unpack_from(self._buf, self._pos)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes exceeds the limit")
        if not self._fill(_LENGTH.size + length):
            return None
        start = self._pos + _LENGTH.size
        self._pos = start + length
        message = msgpack.unpackb(memoryview(self._buf)[start : self._pos], raw=False)
        if not isinstance(message, dict):
            raise ValueError("a frame must hold a map")
        return message

    def _fill(self, count: int) -> bool:
        """Make at least ``count`` unread bytes available; False at EOF."""
        have = len(self._buf) - self._pos
        if have >= count:
            return True
        chunks = [self._buf[self._pos :]] if have else []
        self._buf, self._pos = b"", 0
        while have < count:
            try:
                chunk = self._sock.recv(max(self.CHUNK, count - have))
            except OSError:  # ConnectionResetError included
                return False
            if not chunk:
                return False
            chunks.append(chunk)
            have += len(chunk)
        self._buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return True
