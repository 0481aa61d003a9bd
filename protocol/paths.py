"""The v2 path grammar: a request path → (Endpoint, model, version).

Triton routes with an order-dependent chain of regular expressions; the grammar is small
enough to split on ``/`` and look up in tables instead. Like Triton, the query string is
ignored, a model name is any run of non-``/`` bytes (never percent-decoded, so ``%2F`` can
never change which model a request reaches), and a version is all digits or the path is
unknown.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_VERSION = 2**63 - 1


class Endpoint(enum.Enum):
    # Members are singletons compared by identity, so identity hashing is exact; Enum's own
    # __hash__ is a Python function, and every request looks its endpoint up in two tables.
    __hash__ = object.__hash__

    HEALTH_LIVE = "health_live"
    HEALTH_READY = "health_ready"
    SERVER_METADATA = "server_metadata"
    MODEL_METADATA = "model_metadata"
    MODEL_READY = "model_ready"
    MODEL_CONFIG = "model_config"
    MODEL_STATS = "model_stats"
    MODEL_INFER = "model_infer"
    MODEL_GENERATE = "model_generate"
    MODEL_GENERATE_STREAM = "model_generate_stream"
    MODEL_TRACE = "model_trace"
    REPOSITORY_INDEX = "repository_index"
    REPOSITORY_LOAD = "repository_load"
    REPOSITORY_UNLOAD = "repository_unload"
    # /v2/repository/{repo}/models/{m}/load|unload: Triton answers 501.
    REPOSITORY_NAMED_CONTROL = "repository_named_control"
    SYSTEM_SHM = "system_shared_memory"
    CUDA_SHM = "cuda_shared_memory"
    TRACE = "trace"
    LOGGING = "logging"


# Which methods each endpoint answers; anything else is 405.
METHODS: dict[Endpoint, frozenset[str]] = {
    Endpoint.HEALTH_LIVE: frozenset({"GET"}),
    Endpoint.HEALTH_READY: frozenset({"GET"}),
    Endpoint.SERVER_METADATA: frozenset({"GET"}),
    Endpoint.MODEL_METADATA: frozenset({"GET"}),
    Endpoint.MODEL_READY: frozenset({"GET"}),
    Endpoint.MODEL_CONFIG: frozenset({"GET"}),
    Endpoint.MODEL_STATS: frozenset({"GET"}),
    Endpoint.MODEL_INFER: frozenset({"POST"}),
    Endpoint.MODEL_GENERATE: frozenset({"POST"}),
    Endpoint.MODEL_GENERATE_STREAM: frozenset({"POST"}),
    Endpoint.MODEL_TRACE: frozenset({"GET", "POST"}),
    Endpoint.REPOSITORY_INDEX: frozenset({"POST"}),
    Endpoint.REPOSITORY_LOAD: frozenset({"POST"}),
    Endpoint.REPOSITORY_UNLOAD: frozenset({"POST"}),
    Endpoint.REPOSITORY_NAMED_CONTROL: frozenset({"POST"}),
    Endpoint.SYSTEM_SHM: frozenset({"GET", "POST"}),
    Endpoint.CUDA_SHM: frozenset({"GET", "POST"}),
    Endpoint.TRACE: frozenset({"GET", "POST"}),
    Endpoint.LOGGING: frozenset({"GET", "POST"}),
}

_MODEL_SUFFIX = {
    "": Endpoint.MODEL_METADATA,
    "ready": Endpoint.MODEL_READY,
    "config": Endpoint.MODEL_CONFIG,
    "stats": Endpoint.MODEL_STATS,
    "infer": Endpoint.MODEL_INFER,
    "generate": Endpoint.MODEL_GENERATE,
    "generate_stream": Endpoint.MODEL_GENERATE_STREAM,
}


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    model: str | None = None
    # None when the path names no version: "the policy's latest ready version".
    version: str | None = None


def _version(segment: str) -> str | None:
    """A path version must be all ASCII digits and fit an int64 (else the path is unknown)."""
    if not segment.isascii() or not segment.isdigit() or int(segment) > MAX_VERSION:
        return None
    return segment


def _model_route(parts: list[str]) -> Route | None:
    # parts: [name, ...rest] after "/v2/models/"
    name, rest = parts[0], parts[1:]
    if not name:
        return None
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version = _version(rest[1])
        if version is None:
            return None
        rest = rest[2:]
    if rest == ["trace", "setting"]:
        return None if version is not None else Route(Endpoint.MODEL_TRACE, name)
    if len(rest) > 1:
        return None
    endpoint = _MODEL_SUFFIX.get(rest[0] if rest else "")
    return Route(endpoint, name, version) if endpoint else None


def _repository_route(parts: list[str]) -> Route | None:
    # parts after "/v2/repository/"
    if parts == ["index"]:
        return Route(Endpoint.REPOSITORY_INDEX)
    if len(parts) == 3 and parts[0] == "models" and parts[1] and parts[2] in ("load", "unload"):
        endpoint = Endpoint.REPOSITORY_LOAD if parts[2] == "load" else Endpoint.REPOSITORY_UNLOAD
        return Route(endpoint, parts[1])
    if len(parts) == 2 and parts[1] == "index" and parts[0]:
        return Route(Endpoint.REPOSITORY_INDEX)
    if len(parts) == 4 and parts[1] == "models" and parts[2] and parts[3] in ("load", "unload"):
        return Route(Endpoint.REPOSITORY_NAMED_CONTROL, parts[2])
    return None


# Routes by path: a server sees the same few paths over and over. Bounded, because paths are
# chosen by clients; once full, new paths are matched but not stored. Route is immutable, so
# entries are shared by every thread; a race between two threads stores equal values (dict reads
# and writes are atomic on free-threaded builds too, so no lock is needed).
ROUTES: dict[str, Route | None] = {}
_MAX_ROUTES = 4096


def match(path: str) -> Route | None:
    """The route for ``path`` (query string already removed), or None for an unknown path."""
    try:
        return ROUTES[path]
    except KeyError:
        pass
    route = _match(path)
    if len(ROUTES) < _MAX_ROUTES:
        ROUTES[path] = route
    return route


def _match(path: str) -> Route | None:
    if path == "/v2":
        return Route(Endpoint.SERVER_METADATA)
    if not path.startswith("/v2/"):
        return None
    parts = path[4:].split("/")
    head = parts[0]
    if head == "health" and len(parts) == 2:
        if parts[1] == "live":
            return Route(Endpoint.HEALTH_LIVE)
        if parts[1] == "ready":
            return Route(Endpoint.HEALTH_READY)
        return None
    if head == "models" and len(parts) >= 2:
        if parts[1:] == ["stats"]:
            return Route(Endpoint.MODEL_STATS)
        return _model_route(parts[1:])
    if head == "repository":
        return _repository_route(parts[1:])
    if head in ("systemsharedmemory", "cudasharedmemory"):
        endpoint = Endpoint.SYSTEM_SHM if head == "systemsharedmemory" else Endpoint.CUDA_SHM
        return Route(endpoint)
    if parts == ["trace", "setting"]:
        return Route(Endpoint.TRACE)
    if parts == ["logging"]:
        return Route(Endpoint.LOGGING)
    return None
