"""Per-model Python environments: ``EXECUTION_ENV_PATH`` names the interpreter a model's children run on.

Triton's python backend accepts a conda-pack tarball there; evserve also accepts a virtual
environment's directory, which is what most Python users already have. The model's instances then
run in child processes on that environment's interpreter, so two models can pin different
versions of a library.

How evserve itself reaches a foreign interpreter: the child starts with ``-c`` and a bootstrap
that adds the server's own site directories *after* the environment's (``site.addsitedir``
processes their ``.pth`` files, so an editable install works too). The model's imports find the
environment's packages first and fall back to the server's for what the environment lacks
(numpy, msgpack). That only works between interpreters of one ABI, so the environment's Python
must be the server's version and build (``3.11``, ``3.14t``); anything else fails the load
with both versions named.

A tarball is unpacked once per path and modification time into a folder under the temporary
directory, next to which it is kept for later loads; ``conda-unpack`` is run when the tarball
has one, as conda-pack requires.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
import tarfile
import tempfile
import threading

from evserve.gpu.repository.config_parse import ModelConfigError

PARAMETER = "EXECUTION_ENV_PATH"
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"
SITE_DIRS_VARIABLE = "EVSERVE_CHILD_SITE_DIRS"
_TARBALLS = (".tar.gz", ".tgz", ".tar")
_unpack_lock = threading.Lock()

# Run by the environment's interpreter: the server's site directories after its own, then the child.
BOOTSTRAP = (
    "import os, runpy, site\n"
    f"for d in os.environ.get({SITE_DIRS_VARIABLE!r}, '').split(os.pathsep):\n"
    "    d and site.addsitedir(d)\n"
    "runpy.run_module('evserve.gpu.process.child', run_name='__main__')\n"
)


def _abi(python: str) -> str:
    """``3.11`` or ``3.14t``: what must match for the server's extension modules to load."""
    code = "import sys; print('%d.%d%s' % (*sys.version_info[:2], getattr(sys, 'abiflags', '')))"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelConfigError(f"{PARAMETER}: cannot run the environment's interpreter {python}: {exc}") from None
    return done.stdout.strip()


def server_abi() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}{getattr(sys, 'abiflags', '')}"


def _interpreter(root: str) -> str | None:
    for name in ("python3", "python"):
        candidate = os.path.join(root, "bin", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _unpacked(tarball: str) -> str:
    """The folder a tarball is unpacked in (once per path and modification time)."""
    stamp = f"{os.path.realpath(tarball)}:{os.stat(tarball).st_mtime_ns}".encode()
    target = os.path.join(tempfile.gettempdir(), "evserve-envs", hashlib.sha256(stamp).hexdigest()[:16])
    with _unpack_lock:
        if os.path.isdir(target):
            return target
        partial = target + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        try:
            with tarfile.open(tarball) as archive:
                if hasattr(tarfile, "tar_filter"):  # 3.10.12+: no absolute paths or links out of the folder
                    archive.extractall(partial, filter="tar")
                else:
                    archive.extractall(partial)  # noqa: S202 - older 3.10 releases have no filters
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise ModelConfigError(f"{PARAMETER}: cannot unpack {tarball}: {exc}") from None
        unpack = os.path.join(partial, "bin", "conda-unpack")
        if os.path.isfile(unpack):
            subprocess.run([unpack], cwd=partial, check=False, timeout=300, capture_output=True)
        os.rename(partial, target)
    return target


def resolve(value: str, model_dir: str) -> str:
    """The interpreter an ``EXECUTION_ENV_PATH`` value names; raises ModelConfigError with the reason."""
    path = value.replace(MODEL_DIRECTORY, model_dir)
    if not os.path.isabs(path):
        path = os.path.join(model_dir, path)
    if os.path.isdir(path):
        root = path
    elif os.path.isfile(path) and path.endswith(_TARBALLS):
        root = _unpacked(path)
    else:
        raise ModelConfigError(f"{PARAMETER} '{value}': no environment folder or .tar.gz/.tgz/.tar tarball at {path}")
    python = _interpreter(root)
    if python is None:
        raise ModelConfigError(f"{PARAMETER} '{value}': no bin/python3 in {root}")
    found, wanted = _abi(python), server_abi()
    if found != wanted:
        raise ModelConfigError(f"{PARAMETER} '{value}': its Python is {found}, the server's is {wanted}; the "
                               "environment must use the server's Python version and build")
    return python


def child_command(python: str) -> list[str]:
    """The start of a child's command line on ``python`` (the server's own interpreter or an environment's)."""
    if python == sys.executable:
        return [python, "-m", "evserve.gpu.process.child"]
    return [python, "-c", BOOTSTRAP]


def child_environment(python: str) -> dict[str, str] | None:
    """The environment variables of a child on ``python`` (None: inherit the server's)."""
    if python == sys.executable:
        return None
    dirs = [*site.getsitepackages(), site.getusersitepackages(), *(p for p in sys.path if p.endswith("site-packages"))]
    return {**os.environ, SITE_DIRS_VARIABLE: os.pathsep.join(dict.fromkeys(d for d in dirs if os.path.isdir(d)))}
