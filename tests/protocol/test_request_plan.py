"""The common-path decoder agrees with the full decoder: same request, or it steps aside.

:func:`decode_common` may only return what the full path would return; on anything else it
returns None and the full path decides (and raises its own error). These tests generate
requests near the common shape, many of them subtly wrong, and compare the two paths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evserve.protocol import infer_codec
from evserve.protocol.datatypes import numpy_dtype
from evserve.protocol.errors import ProtocolError
from evserve.protocol.request_plan import decode_common
from evserve.protocol.types import InferRequest, ModelSignature, TensorSpec

PROFILE = settings(database=None, deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
MAX = 1 << 20

SIGNATURES = {
    "simple": ModelSignature(
        "simple", "1", 8,
        (TensorSpec("INPUT0", "INT32", (16,)), TensorSpec("INPUT1", "INT32", (16,))),
        (TensorSpec("OUTPUT0", "INT32", (16,)), TensorSpec("OUTPUT1", "INT32", (16,))),
    ),
    "mixed": ModelSignature(
        "mixed", "1", 0,
        (TensorSpec("A", "FP32", (-1, 2)), TensorSpec("B", "UINT8", (3,), optional=True),
         TensorSpec("C", "BOOL", (2,), optional=True), TensorSpec("D", "FP64", (1,), optional=True)),
        (TensorSpec("X", "FP32", (-1, 2)), TensorSpec("Y", "UINT8", (3,))),
    ),
}

SCALARS = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40), st.integers(min_value=-300, max_value=300),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.text(max_size=2), st.none(),
    st.just([1, 2]),
)


def element(datatype: str) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "UINT8":
        return st.integers(0, 255)
    if datatype == "INT32":
        return st.integers(-(2**31), 2**31 - 1)
    return st.one_of(st.floats(-1e30, 1e30, allow_nan=False), st.integers(-1000, 1000))


@st.composite
def valid_documents(draw: Any, model: str) -> dict[str, Any]:
    """A request the model accepts, in the common shape."""
    signature = SIGNATURES[model]
    batch = [draw(st.integers(1, 3))] if signature.max_batch_size else []
    inputs = []
    for spec in signature.inputs:
        if spec.optional and draw(st.booleans()):
            continue
        dims = [draw(st.integers(0, 3)) if d == -1 else d for d in spec.dims]
        shape = batch + dims
        count = int(np.prod(shape))
        data = draw(st.lists(element(spec.datatype), min_size=count, max_size=count))
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data}
        if spec.datatype != "BOOL" and draw(st.booleans()):
            # As tritonclient sends it: the tensor's bytes after the head, its size in the parameters.
            entry["binary"] = np.array(data, dtype=numpy_dtype(spec.datatype)).tobytes()
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": draw(st.permutations(inputs))}
    binary = b""
    for entry in doc["inputs"]:
        if "binary" in entry:
            payload = entry.pop("binary")
            del entry["data"]
            entry["parameters"] = {"binary_data_size": len(payload)}
            binary += payload
    doc["binary"] = binary
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from([o.name for o in signature.outputs]), unique=True))
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": draw(st.booleans())}} for n in names]
    if draw(st.booleans()):
        doc["id"] = "req-1"
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans())}
    return doc


MUTATIONS = [
    lambda d, v: d["inputs"][v % len(d["inputs"])]["data"].__setitem__(0, v) if d["inputs"]
    and d["inputs"][v % len(d["inputs"])]["data"] else None,
    lambda d, v: d["inputs"][0]["shape"].__setitem__(0, v) if d["inputs"] and d["inputs"][0]["shape"] else None,
    lambda d, v: d["inputs"][0].update(datatype=v) if d["inputs"] else None,
    lambda d, v: d["inputs"][0].update(name=v) if d["inputs"] else None,
    lambda d, v: d["inputs"][0].pop("data") if d["inputs"] else None,
    lambda d, v: d["inputs"][0].update(parameters=v) if d["inputs"] else None,
    lambda d, v: d["inputs"].append(dict(d["inputs"][0])) if d["inputs"] else None,
    lambda d, v: d["inputs"].pop() if d["inputs"] else None,
    lambda d, v: d["inputs"][0]["data"].append(v) if d["inputs"] else None,
    lambda d, v: d.update(outputs=[{"name": v}]),
    lambda d, v: d.update(id=v),
    lambda d, v: d.update(parameters=v),
]


@st.composite
def documents(draw: Any) -> tuple[dict[str, Any], str]:
    """A valid common-shape request for a model, then 0 to 2 random mutations of it."""
    model = draw(st.sampled_from(sorted(SIGNATURES)))
    doc = draw(valid_documents(model))
    for _ in range(draw(st.integers(0, 2))):
        mutate = draw(st.sampled_from(MUTATIONS))
        value = draw(st.one_of(SCALARS, st.sampled_from(["INPUT0", "A", "FP32", "INT32", "OUTPUT0",
                                                         {"binary_data_size": 4}, {"x": 1}, {}])))
        try:
            mutate(doc, value)
        except (TypeError, KeyError, IndexError):  # a mutation that does not apply: the document stays as it is
            pass
    return doc, model


def full_path(
    body: bytes, header_length: int | None, signature: ModelSignature, monkeypatch: pytest.MonkeyPatch
) -> InferRequest | str:
    with monkeypatch.context() as patch:
        patch.setattr(infer_codec, "decode_common", lambda *args: None)
        try:
            return infer_codec.decode_infer_request(
                body, header_length=header_length, msgpack=False, signature=signature, max_input_size=MAX
            )
        except ProtocolError as exc:
            return exc.message


def same_request(a: InferRequest, b: InferRequest) -> bool:
    if (a.model_name, a.model_version, a.id, a.parameters, a.outputs, a.binary_data_output, a.raw, a.msgpack) != (
        b.model_name, b.model_version, b.id, b.parameters, b.outputs, b.binary_data_output, b.raw, b.msgpack
    ):
        return False
    if len(a.inputs) != len(b.inputs):
        return False
    for x, y in zip(a.inputs, b.inputs, strict=True):
        if (x.name, x.datatype, x.shape, x.parameters) != (y.name, y.datatype, y.shape, y.parameters):
            return False
        if x.data.dtype != y.data.dtype or x.data.shape != y.data.shape or not np.array_equal(x.data, y.data):
            return False
    return True


@PROFILE
@given(documents())
def test_common_path_agrees_with_the_full_path(case: tuple[dict[str, Any], str]) -> None:
    document, model = case
    signature = SIGNATURES[model]
    binary = document.pop("binary", b"")
    head = orjson.dumps(document)
    common = decode_common(orjson.loads(head), memoryview(binary), signature.plan, MAX)
    if common is None:
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        full = full_path(head + binary, len(head) if binary else None, signature, monkeypatch)
    assert isinstance(full, InferRequest), f"common path accepted what the full path refuses: {full}"
    assert same_request(common, full)


def test_tritonclient_shaped_requests_take_the_common_path() -> None:
    signature = SIGNATURES["simple"]
    document = {
        "inputs": [{"name": f"INPUT{i}", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                   for i in range(2)],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}, {"name": "OUTPUT1"}],
    }
    decoded = decode_common(document, memoryview(b""), signature.plan, MAX)
    assert decoded is not None
    assert decoded.inputs[1].data.tolist() == [list(range(16))]
    binary = np.arange(16, dtype=np.int32).tobytes()
    document = {
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
                   {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}],
        "parameters": {"binary_data_output": True},
    }
    decoded = decode_common(document, memoryview(binary), signature.plan, MAX)
    assert decoded is not None and decoded.binary_data_output and decoded.outputs is None
    assert decoded.inputs[0].data.tolist() == [list(range(16))]


@pytest.mark.parametrize("change", [
    lambda d: d["inputs"][0].update(data=[1.5] * 16),          # floats for INT32
    lambda d: d["inputs"][0].update(data=[True] * 16),         # booleans for INT32
    lambda d: d["inputs"][0].update(data=[2**31] * 16),        # out of range
    lambda d: d["inputs"][0].update(data=[[0] * 8, [0] * 8]),  # nested: the full path flattens it
    lambda d: d["inputs"][0].update(shape=[1, 16.0]),          # a float dimension
    lambda d: d["inputs"][0].update(shape=[9, 16]),            # batch above max_batch_size
    lambda d: d["inputs"].pop(),                               # a required input missing
    lambda d: d["inputs"].append(dict(d["inputs"][0])),        # a duplicate
    lambda d: d.update(id=5),                                  # a non-string id
])
def test_doubtful_requests_step_aside(change: Any) -> None:
    document = {"inputs": [{"name": f"INPUT{i}", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}
                           for i in range(2)]}
    change(document)
    assert decode_common(document, memoryview(b""), SIGNATURES["simple"].plan, MAX) is None


_TENSOR_NAMES = ["INPUT0", "INPUT1", "A", "B", "C", "D", "OTHER"]
_TENSOR_TYPES = ["INT32", "FP32", "UINT8", "BOOL", "FP64", "INT64"]


@PROFILE
@given(
    model=st.sampled_from(sorted(SIGNATURES)),
    tensors=st.lists(st.tuples(st.sampled_from(_TENSOR_NAMES), st.sampled_from(_TENSOR_TYPES),
                               st.lists(st.integers(0, 17), max_size=3)), max_size=5),
)
def test_tensors_fit_only_when_check_inputs_passes(model: str, tensors: list[tuple[str, str, list[int]]]) -> None:
    """tensors_fit is the fast yes of check_inputs (BLS and ensemble steps): never yes where it refuses."""
    from evserve.protocol.request_plan import tensors_fit
    from evserve.protocol.types import InputTensor
    from evserve.protocol.validate import InputPlan, check_inputs

    signature = SIGNATURES[model]
    inputs = [InputTensor(name, datatype, tuple(shape), np.zeros(shape, numpy_dtype(datatype)))
              for name, datatype, shape in tensors]
    if not tensors_fit(signature.plan, inputs):
        return
    check_inputs([InputPlan(t.name, t.datatype, t.shape, int(np.prod(t.shape))) for t in inputs], signature)


def test_tensors_fit_says_yes_to_a_good_request() -> None:
    from evserve.protocol.request_plan import tensors_fit
    from evserve.protocol.types import InputTensor

    data = np.zeros((2, 16), np.int32)
    good = [InputTensor("INPUT0", "INT32", (2, 16), data), InputTensor("INPUT1", "INT32", (2, 16), data)]
    assert tensors_fit(SIGNATURES["simple"].plan, good)
    assert not tensors_fit(SIGNATURES["simple"].plan, good[:1])
