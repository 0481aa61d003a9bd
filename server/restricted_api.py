"""``--http-restricted-api``: API groups that answer only requests carrying a given header value.

Triton's syntax, ``<api>[,<api>...]:<header>=<value>``, repeatable; each API group may appear in one
restriction only, and an unknown group is a start-up error (both with Triton's texts). A request
to a restricted group without the header, or with another value, gets 403 ``This API is
restricted, expecting header '<header>'``. Header names match case-insensitively, values exactly.
The check runs before the method check, as in Triton, and costs nothing when no API is restricted.
"""

from __future__ import annotations

from collections.abc import Iterable

from evserve.protocol.paths import Endpoint

# Triton's API groups and the endpoints in each (restricted_features.h).
GROUPS: dict[str, tuple[Endpoint, ...]] = {
    "health": (Endpoint.HEALTH_LIVE, Endpoint.HEALTH_READY, Endpoint.MODEL_READY),
    "metadata": (Endpoint.SERVER_METADATA, Endpoint.MODEL_METADATA),
    "inference": (Endpoint.MODEL_INFER, Endpoint.MODEL_GENERATE, Endpoint.MODEL_GENERATE_STREAM),
    "shared-memory": (Endpoint.SYSTEM_SHM, Endpoint.CUDA_SHM),
    "model-config": (Endpoint.MODEL_CONFIG,),
    "model-repository": (
        Endpoint.REPOSITORY_INDEX, Endpoint.REPOSITORY_LOAD, Endpoint.REPOSITORY_UNLOAD,
        Endpoint.REPOSITORY_NAMED_CONTROL,
    ),
    "statistics": (Endpoint.MODEL_STATS,),
    "trace": (Endpoint.TRACE, Endpoint.MODEL_TRACE),
    "logging": (Endpoint.LOGGING,),
}


def parse_restrictions(specs: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
    """(group, header, value) for every group the flag values restrict; ValueError with Triton's text."""
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    for spec in specs:
        groups_text, sep, rule = spec.partition(":")
        header, eq, value = rule.partition("=")
        if not sep or not eq or not header or not groups_text:
            raise ValueError(
                f"--http-restricted-api expects <api>[,<api>...]:<key>=<value>, got '{spec}'"
            )
        for group in (g.strip() for g in groups_text.split(",")):
            if group not in GROUPS:
                raise ValueError(f"unknown restricted api '{group}'")
            if group in seen:
                raise ValueError(f"restricted api '{group}' can not be specified in multiple config groups")
            seen.add(group)
            out.append((group, header, value))
    return tuple(out)


def restrictions_by_endpoint(rules: Iterable[tuple[str, str, str]]) -> dict[Endpoint, tuple[str, str, str]]:
    """Endpoint → (lower-cased header, value, header as given) for the router's one lookup."""
    table: dict[Endpoint, tuple[str, str, str]] = {}
    for group, header, value in rules:
        for endpoint in GROUPS[group]:
            table[endpoint] = (header.lower(), value, header)
    return table
