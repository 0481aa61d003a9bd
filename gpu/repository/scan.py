"""Reading a Triton model repository from disk: models, version directories, config files.

Kept free of protobuf and of model state so that the model manager can rescan cheaply (poll
mode) and so that every rule about what counts as a model or a version lives in one place. The
rules follow Triton's model repository manager (core ``model_repository_manager.cc`` and
``model_lifecycle.cc``), with the deviations noted on each function.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_log = logging.getLogger(__name__)

DUPLICATE_REASON = "model appears in two or more repositories"
CONFIG_FILE = "config.pbtxt"
CONFIGS_FOLDER = "configs"

_MODEL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}", re.ASCII)
# Triton ignores version directories with leading zeros and names that are not integers.
_VERSION_NAME = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_MAX_VERSION = 2**63 - 1
# Written by Python itself when a model.py is imported: never a change made by the user.
_IGNORED_DIRS = frozenset({"__pycache__"})


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where a model lives: its name, its directory, and the repository that holds it."""

    name: str
    path: str
    repository: str


def is_valid_model_name(name: str) -> bool:
    """Whether ``name`` may name a model: 1 to 128 of ``[A-Za-z0-9_.-]``, not ``.`` or ``..``.

    Narrower than Triton (which takes any directory name) so that a name is always safe as a path
    component, in a URL and in JSON.
    """
    return bool(_MODEL_NAME.fullmatch(name)) and name not in (".", "..")


def _model_dirs(repository: str, unreadable: dict[str, str]) -> Iterator[os.DirEntry[str]]:
    """The model folders of one repository; entries that cannot be read go to ``unreadable``.

    One broken entry (a symlink loop, a folder without permission) must not hide the others.
    """
    with os.scandir(repository) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError as exc:
                if is_valid_model_name(entry.name):
                    unreadable[entry.name] = f"cannot read '{entry.path}': {exc.strerror or exc}"
                continue
            if not is_dir:
                continue
            if not is_valid_model_name(entry.name):
                _log.warning("skipping %r in %s: not a valid model name ([A-Za-z0-9_.-]{1,128})", entry.name,
                             repository)
                continue
            yield entry


def scan_repositories(paths: Iterable[str]) -> tuple[dict[str, ModelSource], dict[str, str]]:
    """Every model of every repository, and the names that cannot be served with the reason why.

    A model is a subdirectory of a repository; files, hidden directories and directories whose
    names fail :func:`is_valid_model_name` are skipped (with a warning). An entry that cannot be
    read is unservable with the error as its reason. A name found in two repositories is
    served from neither (Triton's rule) and is returned in the second mapping with the reason
    ``model appears in two or more repositories``. The same directory listed twice counts once.
    Raises ``OSError`` when a repository cannot be listed.
    """
    found: dict[str, list[ModelSource]] = {}
    unreadable: dict[str, str] = {}
    seen_repositories: set[str] = set()
    for repository in paths:
        real = os.path.realpath(repository)
        if real in seen_repositories:
            continue
        seen_repositories.add(real)
        for entry in _model_dirs(repository, unreadable):
            source = ModelSource(entry.name, os.path.join(repository, entry.name), repository)
            found.setdefault(entry.name, []).append(source)
    models = {name: sources[0] for name, sources in found.items() if len(sources) == 1}
    unavailable = {name: DUPLICATE_REASON for name, sources in found.items() if len(sources) > 1}
    for name, reason in unreadable.items():
        if name not in found:
            unavailable[name] = reason
    return models, unavailable


def available_versions(model_dir: str) -> list[int]:
    """The version numbers present under ``model_dir``, ascending.

    A version is a directory named by a decimal integer without leading zeros ("0" itself
    counts). Triton parses names with ``std::stoll`` and so would read "1abc" as 1; evserve ignores
    every name that is not all digits, as Triton's documentation describes.
    """
    try:
        entries = list(os.scandir(model_dir))
    except OSError:
        return []
    versions = []
    for entry in entries:
        if _VERSION_NAME.fullmatch(entry.name) and entry.is_dir():
            version = int(entry.name)
            if version <= _MAX_VERSION:
                versions.append(version)
    return sorted(versions)


def select_versions(policy: dict, versions: list[int]) -> list[int]:
    """The versions a ``version_policy`` (the completed config's JSON form) selects, ascending.

    ``latest`` keeps the ``num_versions`` highest, ``specific`` keeps the listed versions that
    exist, and anything else (``all``, or no policy at all) keeps every version: the same order
    of tests as Triton's ``VersionsToLoad``.
    """
    present = sorted(set(versions))
    if "specific" in policy:
        wanted = {int(v) for v in policy["specific"].get("versions", [])}
        return [v for v in present if v in wanted]
    if "latest" in policy:
        count = int(policy["latest"].get("num_versions", 0))
        return present[len(present) - count :] if count > 0 else []
    return present


def config_path(model_dir: str, config_name: str | None = None) -> str:
    """The config file a model uses: ``configs/<config_name>.pbtxt`` when it exists (Triton's
    ``--model-config-name``), ``config.pbtxt`` otherwise."""
    if config_name:
        custom = os.path.join(model_dir, CONFIGS_FOLDER, config_name + ".pbtxt")
        if os.path.isfile(custom):
            return custom
    return os.path.join(model_dir, CONFIG_FILE)


def read_config_text(model_dir: str, config_name: str | None = None) -> str | None:
    """The text of the model's config file, or ``None`` when there is none.

    A missing config is not an error: Triton's python backend can auto-complete the whole
    configuration. Raises ``OSError`` when the file exists but cannot be read and
    ``UnicodeDecodeError`` when it is not UTF-8.
    """
    try:
        with open(config_path(model_dir, config_name), "rb") as config_file:
            data = config_file.read()
    except FileNotFoundError:
        return None
    return data.decode("utf-8")


def _walk_stats(model_dir: str) -> Iterator[str]:
    """One line per file and directory under ``model_dir`` (symlinks followed, loops cut)."""
    visited: set[tuple[int, int]] = set()
    for top, dirs, files in os.walk(model_dir, followlinks=True):
        try:
            stat = os.stat(top)
        except OSError:
            dirs.clear()
            continue
        if (stat.st_dev, stat.st_ino) in visited:
            dirs.clear()
            continue
        visited.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if d not in _IGNORED_DIRS)
        relative_top = os.path.relpath(top, model_dir)
        # A directory's own mtime is left out: writing __pycache__ into it would change it.
        yield f"d\0{relative_top}"
        for name in sorted(files):
            try:
                file_stat = os.stat(os.path.join(top, name))
            except OSError:
                continue  # removed while we walked, or a dangling symlink
            yield f"f\0{os.path.join(relative_top, name)}\0{file_stat.st_size}\0{file_stat.st_mtime_ns}"


def fingerprint(model_dir: str) -> str:
    """A digest of the path, size and modification time of every file under ``model_dir``,
    and of the names of its directories.

    Poll mode compares fingerprints to decide whether a model changed, without reading file
    contents. ``__pycache__`` directories are left out, since importing ``model.py`` writes
    them and that must not look like an edit. A missing directory digests as an empty one.
    """
    digest = hashlib.blake2b(digest_size=16)
    for line in _walk_stats(model_dir):
        digest.update(line.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()
