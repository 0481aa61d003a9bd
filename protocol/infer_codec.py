"""The ``/infer`` entry points: a request body in, a validated :class:`InferRequest` out, and back.

Decoding is done in phases so that nothing large is allocated for a request that is
going to be refused:

1. parse the head (JSON or msgpack) and the structure of every input and output;
2. check names, count, batch size, datatypes and shapes against the model's signature;
3. check sizes: binary sections against the body, decoded JSON sizes against
   ``--http-max-input-size`` (all in Python integers);
4. only then build the arrays: views of the body for binary tensors, one
   ``np.array`` per JSON tensor.

Every client mistake raises a :class:`ProtocolError` (400 unless said otherwise) whose
message is Triton's where Triton has one. Triton answers 500 for several of them (JSON
type and element-count errors); evserve answers 400: a client mistake is never a 5xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from evserve.protocol import json_codec, msgpack_codec
from evserve.protocol.binary_codec import HEADER_LENGTH_NAME, array_from_bytes, raw_request_input
from evserve.protocol.errors import BadRequest
from evserve.protocol.json_codec import NESTING_MESSAGE, array_from_data
from evserve.protocol.request_plan import decode_common
from evserve.protocol.response_codec import encode_infer_response
from evserve.protocol.shared_memory import KEYS as SHM_KEYS
from evserve.protocol.shared_memory import Resolver, check_output_ref, shm_ref, unresolvable
from evserve.protocol.types import InferRequest, InputTensor, ModelSignature, RequestedOutput
from evserve.protocol.validate import (
    InputPlan,
    check_inputs,
    check_json_size,
    check_outputs,
    element_count,
    expected_byte_size,
    parse_shape,
)

__all__ = ["check_request_parameter", "decode_infer_request", "encode_infer_response", "parse_header_length"]

_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1
_CONTENT_FIELDS = (
    "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
    "'shared_memory_region' in 'parameters'. But"
)


def parse_header_length(value: str | None, body_length: int) -> int | None:
    """The Inference-Header-Content-Length header as an int in ``[0, body_length]``.

    ``body_length`` is the length after Content-Encoding is undone. None stays None
    (no header: the whole body is the head). Like Triton, anything that is not an int32
    cannot be parsed.
    """
    if value is None:
        return None
    text = value.strip()
    shown = value if len(value) <= 64 else value[:64] + "..."
    digits = text[1:] if text[:1] in "+-" else text
    # The length check keeps int() away from thousands of digits (and its own limit on them).
    length = int(text) if digits.isascii() and digits.isdigit() and len(digits) <= 10 else None
    if length is None or not -_INT32_MAX - 1 <= length <= _INT32_MAX:
        raise BadRequest(f"Unable to parse {HEADER_LENGTH_NAME}, got: {shown}")
    if length < 0 or length > body_length:
        raise BadRequest(f"inference header size should be in range (0, {body_length}), got: {shown}")
    return length


def decode_infer_request(
    body: bytes | bytearray | memoryview,
    *,
    header_length: int | None,
    msgpack: bool,
    signature: ModelSignature,
    max_input_size: int,
    shm: Resolver = unresolvable,
) -> InferRequest:
    """Decode and validate one ``/infer`` body for the model version ``signature`` describes.

    ``header_length`` is the parsed Inference-Header-Content-Length (see
    :func:`parse_header_length`): None for a head-only body, 0 for a raw request, N for a
    head of N bytes followed by binary tensors. ``msgpack`` says the head is msgpack.
    ``shm`` resolves the client shared-memory regions that inputs and outputs name.
    """
    view = memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if header_length == 0:
        tensor = raw_request_input(signature, view, max_input_size)
        return InferRequest(signature.name, signature.version, inputs=[tensor], raw=True)
    head_length = view.nbytes if header_length is None else header_length
    if head_length > max_input_size:
        raise BadRequest(
            f"request JSON size of {head_length} bytes exceeds the maximum allowed input size of {max_input_size} "
            "bytes. Use --http-max-input-size to increase the limit."
        )
    if head_length > view.nbytes:
        raise BadRequest(f"inference header size should be in range (0, {view.nbytes}), got: {head_length}")
    head = view[:head_length]
    document = msgpack_codec.unpack(head) if msgpack else json_codec.loads(head, depth_error=NESTING_MESSAGE)
    if not isinstance(document, dict):
        raise BadRequest("Unable to parse the inference request: expected an object at the top level")
    if not msgpack:
        common = decode_common(document, view[head_length:], signature.plan, max_input_size)
        if common is not None:
            return common
    request = InferRequest(signature.name, signature.version, msgpack=msgpack)
    request.id = _request_id(document)
    request.parameters, request.binary_data_output = _request_parameters(document)
    plans = _input_plans(document)
    request.outputs = _requested_outputs(document, signature)
    check_inputs(plans, signature)
    request.inputs = _build_inputs(plans, view[head_length:], signature.name, max_input_size, msgpack, shm)
    for output in request.outputs or ():
        if output.shm_ref is not None:
            output.shm = shm(output.shm_ref)
    return request


def _request_id(document: dict[str, Any]) -> str:
    if "id" not in document:
        return ""
    value = document["id"]
    if not isinstance(value, str):
        raise BadRequest("Unable to parse 'id'")
    return value


def _is_uint64(value: object) -> bool:
    return type(value) is int and 0 <= value <= _UINT64_MAX


def _request_parameters(document: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Request-level parameters for the model, and the ``binary_data_output`` flag."""
    if "parameters" not in document:
        return {}, False
    params = document["parameters"]
    if not isinstance(params, dict):
        raise BadRequest("Unable to parse 'parameters': expected an object")
    out: dict[str, Any] = {}
    binary_data_output = False
    for key, value in params.items():
        if not isinstance(key, str):
            raise BadRequest("Unable to parse 'parameters': keys must be strings")
        if key == "binary_data_output":
            if type(value) is not bool:
                raise BadRequest("Unable to parse 'binary_data_output'")
            binary_data_output = value
            continue
        check_request_parameter(key, value)
        out[key] = value
    return out, binary_data_output


def check_request_parameter(key: str, value: object) -> None:
    """Refuse a request parameter Triton refuses: reserved keys, wrong types for its own keys."""
    if key == "sequence_id":
        ok = _is_uint64(value) or isinstance(value, str)
    elif key in ("sequence_start", "sequence_end"):
        ok = type(value) is bool
    elif key in ("priority", "timeout"):
        ok = _is_uint64(value)
    elif key.startswith("triton_"):
        raise BadRequest(
            "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
        )
    elif key == "headers":
        raise BadRequest("parameter key 'headers' is reserved for Triton usage and should not be specified.")
    elif type(value) not in (str, int, bool, float):
        raise BadRequest(f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.")
    else:
        ok = True
    if not ok:
        raise BadRequest(f"Unable to parse '{key}'")


def _object_parameters(entry: dict[str, Any], what: str) -> dict[str, Any]:
    params = entry.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(f"Unable to parse 'parameters' of an {what}: expected an object")
    return params


_Named = TypeVar("_Named", InputPlan, RequestedOutput)


def _named_entries(entries: Any, what: str, build: Callable[[dict[str, Any]], _Named]) -> list[_Named]:
    """The ``inputs`` or ``outputs`` array: objects, each built, names unique (Triton's texts)."""
    if not isinstance(entries, list):
        raise BadRequest(f"Unable to parse '{what}s'")
    built: list[_Named] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise BadRequest(f"Unable to parse '{what}s': each {what} must be an object")
        item = build(entry)
        if item.name in seen:
            raise BadRequest(f"{what} '{item.name}' already exists in request")
        seen.add(item.name)
        built.append(item)
    return built


def _input_plans(document: dict[str, Any]) -> list[InputPlan]:
    return _named_entries(document.get("inputs"), "input", _input_plan)


def _input_plan(entry: dict[str, Any]) -> InputPlan:
    params = _object_parameters(entry, "input")
    present = [
        field
        for field, found in (
            ("'data'", "data" in entry),
            ("'binary_data_size'", "binary_data_size" in params),
            ("'shared_memory_region'", "shared_memory_region" in params),
        )
        if found
    ]
    if len(present) != 1:
        raise BadRequest(f"{_CONTENT_FIELDS} {'set ' + ' '.join(present) if present else 'no field is set'}")
    name = entry.get("name")
    if not isinstance(name, str):
        raise BadRequest("Unable to parse 'name'")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str):
        raise BadRequest("Unable to parse 'datatype'")
    shape = parse_shape(name, entry.get("shape"))
    plan = InputPlan(name, datatype, shape, element_count(name, shape), data=entry.get("data"))
    plan.shm = shm_ref(params)
    if "binary_data_size" in params:
        if not _is_uint64(params["binary_data_size"]):
            raise BadRequest("Unable to parse 'binary_data_size'")
        plan.binary_size = params["binary_data_size"]
    plan.parameters = {k: v for k, v in params.items() if k != "binary_data_size" and k not in SHM_KEYS}
    return plan


def _requested_outputs(document: dict[str, Any], signature: ModelSignature) -> list[RequestedOutput] | None:
    """The ``outputs`` array; None (all outputs) when it is absent or empty."""
    if "outputs" not in document:
        return None
    outputs = _named_entries(document["outputs"], "output", _requested_output)
    check_outputs([output.name for output in outputs], signature)
    return outputs or None


def _requested_output(entry: dict[str, Any]) -> RequestedOutput:
    params = _object_parameters(entry, "output")
    name = entry.get("name")
    if not isinstance(name, str):
        raise BadRequest("Unable to parse 'name'")
    shm = check_output_ref(name, params)
    binary = params.get("binary_data", False)
    if type(binary) is not bool:
        raise BadRequest("Unable to parse 'binary_data'")
    classification = params.get("classification", 0)
    if not _is_uint64(classification):
        raise BadRequest("Unable to set 'classification'")
    rest = {k: v for k, v in params.items() if k not in ("binary_data", "classification") and k not in SHM_KEYS}
    return RequestedOutput(name, binary, classification, rest, shm_ref=shm)


def _plan_sections(plans: list[InputPlan], binary: memoryview, model: str, max_input_size: int) -> list[int | None]:
    """Offsets of binary tensors in the section after the head; sizes checked, nothing allocated."""
    offsets: list[int | None] = []
    used = 0
    for plan in plans:
        expected = expected_byte_size(plan)
        if plan.binary_size is None:
            offsets.append(None)
            if expected is not None and plan.shm is None and not isinstance(plan.data, bytes):
                check_json_size(plan, expected, max_input_size)
            continue
        available = binary.nbytes - used
        if plan.binary_size > available:
            raise BadRequest(
                f"unexpected size for input '{plan.name}', expecting {plan.binary_size - available} additional bytes "
                f"for model '{model}'"
            )
        if expected is not None and plan.binary_size != expected:
            raise BadRequest(
                f"input byte size mismatch for input '{plan.name}' for model '{model}'. Expected {expected}, "
                f"got {plan.binary_size}"
            )
        offsets.append(used)
        used += plan.binary_size
    if used != binary.nbytes:
        raise BadRequest(f"unexpected additional input data for model '{model}'")
    return offsets


def _build_inputs(
    plans: list[InputPlan], binary: memoryview, model: str, max_input_size: int, msgpack: bool, shm: Resolver
) -> list[InputTensor]:
    offsets = _plan_sections(plans, binary, model, max_input_size)
    tensors: list[InputTensor] = []
    for plan, offset in zip(plans, offsets, strict=True):
        if plan.shm is not None:
            # A view of the mapping: the model reads the client's bytes where they are.
            array = array_from_bytes(plan, shm(plan.shm), 0, plan.shm.byte_size, model)
        elif offset is not None:
            array = array_from_bytes(plan, binary, offset, plan.binary_size or 0, model)
        elif msgpack and isinstance(plan.data, bytes):
            array = array_from_bytes(plan, memoryview(plan.data), 0, len(plan.data), model)
        else:
            array = array_from_data(plan, max_input_size=max_input_size, msgpack=msgpack)
        tensors.append(InputTensor(plan.name, plan.datatype, plan.shape, array, plan.parameters))
    return tensors
