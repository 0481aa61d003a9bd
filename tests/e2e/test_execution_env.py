"""EXECUTION_ENV_PATH: two models pin different versions of one package in their own environments.

Two virtual environments are made here, each holding its own version of a small pure-Python
package (``pinned_pkg``) that the server's environment does not have. One model names its
environment's folder, the other a tarball of its environment (the form Triton documents); each
model imports the package at the top of its model.py and answers the version it got, and which
interpreter prefix it runs under. A third model, in the server's environment, must not see the
package at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import call, index
from tests.evserve_process import EvserveProcess

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
{parameters}
"""
MODEL = """
import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    import pinned_pkg
    VERSION = pinned_pkg.__version__
except ImportError:
    VERSION = "none"


class TritonPythonModel:
    def execute(self, requests):
        seen = json.dumps({"version": VERSION, "prefix": sys.prefix}).encode()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([seen], dtype=object))])
                for _ in requests]
"""


def _environment(root: Path, version: str) -> Path:
    """A venv (no pip: fast) whose site-packages holds pinned_pkg at ``version``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    purelib = sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)})
    package = Path(purelib) / "pinned_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f'__version__ = "{version}"\n')
    return root


def _model(repository: Path, name: str, env_path: str | None) -> None:
    parameters = ""
    if env_path is not None:
        parameters = f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env_path}" }} }}'
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(CONFIG.format(name=name, parameters=parameters))
    (repository / name / "1" / "model.py").write_text(MODEL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvserveProcess]:
    root = tmp_path_factory.mktemp("environments")
    first = _environment(root / "env-one", "1.0")
    second = _environment(root / "env-two", "2.0")
    repository = root / "models"
    _model(repository, "in_folder_env", str(first))
    _model(repository, "in_tarball_env", None)  # written below: its tarball lives in the model folder
    with tarfile.open(repository / "in_tarball_env" / "env-two.tar.gz", "w:gz") as archive:
        archive.add(second, arcname=".")
    config = repository / "in_tarball_env" / "config.pbtxt"
    config.write_text(CONFIG.format(name="in_tarball_env", parameters=(
        'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env-two.tar.gz" } }')))
    _model(repository, "server_env", None)
    _model(repository, "missing_env", str(root / "nowhere"))
    with EvserveProcess("--model-repository", str(repository), "--exit-on-error=false",
                        "--strict-readiness=false") as proc:
        yield proc


def _seen(server: EvserveProcess, model: str) -> dict[str, str]:
    body = json.dumps({"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode()
    reply = call(server.port, "POST", f"/v2/models/{model}/infer", body)
    assert reply.status == 200, reply.body
    return json.loads(reply.json()["outputs"][0]["data"][0])


def test_each_model_imports_its_own_environments_version(server: EvserveProcess) -> None:
    folder, tarball, own = _seen(server, "in_folder_env"), _seen(server, "in_tarball_env"), _seen(server, "server_env")
    assert folder["version"] == "1.0" and folder["prefix"].endswith("env-one")
    assert tarball["version"] == "2.0" and "evserve-envs" in tarball["prefix"]
    assert own["version"] == "none"  # the server's environment has no pinned_pkg


def test_a_missing_environment_fails_the_load_naming_the_parameter(server: EvserveProcess) -> None:
    reason = index(server.port)["missing_env"]["reason"]
    assert "EXECUTION_ENV_PATH" in reason and "nowhere" in reason
