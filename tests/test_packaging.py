"""The three top-level folders install as evserve.server, evserve.protocol and evserve.gpu only.

Generic top-level names such as ``server`` or ``gpu`` in site-packages would clash with other
distributions, so they must never be importable: neither in this test process (pytest's
importlib mode keeps the repository root off sys.path) nor in a fresh interpreter started
outside the repository, which is how an installed evserve is used.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUBPACKAGES = ("server", "protocol", "gpu")
REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_namespaced_subpackage_imports(name: str) -> None:
    module = importlib.import_module(f"evserve.{name}")
    assert module.__name__ == f"evserve.{name}"
    assert Path(module.__file__).resolve().parent.name == name


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_bare_name_is_not_importable_here(name: str) -> None:
    on_path = {Path(entry or os.getcwd()).resolve() for entry in sys.path}
    if REPOSITORY in on_path:
        pytest.skip("the repository root is on sys.path (python -m pytest?); the subprocess test still checks")
    assert importlib.util.find_spec(name) is None


def test_bare_names_are_not_importable_from_a_fresh_interpreter(tmp_path: Path) -> None:
    code = (
        "import importlib, importlib.util\n"
        f"names = {SUBPACKAGES!r}\n"
        "for name in names: importlib.import_module('evserve.' + name)\n"
        "print([name for name in names if importlib.util.find_spec(name) is not None])\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_source_package_is_listed_for_installation() -> None:
    """setup.cfg lists packages by name: a new subpackage left out installs as nothing (an
    editable install hides that; a clean install fails at import)."""
    config = configparser.ConfigParser()
    config.read(REPOSITORY / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {
        "evserve." + ".".join(init.parent.relative_to(REPOSITORY).parts)
        for folder in SUBPACKAGES
        for init in (REPOSITORY / folder).rglob("__init__.py")
        if "example_models" not in init.parts
    }
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"


def test_every_bundled_model_file_is_package_data() -> None:
    """The bundled repository ships as package data: a file no pattern matches is missing from a
    wheel (an editable install hides that), and the model fails to load from a clean install."""
    config = configparser.ConfigParser()
    config.read(REPOSITORY / "setup.cfg")
    patterns = config["options.package_data"]["evserve.gpu"].split()
    root = REPOSITORY / "gpu"
    files = [path.relative_to(root).as_posix() for path in (root / "example_repository").rglob("*")
             if path.is_file() and "__pycache__" not in path.parts]
    assert files
    unmatched = [name for name in files if not any(fnmatch.fnmatch(name, p) for p in patterns)]
    assert not unmatched, f"add to setup.cfg [options.package_data]: {unmatched}"
    versions = [path for path in (root / "example_repository").glob("*/*") if path.is_dir()]
    assert all(any(v.iterdir()) for v in versions), "an empty version folder never reaches a wheel"
