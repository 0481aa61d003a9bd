"""Stream the words of ``text_input`` back one response at a time, like a token generator.

``execute`` is a coroutine, so the requests of many concurrent streams interleave on one
instance while each one waits out its delay (the python backend's async execute). A client
that goes away stops the generation at the next word: ``is_cancelled()`` turns true, and the
request ends with Triton's CANCELLED error instead of generating words nobody reads.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.default_delay_ms = float(config["parameters"]["delay_ms"]["string_value"])

    async def execute(self, requests: list[pb_utils.InferenceRequest]) -> None:
        await asyncio.gather(*(self._generate(request) for request in requests))
        return None

    async def _generate(self, request: pb_utils.InferenceRequest) -> None:
        sender = request.get_response_sender()
        try:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            delay = float(json.loads(request.parameters()).get("delay_ms", self.default_delay_ms)) / 1000.0
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            self._fail(sender, f"text_stream: {exc}", pb_utils.TritonError.INVALID_ARG)
            return
        for index, word in enumerate(text.split()):
            if index and delay > 0:
                await asyncio.sleep(delay)
            if request.is_cancelled():
                self._fail(sender, "generation cancelled", pb_utils.TritonError.CANCELLED)
                return
            token = word if index == 0 else " " + word
            output = pb_utils.Tensor("text_output", np.array([token.encode("utf-8")], dtype=np.object_))
            sender.send(pb_utils.InferenceResponse(output_tensors=[output]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _fail(sender: pb_utils.InferenceResponseSender, message: str, code: int) -> None:
        response = pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
