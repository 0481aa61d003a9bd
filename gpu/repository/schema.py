"""Triton's ``ModelConfig`` protobuf schema, loaded from tritonclient without importing grpc.

config.pbtxt is protobuf text format, so the only faithful parser is protobuf itself run against
Triton's own ``model_config.proto``. tritonclient ships the generated module as
``tritonclient/grpc/model_config_pb2.py``, but importing it the normal way runs
``tritonclient/grpc/__init__.py``, which needs the ``grpc`` package that the ``[http]`` extra does
not install. Loading that one file by path sidesteps the package ``__init__``; the generated code
itself depends only on protobuf.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from types import ModuleType

from google.protobuf.message import Message

_MODULE_NAME = "evserve_model_config_pb2"


class SchemaUnavailable(RuntimeError):
    """The ModelConfig schema cannot be loaded: an installation problem, never a model problem."""


def _schema_path() -> str:
    spec = importlib.util.find_spec("tritonclient")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = os.path.join(location, "grpc", "model_config_pb2.py")
        if os.path.isfile(path):
            return path
    raise SchemaUnavailable(
        "cannot find tritonclient/grpc/model_config_pb2.py (Triton's ModelConfig schema); "
        "install tritonclient (pip install 'tritonclient[http]')"
    )


_schema: ModuleType | None = None
_schema_lock = threading.Lock()


def schema() -> ModuleType:
    """The generated ``model_config_pb2`` module, loaded once per process.

    Loading it again under another name (or next to ``tritonclient.grpc``) is harmless: protobuf
    accepts a byte-identical file descriptor that is already in its default pool. Loading it
    twice *at the same time* is not: on a free-threaded build, two startup loads that race
    corrupt the pure-Python protobuf descriptors (``functools.cache`` does not serialise the
    first call), so the first load runs under a lock and every later call reads the result.
    """
    global _schema
    loaded = _schema
    if loaded is not None:
        return loaded
    with _schema_lock:
        if _schema is None:
            _schema = _load_schema()
        return _schema


def _load_schema() -> ModuleType:
    path = _schema_path()
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise SchemaUnavailable(f"cannot load Triton's ModelConfig schema from {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the generated code checks the protobuf runtime version, among others
        raise SchemaUnavailable(
            f"cannot load Triton's ModelConfig schema from {path}: {exc} "
            "(the installed protobuf may be older than the one tritonclient was generated with)"
        ) from exc
    return module


def new_model_config() -> Message:
    """An empty ``inference.ModelConfig`` message."""
    return schema().ModelConfig()
