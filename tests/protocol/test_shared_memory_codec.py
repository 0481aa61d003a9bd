"""Tensors in shared-memory regions through the codecs, with an in-memory resolver standing in for the server.

What the codec owes: inputs are views of the region's bytes (no copy), outputs are written into
their region and the reply carries no data for them, BYTES use Triton's length-prefixed form,
and every check is Triton's (texts measured on tritonserver 2.51).
"""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from evserve.protocol.datatypes import serialize_bytes
from evserve.protocol.errors import BadRequest, NotFound, ProtocolError
from evserve.protocol.infer_codec import decode_infer_request, encode_infer_response
from evserve.protocol.shared_memory import ShmRef
from evserve.protocol.types import InferResponse, ModelSignature, OutputTensor, TensorSpec

SIMPLE = ModelSignature(
    "simple", "1", 8,
    (TensorSpec("INPUT0", "INT32", (16,)), TensorSpec("INPUT1", "INT32", (16,))),
    (TensorSpec("OUTPUT0", "INT32", (16,)), TensorSpec("OUTPUT1", "INT32", (16,))),
)
STRINGS = ModelSignature("s", "1", 0, (TensorSpec("IN", "BYTES", (-1,)),), (TensorSpec("OUT", "BYTES", (-1,)),))


class Regions:
    """Named bytearrays; resolve() answers views and records each lease, as the server's resolver does."""

    def __init__(self, **regions: bytearray) -> None:
        self.regions = regions
        self.leased: list[ShmRef] = []

    def __call__(self, ref: ShmRef) -> memoryview:
        region = self.regions.get(ref.region)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{ref.region}'")
        if ref.offset >= len(region) and ref.byte_size:
            raise BadRequest(f"Invalid offset for shared memory region: '{ref.region}'")
        if ref.offset + ref.byte_size > len(region):
            raise BadRequest(f"Invalid offset + byte size for shared memory region: '{ref.region}'")
        self.leased.append(ref)
        return memoryview(region)[ref.offset : ref.offset + ref.byte_size]


def shm_input(name: str, region: str, size: int, offset: int = 0, datatype: str = "INT32",
              shape: list[int] | None = None) -> dict[str, object]:
    params: dict[str, object] = {"shared_memory_region": region, "shared_memory_byte_size": size}
    if offset:
        params["shared_memory_offset"] = offset
    return {"name": name, "datatype": datatype, "shape": shape or [1, 16], "parameters": params}


def decode(doc: dict[str, object], regions: Regions, signature: ModelSignature = SIMPLE, *, msgpack_body: bool = False):  # type: ignore[no-untyped-def]
    body = msgpack.packb(doc) if msgpack_body else json.dumps(doc).encode()
    return decode_infer_request(body, header_length=None, msgpack=msgpack_body, signature=signature,
                                max_input_size=1 << 20, shm=regions)


def two_inputs() -> bytearray:
    return bytearray(np.concatenate([np.arange(16, dtype=np.int32), np.ones(16, np.int32)]).tobytes())


def test_inputs_are_views_of_the_region() -> None:
    region = two_inputs()
    regions = Regions(inp=region)
    request = decode({"inputs": [shm_input("INPUT0", "inp", 64), shm_input("INPUT1", "inp", 64, 64)]}, regions)
    a, b = (tensor.data for tensor in request.inputs)
    assert a.tolist() == [list(range(16))] and b.tolist() == [[1] * 16]
    backing = np.frombuffer(region, dtype=np.uint8)
    assert np.shares_memory(a, backing) and np.shares_memory(b, backing), "no copy of the tensor bytes"
    assert request.inputs[0].parameters == {}  # the shm keys are consumed, not passed to the model


def test_mixed_shm_json_and_binary_inputs_in_msgpack_too() -> None:
    regions = Regions(inp=two_inputs())
    doc = {"inputs": [shm_input("INPUT0", "inp", 64),
                      {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [2] * 16}]}
    for packed in (False, True):
        request = decode(doc, regions, msgpack_body=packed)
        assert request.inputs[1].data.tolist() == [[2] * 16] and request.inputs[0].data[0, 3] == 3


def test_bytes_inputs_use_the_length_prefixed_form() -> None:
    wire = serialize_bytes(np.array([b"ab", b"", b"xyz"], dtype=object))
    regions = Regions(s=bytearray(wire + b"\0" * 7))
    request = decode({"inputs": [shm_input("IN", "s", len(wire), datatype="BYTES", shape=[3])]}, regions, STRINGS)
    assert request.inputs[0].data.tolist() == [b"ab", b"", b"xyz"]


@pytest.mark.parametrize(
    ("inp", "status", "message"),
    [
        (shm_input("INPUT0", "nope", 64), 404, "Unable to find shared memory region: 'nope'"),
        (shm_input("INPUT0", "inp", 64, 200), 400, "Invalid offset for shared memory region: 'inp'"),
        (shm_input("INPUT0", "inp", 64, 100), 400, "Invalid offset + byte size for shared memory region: 'inp'"),
        (shm_input("INPUT0", "inp", 60), 400,
         "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 60"),
        (shm_input("INPUT0", "inp", 2**64 - 1, 8), 400, "Integer overflow detected"),
        ({**shm_input("INPUT0", "inp", 64), "data": [1] * 16}, 400,
         "But set 'data' 'shared_memory_region'"),
    ],
)
def test_input_errors(inp: dict[str, object], status: int, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode({"inputs": [inp, shm_input("INPUT1", "inp", 64, 64)]}, Regions(inp=two_inputs()))
    assert info.value.status == status and message in info.value.message


def test_without_a_registry_every_region_is_unknown() -> None:
    body = json.dumps({"inputs": [shm_input("INPUT0", "r", 64), shm_input("INPUT1", "r", 64, 64)]}).encode()
    with pytest.raises(NotFound, match="Unable to find shared memory region: 'r'"):
        decode_infer_request(body, header_length=None, msgpack=False, signature=SIMPLE, max_input_size=1 << 20)


def response() -> InferResponse:
    return InferResponse("simple", "1", outputs=[
        OutputTensor("OUTPUT0", "INT32", (1, 16), np.arange(16, dtype=np.int32).reshape(1, 16)),
        OutputTensor("OUTPUT1", "INT32", (1, 16), np.full((1, 16), 7, np.int32)),
    ])


def shm_output(name: str, region: str, size: int, offset: int = 0) -> dict[str, object]:
    return {"name": name, "parameters": {"shared_memory_region": region, "shared_memory_byte_size": size,
                                         "shared_memory_offset": offset}}


def test_outputs_are_written_into_their_region_and_carry_no_data() -> None:
    out = bytearray(128)
    regions = Regions(inp=two_inputs(), out=out)
    doc = {"inputs": [shm_input("INPUT0", "inp", 64), shm_input("INPUT1", "inp", 64, 64)],
           "outputs": [shm_output("OUTPUT0", "out", 64), shm_output("OUTPUT1", "out", 64, 64)]}
    request = decode(doc, regions)
    reply = encode_infer_response(response(), request)
    assert json.loads(b"".join(bytes(b) for b in reply.buffers)) == {
        "model_name": "simple", "model_version": "1",
        "outputs": [{"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]},
                    {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16]}],
    }
    assert np.frombuffer(out, np.int32).tolist() == list(range(16)) + [7] * 16


def test_one_output_in_shm_one_in_the_body_and_msgpack() -> None:
    out = bytearray(64)
    doc = {"inputs": [shm_input("INPUT0", "inp", 64), shm_input("INPUT1", "inp", 64, 64)],
           "outputs": [shm_output("OUTPUT0", "out", 64), {"name": "OUTPUT1"}]}
    request = decode(doc, Regions(inp=two_inputs(), out=out), msgpack_body=True)
    reply = msgpack.unpackb(b"".join(bytes(b) for b in encode_infer_response(response(), request).buffers))
    assert reply["outputs"][0] == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}
    assert np.frombuffer(reply["outputs"][1]["data"], np.int32).tolist() == [7] * 16
    assert np.frombuffer(out, np.int32).tolist() == list(range(16))


def test_a_region_too_small_for_the_output_is_refused_and_left_untouched() -> None:
    out = bytearray(b"\xee" * 64)
    doc = {"inputs": [shm_input("INPUT0", "inp", 64), shm_input("INPUT1", "inp", 64, 64)],
           "outputs": [shm_output("OUTPUT0", "out", 32, 16)]}
    request = decode(doc, Regions(inp=two_inputs(), out=out))
    with pytest.raises(BadRequest, match=r"\(32 bytes\) should be at least 64 bytes to hold the results"):
        encode_infer_response(response(), request)
    assert out == bytearray(b"\xee" * 64), "nothing may be written outside (or inside) a refused range"


@pytest.mark.parametrize("other", [{"binary_data": True}, {"classification": 2}])
def test_shm_outputs_refuse_binary_and_classification(other: dict[str, object]) -> None:
    output = shm_output("OUTPUT0", "out", 64)
    output["parameters"].update(other)  # type: ignore[union-attr]
    doc = {"inputs": [shm_input("INPUT0", "inp", 64), shm_input("INPUT1", "inp", 64, 64)], "outputs": [output]}
    with pytest.raises(BadRequest, match=f"Output can't set both 'shared_memory_region' and '{next(iter(other))}'"):
        decode(doc, Regions(inp=two_inputs(), out=bytearray(64)))
