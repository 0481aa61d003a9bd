"""The shared-memory extension's endpoints: register, status and unregister, system and CUDA.

Paths (Triton's): ``/v2/{systemsharedmemory,cudasharedmemory}`` followed by ``/status``,
``/unregister``, or ``/region/{name}/status|register|unregister``. Status works whatever the
flags; register and unregister answer 501 unless the server runs with ``--allow-client-shm=true``
(Triton 2.73's default is off: a region lets a client read and write the server's memory map).

System registration (shm_open, fstat, mmap) takes microseconds and runs inline; opening a CUDA
IPC handle can take milliseconds and runs on the offload pool.
"""

from __future__ import annotations

from typing import Any

from evserve.gpu.shared_memory import RegionRegistry, cuda, system
from evserve.gpu.shared_memory.registry import CUDA, SYSTEM
from evserve.protocol.errors import BadRequest, ProtocolError
from evserve.protocol.paths import Endpoint, Route
from evserve.server.exchange import Request, Response, Ticket
from evserve.server.offload import OffloadPool
from evserve.server.responses import empty_reply, error_reply, json_reply, parse_json_body

DISABLED = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
_UINT64_MAX = 2**64 - 1


def _operation(path: str) -> tuple[str | None, str] | None:
    """(region or None, operation) from the path after ``/v2/<family>sharedmemory``; None when malformed."""
    parts = path.split("/")[3:]
    if len(parts) == 1 and parts[0] in ("status", "unregister"):
        return None, parts[0]
    if len(parts) == 3 and parts[0] == "region" and parts[1] and parts[2] in ("status", "register", "unregister"):
        return parts[1], parts[2]
    return None


def _uint(body: dict[str, Any], key: str, default: int | None = None) -> int:
    if key not in body and default is not None:
        return default
    value = body[key]
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:
        raise BadRequest(f"Unable to parse '{key}': attempt to access JSON non-unsigned-integer as unsigned-integer")
    return value


class SharedMemoryHandlers:
    def __init__(self, registry: RegionRegistry, offload: OffloadPool, *, allowed: bool) -> None:
        self.registry = registry
        self.offload = offload
        self.allowed = allowed

    def handle(self, request: Request, route: Route) -> Response | None:
        kind = SYSTEM if route.endpoint is Endpoint.SYSTEM_SHM else CUDA
        found = _operation(request.path)
        if found is None:
            return Response.error(404, "Not Found")
        region, operation = found
        if (operation == "status") != (request.method in ("GET", "HEAD")):
            return Response.error(405, "Method Not Allowed")
        if operation == "status":
            return json_reply(self.registry.status(kind, region))
        if not self.allowed:
            return Response.error(501, DISABLED)
        if operation == "unregister":
            self.registry.unregister(kind, region)
            return empty_reply()
        assert region is not None
        body = parse_json_body(request.body)
        if not isinstance(body, dict):
            raise BadRequest("Shared memory register request must be a JSON object")
        if kind == SYSTEM:
            self._register_system(region, body)
            return empty_reply()
        ticket = request.pause()
        try:
            self.offload.submit(self._register_cuda, ticket, region, body)
        except ProtocolError as exc:
            ticket.finish(error_reply(exc))
        return None

    def _register_system(self, name: str, body: dict[str, Any]) -> None:
        if "key" not in body:
            raise BadRequest("Shared memory register request has no 'key' field")
        if "byte_size" not in body:
            raise BadRequest("Shared memory register request has no 'byte_size' field")
        key = body["key"]
        if not isinstance(key, str):
            raise BadRequest("Unable to parse 'key': attempt to access JSON non-string as string")
        offset, byte_size = _uint(body, "offset", 0), _uint(body, "byte_size")
        self.registry.check_new(name, byte_size)
        self.registry.add(system.open_region(name, key, offset, byte_size))

    def _register_cuda(self, ticket: Ticket, name: str, body: dict[str, Any]) -> None:
        """On the offload pool: open the client's IPC handle, then answer."""
        try:
            for field in ("raw_handle", "device_id", "byte_size"):
                if field not in body:
                    raise BadRequest(f"Shared memory register request has no '{field}' field")
            raw = body["raw_handle"]
            handle = raw.get("b64") if isinstance(raw, dict) else None
            device_id, byte_size = _uint(body, "device_id"), _uint(body, "byte_size")
            ipc_handle = cuda.decode_handle(handle)
            self.registry.check_new(name, byte_size)
            self.registry.add(cuda.open_region(name, ipc_handle, device_id, byte_size))
        except ProtocolError as exc:
            ticket.finish(error_reply(exc))
            return
        ticket.finish(empty_reply())
