"""Echoes each INPUT_<DATATYPE> it receives as OUTPUT_<DATATYPE>, for every data type.

All inputs are optional; a request carries the ones it wants to round-trip. BF16 has no NumPy
type, so, as the python backend documents, it is passed through DLPack instead of as_numpy().
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

_INPUT_PREFIX = "INPUT_"


def _echo(tensor: pb_utils.Tensor) -> pb_utils.Tensor:
    name = "OUTPUT_" + tensor.name()[len(_INPUT_PREFIX) :]
    if tensor.name() == "INPUT_BF16":
        return pb_utils.Tensor.from_dlpack(name, tensor.to_dlpack())
    return pb_utils.Tensor(name, tensor.as_numpy())


class TritonPythonModel:
    def execute(self, requests: list[pb_utils.InferenceRequest]) -> list[pb_utils.InferenceResponse]:
        responses = []
        for request in requests:
            outputs = [_echo(tensor) for tensor in request.inputs() if tensor.name().startswith(_INPUT_PREFIX)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
