"""What the server says once its start-up models are in: Triton's model table and where it listens.

Operators read the start-up log to learn which models came up; Triton prints a table of every
model with its version, status and the reason when it is not READY, after the models loaded and
before "Started HTTPService at ...". evserve prints the same table at the same moment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def model_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The repository index as Triton's ASCII table (Model, Version, Status; Reason when any row has one)."""
    body = [
        [str(row.get("name", "")), str(row.get("version", "-")), str(row.get("state", "UNAVAILABLE")),
         " ".join(str(row.get("reason", "")).split())]
        for row in rows
    ]
    header = ["Model", "Version", "Status", "Reason"]
    if not any(row[3] for row in body):
        header, body = header[:3], [row[:3] for row in body]
    if not body:
        return "no models in the repository"
    return _ascii_table(header, body)


def _ascii_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {cell:<{w}} " for cell, w in zip(cells, widths, strict=True)) + "|"

    return "\n".join([rule, line(header), rule, *(line(row) for row in rows), rule])
