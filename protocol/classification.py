"""Triton's classification extension: an output replaced by its top-N ``"value:index[:label]"``.

The strings are formatted as Triton's C++ does (``std::to_string``): integers plainly,
floating point with six decimals (``0.750000``). Equal values keep index order, so the
result is deterministic where Triton's ``std::sort`` is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evserve.protocol.binary_codec import output_array
from evserve.protocol.errors import BadRequest
from evserve.protocol.types import OutputTensor

# Triton's guard against pathological classification requests (classification.cc).
MAX_CLASSIFICATION_ELEMENTS = 1_000_000
_CLASSIFIABLE = frozenset(("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"))


def _descending(table: np.ndarray) -> np.ndarray:
    """Per row, column indices by decreasing value; ties in increasing index order."""
    width = table.shape[1]
    # A stable ascending sort of the reversed row puts later indices first among ties;
    # reading it backwards gives decreasing values with earlier indices first.
    reversed_order = np.argsort(table[:, ::-1], axis=1, kind="stable")[:, ::-1]
    return width - 1 - reversed_order


def classify(output: OutputTensor, top: int, *, batched: bool, labels: Sequence[str] | None = None) -> OutputTensor:
    """The BYTES output that replaces ``output`` when the request asks for ``top`` classes.

    With ``batched`` (the model has max_batch_size > 0) the first dimension is the batch
    and each row is classified apart: shape ``[batch, min(top, classes)]``; otherwise the
    whole tensor is one row: shape ``[min(top, classes)]``.
    """
    if output.datatype not in _CLASSIFIABLE:
        raise BadRequest(f"class result not available for output due to unsupported type '{output.datatype}'")
    flat = output_array(output)
    if flat.size > MAX_CLASSIFICATION_ELEMENTS:
        raise BadRequest("classification output tensor too large")
    if batched and output.shape:
        rows = int(output.shape[0])
        width = int(np.prod(output.shape[1:], dtype=np.int64))
    else:
        rows, width = 1, int(flat.size)
    count = min(top, width)
    table = flat.reshape(rows, width)
    order = _descending(table)[:, :count]
    values = np.take_along_axis(table, order, axis=1)
    as_text = (lambda v: f"{v:f}") if flat.dtype.kind == "f" else str
    names = labels or ()
    items = []
    for value_row, index_row in zip(values.tolist(), order.tolist(), strict=True):
        for value, index in zip(value_row, index_row, strict=True):
            text = f"{as_text(value)}:{index}"
            if index < len(names):
                text += f":{names[index]}"
            items.append(text.encode("utf-8"))
    shape = (rows, count) if batched and output.shape else (count,)
    data = np.empty(len(items), dtype=object)
    data[:] = items
    return OutputTensor(output.name, "BYTES", shape, data.reshape(shape))
