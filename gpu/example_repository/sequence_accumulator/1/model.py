"""A running total per sequence, kept by the model between requests.

State lives in the instance, keyed by the CORRID control input: the sequence batcher routes every
request of a sequence to the instance that saw its START, so the total is always there. END
forgets it; a sequence that goes idle past max_sequence_idle_microseconds must start again.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.totals: dict[bytes, int] = {}

    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        responses = []
        for request in requests:
            key = pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().item()
            if pb_utils.get_input_tensor_by_name(request, "START").as_numpy().item():
                self.totals[key] = 0
            total = self.totals.get(key, 0) + int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().sum())
            if pb_utils.get_input_tensor_by_name(request, "END").as_numpy().item():
                self.totals.pop(key, None)
            else:
                self.totals[key] = total
            answer = pb_utils.Tensor("TOTAL", np.array([[total]], dtype=np.int64))
            responses.append(pb_utils.InferenceResponse([answer]))
        return responses
