"""Reading the deployment files as their consumers do: YAML documents, the Dockerfile's instructions,
and container command lines through evserve's own argument parser.

The command lines are checked by the parser the ``evserve`` console script runs
(``server/cli.py``), so a flag a manifest passes that evserve would refuse, or a value it would
reject, fails here instead of in a crash-looping pod.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from evserve.server.cli import build_parser, config_from_args
from evserve.server.config import Config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"


def documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def only_document(path: Path) -> dict[str, Any]:
    docs = documents(path)
    assert len(docs) == 1, f"{path.name}: expected one document, found {len(docs)}"
    return docs[0]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT (exec form), which a Deployment's ``args`` are appended to."""
    entrypoints = [rest for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()) if keyword == "ENTRYPOINT"]
    assert len(entrypoints) == 1, entrypoints
    command = json.loads(entrypoints[0])
    assert isinstance(command, list) and all(isinstance(part, str) for part in command), command
    return command


def container_command(container: dict[str, Any]) -> list[str]:
    """What the container runs: its ``command`` or the image's entrypoint, then its ``args``."""
    return [*(container.get("command") or image_entrypoint()), *container.get("args", [])]


def evserve_arguments(command: list[str]) -> tuple[argparse.Namespace, Config]:
    """Parse an ``evserve ...`` command line with evserve's parser, as the console script would."""
    assert command and command[0] == "evserve", f"the container does not run evserve: {command}"
    parser = build_parser()
    try:
        args = parser.parse_args(command[1:])
    except SystemExit as exc:
        raise AssertionError(f"evserve refuses {command[1:]} (status {exc.code})") from None
    return args, config_from_args(args)


def with_value(command: list[str], flag: str, value: str) -> list[str]:
    """``command`` with every ``flag=X`` or ``flag X`` set to ``value`` (to run it on free ports)."""
    out: list[str] = []
    skip = False
    for index, part in enumerate(command):
        if skip:
            skip = False
            continue
        if part.startswith(flag + "="):
            out.append(f"{flag}={value}")
        elif part == flag and index + 1 < len(command):
            out.extend([flag, value])
            skip = True
        else:
            out.append(part)
    return out
