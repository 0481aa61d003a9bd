"""Writing the load API's ``file:<version>/<path>`` overrides into a fresh model directory.

Why this is careful: the load API writes client-supplied bytes to client-supplied paths, which
is how Triton got public arbitrary-file-write reports in 2024. Every path is checked twice:
lexically (relative, no NUL, no empty/``.``/``..`` components, components of at most 255 bytes)
and physically (the real path of the directory a file lands in must stay inside the model
directory, so a symlink can never carry a write elsewhere). Files are written to a temporary
name in their final directory and renamed into place, so a half-written file is never
visible, and a rename onto an existing symlink replaces the link rather than following it.

The directory itself comes from ``tempfile.mkdtemp`` under a root the server owns; nothing is
ever written into a model repository.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
from collections.abc import Mapping

from evserve.protocol.errors import BadRequest

FILE_PREFIX = "file:"
MAX_COMPONENT_BYTES = 255


def escape_error(model_name: str) -> BadRequest:
    return BadRequest(f"failed to load '{model_name}': file path must stay within model directory")


def split_relative_path(model_name: str, relative: str) -> list[str]:
    """The components of an override path, or BadRequest when it could leave the model directory."""
    if not relative or "\0" in relative or relative.startswith(("/", "\\")) or os.path.isabs(relative):
        raise escape_error(model_name)
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise escape_error(model_name)
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES for part in parts):
        # Triton's text for this case (qa test_load_oversized_file_parameter); a 400 here.
        raise BadRequest(f"failed to load '{model_name}', failed to poll from model repository: "
                         f"a path component is longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def write_file(model_name: str, model_dir: str, parts: list[str], data: bytes) -> str:
    """Write ``data`` at ``model_dir/<parts>`` without ever touching anything outside ``model_dir``."""
    root = os.path.realpath(model_dir)
    parent = os.path.join(root, *parts[:-1])
    # Check before creating anything: an existing symlinked directory must not be followed.
    if not _inside(os.path.realpath(parent), root):
        raise escape_error(model_name)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise BadRequest(f"failed to load '{model_name}': cannot create '{'/'.join(parts)}': {exc.strerror}") from exc
    real_parent = os.path.realpath(parent)
    if not _inside(real_parent, root):
        raise escape_error(model_name)
    target = os.path.join(real_parent, parts[-1])
    fd, temp = tempfile.mkstemp(dir=real_parent, prefix=".evserve-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, target)
    except OSError as exc:
        if os.path.exists(temp):
            os.unlink(temp)
        raise BadRequest(f"failed to load '{model_name}': cannot write '{'/'.join(parts)}': {exc.strerror}") from exc
    return target


def decode_contents(model_name: str, key: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"failed to load '{model_name}': parameter '{key}' is not valid base64") from exc


def materialize(model_name: str, files: Mapping[str, str], temp_root: str) -> str:
    """Create a fresh model directory under ``temp_root`` holding the decoded ``file:`` overrides.

    ``files`` maps ``file:<relative path>`` keys to base64 text. On any error the directory is
    removed again and BadRequest is raised; on success the caller owns (and later removes) it.
    """
    os.makedirs(temp_root, mode=0o700, exist_ok=True)
    model_dir = tempfile.mkdtemp(prefix="model-", dir=temp_root)
    try:
        for key, value in files.items():
            parts = split_relative_path(model_name, key[len(FILE_PREFIX):])
            write_file(model_name, model_dir, parts, decode_contents(model_name, key, value))
    except BaseException:
        shutil.rmtree(model_dir, ignore_errors=True)
        raise
    return model_dir
