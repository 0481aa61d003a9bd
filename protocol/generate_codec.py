"""The generate extension's flat JSON: a request body in, an :class:`InferRequest` out, and back.

``/generate`` and ``/generate_stream`` take one flat JSON object instead of a v2 tensor list
(Triton's provisional generate extension, measured on tritonserver 2.51):

* a top-level key that names a model input becomes that tensor. Its value is a scalar or an
  array (nested arrays are flattened, as ``data`` is). The shape comes from the model's
  metadata shape (the batch dimension first when the model batches): fixed dimensions take
  their size, the innermost ``-1`` takes the element count left over, every other ``-1`` is 1.
  Strings become BYTES; numbers and booleans take the input's datatype;
* ``id`` (a non-empty string) is the request id; ``parameters`` (an object) is expanded the same
  way as the top level; every other key becomes a request parameter (string, number or bool);
* a key seen twice, at the top level or inside ``parameters``, is refused. orjson keeps the last
  of duplicate keys silently, so this body is parsed by the standard library's C parser with a
  pairs hook that keeps every key.

A response becomes one flat object: ``model_name``, ``model_version``, ``id`` when the request
had one, each output (a scalar when it holds one element, else a flat array, ``[]`` when empty)
and each response parameter, keys sorted as Triton writes them. ``/generate_stream`` sends each
such object as one Server-Sent Event.

Triton answers 500 for the JSON type errors here (its JSON layer reports them as internal);
evserve answers 400 with Triton's text, as for ``/infer`` (a client mistake is never a 5xx).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from evserve.protocol.binary_codec import output_array
from evserve.protocol.errors import BadRequest
from evserve.protocol.infer_codec import check_request_parameter
from evserve.protocol.json_codec import (
    NESTING_MESSAGE,
    TOO_MUCH_DATA,
    allowed_types,
    array_from_data,
    data_json,
    flatten,
)
from evserve.protocol.response_codec import response_parameters
from evserve.protocol.types import InferRequest, InferResponse, InputTensor, ModelSignature, TensorSpec
from evserve.protocol.validate import InputPlan, check_inputs, expected_byte_size

__all__ = ["SSE_CONTENT_TYPE", "decode_generate_request", "encode_generate_response", "sse_event"]

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
PARAMETERS_KEY = "parameters"
EXACTLY_ONE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that generates various "
    "number of responses"
)
_PARAMETERS_PREFIX = "Converting keyword: 'parameters': "


class _Object(list):  # type: ignore[type-arg]
    """A JSON object as the (key, value) pairs it was written with, duplicates kept."""

    __slots__ = ()


def _reject_constant(token: str) -> None:
    raise BadRequest(f"failed to parse the request JSON buffer: '{token}' is not valid JSON")


def _parse(body: bytes | bytearray | memoryview) -> Any:
    try:
        return json.loads(bytes(body), object_pairs_hook=_Object, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(f"failed to parse the request JSON buffer: {exc}") from None
    except RecursionError:
        raise BadRequest(NESTING_MESSAGE) from None


class _Builder:
    """Collects the inputs and parameters of one generate body, refusing duplicates."""

    def __init__(self, signature: ModelSignature, max_input_size: int) -> None:
        self.signature = signature
        self.max_input_size = max_input_size
        self.request = InferRequest(signature.name, signature.version)
        self.plans: list[InputPlan] = []
        self._names: set[str] = set()

    def add_object(self, pairs: _Object, *, top: bool) -> None:
        for key, value in pairs:
            if top and key == PARAMETERS_KEY:
                if not isinstance(value, _Object):
                    raise BadRequest(
                        "Expected JSON object for keyword: 'parameters': attempt to access JSON non-object as object"
                    )
                try:
                    self.add_object(value, top=False)
                except BadRequest as exc:
                    raise BadRequest(_PARAMETERS_PREFIX + exc.message) from None
            elif top and key == "id" and value != "":
                if not isinstance(value, str):
                    raise BadRequest("Unable to parse 'id': attempt to access JSON non-string as string")
                self.request.id = value
            else:
                self._add(key, value)

    def _add(self, key: str, value: Any) -> None:
        if key in self._names:
            raise BadRequest(f"input '{key}' already exists in request")
        self._names.add(key)
        spec = self.signature.input(key)
        if spec is not None:
            self.plans.append(_input_plan(spec, value, self.signature.max_batch_size, self.max_input_size))
            return
        if isinstance(value, (_Object, list)) or value is None:
            raise BadRequest(f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.")
        check_request_parameter(key, value)
        self.request.parameters[key] = value


def _element_count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def generate_shape(spec: TensorSpec, count: int, max_batch_size: int) -> tuple[int, ...] | None:
    """The shape Triton gives ``count`` elements of input ``spec``, or None when none fits.

    The metadata shape (``[-1, *dims]`` when the model batches): fixed dimensions as they are,
    the innermost ``-1`` whatever count is left, every other ``-1`` 1.
    """
    dims = ((-1,) if max_batch_size > 0 else ()) + tuple(spec.dims)
    fixed = math.prod(d for d in dims if d != -1)
    if -1 not in dims:
        return dims if count == fixed else None
    if fixed == 0:
        return None
    if count % fixed:
        return None
    innermost = len(dims) - 1 - dims[::-1].index(-1)
    return tuple(count // fixed if i == innermost else (1 if d == -1 else d) for i, d in enumerate(dims))


# Triton's texts for a JSON value of the wrong type (its rapidjson wrapper's wording).
def _type_error(datatype: str) -> str:
    if datatype == "BYTES":
        return "Unable to parse JSON bytes array: attempt to access JSON non-string as string"
    if datatype == "BOOL":
        return "Unable to parse 'data': attempt to access JSON non-boolean as boolean"
    if datatype.startswith("UINT"):
        return "Unable to parse 'data': attempt to access JSON non-unsigned-integer as unsigned-integer"
    if datatype.startswith("INT"):
        return "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"
    return "Unable to parse 'data': attempt to access JSON non-number as double"


def _input_plan(spec: TensorSpec, value: Any, max_batch_size: int, max_input_size: int) -> InputPlan:
    count = _element_count(value)
    shape = generate_shape(spec, count, max_batch_size)
    if shape is None:
        raise BadRequest(f"The schema can not convert input '{spec.name}' to tensor with proper shape")
    data = value if isinstance(value, list) else [value]
    if data:
        flat, types = flatten(data)
        if not types <= allowed_types(spec.datatype, False)[0] or (
            spec.datatype.startswith("UINT") and any(v < 0 for v in flat)
        ):
            raise BadRequest(_type_error(spec.datatype))
        if len(flat) != count:
            raise BadRequest(TOO_MUCH_DATA)
    plan = InputPlan(spec.name, spec.datatype, shape, count, data=data)
    size = expected_byte_size(plan)
    if size is not None and size > max_input_size:
        raise BadRequest(
            f"input '{spec.name}' expands to {size} bytes, which exceeds the maximum allowed input size of "
            f"{max_input_size} bytes. Use --http-max-input-size to increase the limit."
        )
    return plan


def decode_generate_request(
    body: bytes | bytearray | memoryview, signature: ModelSignature, max_input_size: int
) -> InferRequest:
    """Decode and validate one generate body for the model version ``signature`` describes."""
    document = _parse(body)
    if not isinstance(document, _Object):
        raise BadRequest("attempt to get members for non-object")
    builder = _Builder(signature, max_input_size)
    builder.add_object(document, top=True)
    check_inputs(builder.plans, signature)
    request = builder.request
    request.inputs = [
        InputTensor(plan.name, plan.datatype, plan.shape, array_from_data(plan, max_input_size=max_input_size))
        for plan in builder.plans
    ]
    return request


def _output_json(name: str, datatype: str, flat: np.ndarray) -> bytes:
    text = data_json(name, datatype, flat)
    return text[1:-1] if flat.size == 1 else text


def encode_generate_response(response: InferResponse, request_id: str) -> bytes:
    """One response as the generate extension's flat JSON object (keys sorted, as Triton writes them)."""
    fields: dict[str, bytes] = {
        "model_name": orjson.dumps(response.model_name),
        "model_version": orjson.dumps(response.model_version),
    }
    if request_id:
        fields["id"] = orjson.dumps(request_id)
    for key, value in response_parameters(response.parameters).items():
        fields[key] = orjson.dumps(value)
    for output in response.outputs:
        fields[output.name] = _output_json(output.name, output.datatype, output_array(output))
    parts = [orjson.dumps(key) + b":" + fields[key] for key in sorted(fields)]
    return b"{" + b",".join(parts) + b"}"


def sse_event(payload: bytes) -> bytes:
    """One Server-Sent Event carrying ``payload`` (a JSON object, so it holds no raw newline)."""
    return b"data: " + payload + b"\n\n"

