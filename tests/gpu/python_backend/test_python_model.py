"""Importing python-backend models and running them: Triton's contract on execute, enforced."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evserve.gpu.execution.contract import ExecRequest
from evserve.gpu.python_backend import pb_utils
from evserve.gpu.python_backend.instance import PythonModelInstance
from evserve.gpu.python_backend.model import PythonModel, PythonModelError
from evserve.gpu.repository.config_complete import complete_config
from evserve.gpu.repository.model_config import ModelConfig
from evserve.protocol.errors import ProtocolError
from evserve.protocol.types import InferRequest, InferResponse, InputTensor, RequestedOutput

IO = {
    "input": [
        {"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]},
        {"name": "IN2", "data_type": "TYPE_FP32", "dims": [-1], "optional": True},
    ],
    "output": [
        {"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]},
        {"name": "OUT2", "data_type": "TYPE_FP32", "dims": [-1]},
    ],
}

# A default-mode model that doubles IN into OUT and OUT2 and records what it was given.
DOUBLER = """
import json
import triton_python_backend_utils as pb_utils

SEEN = []

class TritonPythonModel:
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        SEEN.append(requests)
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            outputs = [pb_utils.Tensor("OUT", data * 2), pb_utils.Tensor("OUT2", data * 2)]
            responses.append(pb_utils.InferenceResponse(outputs, parameters={"n": int(data.size)}))
        return responses
"""


def write_model(root: Path, name: str, source: str, *, version: int = 1, files: dict[str, str] | None = None) -> str:
    model_dir = root / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(textwrap.dedent(source))
    for relative, text in (files or {}).items():
        path = version_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return str(model_dir)


def make_config(name: str, **fields: Any) -> ModelConfig:
    raw = {"name": name, "backend": "python", "max_batch_size": 0, **IO, **fields}
    return ModelConfig(complete_config(raw, name, "test"))


def load(
    tmp_path: Path, source: str, name: str = "m", *, kind: str = "CPU", **fields: Any
) -> tuple[PythonModel, PythonModelInstance]:
    model = PythonModel.import_version(write_model(tmp_path, name, source), name, 1)
    instance = model.create_instance(make_config(name, **fields), 1, kind, 0, str(tmp_path / name))
    return model, instance


def infer_request(
    values: list[float] | None = None,
    *,
    outputs: list[str] | None = None,
    request_id: str = "",
    parameters: dict[str, Any] | None = None,
) -> InferRequest:
    data = np.array(values if values is not None else [1.0, 2.0], dtype=np.float32)
    return InferRequest(
        model_name="m",
        model_version="1",
        id=request_id,
        parameters=parameters or {},
        inputs=[InputTensor("IN", "FP32", data.shape, data)],
        outputs=None if outputs is None else [RequestedOutput(name) for name in outputs],
    )


class Recorder:
    """An ExecRequest's completion target; fails the test if called more than once."""

    def __init__(self) -> None:
        self.results: list[InferResponse | ProtocolError] = []
        self.done = threading.Event()

    def __call__(self, result: InferResponse | ProtocolError) -> None:
        self.results.append(result)
        self.done.set()

    @property
    def result(self) -> InferResponse | ProtocolError:
        assert len(self.results) == 1, self.results
        return self.results[0]


def run(instance: PythonModelInstance, *requests: InferRequest) -> list[InferResponse | ProtocolError]:
    recorders = [Recorder() for _ in requests]
    instance.execute([ExecRequest(request, recorder) for request, recorder in zip(requests, recorders, strict=True)])
    return [recorder.result for recorder in recorders]


def error_of(result: InferResponse | ProtocolError) -> ProtocolError:
    assert isinstance(result, ProtocolError), result
    return result


def response_of(result: InferResponse | ProtocolError) -> InferResponse:
    assert isinstance(result, InferResponse), result
    return result


# -- importing -------------------------------------------------------------------------------

SIBLING_USER = """
import helper
from . import relative_helper
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        value = helper.VALUE + relative_helper.VALUE
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                .as_numpy() * 0 + value)]) for r in requests]
"""


def test_models_with_the_same_file_names_do_not_collide(tmp_path: Path) -> None:
    a = write_model(
        tmp_path / "a", "m", SIBLING_USER, files={"helper.py": "VALUE = 1", "relative_helper.py": "VALUE = 10"}
    )
    b = write_model(
        tmp_path / "b", "m", SIBLING_USER, files={"helper.py": "VALUE = 2", "relative_helper.py": "VALUE = 20"}
    )
    model_a = PythonModel.import_version(a, "m", 1)
    model_b = PythonModel.import_version(b, "m", 1)
    assert model_a.package != model_b.package
    assert model_a.cls is not model_b.cls
    assert "helper" not in sys.modules
    assert sys.modules["triton_python_backend_utils"] is pb_utils
    config = make_config("m")
    for model, expected in ((model_a, 11.0), (model_b, 22.0)):
        instance = model.create_instance(config, 1, "CPU", 0, model.model_dir)
        assert response_of(run(instance, infer_request([0.0]))[0]).outputs[0].data.tolist() == [expected]
    model_a.release()
    assert not [name for name in sys.modules if name.startswith(model_a.package)]
    assert model_b.package + ".model" in sys.modules


LAZY_SIBLING_USER = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        import helper
        self.base = helper.VALUE

    def execute(self, requests):
        from helper import chained
        value = self.base + chained()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                .as_numpy() * 0 + value)]) for r in requests]
"""


def test_sibling_imports_inside_initialize_and_execute(tmp_path: Path) -> None:
    """Triton keeps the version folder importable for the model's whole life, not only at import time."""
    files = {"helper.py": "import other\nVALUE = 1\ndef chained():\n    return other.VALUE", "other.py": "VALUE = 100"}
    model_dir = write_model(tmp_path, "lazy", LAZY_SIBLING_USER, files=files)
    model = PythonModel.import_version(model_dir, "lazy", 1)
    instance = model.create_instance(make_config("lazy"), 1, "CPU", 0, model.model_dir)
    assert response_of(run(instance, infer_request([0.0]))[0]).outputs[0].data.tolist() == [101.0]
    assert "helper" not in sys.modules and "other" not in sys.modules
    assert model.package + ".other" in sys.modules


def test_sibling_packages_are_importable(tmp_path: Path) -> None:
    source = """
    from tools.values import VALUE
    class TritonPythonModel:
        def execute(self, requests):
            return []
    """
    model_dir = write_model(tmp_path, "m", source, files={"tools/__init__.py": "", "tools/values.py": "VALUE = 3"})
    model = PythonModel.import_version(model_dir, "m", 1)
    assert sys.modules[model.package + ".model"].VALUE == 3
    assert "tools" not in sys.modules


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("class Other:\n    pass\n", "does not define class TritonPythonModel"),
        ("class TritonPythonModel:\n    pass\n", "does not implement `execute` method"),
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    ],
)
def test_import_failures_are_clear_and_leave_nothing_behind(tmp_path: Path, source: str, message: str) -> None:
    before = {name for name in sys.modules if name.startswith("evserve_models.")}
    with pytest.raises(PythonModelError, match=message):
        PythonModel.import_version(write_model(tmp_path, "bad", source), "bad", 1)
    assert {name for name in sys.modules if name.startswith("evserve_models.")} == before


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(PythonModelError, match="unable to find"):
        PythonModel.import_version(str(tmp_path / "nothing"), "nothing", 1)


# -- initialize / auto-complete / finalize -----------------------------------------------------


def test_initialize_args(tmp_path: Path) -> None:
    model = PythonModel.import_version(write_model(tmp_path, "m", DOUBLER), "m", 1)
    config = make_config("m")
    instance = model.create_instance(config, 1, "KIND_GPU", 2, "/models/m", instance_name="m_0_1")
    args = instance.model.args
    assert args == {
        "model_config": json.dumps(config.raw),
        "model_instance_kind": "GPU",
        "model_instance_name": "m_0_1",
        "model_instance_device_id": "2",
        "model_repository": "/models/m",
        "model_version": "1",
        "model_name": "m",
    }
    assert json.loads(args["model_config"]) == config.raw
    default = model.create_instance(config, 1, "CPU", 0, "/models/m")
    assert default.name == "m_0_0"
    assert default.model.args["model_instance_kind"] == "CPU"


def test_initialize_exceptions_propagate(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def initialize(self, args):
            raise pb_utils.TritonModelException("weights missing")
        def execute(self, requests):
            return []
    """
    model = PythonModel.import_version(write_model(tmp_path, "m", source), "m", 1)
    with pytest.raises(pb_utils.TritonModelException, match="weights missing"):
        model.create_instance(make_config("m"), 1, "CPU", 0, "/models/m")


AUTO_COMPLETE = """
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [4]})
        config.add_output({"name": "Y", "data_type": "TYPE_INT32", "dims": [4]})
        config.set_max_batch_size(4)
        config.set_dynamic_batching()
        return config
    def execute(self, requests):
        return []
"""


def test_auto_complete(tmp_path: Path) -> None:
    model = PythonModel.import_version(write_model(tmp_path, "m", AUTO_COMPLETE), "m", 1)
    cfg = {"name": "m", "backend": "python", "max_batch_size": 0, "input": [], "output": []}
    completed = model.auto_complete(cfg)
    assert completed["input"] == [{"name": "X", "data_type": "TYPE_INT32", "dims": [4]}]
    assert completed["output"] == [{"name": "Y", "data_type": "TYPE_INT32", "dims": [4]}]
    assert completed["max_batch_size"] == 4
    assert completed["dynamic_batching"] == {}
    assert cfg["input"] == [] and cfg["max_batch_size"] == 0


def test_auto_complete_without_hook_and_with_a_bad_return(tmp_path: Path) -> None:
    plain = PythonModel.import_version(write_model(tmp_path, "plain", DOUBLER), "plain", 1)
    cfg = {"name": "plain", "max_batch_size": 2}
    assert plain.auto_complete(cfg) == cfg
    bad_source = AUTO_COMPLETE.replace("return config", "return None")
    bad = PythonModel.import_version(write_model(tmp_path, "bad", bad_source), "bad", 1)
    with pytest.raises(pb_utils.TritonModelException, match="must return a valid pb.ModelConfig object"):
        bad.auto_complete({"name": "bad"})
    conflicting = AUTO_COMPLETE.replace(
        '"dims": [4]})\n        config.add_output', '"dims": [5]})\n        config.add_output'
    )
    model = PythonModel.import_version(write_model(tmp_path, "c", conflicting), "c", 1)
    with pytest.raises(ValueError, match="expects dims"):
        model.auto_complete({"name": "c", "input": [{"name": "X", "data_type": "TYPE_INT32", "dims": [4]}]})


LIFECYCLE = """
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    ready = True
    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
    def is_ready(self):
        return self.ready
    def finalize(self):
        self.finalized = True
        if getattr(self, "fail", False):
            raise pb_utils.TritonModelException("cleanup failed")
"""


def test_finalize_and_is_ready(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, instance = load(tmp_path, LIFECYCLE)
    assert instance.is_ready() is True
    instance.model.ready = False
    assert instance.is_ready() is False
    instance.model.ready = "yes"
    with pytest.raises(pb_utils.TritonModelException, match="must return a boolean"):
        instance.is_ready()
    instance.finalize()
    assert instance.model.finalized
    instance.model.fail = True
    with caplog.at_level(logging.ERROR), pytest.raises(pb_utils.TritonModelException, match="cleanup failed"):
        instance.finalize()
    assert "failed to finalize" in caplog.text


def test_models_without_optional_methods(tmp_path: Path) -> None:
    source = "class TritonPythonModel:\n    def execute(self, requests):\n        return [None for _ in requests]\n"
    _, instance = load(tmp_path, source)
    assert instance.is_ready() is True
    instance.finalize()


def test_async_is_ready(tmp_path: Path) -> None:
    source = """
    class TritonPythonModel:
        async def is_ready(self):
            return True
        def execute(self, requests):
            return []
    """
    _, instance = load(tmp_path, source)
    assert instance.is_ready() is True
    instance.finalize()


# -- execute: default mode -----------------------------------------------------------------------


def test_execute_converts_responses(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DOUBLER)
    first, second = run(instance, infer_request([1.0, 2.0], request_id="a"), infer_request([3.0], request_id="b"))
    first, second = response_of(first), response_of(second)
    assert (first.model_name, first.model_version, first.id) == ("m", "1", "a")
    assert [(o.name, o.datatype, o.shape) for o in first.outputs] == [("OUT", "FP32", (2,)), ("OUT2", "FP32", (2,))]
    assert first.outputs[0].data.tolist() == [2.0, 4.0]
    assert first.parameters == {"n": 2}
    assert second.id == "b" and second.outputs[0].data.tolist() == [6.0]


def test_requested_outputs_are_filtered(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DOUBLER)
    result = response_of(run(instance, infer_request(outputs=["OUT2"]))[0])
    assert [o.name for o in result.outputs] == ["OUT2"]
    module = sys.modules[type(instance.model).__module__]
    assert module.SEEN[-1][0].requested_output_names() == {"OUT2"}
    for outputs in (None, []):
        run(instance, infer_request(outputs=outputs))
        assert module.SEEN[-1][0].requested_output_names() == {"OUT", "OUT2"}


def test_request_as_the_model_sees_it(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DOUBLER)
    data = np.frombuffer(np.array([1.0, 2.0], dtype=np.float32).tobytes(), dtype=np.float32)
    parameters = {"sequence_id": 7, "sequence_start": True, "sequence_end": False, "priority": 1, "custom": "x"}
    request = infer_request(request_id="r1", parameters=parameters)
    request.inputs[0].data = data
    cancelled = threading.Event()
    cancelled.set()
    recorder = Recorder()
    instance.execute([ExecRequest(request, recorder, cancelled.is_set)])
    seen = sys.modules[type(instance.model).__module__].SEEN[-1][0]
    assert seen.request_id() == "r1"
    assert seen.correlation_id() == 7
    assert seen.flags() == pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
    assert json.loads(seen.parameters()) == {"custom": "x"}
    assert seen.is_cancelled() and seen.get_response_sender().is_cancelled()
    assert seen.inputs()[0].as_numpy() is data  # no copy of the request body
    assert pb_utils.get_input_tensor_by_name(seen, "IN2") is None
    response_of(recorder.result)

    run(instance, infer_request(parameters={"sequence_id": "session", "sequence_end": True}))
    seen = sys.modules[type(instance.model).__module__].SEEN[-1][0]
    assert seen.correlation_id() == "session"
    assert seen.flags() == pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
    assert not seen.is_cancelled()


RAISER = """
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def initialize(self, args):
        self.exception = None
    def execute(self, requests):
        raise self.exception
"""


@pytest.mark.parametrize(
    ("exception", "status", "message"),
    [
        (
            ValueError("boom"),
            500,
            "Failed to process the request(s) for model instance 'm_0_0', message: ValueError: boom",
        ),
        (pb_utils.TritonModelException("bad state"), 500, "TritonModelException: bad state"),
        (pb_utils.TritonError("bad input", pb_utils.TritonError.INVALID_ARG), 400, "bad input"),
        (pb_utils.TritonError("busy", pb_utils.TritonError.UNAVAILABLE), 503, "busy"),
    ],
)
def test_a_raising_model_fails_the_whole_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, exception: Exception, status: int, message: str
) -> None:
    _, instance = load(tmp_path, RAISER)
    instance.model.exception = exception
    with caplog.at_level(logging.ERROR):
        results = run(instance, infer_request(), infer_request(), infer_request())
    for result in results:
        assert error_of(result).status == status
        assert message in error_of(result).message
    if status == 500:
        assert "failed to execute" in caplog.text


def test_response_errors_map_codes_to_statuses(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils
    CODES = [pb_utils.TritonError.INVALID_ARG, pb_utils.TritonError.UNAVAILABLE, pb_utils.TritonError.NOT_FOUND,
             pb_utils.TritonError.UNSUPPORTED, pb_utils.TritonError.INTERNAL, pb_utils.TritonError.CANCELLED]
    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"e{i}", CODES[i]))
                    for i, _ in enumerate(requests)]
    """
    _, instance = load(tmp_path, source)
    results = run(instance, *[infer_request() for _ in range(6)])
    assert [(error_of(r).status, error_of(r).message) for r in results] == [
        (400, "e0"),
        (503, "e1"),
        (404, "e2"),
        (501, "e3"),
        (500, "e4"),
        (400, "e5"),
    ]


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("None", "execute returned None without sending a response"),
        ("tuple(pb_utils.InferenceResponse([]) for _ in requests)", "Expected a list in the execute return"),
        ("[pb_utils.InferenceResponse([])]", "InferenceRequest(s) size is:2, and InferenceResponse(s) size is:1"),
        ("['text' for _ in requests]", "Expected an 'InferenceResponse' object"),
    ],
)
def test_wrong_returns_fail_every_request(tmp_path: Path, returned: str, message: str) -> None:
    source = f"""
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def execute(self, requests):
            return {returned}
    """
    _, instance = load(tmp_path, source)
    for result in run(instance, infer_request(), infer_request()):
        assert error_of(result).status == 500
        assert message in error_of(result).message


def test_undeclared_outputs_are_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = """
    import numpy as np
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.zeros(1, np.float32)),
                                                pb_utils.Tensor("DEBUG", np.zeros(1))]) for _ in requests]
    """
    _, instance = load(tmp_path, source)
    with caplog.at_level(logging.WARNING):
        result = response_of(run(instance, infer_request())[0])
    assert [o.name for o in result.outputs] == ["OUT"]
    assert "'DEBUG', which its configuration does not declare" in caplog.text


def test_bytes_outputs_become_bytes(tmp_path: Path) -> None:
    source = """
    import numpy as np
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([["a", b"b"], [3, "\\u00e9"]], dtype=np.object_)),
                pb_utils.Tensor("OUT2", np.array([b"xy", b"z"], dtype=np.bytes_)),
            ]) for _ in requests]
    """
    _, instance = load(
        tmp_path, source, output=[{"name": n, "data_type": "TYPE_STRING", "dims": [-1]} for n in ("OUT", "OUT2")]
    )
    result = response_of(run(instance, infer_request())[0])
    assert [(o.datatype, o.shape) for o in result.outputs] == [("BYTES", (2, 2)), ("BYTES", (2,))]
    assert result.outputs[0].data.tolist() == [[b"a", b"b"], [b"3", "é".encode()]]
    assert result.outputs[1].data.dtype == np.object_
    assert result.outputs[1].data.tolist() == [b"xy", b"z"]
    assert {type(item) for output in result.outputs for item in output.data.flat} == {bytes}


def test_bf16_inputs_keep_their_datatype(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("OUT", r.inputs()[0].to_dlpack())])
                    for r in requests]
    """
    _, instance = load(
        tmp_path,
        source,
        input=[{"name": "IN", "data_type": "TYPE_BF16", "dims": [-1]}],
        output=[{"name": "OUT", "data_type": "TYPE_BF16", "dims": [-1]}],
    )
    data = np.frombuffer(b"\x80\x3f\x00\x40", dtype="<u2")
    request = InferRequest("m", "1", inputs=[InputTensor("IN", "BF16", (2,), data)])
    output = response_of(run(instance, request)[0]).outputs[0]
    assert (output.datatype, output.shape, output.data.tolist()) == ("BF16", (2,), [0x3F80, 0x4000])


def test_rescheduling_is_refused(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                request.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
            return [None for _ in requests]
    """
    _, instance = load(tmp_path, source)
    result = error_of(run(instance, infer_request())[0])
    assert result.status == 501 and "rescheduling" in result.message


def test_a_failing_completion_callback_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, instance = load(tmp_path, DOUBLER)

    def explode(result: object) -> None:
        raise RuntimeError("encoder bug")

    with caplog.at_level(logging.ERROR):
        instance.execute([ExecRequest(infer_request(), explode)])
    assert "completion callback failed" in caplog.text


# -- execute: response sender ------------------------------------------------------------------

SENDER = """
import numpy as np
import triton_python_backend_utils as pb_utils
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

def response(value):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.float32))])

class TritonPythonModel:
    def initialize(self, args):
        self.plan = None
        self.errors = []

    def execute(self, requests):
        returned = []
        for request in requests:
            sender = request.get_response_sender()
            for step in self.plan:
                if step == "return":
                    returned.append(response(9.0))
                    continue
                value, flags = step
                try:
                    sender.send(None if value is None else response(value), flags=flags)
                except pb_utils.TritonModelException as exc:
                    self.errors.append(str(exc))
        return returned if returned else None
"""


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ([(1.0, 1)], 1.0),
        ([(1.0, 0), (None, 1)], 1.0),
        ([(1.0, 0)], 1.0),  # settled with the response when execute returns
        (["return"], 9.0),
    ],
)
def test_default_mode_sender(tmp_path: Path, plan: list[Any], expected: float) -> None:
    _, instance = load(tmp_path, SENDER)
    instance.model.plan = plan
    for result in run(instance, infer_request(), infer_request()):
        assert response_of(result).outputs[0].data.tolist() == [expected]
    assert instance.model.errors == []


def test_default_mode_sender_rules(tmp_path: Path) -> None:
    _, instance = load(tmp_path, SENDER)
    instance.model.plan = [(None, 1), (1.0, 0), (2.0, 1), (None, 1), (None, 1)]
    result = response_of(run(instance, infer_request())[0])
    assert result.outputs[0].data.tolist() == [1.0]
    assert instance.model.errors == [
        "Unable to send response. Non-decoupled model cannot send complete final before sending a response.",
        "Unable to send response. Non-decoupled model cannot send more than one response.",
        "Unable to send response. Response sender has been closed.",
    ]


def test_sending_and_returning_fails_the_batch(tmp_path: Path) -> None:
    _, instance = load(tmp_path, SENDER)
    instance.model.plan = [(1.0, 1), "return"]
    (first,) = run(instance, infer_request())
    assert response_of(first).outputs[0].data.tolist() == [1.0]
    instance.model.plan = [(1.0, 0), "return"]
    (second,) = run(instance, infer_request())
    assert "cannot send more than one response" in error_of(second).message


DECOUPLED = """
import threading
import numpy as np
import triton_python_backend_utils as pb_utils
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

def response(value):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], np.float32))])

class TritonPythonModel:
    def initialize(self, args):
        self.count = 3
        self.go = threading.Event()

    def execute(self, requests):
        if self.count < 0:
            return []
        for request in requests:
            sender = request.get_response_sender()
            if self.count == 0:
                threading.Thread(target=self.later, args=(sender,)).start()
                continue
            for i in range(self.count):
                sender.send(response(float(i)))
            sender.send(flags=FINAL)
        return None

    def later(self, sender):
        self.go.wait()
        sender.send(response(42.0), flags=FINAL)
"""

DECOUPLED_POLICY = {"model_transaction_policy": {"decoupled": True}}


def test_decoupled_without_stream_completes_with_the_last_response(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DECOUPLED, **DECOUPLED_POLICY)
    (result,) = run(instance, infer_request())
    assert response_of(result).outputs[0].data.tolist() == [2.0]


def test_decoupled_with_stream_passes_every_response(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DECOUPLED, **DECOUPLED_POLICY)
    streamed: list[tuple[Any, bool]] = []
    complete = Recorder()
    instance.execute(
        [ExecRequest(infer_request(), complete, stream=lambda item, final: streamed.append((item, final)))]
    )
    assert [(None if item is None else item.outputs[0].data.tolist(), final) for item, final in streamed] == [
        ([0.0], False),
        ([1.0], False),
        ([2.0], False),
        (None, True),
    ]
    assert complete.results == []


def test_decoupled_responses_from_another_thread(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DECOUPLED, **DECOUPLED_POLICY)
    instance.model.count = 0
    instance.model.go.set()
    recorder = Recorder()
    instance.execute([ExecRequest(infer_request(), recorder)])
    assert recorder.done.wait(5)
    assert response_of(recorder.result).outputs[0].data.tolist() == [42.0]


def test_decoupled_responses_after_execute_returns(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DECOUPLED, **DECOUPLED_POLICY)
    instance.model.count = 0
    recorder = Recorder()
    instance.execute([ExecRequest(infer_request(), recorder)])
    assert recorder.results == []
    instance.model.go.set()
    assert recorder.done.wait(5)
    assert response_of(recorder.result).outputs[0].data.tolist() == [42.0]


def test_decoupled_must_return_none(tmp_path: Path) -> None:
    _, instance = load(tmp_path, DECOUPLED, **DECOUPLED_POLICY)
    instance.model.count = -1
    (result,) = run(instance, infer_request())
    assert "decoupled mode and the execute function must return None" in error_of(result).message


def test_decoupled_final_without_responses_and_no_stream(tmp_path: Path) -> None:
    source = """
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                request.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    """
    _, instance = load(tmp_path, source, **DECOUPLED_POLICY)
    (result,) = run(instance, infer_request())
    assert "sent no response" in error_of(result).message
    streamed: list[tuple[Any, bool]] = []
    instance.execute(
        [ExecRequest(infer_request(), Recorder(), stream=lambda item, final: streamed.append((item, final)))]
    )
    assert streamed == [(None, True)]


# -- async execute -------------------------------------------------------------------------------


def test_async_execute_default_mode(tmp_path: Path) -> None:
    source = """
    import asyncio
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        async def execute(self, requests):
            await asyncio.sleep(0)
            return [pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("OUT", r.inputs()[0])]) for r in requests]
    """
    _, instance = load(tmp_path, source)
    (result,) = run(instance, infer_request([5.0]))
    assert response_of(result).outputs[0].data.tolist() == [5.0]
    instance.finalize()


def test_async_execute_decoupled(tmp_path: Path) -> None:
    source = """
    import asyncio
    import numpy as np
    import triton_python_backend_utils as pb_utils
    class TritonPythonModel:
        def initialize(self, args):
            self.fail = False
        async def execute(self, requests):
            await asyncio.sleep(0)
            if self.fail:
                raise RuntimeError("async failure")
            for request in requests:
                out = pb_utils.Tensor("OUT", np.array([1.0], np.float32))
                request.get_response_sender().send(pb_utils.InferenceResponse([out]),
                                                   flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    """
    _, instance = load(tmp_path, source, **DECOUPLED_POLICY)
    recorder = Recorder()
    instance.execute([ExecRequest(infer_request(), recorder)])
    assert recorder.done.wait(5)
    assert response_of(recorder.result).outputs[0].data.tolist() == [1.0]
    instance.model.fail = True
    failed = Recorder()
    instance.execute([ExecRequest(infer_request(), failed)])
    assert failed.done.wait(5)
    assert "RuntimeError: async failure" in error_of(failed.result).message
    instance.finalize()


def test_finalize_cancels_pending_async_work(tmp_path: Path) -> None:
    source = """
    import asyncio
    class TritonPythonModel:
        async def execute(self, requests):
            await asyncio.Event().wait()
    """
    _, instance = load(tmp_path, source, **DECOUPLED_POLICY)
    recorder = Recorder()
    instance.execute([ExecRequest(infer_request(), recorder)])
    instance.finalize()
    assert recorder.done.wait(5)
    assert "cancelled" in error_of(recorder.result).message
