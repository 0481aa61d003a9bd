"""The floor: the cheapest HTTP/1.1 server uvloop + httptools can be, to divide evserve's cost by.

evserve's server layer (routing, limits, ownership checks, the defer hop) is only worth what it
costs over this. The server here does nothing but parse with httptools on one uvloop loop in one
thread and answer every request 200 with a tiny body, keeping the connection alive, so a wrk
figure against it is the ceiling any server built from the same parts can reach on one core.
With ``--json-infer`` a POST gets a canned KServe v2 reply shaped like ``simple``'s (two INT32
[1,16] outputs), the floor for the ``infer-json`` scenario: same framing, no decoding, no model.

Run: ``python bench/hello_server.py --port 18080 [--json-infer]``; stop with SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

import httptools
import orjson
import uvloop

HELLO = b"OK"


def canned_infer_reply() -> bytes:
    """A reply the size and shape of evserve's answer to the bench's ``simple`` request."""
    input0 = range(16)  # the bench sends INPUT0 = 0..15 and INPUT1 = 1s, like Triton's simple client
    outputs = [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16], "data": [v + 1 for v in input0]},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16], "data": [v - 1 for v in input0]},
    ]
    return orjson.dumps({"model_name": "simple", "model_version": "1", "outputs": outputs})


def response(body: bytes, content_type: bytes, keep_alive: bool) -> bytes:
    """One complete HTTP/1.1 response; built per request so the floor pays what a real server pays."""
    connection = b"keep-alive" if keep_alive else b"close"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nConnection: " + connection + b"\r\n\r\n"
    )
    return head + body


class HelloProtocol(asyncio.Protocol):
    """One connection: feed bytes to httptools, answer at message end, close unless keep-alive."""

    def __init__(self, infer_body: bytes | None) -> None:
        self._infer_body = infer_body
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport, hence the cast, not an isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    # Parser callbacks

    def on_message_complete(self) -> None:
        if self._transport is None:
            return
        keep_alive = self._parser.should_keep_alive()
        if self._infer_body is not None and self._parser.get_method() == b"POST":
            payload = response(self._infer_body, b"application/json", keep_alive)
        else:
            payload = response(HELLO, b"text/plain", keep_alive)
        self._transport.write(payload)
        if not keep_alive:
            self._transport.close()


async def serve(port: int, infer_body: bytes | None) -> None:
    """Listen on 127.0.0.1:port until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    # uvloop sets TCP_NODELAY on accepted sockets itself, as evserve's loops do.
    server = await loop.create_server(
        lambda: HelloProtocol(infer_body), "127.0.0.1", port, reuse_address=True, backlog=1024
    )
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description="Minimal uvloop + httptools HTTP/1.1 server (benchmark floor).")
    parser.add_argument("--port", type=int, default=18080, help="port on 127.0.0.1 (default 18080)")
    parser.add_argument("--json-infer", action="store_true",
                        help="answer POST with a canned KServe v2 JSON reply shaped like simple's")
    args = parser.parse_args()
    uvloop.run(serve(args.port, canned_infer_reply() if args.json_infer else None))


if __name__ == "__main__":
    main()
