"""The decoded forms of a v2 inference request and response, shared by every codec.

Codecs (JSON, binary extension, msgpack) turn bytes into these and back; the engine in
``evserve.gpu`` only ever sees these. Tensor data is always a NumPy array: numeric types
with their little-endian dtype, BYTES as a 1-D-or-more object array of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evserve.protocol.shared_memory import ShmRef


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model as its config declares it (protocol names, -1 = any)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    # The shape the model sees when the config has `reshape`; None when it has none.
    reshape: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What request validation needs to know of one model version.

    ``plan`` is derived once, here, for the decoder's common path
    (:class:`evserve.protocol.request_plan.RequestPlan`).
    """

    name: str
    version: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    plan: Any = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Imported here: request_plan builds the request types defined in this module.
        from evserve.protocol.request_plan import RequestPlan

        object.__setattr__(self, "plan", RequestPlan(self))

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output(self, name: str) -> TensorSpec | None:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        return None


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool = False
    # Top-N classification requested through `parameters.classification`; 0 = off.
    classification: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
    # The client shared-memory region this output goes to (then it carries no data), and its bytes.
    shm_ref: ShmRef | None = None
    shm: memoryview | None = None


@dataclass(slots=True)
class InferRequest:
    """A decoded and validated `/infer` request."""

    model_name: str
    model_version: str
    id: str = ""
    # Request-level parameters that reach the model (scalars only; triton_* refused).
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[InputTensor] = field(default_factory=list)
    # None means "every output of the model".
    outputs: list[RequestedOutput] | None = None
    # Applies to outputs the request does not list (Triton's rule).
    binary_data_output: bool = False
    # Inference-Header-Content-Length: 0 — the body was one raw input; every output goes back binary.
    raw: bool = False
    # The request was msgpack; the reply is msgpack too.
    msgpack: bool = False


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str = ""
    outputs: list[OutputTensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EncodedReply:
    """A reply ready for the wire: status, headers, and buffers written with one writelines()."""

    status: int
    headers: list[tuple[str, str]]
    buffers: list[bytes | memoryview]

    @property
    def body_length(self) -> int:
        return sum(len(b) if isinstance(b, bytes) else b.nbytes for b in self.buffers)
