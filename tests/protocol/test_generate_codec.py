"""The generate extension's flat JSON: shapes, types, parameters and replies, as Triton 2.51 answers them."""

from __future__ import annotations

import numpy as np
import pytest

from evserve.protocol.errors import BadRequest
from evserve.protocol.generate_codec import (
    decode_generate_request,
    encode_generate_response,
    generate_shape,
    sse_event,
)
from evserve.protocol.types import InferResponse, ModelSignature, OutputTensor, TensorSpec

SIGNATURE = ModelSignature(
    "m", "1", 4,
    (
        TensorSpec("B", "BOOL", (1,)),
        TensorSpec("F", "FP32", (-1,)),
        TensorSpec("I", "INT64", (2, -1)),
        TensorSpec("S", "BYTES", (1,)),
        TensorSpec("U", "UINT8", (-1, -1), optional=True),
    ),
    (),
)
BASE = '"B": true, "F": [1.5, 2], "I": [1, 2], "S": "hi"'


def decode(body: str):  # type: ignore[no-untyped-def]
    return decode_generate_request(body.encode(), SIGNATURE, 64 << 20)


@pytest.mark.parametrize(
    ("dims", "batch", "count", "shape"),
    [
        ((1,), 4, 1, (1, 1)),         # the batch dimension is the only -1: it takes the count
        ((1,), 4, 2, (2, 1)),
        ((-1,), 4, 3, (1, 3)),        # the innermost -1 takes the count, the batch -1 is 1
        ((2, -1), 4, 4, (1, 2, 2)),
        ((2, -1), 4, 3, None),        # 3 elements do not fill whole rows of 2
        ((-1, -1), 0, 5, (1, 5)),
        ((3,), 0, 3, (3,)),
        ((3,), 0, 2, None),           # no -1 and the wrong count
        ((-1,), 0, 0, (0,)),
    ],
)
def test_shape_rule(dims: tuple[int, ...], batch: int, count: int, shape: tuple[int, ...] | None) -> None:
    assert generate_shape(TensorSpec("x", "INT32", dims), count, batch) == shape


def test_fields_become_inputs_parameters_and_the_id() -> None:
    request = decode('{' + BASE + ', "U": [1, 2, 3], "id": "r", "k": 2.5, "parameters": {"flag": true}}')
    shapes = {t.name: (t.shape, t.data.dtype.str) for t in request.inputs}
    assert shapes == {
        "B": ((1, 1), "|b1"), "F": ((1, 2), "<f4"), "I": ((1, 2, 1), "<i8"), "S": ((1, 1), "|O"),
        "U": ((1, 1, 3), "|u1"),
    }
    assert request.id == "r" and request.parameters == {"k": 2.5, "flag": True}
    assert next(t for t in request.inputs if t.name == "S").data.tolist() == [[b"hi"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"B": 1, "F": [1], "I": [1, 2], "S": "x"}', "attempt to access JSON non-boolean as boolean"),
        ('{"B": true, "F": ["a"], "I": [1, 2], "S": "x"}', "attempt to access JSON non-number as double"),
        ('{"B": true, "F": [1], "I": [1.5, 2], "S": "x"}', "non-signed-integer as signed-integer"),
        ('{' + BASE + ', "U": [-1]}', "non-unsigned-integer as unsigned-integer"),
        ('{' + BASE + ', "U": [[1, 2], [3, 4]]}', "Shape does not match true shape of 'data' field"),
        ('{' + BASE + ', "B": false}', "input 'B' already exists in request"),
        ('{' + BASE + ', "x": null}', "parameter 'x' has invalid type"),
        ('{' + BASE + ', "F": [NaN]}', "is not valid JSON"),
        ('{' + BASE + ', "triton_x": 1}', "reserved for Triton usage"),
    ],
)
def test_bad_bodies(body: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("(", r"\(")):
        decode(body)


def test_an_empty_id_is_a_parameter_as_in_triton() -> None:
    request = decode('{' + BASE + ', "id": ""}')
    assert request.id == "" and request.parameters == {"id": ""}


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(BadRequest):
        decode('{' + BASE.replace('"F": [1.5, 2]', '"F": ' + "[" * 5000 + "1" + "]" * 5000) + '}')


def test_replies_are_flat_sorted_objects() -> None:
    response = InferResponse(
        "m", "1",
        outputs=[
            OutputTensor("ONE", "INT32", (1, 1), np.array([[7]], np.int32)),
            OutputTensor("TXT", "BYTES", (2,), np.array([b"a", b"b"], dtype=object)),
            OutputTensor("EMPTY", "FP32", (0,), np.zeros(0, np.float32)),
            OutputTensor("NAN", "FP32", (2,), np.array([np.nan, 1], np.float32)),
        ],
        parameters={"p": 1},
    )
    assert encode_generate_response(response, "r") == (
        b'{"EMPTY":[],"NAN":[NaN,1.0],"ONE":7,"TXT":["a","b"],"id":"r","model_name":"m","model_version":"1","p":1}'
    )
    assert sse_event(b"{}") == b"data: {}\n\n"


def test_fp16_outputs_cannot_be_json() -> None:
    response = InferResponse("m", "1", outputs=[OutputTensor("H", "FP16", (1,), np.ones(1, np.float16))])
    with pytest.raises(BadRequest, match="sending FP16 data via JSON is not supported"):
        encode_generate_response(response, "")
