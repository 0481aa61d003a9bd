"""The one-call encoder of the common reply agrees with the full encoder, byte for byte.

:func:`encode_common` may only return what the full path returns; on anything else (NaN,
classification, response parameters, a dtype that needs converting) it returns None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from evserve.protocol import response_codec
from evserve.protocol.datatypes import numpy_dtype
from evserve.protocol.response_codec import encode_common, encode_infer_response
from evserve.protocol.types import InferRequest, InferResponse, OutputTensor, RequestedOutput

PROFILE = settings(database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
DATATYPES = ["BOOL", "UINT8", "INT32", "INT64", "FP32", "FP64", "FP16", "BYTES"]


@st.composite
def outputs(draw: Any, name: str) -> OutputTensor:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3))
    if datatype == "BYTES":
        array = np.array([b"x"] * int(np.prod(shape)), dtype=object).reshape(shape)
    else:
        dtype = numpy_dtype(datatype)
        if draw(st.integers(0, 5)) == 0:
            dtype = np.dtype(np.float64) if dtype != np.float64 else np.dtype(np.float32)  # needs a cast
        array = draw(hnp.arrays(dtype, shape))
        if array.ndim > 1 and draw(st.booleans()):
            array = array.T  # not C-contiguous
    return OutputTensor(name, datatype, tuple(array.shape), array)


@st.composite
def cases(draw: Any) -> tuple[InferResponse, InferRequest]:
    names = draw(st.lists(st.sampled_from(["A", "B", "C"]), unique=True, min_size=1))
    resp = InferResponse("m", "1", draw(st.sampled_from(["", "r1"])), [draw(outputs(n)) for n in names])
    if draw(st.integers(0, 6)) == 0:
        resp.parameters = {"p": 1}
    req = InferRequest("m", "1", id=draw(st.sampled_from(["", "q"])))
    if draw(st.booleans()):
        req.outputs = [
            RequestedOutput(n, draw(st.booleans()), draw(st.sampled_from([0, 0, 0, 1])))
            for n in draw(st.lists(st.sampled_from(["A", "B", "C", "D"]), unique=True, min_size=1))
        ]
    else:
        req.binary_data_output = draw(st.booleans())
    return resp, req


def full_path(resp: InferResponse, req: InferRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(response_codec, "encode_common", lambda *args: None)
        try:
            return encode_infer_response(resp, req)
        except Exception as exc:  # the full path's error, compared as "not common"
            return exc


@PROFILE
@given(cases())
def test_common_reply_is_the_full_reply(case: tuple[InferResponse, InferRequest]) -> None:
    resp, req = case
    common = encode_common(resp, req)
    if common is None:
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        full = full_path(resp, req, monkeypatch)
    assert not isinstance(full, Exception), full
    assert common.status == full.status and common.headers == full.headers
    assert b"".join(bytes(b) for b in common.buffers) == b"".join(bytes(b) for b in full.buffers)


def test_simple_reply_takes_the_common_path() -> None:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    resp = InferResponse("simple", "1", outputs=[OutputTensor("OUTPUT0", "INT32", (1, 16), data)])
    req = InferRequest("simple", "1", outputs=[RequestedOutput("OUTPUT0", False)])
    assert encode_common(resp, req) is not None
    req.binary_data_output = True
    req.outputs = None
    reply = encode_common(resp, req)
    assert reply is not None and bytes(reply.buffers[1]) == data.tobytes()


@pytest.mark.parametrize("change", [
    lambda out: setattr(out, "data", np.array([[np.nan] * 16], dtype=np.float32)) or setattr(out, "datatype", "FP32"),
    lambda out: setattr(out, "data", out.data.astype(np.int64)),  # needs a cast to INT32
    lambda out: setattr(out, "shape", (2, 16)),  # the data does not fill the shape
])
def test_uncommon_replies_step_aside(change: Any) -> None:
    output = OutputTensor("OUTPUT0", "INT32", (1, 16), np.zeros((1, 16), dtype=np.int32))
    change(output)
    assert encode_common(InferResponse("m", "1", outputs=[output]), InferRequest("m", "1")) is None
