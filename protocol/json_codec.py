"""JSON for ``/infer``: parsing the request head safely, and tensor ``data`` both ways.

Parsing. orjson is strict (no NaN/Infinity literals, valid UTF-8 only, no lone
surrogates) and fast; since 3.10 it refuses documents nested deeper than 1024 levels, and
:func:`loads` turns that into a 400 with evserve's own text.

Request ``data``. Triton reads ``data`` as a row-major list nested any way the client
likes (flat, following the shape, or a mix), up to 100 levels deep, and only the element
count must match the shape. The list is flattened a level at a time with C-speed
``itertools.chain`` and the element *types* are checked as a set (``set(map(type, ...))``)
so that a 1M-element tensor costs no Python-level loop per element before NumPy sees it.

Response ``data`` is always flat. NaN and ±Infinity are written as the tokens ``NaN``,
``Infinity`` and ``-Infinity``, as Triton does: strict JSON has no way to say them, and
``null`` would lose them silently. Python's ``json`` and the rapidjson that tritonclient
uses both read these tokens (Triton's qa L0_nan_inf relies on it).
"""

from __future__ import annotations

import functools
from itertools import chain
from typing import Any

import numpy as np
import orjson

from evserve.protocol.datatypes import numpy_dtype
from evserve.protocol.errors import BadRequest
from evserve.protocol.validate import InputPlan, check_json_size

MAX_DATA_DEPTH = 100
# orjson's own nesting limit (3.10+).
MAX_DOCUMENT_DEPTH = 1024
NESTING_MESSAGE = f"JSON nesting depth exceeds maximum allowed limit ({MAX_DATA_DEPTH})"
TOO_MUCH_DATA = "Unable to parse 'data': Shape does not match true shape of 'data' field"
TOO_LITTLE_DATA = "Failed to parse 'data' field: shape does not match true shape"


_JSON_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    bytes: "binary",
    type(None): "null",
    dict: "object",
}


def _takes_buffers() -> bool:
    """Whether this orjson parses bytearrays and memoryviews (builds for free-threaded
    CPython take only ``bytes`` and ``str``: there the body is copied into ``bytes`` first)."""
    try:
        orjson.loads(memoryview(b"0"))
        orjson.loads(bytearray(b"0"))
    except (TypeError, orjson.JSONDecodeError):
        return False
    return True


_TAKES_BUFFERS = _takes_buffers()


def loads(buf: bytes | bytearray | memoryview, *, depth_error: str = "") -> Any:
    """Parse a JSON document, or raise :class:`BadRequest` with the parser's reason.

    orjson (3.10+) refuses documents nested deeper than 1024 levels with an error of its own;
    ``depth_error`` replaces its text for that case (by default one naming the limit).
    """
    if not _TAKES_BUFFERS and type(buf) is not bytes:
        buf = bytes(buf)
    try:
        return orjson.loads(buf)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise BadRequest(
                depth_error or f"JSON nesting depth exceeds maximum allowed limit ({MAX_DOCUMENT_DEPTH})"
            ) from None
        raise BadRequest(f"failed to parse the request JSON buffer: {exc}") from None


def flatten(data: list[Any]) -> tuple[list[Any], set[type]]:
    """All scalars of a nested list in row-major order, and the set of their types."""
    depth = 1  # the elements of `data` sit one level inside the `data` array
    while True:
        types = set(map(type, data))
        if list not in types:
            return data, types
        depth += 1
        if depth >= MAX_DATA_DEPTH:
            raise BadRequest(NESTING_MESSAGE)
        if len(types) == 1:
            data = list(chain.from_iterable(data))
        else:
            data = _flatten_mixed(data)


def _flatten_mixed(data: list[Any]) -> list[Any]:
    # Rare: scalars and lists side by side at one level ([1, [2, 3]]), which Triton accepts.
    out: list[Any] = []
    for item in data:
        if type(item) is list:
            out.extend(item)
        else:
            out.append(item)
    return out


def allowed_types(datatype: str, msgpack: bool) -> tuple[frozenset[type], str]:
    """The Python types a JSON (or msgpack) element of ``datatype`` may have, and how to name them."""
    if datatype == "BOOL":
        return frozenset((bool,)), "booleans"
    if datatype == "BYTES":
        return (frozenset((str, bytes)), "strings or binary") if msgpack else (frozenset((str,)), "strings")
    if datatype.startswith(("INT", "UINT")):
        return frozenset((int,)), "integers"
    return frozenset((int, float)), "numbers"


def _check_types(plan: InputPlan, types: set[type], msgpack: bool) -> None:
    allowed, what = allowed_types(plan.datatype, msgpack)
    wrong = types - allowed
    if wrong:
        got = sorted(_JSON_TYPE_NAMES.get(t, t.__name__) for t in wrong)
        raise BadRequest(
            f"Unable to parse 'data': input '{plan.name}' of datatype {plan.datatype} takes {what}, "
            f"got {', '.join(got)}"
        )


# A pure function of the name: functools.cache is thread-safe, and a racing first call only
# computes the same iinfo twice.
@functools.cache
def _int_range(datatype: str) -> np.iinfo:
    return np.iinfo(numpy_dtype(datatype))


def _check_range(plan: InputPlan, flat: list[int]) -> None:
    info = _int_range(plan.datatype)
    low, high = min(flat), max(flat)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise BadRequest(
            f"Unable to parse 'data': value {bad} of input '{plan.name}' is out of range for "
            f"{plan.datatype} [{info.min}, {info.max}]"
        )


def _bytes_array(plan: InputPlan, flat: list[Any], max_input_size: int) -> np.ndarray:
    try:
        items = [item if type(item) is bytes else item.encode("utf-8") for item in flat]
    except UnicodeEncodeError:
        raise BadRequest(f"Unable to parse 'data': input '{plan.name}' holds a string that is not UTF-8") from None
    check_json_size(plan, sum(map(len, items)) + 4 * len(items), max_input_size)
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def array_from_data(plan: InputPlan, *, max_input_size: int, msgpack: bool = False) -> np.ndarray:
    """The NumPy array for a ``data`` list, checked element by element in bulk.

    The caller has already checked the shape against the model and the decoded size
    against ``max_input_size`` (for fixed-size types).
    """
    dtype = numpy_dtype(plan.datatype)
    if plan.count == 0:
        return np.empty(plan.shape, dtype=dtype)
    if plan.datatype in ("FP16", "BF16"):
        raise BadRequest(
            f"receiving {plan.datatype} data via JSON is not supported. Please use the binary data format for input "
            f"{plan.name}"
        )
    if not isinstance(plan.data, list):
        raise BadRequest(f"Unable to parse 'data' for input '{plan.name}': expected an array")
    flat, types = flatten(plan.data)
    if len(flat) > plan.count:
        raise BadRequest(TOO_MUCH_DATA)
    if len(flat) < plan.count:
        raise BadRequest(TOO_LITTLE_DATA)
    _check_types(plan, types, msgpack)
    if plan.datatype == "BYTES":
        return _bytes_array(plan, flat, max_input_size).reshape(plan.shape)
    try:
        if dtype.kind in "iu":
            _check_range(plan, flat)
            return np.array(flat, dtype=dtype).reshape(plan.shape)
        with np.errstate(over="ignore"):  # a JSON number beyond FP32's range becomes inf, as in C
            return np.array(flat, dtype=dtype).reshape(plan.shape)
    except (ValueError, OverflowError, TypeError) as exc:
        raise BadRequest(f"Unable to parse 'data' for input '{plan.name}': {exc}") from None


def _float_tokens(values: np.ndarray) -> list[bytes]:
    return [b"NaN" if v != v else (b"Infinity" if v > 0 else b"-Infinity") for v in values.tolist()]


def data_json(name: str, datatype: str, flat: np.ndarray) -> bytes:
    """The JSON text of an output's flat ``data`` array.

    ``flat`` is 1-D, C-contiguous and little-endian (see ``binary_codec.output_array``).
    FP16/BF16 and non-UTF-8 BYTES cannot be JSON: 400, telling the client to ask for
    binary, as Triton does.
    """
    if datatype in ("FP16", "BF16"):
        raise BadRequest(
            f"sending {datatype} data via JSON is not supported. Please use the binary data format for output"
        )
    if datatype == "BYTES":
        try:
            return orjson.dumps([item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in flat])
        except UnicodeDecodeError:
            raise BadRequest(
                f"output '{name}' holds bytes that are not valid UTF-8, which JSON cannot carry. "
                "Please use the binary data format for this output (binary_data=true)"
            ) from None
    text = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)
    if flat.dtype.kind != "f":
        return text
    finite = np.isfinite(flat)
    if finite.all():
        return text
    # orjson writes each non-finite value as `null`, and no other `null` can occur in a
    # float array: put the tokens back in order.
    pieces = text.split(b"null")
    tokens = _float_tokens(flat[~finite])
    out = [pieces[0]]
    for token, piece in zip(tokens, pieces[1:], strict=True):
        out.append(token)
        out.append(piece)
    return b"".join(out)
