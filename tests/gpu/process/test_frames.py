"""Frames over a real socketpair: a burst read in one go still comes out frame by frame."""

from __future__ import annotations

import socket
import threading

from evserve.gpu.process.frames import FrameReader, FrameWriter, encode


def test_a_burst_of_frames_is_handed_out_one_by_one() -> None:
    left, right = socket.socketpair()
    with left, right:
        FrameWriter(left).send_encoded(b"".join(encode({"op": "response", "n": n}) for n in range(50)))
        reader = FrameReader(right)
        assert reader.read() == {"op": "response", "n": 0}
        assert reader.buffered()  # the rest came with the first read: no select may wait for it
        assert [reader.read()["n"] for _ in range(49)] == list(range(1, 50))  # type: ignore[index]
        assert not reader.buffered()


def test_a_frame_larger_than_a_read_and_split_across_sends_arrives_whole() -> None:
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 8192  # 2 MiB: several reads
    frame = encode({"op": "bls", "inline": payload})

    def send() -> None:
        for start in range(0, len(frame), 100_000):
            left.sendall(frame[start:start + 100_000])
        left.sendall(encode({"op": "done", "count": 1}))
        left.shutdown(socket.SHUT_WR)

    with left, right:
        sender = threading.Thread(target=send)
        sender.start()
        reader = FrameReader(right)
        assert reader.read() == {"op": "bls", "inline": payload}
        assert reader.read() == {"op": "done", "count": 1}
        assert reader.read() is None  # EOF: the peer is gone
        sender.join()


def test_a_half_frame_then_eof_is_none() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(encode({"op": "response"})[:-2])
        left.shutdown(socket.SHUT_WR)
        assert FrameReader(right).read() is None
