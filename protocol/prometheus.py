"""Prometheus text exposition format (version 0.0.4), written by hand on purpose.

Triton's metric names (``nv_inference_request_success`` and friends) are counters *without*
the ``_total`` suffix that current client libraries force onto counters, and dashboards
built for Triton query those exact names. The format is small: HELP and TYPE lines, then
one sample per line with escaped label values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass(slots=True)
class Family:
    """One metric family: a name, its type (counter, gauge, histogram) and its samples.

    A histogram's samples carry their name suffix (``_bucket``, ``_sum``, ``_count``).
    """

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float, str]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        self.samples.append((labels, value, suffix))


def render(families: list[Family]) -> bytes:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value, suffix in family.samples:
            name = family.name + suffix
            if labels:
                inner = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
                lines.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")
    lines.append("")
    return "\n".join(lines).encode("utf-8")
