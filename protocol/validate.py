"""Checks of a request's tensors against the model's signature, done before any allocation.

Shapes are checked in Python integers, which cannot overflow, so a shape such as
``[2**62, 2**62]`` is refused by arithmetic rather than by a failed ``np.empty``. The
messages are Triton's (core ``infer_request.cc`` and the HTTP frontend) so that clients and
tests that match on them keep working; only the ``[request id: ...]`` prefix is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evserve.protocol.datatypes import itemsize
from evserve.protocol.errors import BadRequest
from evserve.protocol.shared_memory import ShmRef
from evserve.protocol.types import ModelSignature, TensorSpec

# Triton allows 64 dimensions; no real model needs more than a handful, and every extra
# dimension is work for an attacker to make us do.
MAX_NDIM = 16
INT64_MAX = 2**63 - 1

_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be "
    "prepended to each input shape. If you want to specify the full shape including the batch dim in "
    "your input dims config, try setting max_batch_size to zero. See the model configuration docs for "
    "more info on max_batch_size."
)


@dataclass(slots=True)
class InputPlan:
    """One request input after parsing, before its data is decoded.

    ``data`` is the JSON/msgpack ``data`` value (a list, or bytes in msgpack), or None
    when the tensor's bytes are in the binary section (``binary_size`` set).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int
    parameters: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    binary_size: int | None = None
    # Set when the tensor lives in a client shared-memory region (protocol/shared_memory.py).
    shm: ShmRef | None = None


def dims_string(dims: Sequence[int]) -> str:
    """Triton's DimsListToString: ``[-1,16]``."""
    return "[" + ",".join(str(d) for d in dims) + "]"


def parse_shape(name: str, value: object) -> tuple[int, ...]:
    """A request ``shape``: a list of at most MAX_NDIM non-negative integers."""
    if not isinstance(value, list):
        raise BadRequest(f"Unable to parse 'shape' for input '{name}': expected an array of integers")
    if len(value) > MAX_NDIM:
        raise BadRequest(
            f"Unable to parse 'shape' for input '{name}': {len(value)} dimensions exceed the maximum of {MAX_NDIM}"
        )
    for dim in value:
        # bool is an int subclass; JSON true is not a dimension.
        if type(dim) is not int or dim < 0:
            raise BadRequest(
                f"Unable to parse 'shape' for input '{name}': dimensions must be non-negative integers, "
                f"got {_shape_text(value)}"
            )
    return tuple(value)


def _shape_text(value: list[Any]) -> str:
    return "[" + ",".join(repr(v) for v in value) + "]"


def element_count(name: str, shape: Sequence[int]) -> int:
    """Product of ``shape``; 400 when it cannot be an int64, as Triton checks.

    An empty tensor is refused too when its non-zero dimensions alone overflow: NumPy
    cannot even describe such a shape, and no model can have asked for it.
    """
    count = math.prod(shape)
    if count > INT64_MAX or (count == 0 and math.prod(d or 1 for d in shape) > INT64_MAX // 16):
        raise BadRequest(
            f"invalid shape for input '{name}': shape {dims_string(shape)} causes total element count to exceed "
            f"maximum size of {INT64_MAX}"
        )
    return count


def expected_byte_size(plan: InputPlan) -> int | None:
    """count × itemsize for fixed-size types (None for BYTES), refusing int64 overflow."""
    size = itemsize(plan.datatype)
    if size is None:
        return None
    if plan.count > INT64_MAX // size:
        raise BadRequest(
            f"byte size overflow for input '{plan.name}': element count ({plan.count}) * data type size ({size}) "
            f"exceeds maximum allowed size ({INT64_MAX})"
        )
    return plan.count * size


def check_json_size(plan: InputPlan, byte_size: int, max_input_size: int) -> None:
    """Refuse a JSON (or msgpack list) tensor whose decoded form is over the input limit."""
    if byte_size > max_input_size:
        raise BadRequest(
            f"JSON input '{plan.name}' has a byte_size ({byte_size} bytes) that exceeds the maximum allowed value "
            f"of {max_input_size} bytes. Use --http-max-input-size to increase the limit."
        )


def check_inputs(plans: Sequence[InputPlan], signature: ModelSignature) -> None:
    """Names, count, batch size, datatype and shape of every input, in Triton's order."""
    model = signature.name
    specs = [_known_input(plan, signature) for plan in plans]
    _check_required(plans, signature)
    _check_batch(plans, signature)
    for plan, spec in zip(plans, specs, strict=True):
        if plan.datatype != spec.datatype:
            raise BadRequest(
                f"inference input '{plan.name}' data-type is '{plan.datatype}', but model '{model}' expects "
                f"'{spec.datatype}'"
            )
        _check_dims(plan, spec, signature)


def _known_input(plan: InputPlan, signature: ModelSignature) -> TensorSpec:
    spec = signature.input(plan.name)
    if spec is None:
        raise BadRequest(f"unexpected inference input '{plan.name}' for model '{signature.name}'")
    return spec


def _check_required(plans: Sequence[InputPlan], signature: ModelSignature) -> None:
    given = {plan.name for plan in plans}
    missing = [spec.name for spec in signature.inputs if not spec.optional and spec.name not in given]
    if not missing:
        return
    required = sum(1 for spec in signature.inputs if not spec.optional)
    total = len(signature.inputs)
    got = "[" + ",".join(f"'{plan.name}'" for plan in plans) + "]"
    absent = "[" + ",".join(f"'{name}'" for name in missing) + "]"
    if required == total:
        expected = f"expected {total} inputs"
    else:
        expected = f"expected number of inputs between {required} and {total}"
    raise BadRequest(
        f"{expected} but got {len(plans)} inputs for model '{signature.name}'. Got input(s) {got}, "
        f"but missing required input(s) {absent}. Please provide all required input(s)."
    )


def _check_batch(plans: Sequence[InputPlan], signature: ModelSignature) -> None:
    if signature.max_batch_size <= 0:
        return
    batch: int | None = None
    for plan in plans:
        if not plan.shape:
            raise BadRequest(
                f"input '{plan.name}' has no shape but model requires batch dimension for '{signature.name}'"
            )
        if batch is None:
            batch = plan.shape[0]
        elif plan.shape[0] != batch:
            raise BadRequest(f"input '{plan.name}' batch size does not match other inputs for '{signature.name}'")
    if batch is not None and batch > signature.max_batch_size:
        raise BadRequest(f"inference request batch-size must be <= {signature.max_batch_size} for '{signature.name}'")


def _check_dims(plan: InputPlan, spec: TensorSpec, signature: ModelSignature) -> None:
    batching = signature.max_batch_size > 0
    dims = plan.shape[1:] if batching else plan.shape
    if len(dims) == len(spec.dims) and all(want in (-1, got) for want, got in zip(spec.dims, dims, strict=True)):
        return
    full = ((-1,) if batching else ()) + tuple(spec.dims)
    message = (
        f"unexpected shape for input '{plan.name}' for model '{signature.name}'. Expected {dims_string(full)}, "
        f"got {dims_string(plan.shape)}."
    )
    raise BadRequest(f"{message} {_BATCH_NOTE}" if batching else message)


def check_outputs(names: Sequence[str], signature: ModelSignature) -> None:
    for name in names:
        if signature.output(name) is None:
            raise BadRequest(f"unexpected inference output '{name}' for model '{signature.name}'")
