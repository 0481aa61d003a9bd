"""COUNT numbered events of about 1 KiB each, as fast as the response sender takes them."""

import numpy as np
import triton_python_backend_utils as pb_utils

PAD = np.array([b"x" * 1000], dtype=np.object_)


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy().reshape(-1)[0])
            for seq in range(count):
                if request.is_cancelled():
                    break
                tensors = [pb_utils.Tensor("SEQ", np.array([seq], np.int32)), pb_utils.Tensor("PAD", PAD)]
                sender.send(pb_utils.InferenceResponse(tensors))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
