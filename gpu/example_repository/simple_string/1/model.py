"""Sum and difference of decimal numbers carried as strings (BYTES in, BYTES out).

Each element of INPUT0/INPUT1 is the UTF-8 text of an integer; OUTPUT0/OUTPUT1 hold the text of
their sum/difference, as simple_http_string_infer_client.py expects. Text that is not an
integer is the client's mistake: that request gets an INVALID_ARG error (HTTP 400).
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils


def _integers(tensor: pb_utils.Tensor) -> np.ndarray:
    array = tensor.as_numpy()
    return np.array([int(item) for item in array.flat], dtype=np.int64).reshape(array.shape)


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([str(value).encode("utf-8") for value in values.flat], dtype=np.object_).reshape(values.shape)


class TritonPythonModel:
    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        return [self._add_sub(request) for request in requests]

    @staticmethod
    def _add_sub(request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        try:
            in0 = _integers(pb_utils.get_input_tensor_by_name(request, "INPUT0"))
            in1 = _integers(pb_utils.get_input_tensor_by_name(request, "INPUT1"))
        except ValueError as exc:
            error = pb_utils.TritonError(
                f"INPUT0 and INPUT1 must hold decimal integers: {exc}", pb_utils.TritonError.INVALID_ARG
            )
            return pb_utils.InferenceResponse(error=error)
        out0 = pb_utils.Tensor("OUTPUT0", _strings(in0 + in1))
        out1 = pb_utils.Tensor("OUTPUT1", _strings(in0 - in1))
        return pb_utils.InferenceResponse(output_tensors=[out0, out1])
