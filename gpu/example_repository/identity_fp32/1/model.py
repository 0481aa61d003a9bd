"""Returns its FP32 input INPUT0 unchanged as OUTPUT0.

The benchmark's model: it does no work, so what is measured is the server's own cost per
request. The output is the input array itself, not a copy.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", in0.as_numpy())]))
        return responses
