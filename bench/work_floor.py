"""The work floor: the same jobs as evserve, done inline by the cheapest Python server we can write.

Why: hello_server.py measures what HTTP framing costs, but an inference also has to decode JSON,
build arrays, run the model and encode the reply. This server does exactly that work and nothing
else, with the same libraries evserve uses (uvloop, httptools, orjson, numpy), on one loop in one
thread: no routing table, no limits, no deadlines, no validation beyond what the job needs, no
hand-off to a worker thread. Its figures are "the Python limit for the same job"; evserve's
distance from it is what evserve's structure costs.

Routes (KServe v2 / Triton HTTP, keep-alive):
- ``GET /v2/health/ready`` → 200, empty body;
- ``POST /v2/models/simple/infer`` → OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32);
- ``POST /v2/models/identity_fp32/infer`` → OUTPUT0 = INPUT0.
Inputs come as JSON ``data`` or, with ``Inference-Header-Content-Length``, in the binary tensor
extension; an output is binary when the request asks ``binary_data: true`` for it.

Run: ``python bench/work_floor.py --port 18081``; stop with SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any, cast

import httptools
import numpy as np
import orjson
import uvloop

Arrays = dict[str, np.ndarray]
DTYPES: dict[str, type[np.generic]] = {"INT32": np.int32, "FP32": np.float32}
DATATYPES = {np.dtype(v): k for k, v in DTYPES.items()}
HEADER_LENGTH = b"inference-header-content-length"
READY_PATH = b"/v2/health/ready"


def simple(inputs: Arrays) -> Arrays:
    """What gpu/example_repository/simple computes."""
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


def identity(inputs: Arrays) -> Arrays:
    """What gpu/example_repository/identity_fp32 computes: the input array itself, not a copy."""
    return {"OUTPUT0": inputs["INPUT0"]}


MODELS: dict[bytes, tuple[str, Callable[[Arrays], Arrays]]] = {
    b"/v2/models/simple/infer": ("simple", simple),
    b"/v2/models/identity_fp32/infer": ("identity_fp32", identity),
}


def decode_inputs(body: bytes, header_length: int | None) -> tuple[dict[str, Any], Arrays]:
    """The request JSON and its input arrays: JSON ``data`` or views of the binary tail."""
    view = memoryview(body)
    request = orjson.loads(view if header_length is None else view[:header_length])
    offset = header_length or 0
    arrays: Arrays = {}
    for tensor in request["inputs"]:
        dtype = DTYPES[tensor["datatype"]]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.array(tensor["data"], dtype=dtype)
        else:
            array = np.frombuffer(view[offset:offset + size], dtype=dtype)
            offset += size
        arrays[tensor["name"]] = array.reshape(tensor["shape"])
    return request, arrays


def binary_requested(request: dict[str, Any]) -> set[str]:
    return {o["name"] for o in request.get("outputs") or () if (o.get("parameters") or {}).get("binary_data")}


def encode_reply(model: str, outputs: Arrays, binary: set[str]) -> tuple[dict[str, Any], list[Any]]:
    """The reply JSON (numpy data serialised by orjson) and the raw buffers of binary outputs, in order."""
    described, tails = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape)}
        if name in binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            tails.append(memoryview(np.ascontiguousarray(array)).cast("B"))
        else:
            entry["data"] = array.ravel()
        described.append(entry)
    return {"model_name": model, "model_version": "1", "outputs": described}, tails


def head(status: bytes, length: int, content_type: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(length).encode() + b"\r\n" + extra + b"\r\n")


def infer(path: bytes, body: bytes, header_length: int | None) -> list[Any]:
    """Decode, run, encode: the whole job of one inference, as the buffers of one HTTP response."""
    model, run = MODELS[path]
    request, inputs = decode_inputs(body, header_length)
    reply, tails = encode_reply(model, run(inputs), binary_requested(request))
    json_part = orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tails:
        return [head(b"200 OK", len(json_part), b"application/json"), json_part]
    extra = b"Inference-Header-Content-Length: " + str(len(json_part)).encode() + b"\r\n"
    length = len(json_part) + sum(t.nbytes for t in tails)
    return [head(b"200 OK", length, b"application/octet-stream", extra), json_part, *tails]


def error_reply(status: bytes, message: str) -> list[Any]:
    body = orjson.dumps({"error": message})
    return [head(status, len(body), b"application/json"), body]


class WorkProtocol(asyncio.Protocol):
    """One keep-alive connection; each request is answered inline in on_message_complete."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._chunks: list[bytes] = []
        self._header_length: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transport is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._chunks, self._header_length = b"", [], None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == HEADER_LENGTH:
            self._header_length = int(value)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._transport is None:
            return
        self._transport.writelines(self._respond())
        if not self._parser.should_keep_alive():
            self._transport.close()

    def _respond(self) -> list[Any]:
        if self._url == READY_PATH:
            return [head(b"200 OK", 0, b"text/plain")]
        if self._url not in MODELS:
            return error_reply(b"404 Not Found", "not found")
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        try:
            return infer(self._url, body, self._header_length)
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            return error_reply(b"400 Bad Request", f"{type(exc).__name__}: {exc}")


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:port until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(WorkProtocol, "127.0.0.1", port, reuse_address=True, backlog=1024)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description="The work floor: evserve's jobs done inline on one uvloop loop.")
    parser.add_argument("--port", type=int, default=18081, help="port on 127.0.0.1 (default 18081)")
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
