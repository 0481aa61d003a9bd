"""Answer INPUT + START: the first request of a sequence adds 1, the others echo their input.

What Triton's sequence example clients expect of `simple_sequence`; it shows the START control
input reaching the model as an ordinary input tensor ([1, 1] here: the model batches).
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", value + start)]))
        return responses
