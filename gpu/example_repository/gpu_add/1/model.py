"""SUM = A + B on FP32 vectors: on the instance's GPU with CuPy when it has one, else with NumPy.

Shows the python backend's device path: inputs arrive in host memory, are copied to the GPU,
added there, and the device result is handed back with ``pb_utils.Tensor.from_dlpack`` (the
server copies it to the host for the reply). Every response says which path ran in its
``compute_device`` parameter ("gpu" or "cpu"), and initialize logs it.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils


def _cupy_for(kind: str) -> Any:
    """CuPy when this is a GPU instance and CuPy can see a device; None otherwise."""
    if kind != "GPU":
        return None
    try:
        import cupy
    except ImportError:
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() <= 0:
            return None
    except cupy.cuda.runtime.CUDARuntimeError:
        return None
    return cupy


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.cupy = _cupy_for(args["model_instance_kind"])
        self.device_id = int(args["model_instance_device_id"])
        self.compute_device = "gpu" if self.cupy is not None else "cpu"
        where = f"GPU {self.device_id}" if self.cupy is not None else "the CPU (NumPy)"
        pb_utils.Logger.log_info(f"{args['model_instance_name']}: adding on {where}")

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        return [self._add(request) for request in requests]

    def _add(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
        b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
        if a.shape != b.shape:
            error = pb_utils.TritonError(
                f"A and B must have the same shape, got {list(a.shape)} and {list(b.shape)}",
                pb_utils.TritonError.INVALID_ARG,
            )
            return pb_utils.InferenceResponse(error=error)
        if self.cupy is not None:
            with self.cupy.cuda.Device(self.device_id):
                total = self.cupy.asarray(a) + self.cupy.asarray(b)
            result = pb_utils.Tensor.from_dlpack("SUM", total)
        else:
            result = pb_utils.Tensor("SUM", a + b)
        return pb_utils.InferenceResponse(output_tensors=[result], parameters={"compute_device": self.compute_device})
