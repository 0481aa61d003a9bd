"""Shared configs for the repository tests: Triton's qa ``simple`` model and a completion helper."""

from __future__ import annotations

from evserve.gpu.repository.config_complete import complete_config
from evserve.gpu.repository.config_parse import parse_pbtxt

SOURCE = "/models/simple/config.pbtxt"

# Triton's qa `simple` model, served by the python backend.
SIMPLE_PBTXT = """
name: "simple"
backend: "python"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
"""


def complete_text(text: str, name: str = "simple", **kwargs: object) -> dict:
    return complete_config(parse_pbtxt(text, SOURCE), name, SOURCE, **kwargs)


def simple() -> dict:
    return complete_text(SIMPLE_PBTXT)
