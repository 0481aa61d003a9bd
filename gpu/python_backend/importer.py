"""Importing a model's ``model.py`` so that many models share one process without seeing each other.

Triton imports ``model.py`` as ``<version>.model`` with the version and model directories
appended to ``sys.path``, one model per process. Here many models share one process, so each
version is imported under a unique package ``evserve_models.<name>_v<version>_<n>`` whose
``__path__`` is the version directory: relative imports (``from . import helper``) stay private
to the model, and plain sibling imports (``import helper``, at module level or inside
``initialize``/``execute``) are mapped to the same private copy by a per-model ``__import__``
(:func:`_model_builtins`), so two models that both ship ``helper.py`` each get their own and
``sys.path`` is never touched.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import itertools
import logging
import os
import re
import sys
import threading
import types
from typing import Any

from evserve.gpu.python_backend import pb_utils

_log = logging.getLogger(__name__)

MODEL_FILE = "model.py"
_PACKAGE_ROOT = "evserve_models"
_import_lock = threading.RLock()  # re-entered when model.py imports its siblings
_import_counter = itertools.count(1)


class PythonModelError(Exception):
    """A model directory that cannot be imported as a python-backend model (the load fails)."""


def import_model_file(model_name: str, version: int, version_dir: str) -> tuple[str, types.ModuleType]:
    """Import ``<version_dir>/model.py`` under a package name no other load shares.

    Returns the package name (what :func:`drop_modules` forgets again) and the module. On an
    import error nothing of the attempt stays in ``sys.modules``.
    """
    path = os.path.join(version_dir, MODEL_FILE)
    with _import_lock:
        register_pb_utils()
        package = _version_package(model_name, version, version_dir)
        gil_before, modules_before = _gil_enabled(), _module_names()
        try:
            module = _exec_model_file(package.__name__, path, version_dir)
            if not gil_before and _gil_enabled():
                _log.warning(
                    "importing model '%s' turned the GIL on (extension modules it loaded: %s): one of them has "
                    "not declared that it runs without the GIL; loop threads and workers now share one GIL",
                    model_name, ", ".join(_new_extensions(modules_before)) or "none found",
                )
            return package.__name__, module
        except BaseException as exc:
            drop_modules(package.__name__)
            if isinstance(exc, Exception):
                raise PythonModelError(f"failed to import '{path}': {type(exc).__name__}: {exc}") from exc
            raise


def _new_extensions(before: set[str]) -> list[str]:
    """Extension modules imported since ``before``: the candidates for turning the GIL on."""
    found = []
    for name in sorted(_module_names() - before):
        origin = getattr(sys.modules.get(name), "__file__", None) or ""
        if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            found.append(name)
    return found


def _gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def _exec_model_file(package: str, path: str, version_dir: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"{package}.model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = _model_builtins(package, _sibling_names(version_dir))
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def register_pb_utils() -> None:
    """Make ``import triton_python_backend_utils`` give models evserve's implementation."""
    sys.modules["triton_python_backend_utils"] = pb_utils


def _package_root() -> types.ModuleType:
    root = sys.modules.get(_PACKAGE_ROOT)
    if root is None:
        root = types.ModuleType(_PACKAGE_ROOT, "Namespace for the python-backend models evserve has loaded.")
        root.__path__ = []
        sys.modules[_PACKAGE_ROOT] = root
    return root


def _version_package(model_name: str, version: int, version_dir: str) -> types.ModuleType:
    """A fresh package whose ``__path__`` is the version directory (for relative imports)."""
    _package_root()
    safe = re.sub(r"[^0-9A-Za-z_]", "_", model_name)
    name = f"{_PACKAGE_ROOT}.{safe}_v{version}_{next(_import_counter)}"
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [version_dir]
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    return package


def _sibling_names(version_dir: str) -> set[str]:
    """Top-level modules the version directory provides: ``*.py`` files and regular packages.

    Names of standard-library modules are left out: those keep resolving to the standard
    library, as they do in Triton (which appends the directory to ``sys.path``), and are never
    hidden from other threads.
    """
    names = set()
    for entry in os.scandir(version_dir):
        if entry.is_file() and entry.name.endswith(".py") and entry.name != MODEL_FILE:
            names.add(entry.name[:-3])
        elif entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")):
            names.add(entry.name)
    return names - sys.stdlib_module_names


def _model_builtins(package: str, siblings: set[str]) -> dict[str, Any]:
    """Builtins for a model's own modules: ``import helper`` finds the model's ``helper.py``.

    Triton runs one model per process with the version directory on ``sys.path``. Here many
    models share a process, so instead of ``sys.path`` every module of a model gets an
    ``__import__`` that maps the names of its sibling files to ``<package>.<name>``, its
    private copy. It applies for the model's whole life, so imports inside ``initialize`` or
    ``execute`` resolve the same way as imports at the top of ``model.py``.
    """
    table = dict(vars(builtins))
    real_import = builtins.__import__

    def model_import(
        name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> types.ModuleType:
        top = name.partition(".")[0]
        if level != 0 or top not in siblings:
            return real_import(name, globals, locals, fromlist, level)
        module = _import_sibling(f"{package}.{name}", table)
        return module if fromlist else sys.modules[f"{package}.{top}"]

    table["__import__"] = model_import
    return table


def _import_sibling(full_name: str, table: dict[str, Any]) -> types.ModuleType:
    """Import ``<package>.<sibling>[.<sub>]``, giving each newly executed module the model's builtins."""
    parent, _, _ = full_name.rpartition(".")
    if parent and parent not in sys.modules:
        _import_sibling(parent, table)
    with _import_lock:
        module = sys.modules.get(full_name)
        if module is not None:
            return module
        spec = importlib.util.find_spec(full_name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named '{full_name.rpartition('.')[2]}'", name=full_name)
        module = importlib.util.module_from_spec(spec)
        module.__dict__["__builtins__"] = table
        sys.modules[full_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full_name]
            raise
        return module


def drop_modules(prefix: str) -> None:
    for name in _module_names():
        if name == prefix or name.startswith(prefix + "."):
            sys.modules.pop(name, None)


def _module_names() -> set[str]:
    """The names in ``sys.modules`` now. Other threads import while we look (other loads, lazy
    imports); iterating the dict itself can then fail on a free-threaded build ("dictionary
    changed size during iteration"), so it is copied first: ``dict.copy`` is one atomic step."""
    return set(sys.modules.copy())
