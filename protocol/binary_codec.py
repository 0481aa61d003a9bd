"""The binary tensor extension: tensors as raw bytes beside (or instead of) the JSON head.

This is tritonclient's default path, so it is the one kept copy-free: a request tensor is
an ``np.frombuffer`` view of the request body, and a reply tensor goes out as a
memoryview of the model's array. Only BYTES tensors are split or joined element by
element, because their wire form (``<uint32 LE length><bytes>`` per element) is not a
NumPy layout.

A view into the body keeps the body alive and aliases it: a server that reuses a
``bytearray`` body buffer must not do so while the request is in flight. Views may also be
unaligned (the JSON head has any length); NumPy handles that, at some cost for large
arithmetic, and the model may copy if it cares.
"""

from __future__ import annotations

import numpy as np

from evserve.protocol.datatypes import deserialize_bytes, itemsize, numpy_dtype, serialize_bytes
from evserve.protocol.errors import BadRequest, ProtocolError
from evserve.protocol.types import InputTensor, ModelSignature, OutputTensor
from evserve.protocol.validate import InputPlan, dims_string, element_count, expected_byte_size

# The request/reply header that says how long the JSON head is; the binary part follows.
HEADER_LENGTH_NAME = "Inference-Header-Content-Length"


def array_from_bytes(plan: InputPlan, view: memoryview, offset: int, size: int, model: str) -> np.ndarray:
    """The tensor whose wire bytes are ``view[offset:offset + size]``, shaped as ``plan``.

    Fixed-size types become a zero-copy view; BYTES is split into an object array.
    """
    expected = expected_byte_size(plan)
    if expected is None:
        try:
            items = deserialize_bytes(view[offset : offset + size], plan.count)
        except BadRequest as exc:
            raise BadRequest(f"{exc.message} for inference input '{plan.name}' for model '{model}'") from None
        return items.reshape(plan.shape)
    if size != expected:
        raise BadRequest(
            f"input byte size mismatch for input '{plan.name}' for model '{model}'. Expected {expected}, got {size}"
        )
    array = np.frombuffer(view, dtype=numpy_dtype(plan.datatype), count=plan.count, offset=offset)
    if plan.datatype == "BOOL":
        array = _canonical_bool(array)
    return array.reshape(plan.shape)


def _canonical_bool(array: np.ndarray) -> np.ndarray:
    # NumPy trusts a bool byte to be 0 or 1; a client's 2 would make `x == True` false.
    # Checking is one C pass, and only a hostile or sloppy body pays for the copy.
    raw = array.view(np.uint8)
    if raw.size and int(raw.max()) > 1:
        return raw != 0
    return array


def raw_request_input(signature: ModelSignature, view: memoryview, max_input_size: int) -> InputTensor:
    """The single input of a raw request (Inference-Header-Content-Length: 0).

    The shape comes from the model's dims: a batching model gets batch 1, and the one
    variable dimension, if any, takes whatever the body's length implies.
    """
    model = signature.name
    if len(signature.inputs) != 1:
        raise BadRequest(
            f"Raw request must only have 1 input (found 1) to be deduced but got {len(signature.inputs)} inputs in "
            f"'{model}' model configuration"
        )
    size = view.nbytes
    if size > max_input_size:
        raise BadRequest(
            f"Raw input has a byte_size ({size} bytes) that exceeds the maximum allowed value of {max_input_size} "
            "bytes. Use --http-max-input-size to increase the limit."
        )
    spec = signature.inputs[0]
    if sum(1 for d in spec.dims if d == -1) > 1:
        raise BadRequest(
            f"The shape of the raw input '{spec.name}' can not be deduced because there are more than one "
            "variable-sized dimension"
        )
    batch = (1,) if signature.max_batch_size > 0 else ()
    if spec.datatype == "BYTES":
        if -1 in spec.dims or element_count(spec.name, spec.dims) != 1:
            raise BadRequest(f"For BYTE datatype raw input '{spec.name}', the model must have input shape [1]")
        # The whole body is the one element (Triton prepends the length itself).
        shape = batch + tuple(spec.dims)
        data = np.empty(1, dtype=object)
        data[0] = view.tobytes()
        return InputTensor(spec.name, spec.datatype, shape, data.reshape(shape))
    shape = batch + _deduce_dims(spec.name, spec.datatype, spec.dims, size, model)
    plan = InputPlan(spec.name, spec.datatype, shape, element_count(spec.name, shape))
    return InputTensor(spec.name, spec.datatype, shape, array_from_bytes(plan, view, 0, size, model))


def _deduce_dims(name: str, datatype: str, dims: tuple[int, ...], size: int, model: str) -> tuple[int, ...]:
    width = itemsize(datatype) or 1
    fixed = element_count(name, [d for d in dims if d != -1]) * width
    if -1 not in dims:
        return tuple(dims)
    if fixed == 0:
        variable = 0
    elif size % fixed:
        raise BadRequest(
            f"raw input '{name}' for model '{model}' has {size} bytes, not a whole number of "
            f"{dims_string(dims)} {datatype} tensors ({fixed} bytes per unit of the variable dimension)"
        )
    else:
        variable = size // fixed
    return tuple(variable if d == -1 else d for d in dims)


def output_array(output: OutputTensor) -> np.ndarray:
    """The output's data as the 1-D, C-contiguous, little-endian array its datatype names.

    Copies only when the model's array is not already in that form (a transposed view, a
    big-endian array, float64 for an FP32 output, ...).
    """
    data = np.asarray(output.data)
    count = element_count(output.name, output.shape)
    if data.size != count:
        raise ProtocolError(
            f"output tensor shape does not match size of output for '{output.name}': shape "
            f"{dims_string(output.shape)} holds {count} elements, the data has {data.size}",
            status=500,
        )
    if output.datatype == "BYTES":
        return data.reshape(-1)
    target = numpy_dtype(output.datatype)
    if output.datatype == "BF16" and data.dtype.itemsize == 2:
        data = data.view(target)  # ml_dtypes.bfloat16 or uint16 carrier: the same bits
    elif data.dtype.kind in "OSU" or (output.datatype == "BF16" and data.dtype != target):
        raise ProtocolError(
            f"output '{output.name}' has numpy dtype {data.dtype}, which cannot be sent as {output.datatype}",
            status=500,
        )
    with np.errstate(over="ignore"):  # float64 beyond FP32's range becomes inf, as a C cast would
        return np.ascontiguousarray(data.reshape(-1), dtype=target)


def tensor_buffer(datatype: str, flat: np.ndarray) -> bytes | memoryview:
    """The wire bytes of an output array from :func:`output_array`, without a copy when numeric."""
    if datatype == "BYTES":
        return serialize_bytes(flat)
    return memoryview(flat.view(np.uint8))
