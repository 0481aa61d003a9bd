"""Decoding the common ``/infer`` request in one pass, from a plan built once per model.

Why: the full decoder (:mod:`evserve.protocol.infer_codec`) checks every field in Triton's
order and builds an intermediate plan per input so that each mistake gets Triton's message;
that is ~40 Python calls per tensor. Almost every real request has the same simple shape
(what tritonclient sends: named inputs with ``datatype``, ``shape`` and either flat ``data``
or a ``binary_data_size``; outputs with at most ``binary_data``), and for it the answer is
decided by a handful of C-level checks against facts about the model computed at load.

The rule that keeps two decoders honest: :func:`decode_common` either returns exactly what
the full decoder would return, or None, and then the full decoder runs and gives the result
or the precise error. It never raises and never builds an error message; anything unusual
(nested ``data``, BYTES, FP16, extra parameters, a wrong name or shape, a value out of range)
is "not common". ``tests/protocol/test_request_plan.py`` checks the two against each other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evserve.protocol.datatypes import numpy_dtype
from evserve.protocol.types import InferRequest, InputTensor, ModelSignature, RequestedOutput, TensorSpec
from evserve.protocol.validate import MAX_NDIM, InputPlan, check_inputs, element_count

_INPUT_KEYS = frozenset({"name", "datatype", "shape", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_INT = {int}
_FP32_MAX = float(np.finfo(np.float32).max)
# NumPy 2 refuses a Python int out of an integer dtype's range (OverflowError); NumPy 1 wraps it.
_INT_OVERFLOW_RAISES = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


class InputRule:
    """What the common path needs of one declared input, computed once."""

    __slots__ = ("name", "datatype", "dtype", "itemsize", "dims", "fixed", "allowed", "low", "high", "check_range")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.datatype = spec.datatype
        self.dtype = numpy_dtype(spec.datatype)
        self.itemsize = self.dtype.itemsize
        self.dims = list(spec.dims)
        self.fixed = -1 not in spec.dims
        # JSON element types accepted without further thought (bool is not an int here).
        self.allowed: frozenset[type] = frozenset()
        self.low: float = 0
        self.high: float = 0
        kind = self.dtype.kind
        # Integers out of range make np.array raise on NumPy 2 (then the full path explains).
        self.check_range = kind == "f" or (kind in "iu" and not _INT_OVERFLOW_RAISES)
        if spec.datatype in ("BYTES", "FP16", "BF16") or len(spec.dims) + 1 > MAX_NDIM:
            return  # BYTES needs per-element work, FP16/BF16 are refused in JSON: the full path
        if kind in "iu":
            info = np.iinfo(self.dtype)
            self.allowed, self.low, self.high = frozenset((int,)), int(info.min), int(info.max)
        elif kind == "f":
            high = _FP32_MAX if self.itemsize == 4 else math.inf
            self.allowed, self.low, self.high = frozenset((int, float)), -high, high
        elif kind == "b":
            self.allowed, self.low, self.high = frozenset((bool,)), False, True

    def dims_match(self, dims: list[int]) -> bool:
        """``dims`` (ints already) fit the declared dims; a fixed spec is one list comparison."""
        if self.fixed:
            return dims == self.dims
        if len(dims) != len(self.dims):
            return False
        return all(d >= 0 if w == -1 else w == d for w, d in zip(self.dims, dims, strict=True))


class RequestPlan:
    """Facts about one model version that decide the common path: built at load, immutable."""

    __slots__ = ("name", "version", "max_batch_size", "inputs", "outputs", "required")

    def __init__(self, signature: ModelSignature) -> None:
        self.name = signature.name
        self.version = signature.version
        self.max_batch_size = signature.max_batch_size
        self.inputs = {spec.name: InputRule(spec) for spec in signature.inputs}
        self.outputs = frozenset(spec.name for spec in signature.outputs)
        self.required = frozenset(spec.name for spec in signature.inputs if not spec.optional)


def tensors_fit(plan: RequestPlan, inputs: list[InputTensor]) -> bool:
    """Whether tensors built in-process (a BLS call, an ensemble step) pass every check of
    :func:`evserve.protocol.validate.check_inputs`: the cheap answer for the usual case. When it
    says no, the caller runs ``check_inputs`` for Triton's exact error."""
    rules = plan.inputs
    batched = plan.max_batch_size > 0
    batch = -1
    names = set()
    for tensor in inputs:
        rule = rules.get(tensor.name)
        if rule is None or tensor.datatype != rule.datatype:
            return False
        shape = list(tensor.shape)
        if batched:
            if not shape or (batch >= 0 and shape[0] != batch):
                return False
            batch = shape[0]
            shape = shape[1:]
        if not rule.dims_match(shape):
            return False
        names.add(tensor.name)
    return plan.required <= names and len(names) == len(inputs) and batch <= plan.max_batch_size


def check_tensors(inputs: list[InputTensor], signature: ModelSignature) -> None:
    """Check tensors built in-process against a model as an HTTP request's are: the fast yes of
    :func:`tensors_fit`, else :func:`check_inputs` for Triton's exact error (BadRequest)."""
    if not tensors_fit(signature.plan, inputs):
        check_inputs([InputPlan(t.name, t.datatype, t.shape, element_count(t.name, t.shape)) for t in inputs],
                     signature)


def decode_common(
    document: dict[str, Any], binary: memoryview, plan: RequestPlan, max_input_size: int
) -> InferRequest | None:
    """The decoded request when ``document`` (the parsed head) has the common shape, else None.

    ``binary`` is the body after the head (empty for a JSON-only request).
    """
    if not document.keys() <= _REQUEST_KEYS:
        return None
    request_id = document.get("id", "")
    if type(request_id) is not str:
        return None
    binary_data_output = False
    if "parameters" in document:
        parameters = document["parameters"]
        if type(parameters) is not dict or parameters.keys() != {"binary_data_output"}:
            return None
        binary_data_output = parameters["binary_data_output"]
        if type(binary_data_output) is not bool:
            return None
    inputs = _inputs(document.get("inputs"), binary, plan, max_input_size)
    if inputs is None:
        return None
    outputs: list[RequestedOutput] | None = None
    if "outputs" in document:
        outputs = _outputs(document["outputs"], plan)
        if outputs is None:
            return None
    return InferRequest(plan.name, plan.version, request_id, {}, inputs, outputs or None, binary_data_output)


def _inputs(entries: Any, binary: memoryview, plan: RequestPlan, max_input_size: int) -> list[InputTensor] | None:
    if type(entries) is not list:
        return None
    rules = plan.inputs
    batched = plan.max_batch_size > 0
    tensors: list[InputTensor] = []
    names: set[str] = set()
    batch = -1
    used = 0
    for entry in entries:
        if type(entry) is not dict or not entry.keys() <= _INPUT_KEYS:
            return None
        name = entry.get("name")
        rule = rules.get(name) if type(name) is str else None
        if rule is None or entry.get("datatype") != rule.datatype or not rule.allowed:
            return None
        shape = entry.get("shape")
        if type(shape) is not list or (shape and set(map(type, shape)) != _INT):
            return None
        if batched:
            if not shape or not 0 <= shape[0] <= plan.max_batch_size or (batch >= 0 and shape[0] != batch):
                return None
            batch = shape[0]
            if not rule.dims_match(shape[1:]):
                return None
        elif not rule.dims_match(shape):
            return None
        count = math.prod(shape)
        if count == 0:
            return None
        if "parameters" not in entry:
            array = _json_array(entry.get("data"), rule, count, max_input_size)
        else:
            parameters = entry["parameters"]
            if "data" in entry or type(parameters) is not dict or parameters.keys() != {"binary_data_size"}:
                return None
            size = parameters["binary_data_size"]
            if type(size) is not int or rule.datatype == "BOOL" or size != count * rule.itemsize:
                return None
            if used + size > binary.nbytes:
                return None
            array = np.frombuffer(binary, dtype=rule.dtype, count=count, offset=used)
            used += size
        if array is None:
            return None
        names.add(rule.name)
        dims = tuple(shape)
        tensors.append(InputTensor(rule.name, rule.datatype, dims, array.reshape(dims), {}))
    if used != binary.nbytes or len(names) != len(tensors) or not plan.required <= names:
        return None
    return tensors


def _json_array(data: Any, rule: InputRule, count: int, max_input_size: int) -> np.ndarray | None:
    """A flat JSON list of the right length, element types and range, as an array; else None."""
    if type(data) is not list or len(data) != count or count * rule.itemsize > max_input_size:
        return None
    if not set(map(type, data)) <= rule.allowed:
        return None  # nested lists, wrong types: the full path
    if rule.check_range and (min(data) < rule.low or max(data) > rule.high):
        return None
    try:
        return np.array(data, dtype=rule.dtype)
    except (ValueError, OverflowError, TypeError):  # an int too large for a float, say
        return None


def _outputs(entries: Any, plan: RequestPlan) -> list[RequestedOutput] | None:
    if type(entries) is not list:
        return None
    outputs: list[RequestedOutput] = []
    names: set[str] = set()
    for entry in entries:
        if type(entry) is not dict or not entry.keys() <= _OUTPUT_KEYS:
            return None
        name = entry.get("name")
        if type(name) is not str or name not in plan.outputs or name in names:
            return None
        binary = False
        if "parameters" in entry:
            parameters = entry["parameters"]
            if type(parameters) is not dict or parameters.keys() != {"binary_data"}:
                return None
            binary = parameters["binary_data"]
            if type(binary) is not bool:
                return None
        names.add(name)
        outputs.append(RequestedOutput(name, binary, 0, {}))
    return outputs
