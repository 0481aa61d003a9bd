"""The triton_python_backend_utils API as models see it: values, messages and rules as in Triton."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import pytest

from evserve.gpu.python_backend import bls, pb_utils
from evserve.protocol.errors import TritonCode

# -- Tensor ----------------------------------------------------------------------------------


def test_tensor_basics() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = pb_utils.Tensor("X", array)
    assert tensor.name() == "X"
    assert tensor.as_numpy() is array
    assert tensor.shape() == [2, 3]
    assert tensor.triton_dtype() == 11
    assert tensor.is_cpu()


@pytest.mark.parametrize(
    ("dtype", "code"),
    [
        (np.bool_, 1),
        (np.uint8, 2),
        (np.uint16, 3),
        (np.uint32, 4),
        (np.uint64, 5),
        (np.int8, 6),
        (np.int16, 7),
        (np.int32, 8),
        (np.int64, 9),
        (np.float16, 10),
        (np.float32, 11),
        (np.float64, 12),
        (np.object_, 13),
    ],
)
def test_tensor_dtype_codes(dtype: type, code: int) -> None:
    assert pb_utils.Tensor("X", np.zeros(2, dtype=dtype)).triton_dtype() == code


def test_tensor_accepts_array_likes_and_makes_them_contiguous() -> None:
    assert pb_utils.Tensor("X", [1, 2, 3]).as_numpy().tolist() == [1, 2, 3]
    strided = np.arange(10, dtype=np.int32)[::2]
    tensor = pb_utils.Tensor("X", strided)
    assert tensor.as_numpy().flags.c_contiguous
    assert tensor.as_numpy().tolist() == [0, 2, 4, 6, 8]


def test_tensor_stores_big_endian_data_little_endian() -> None:
    tensor = pb_utils.Tensor("X", np.array([1, 2], dtype=">i4"))
    assert tensor.as_numpy().dtype == np.dtype("<i4")
    assert tensor.as_numpy().tolist() == [1, 2]


def test_tensor_refuses_empty_names_and_unsupported_dtypes() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="Tensor name cannot be an empty string."):
        pb_utils.Tensor("", np.zeros(1))
    with pytest.raises(pb_utils.TritonModelException, match="np.object_"):
        pb_utils.Tensor("X", np.array(["text"]))
    with pytest.raises(pb_utils.TritonModelException, match="not supported"):
        pb_utils.Tensor("X", np.zeros(2, dtype=np.complex64))


def test_bytes_tensors_take_object_and_fixed_width_arrays() -> None:
    objects = pb_utils.Tensor("S", np.array([b"a", "b"], dtype=np.object_))
    fixed = pb_utils.Tensor("S", np.array([b"ab", b"c"], dtype=np.bytes_))
    assert objects.triton_dtype() == fixed.triton_dtype() == 13


def test_dlpack_round_trip_shares_memory() -> None:
    array = np.arange(4, dtype=np.int64)
    capsule = pb_utils.Tensor("X", array).to_dlpack()
    back = pb_utils.Tensor.from_dlpack("Y", capsule)
    assert back.name() == "Y"
    assert back.triton_dtype() == 9
    assert np.shares_memory(back.as_numpy(), array)


def test_dlpack_protocol_objects_both_ways() -> None:
    tensor = pb_utils.Tensor("X", np.arange(3, dtype=np.float32))
    assert np.from_dlpack(tensor).tolist() == [0.0, 1.0, 2.0]
    assert pb_utils.Tensor.from_dlpack("Y", np.arange(3, dtype=np.uint8)).as_numpy().tolist() == [0, 1, 2]
    assert pb_utils.Tensor.from_dlpack("Z", np.array([True, False])).triton_dtype() == 1


def test_dlpack_of_read_only_data_exports_a_copy() -> None:
    read_only = np.frombuffer(b"\x00\x00\x80\x3f", dtype=np.float32)
    tensor = pb_utils.Tensor._wrap("X", read_only, "FP32")
    back = pb_utils.Tensor.from_dlpack("Y", tensor.to_dlpack())
    assert back.as_numpy().tolist() == [1.0]
    assert not np.shares_memory(back.as_numpy(), read_only)


def test_bf16_goes_through_dlpack_not_numpy() -> None:
    raw = np.array([0x3F80, 0x4000], dtype=np.uint16)  # 1.0 and 2.0 as bfloat16
    tensor = pb_utils.Tensor._wrap("X", raw, "BF16")
    assert tensor.triton_dtype() == 14
    with pytest.raises(pb_utils.TritonModelException, match="BF16 and cannot be converted to NumPy"):
        tensor.as_numpy()
    for source in (tensor.to_dlpack(), tensor):
        back = pb_utils.Tensor.from_dlpack("Y", source)
        assert back.triton_dtype() == 14
        assert back._array.tolist() == [0x3F80, 0x4000]
    with pytest.raises((RuntimeError, BufferError)):  # NumPy has no bfloat16 (2.5 raises BufferError)
        np.from_dlpack(tensor)


def test_dlpack_refusals() -> None:
    strings = pb_utils.Tensor("S", np.array([b"x"], dtype=np.object_))
    with pytest.raises(pb_utils.TritonModelException, match="DLPack does not have support for string tensors."):
        strings.to_dlpack()
    with pytest.raises(pb_utils.TritonModelException, match="not contiguous"):
        pb_utils.Tensor.from_dlpack("X", np.arange(10, dtype=np.int32)[::2])
    with pytest.raises(pb_utils.TritonModelException, match="must be a DLPack capsule"):
        pb_utils.Tensor.from_dlpack("X", [1, 2])
    with pytest.raises(pb_utils.TritonModelException, match="Tensor name cannot be an empty string."):
        pb_utils.Tensor.from_dlpack("", np.zeros(1))
    capsule = np.zeros(2).__dlpack__()
    np.from_dlpack(_Holder(capsule))
    with pytest.raises(pb_utils.TritonModelException, match="already been consumed"):
        pb_utils.Tensor.from_dlpack("X", capsule)


class _Holder:
    def __init__(self, capsule: object) -> None:
        self.capsule = capsule

    def __dlpack__(self, **_kwargs: object) -> object:
        return self.capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


class _DeviceArray:
    """Stands in for a CuPy array: has a shape and lives somewhere NumPy cannot read."""

    shape = (2,)


def test_device_tensors_refuse_as_numpy() -> None:
    tensor = pb_utils.Tensor._wrap("X", _DeviceArray(), "FP32")
    assert not tensor.is_cpu()
    assert tensor.shape() == [2]
    with pytest.raises(
        pb_utils.TritonModelException, match="Tensor is stored in GPU and cannot be converted to NumPy."
    ):
        tensor.as_numpy()


@pytest.mark.gpu
def test_cupy_dlpack_round_trip() -> None:
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no CUDA device")
    device = cupy.arange(4, dtype=cupy.float32)
    tensor = pb_utils.Tensor.from_dlpack("X", device)
    assert not tensor.is_cpu()
    assert tensor.shape() == [4]
    with pytest.raises(pb_utils.TritonModelException, match="stored in GPU"):
        tensor.as_numpy()
    assert cupy.from_dlpack(tensor).tolist() == [0.0, 1.0, 2.0, 3.0]
    again = pb_utils.Tensor.from_dlpack("Y", tensor.to_dlpack())
    assert not again.is_cpu() and again.triton_dtype() == 11


# -- BYTES helpers ---------------------------------------------------------------------------


def test_serialize_and_deserialize_bytes() -> None:
    array = np.array([[b"ab", "c"], [b"", b"\x00z"]], dtype=np.object_)
    encoded = pb_utils.serialize_byte_tensor(array)
    assert encoded == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c\x00\x00\x00\x00\x02\x00\x00\x00\x00z"
    decoded = pb_utils.deserialize_bytes_tensor(encoded)
    assert decoded.dtype == np.object_
    assert decoded.tolist() == [b"ab", b"c", b"", b"\x00z"]
    assert pb_utils.deserialize_bytes_tensor(memoryview(encoded)).tolist() == decoded.tolist()


def test_serialize_edge_cases() -> None:
    assert pb_utils.serialize_byte_tensor(np.zeros(2, dtype=np.int32)) is None
    assert pb_utils.serialize_byte_tensor(np.array([], dtype=np.object_)) == b""
    assert pb_utils.serialize_byte_tensor(np.array([7], dtype=np.object_)) == b"\x01\x00\x00\x007"
    assert pb_utils.deserialize_bytes_tensor(b"").shape == (0,)


def test_deserialize_refuses_truncated_data() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="incomplete length field"):
        pb_utils.deserialize_bytes_tensor(b"\x01\x00")
    with pytest.raises(pb_utils.TritonModelException, match="string extends beyond buffer"):
        pb_utils.deserialize_bytes_tensor(b"\x05\x00\x00\x00abc")


# -- errors ----------------------------------------------------------------------------------


def test_triton_error_codes_and_accessors() -> None:
    names = ["UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS"]
    for name in [*names, "CANCELLED"]:
        assert getattr(pb_utils.TritonError, name) == TritonCode[name]
    error = pb_utils.TritonError("missing", pb_utils.TritonError.NOT_FOUND)
    assert (error.message(), error.code(), str(error)) == ("missing", TritonCode.NOT_FOUND, "missing")
    assert pb_utils.TritonError("x").code() == pb_utils.TritonError.INTERNAL
    with pytest.raises(TypeError):
        pb_utils.TritonError(None)  # type: ignore[arg-type]


def test_triton_model_exception() -> None:
    exc = pb_utils.TritonModelException("broken")
    assert str(exc) == exc.message() == "broken"


# -- type helpers ----------------------------------------------------------------------------


def test_type_helpers() -> None:
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.triton_string_to_numpy("TYPE_BOOL") is bool
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.dtype("int8")) == 6
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.numpy_to_triton_type(np.str_) is None
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    assert pb_utils.triton_to_numpy_type(1) is np.bool_
    assert pb_utils.triton_to_numpy_type(14) is None


def test_constants() -> None:
    assert pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL == 1
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE == 2
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START == 1
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END == 2


# -- config helpers ----------------------------------------------------------------------------

CONFIG = {
    "name": "m",
    "max_batch_size": 0,
    "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
}


def test_config_getters() -> None:
    assert pb_utils.get_input_config_by_name(CONFIG, "IN") == CONFIG["input"][0]
    assert pb_utils.get_output_config_by_name(CONFIG, "OUT") == CONFIG["output"][0]
    assert pb_utils.get_input_config_by_name(CONFIG, "OUT") is None
    assert pb_utils.get_output_config_by_name({}, "OUT") is None
    assert not pb_utils.using_decoupled_model_transaction_policy(CONFIG)
    assert pb_utils.using_decoupled_model_transaction_policy({"model_transaction_policy": {"decoupled": True}})


def test_auto_complete_wrapper_adds_and_fills() -> None:
    config = pb_utils.ModelConfig(json.dumps({**CONFIG, "input": [{"name": "IN", "data_type": "TYPE_INVALID"}]}))
    config.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [4], "optional": True})
    config.add_input({"name": "IN2", "data_type": "TYPE_INT32", "dims": [1]})
    config.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]})
    config.set_max_batch_size(8)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    cfg = config.as_dict()
    assert cfg["input"] == [
        {"name": "IN", "data_type": "TYPE_FP32", "dims": [4], "optional": True},
        {"name": "IN2", "data_type": "TYPE_INT32", "dims": [1]},
    ]
    assert cfg["max_batch_size"] == 8
    assert cfg["dynamic_batching"] == {}
    assert cfg["model_transaction_policy"] == {"decoupled": True}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.add_input({"name": "IN", "data_type": "TYPE_INT8", "dims": [-1]}), "expects datatype TYPE_FP32"),
        (lambda c: c.add_output({"name": "OUT", "data_type": "TYPE_FP32", "dims": [3]}), "expects dims"),
        (lambda c: c.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [1], "shape": 1}), "other than"),
        (lambda c: c.add_output({"name": "X", "data_type": "TYPE_FP32", "dims": [1], "optional": True}), "other than"),
        (lambda c: c.add_input({"name": "X", "dims": [1]}), "missing 'data_type'"),
        (lambda c: c.add_output({"data_type": "TYPE_FP32", "dims": [1]}), "missing 'name'"),
        (lambda c: c.set_max_batch_size(-1), "specified max_batch_size"),
        (lambda c: c.set_model_transaction_policy({"ordered": True}), "other than 'decoupled'"),
    ],
)
def test_auto_complete_wrapper_refuses_conflicts(edit: object, message: str) -> None:
    config = pb_utils.ModelConfig(CONFIG)
    with pytest.raises(ValueError, match=message):
        edit(config)  # type: ignore[operator]
    assert config.as_dict()["input"] == CONFIG["input"]


def test_auto_complete_wrapper_scheduler_and_policy_conflicts() -> None:
    with pytest.raises(ValueError, match="sequence_batching"):
        pb_utils.ModelConfig({**CONFIG, "sequence_batching": {}}).set_dynamic_batching()
    decoupled = pb_utils.ModelConfig({**CONFIG, "model_transaction_policy": {"decoupled": False}})
    with pytest.raises(ValueError, match="trying to change decoupled property"):
        decoupled.set_model_transaction_policy({"decoupled": True})
    optional = pb_utils.ModelConfig({**CONFIG, "input": [{**CONFIG["input"][0], "optional": False}]})
    with pytest.raises(ValueError, match="expects optional True"):
        optional.add_input({"name": "IN", "data_type": "TYPE_FP32", "dims": [-1], "optional": True})


# -- Logger ----------------------------------------------------------------------------------


def test_logger_levels_and_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="evserve.model")
    pb_utils.Logger.log_info("i")
    pb_utils.Logger.log_warn("w")
    pb_utils.Logger.log_error("e")
    pb_utils.Logger.log_verbose("v")
    pb_utils.Logger.log("default")
    pb_utils.Logger.log("explicit", pb_utils.Logger.ERROR)
    seen = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "evserve.model"]
    assert seen == [
        (logging.INFO, "i"),
        (logging.WARNING, "w"),
        (logging.ERROR, "e"),
        (logging.DEBUG, "v"),
        (logging.INFO, "default"),
        (logging.ERROR, "explicit"),
    ]
    assert {r.filename for r in caplog.records if r.name == "evserve.model"} == {"test_pb_utils.py"}


# -- requests, responses, sender ---------------------------------------------------------------


def test_inference_response() -> None:
    out = pb_utils.Tensor("OUT", np.zeros(1))
    response = pb_utils.InferenceResponse([out], parameters={"a": 1, "b": "x", "c": True})
    assert response.output_tensors() == [out]
    assert not response.has_error()
    assert json.loads(response.parameters()) == {"a": 1, "b": "x", "c": True}
    assert pb_utils.get_output_tensor_by_name(response, "OUT") is out
    assert pb_utils.get_output_tensor_by_name(response, "NOPE") is None
    failed = pb_utils.InferenceResponse(error=pb_utils.TritonError("bad"))
    assert failed.has_error() and failed.error().message() == "bad"
    assert failed.output_tensors() == []


def test_inference_response_refuses_wrong_arguments() -> None:
    with pytest.raises(pb_utils.TritonModelException, match='"output_tensors" must be a list.'):
        pb_utils.InferenceResponse(pb_utils.Tensor("X", np.zeros(1)))  # type: ignore[arg-type]
    with pytest.raises(pb_utils.TritonModelException, match="Tensor objects"):
        pb_utils.InferenceResponse([np.zeros(1)])  # type: ignore[list-item]
    with pytest.raises(pb_utils.TritonModelException, match="keys to have type str"):
        pb_utils.InferenceResponse([], parameters={1: "x"})  # type: ignore[dict-item]
    with pytest.raises(pb_utils.TritonModelException, match="values to have type bool/int/str"):
        pb_utils.InferenceResponse([], parameters={"x": 1.5})


def test_bls_requests_construct_but_refuse_to_run() -> None:
    request = pb_utils.InferenceRequest(
        model_name="other",
        requested_output_names=["OUT"],
        inputs=[pb_utils.Tensor("IN", np.zeros(1))],
        correlation_id="seq",
        parameters={"k": "v"},
        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU),
    )
    assert request.requested_output_names() == {"OUT"}
    assert request.correlation_id() == "seq"
    assert json.loads(request.parameters()) == {"k": "v"}
    assert pb_utils.get_input_tensor_by_name(request, "IN") is not None
    assert pb_utils.get_input_tensor_by_name(request, "NOPE") is None
    with pytest.MonkeyPatch.context() as patch:  # not loaded by a server (no gateway): BLS says why
        patch.setattr(bls, "_gateway", None)
        with pytest.raises(pb_utils.TritonModelException, match="BLS needs a running server"):
            request.exec()
        with pytest.raises(pb_utils.TritonModelException, match="BLS needs a running server"):
            asyncio.run(request.async_exec(decoupled=True))
    with pytest.raises(pb_utils.TritonModelException, match="no reference to the decoupled state"):
        request.get_response_sender().send(pb_utils.InferenceResponse())
    with pytest.raises(pb_utils.TritonModelException, match="Correlation ID must be integer or string"):
        pb_utils.InferenceRequest(model_name="m", correlation_id=1.5)  # type: ignore[arg-type]
    for call in (
        lambda: pb_utils.load_model("m"),
        lambda: pb_utils.unload_model("m"),
        lambda: pb_utils.is_model_ready("m"),
    ):
        with pytest.raises(pb_utils.TritonModelException, match="not supported by evserve"):
            call()


def _sender(decoupled: bool) -> tuple[pb_utils.InferenceResponseSender, list[tuple[object, int]]]:
    sent: list[tuple[object, int]] = []
    return pb_utils.InferenceResponseSender(decoupled, lambda r, f: sent.append((r, f))), sent


FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def test_sender_default_mode_allows_exactly_one_response() -> None:
    sender, sent = _sender(decoupled=False)
    with pytest.raises(pb_utils.TritonModelException, match="cannot send complete final before sending a response"):
        sender.send(flags=FINAL)
    first = pb_utils.InferenceResponse()
    sender.send(first)
    with pytest.raises(pb_utils.TritonModelException, match="cannot send more than one response"):
        sender.send(pb_utils.InferenceResponse(), flags=FINAL)
    sender.send(flags=FINAL)
    with pytest.raises(pb_utils.TritonModelException, match="Response sender has been closed"):
        sender.send(flags=FINAL)
    assert sent == [(first, 0), (None, FINAL)]


def test_sender_decoupled_mode_allows_many_then_final() -> None:
    sender, sent = _sender(decoupled=True)
    responses = [pb_utils.InferenceResponse() for _ in range(3)]
    for response in responses:
        sender.send(response)
    sender.send(flags=FINAL)
    with pytest.raises(pb_utils.TritonModelException, match="has been closed"):
        sender.send(pb_utils.InferenceResponse())
    assert [r for r, _ in sent] == [*responses, None]
    empty, sent_empty = _sender(decoupled=True)
    empty.send(flags=FINAL)
    assert sent_empty == [(None, FINAL)]


def test_sender_argument_checks() -> None:
    sender, sent = _sender(decoupled=True)
    with pytest.raises(pb_utils.TritonModelException, match="Unsupported flag provided"):
        sender.send(pb_utils.InferenceResponse(), flags=2)
    with pytest.raises(pb_utils.TritonModelException, match="must be provided when the response flags is set to zero"):
        sender.send()
    with pytest.raises(pb_utils.TritonModelException, match="Expected an InferenceResponse"):
        sender.send("text")  # type: ignore[arg-type]
    assert sent == []
    assert not sender.is_cancelled()


# -- custom metrics ----------------------------------------------------------------------------


def test_custom_metrics_keep_values() -> None:
    family = pb_utils.MetricFamily("latency", "cumulative latency", pb_utils.MetricFamily.COUNTER)
    metric = family.Metric(labels={"model": "m"})
    metric.increment(5)
    metric.increment(2)
    assert metric.value() == 7
    with pytest.raises(pb_utils.TritonModelException):
        metric.increment(-1)
    gauge = pb_utils.MetricFamily("g", "gauge", pb_utils.MetricFamily.GAUGE).Metric()
    gauge.set(3)
    gauge.increment(-1)
    assert gauge.value() == 2
    histogram = pb_utils.MetricFamily("h", "histogram", pb_utils.MetricFamily.HISTOGRAM)
    with pytest.raises(pb_utils.TritonModelException, match="buckets"):
        histogram.Metric()
    histogram.Metric(buckets=[1.0, 2.0]).observe(1.5)


def test_custom_metric_families_are_exported_while_held() -> None:
    from evserve.gpu.python_backend.pb_utils import metrics

    family = pb_utils.MetricFamily("held_family", "held", pb_utils.MetricFamily.GAUGE)
    metric = family.Metric(labels={"a": "b"})
    metric.set(4)
    with pytest.raises(pb_utils.TritonModelException, match="different kind or description"):
        pb_utils.MetricFamily("held_family", "held", pb_utils.MetricFamily.COUNTER)
    exported = {name: found for name, _, _, found in metrics.families()}
    assert [m.samples() for m in exported["held_family"]] == [[("", {"a": "b"}, 4.0)]]
    del family, metric
    import gc

    gc.collect()
    assert "held_family" not in {name for name, *_ in metrics.families()}, "an unloaded model's metrics go"
