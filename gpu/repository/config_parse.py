"""Parsing model configurations: config.pbtxt text and JSON overrides into Triton's JSON form.

Triton defines a model by the ``inference.ModelConfig`` protobuf, and clients see it twice: the
``/config`` endpoint returns its JSON form, and the python backend hands the same JSON to the
model's ``initialize``. To match both byte for byte in meaning, every config goes through the
real message (parsed by protobuf, against the schema tritonclient ships) and is printed the
way Triton prints it: proto field names, fields at default values included, enums as strings,
and 64-bit integers as JSON numbers rather than the strings protobuf produces.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from evserve.gpu.repository.scan import config_path, read_config_text
from evserve.gpu.repository.schema import new_model_config

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
_LOCATION_PREFIX = re.compile(r"^\d+:\d+ : ")
# "Print fields at their default values", renamed in protobuf 5.26.
_PRINT_DEFAULTS = (
    "always_print_fields_with_no_presence"
    if "always_print_fields_with_no_presence" in inspect.signature(json_format.MessageToDict).parameters
    else "including_default_value_fields"
)


class ModelConfigError(Exception):
    """A model configuration that cannot be used; the message names the file and the field."""


# Walking the JSON form with the schema (int64 numbers, enum spelling, field order)

_Leaf = Callable[[FieldDescriptor, Any], Any]


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 5.28 has ``is_repeated``; older versions only ``label`` (since removed).
    flag = getattr(field, "is_repeated", None)
    if flag is None:
        return field.label == FieldDescriptor.LABEL_REPEATED
    return bool(flag)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _find_field(descriptor: Descriptor, key: object) -> FieldDescriptor | None:
    if not isinstance(key, str):
        return None
    return descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)


def _transform(descriptor: Descriptor, obj: Any, leaf: _Leaf) -> Any:
    """``obj`` with ``leaf`` applied to every scalar the schema knows, keys in declaration order.

    Keys the schema does not know are kept (last) so that protobuf can still refuse them.
    """
    if not isinstance(obj, dict):
        return obj
    items = [(_find_field(descriptor, key), key, value) for key, value in obj.items()]
    items.sort(key=lambda item: item[0].index if item[0] is not None else len(descriptor.fields))
    return {key: value if field is None else _transform_field(field, value, leaf) for field, key, value in items}


def _transform_field(field: FieldDescriptor, value: Any, leaf: _Leaf) -> Any:
    if _is_map(field):
        if not isinstance(value, dict):
            return value
        # Map keys stay as they are: JSON keys are strings (Triton keeps priority levels quoted).
        value_field = field.message_type.fields_by_name["value"]
        return {key: _transform_single(value_field, item, leaf) for key, item in value.items()}
    if _is_repeated(field) and isinstance(value, list):
        return [_transform_single(field, item, leaf) for item in value]
    return _transform_single(field, value, leaf)


def _transform_single(field: FieldDescriptor, value: Any, leaf: _Leaf) -> Any:
    if field.message_type is not None:
        return _transform(field.message_type, value, leaf)
    return leaf(field, value)


def _print_as_triton(field: FieldDescriptor, value: Any) -> Any:
    """Triton's JSON printer: 64-bit integers unquoted, whole floats without a fraction (``[0,1]``)."""
    if field.type in _INT64_TYPES and isinstance(value, str):
        return int(value)
    if field.type in _FLOAT_TYPES and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _upper_case_enum(field: FieldDescriptor, value: Any) -> Any:
    # Triton parses JSON configs with case_insensitive_enum_parsing: "kind_cpu" means KIND_CPU.
    if field.enum_type is None or not isinstance(value, str) or value in field.enum_type.values_by_name:
        return value
    upper = value.upper()
    return upper if upper in field.enum_type.values_by_name else value


def message_to_dict(message: Message) -> dict:
    printed = json_format.MessageToDict(message, preserving_proto_field_name=True, **{_PRINT_DEFAULTS: True})
    return _transform(message.DESCRIPTOR, printed, _print_as_triton)


def message_from_dict(obj: dict, error_prefix: str) -> Message:
    if not isinstance(obj, dict):
        raise ModelConfigError(f"{error_prefix}a model configuration must be an object, got {type(obj).__name__}")
    message = new_model_config()
    try:
        json_format.ParseDict(_transform(message.DESCRIPTOR, obj, _upper_case_enum), message)
    except json_format.ParseError as exc:
        # The first line says what is wrong; protobuf appends the list of every valid field name.
        raise ModelConfigError(f"{error_prefix}{str(exc).partition(chr(10))[0]}") from None
    return message


# Parsing


def parse_pbtxt(text: str, source: str) -> dict:
    """Parse config.pbtxt text into Triton's JSON form (not yet completed or validated).

    ``source`` is the file name used in error messages, which read
    ``<source>:<line>:<column>: <what protobuf found wrong>``.
    """
    message = new_model_config()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        detail = _LOCATION_PREFIX.sub("", str(exc))
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{source}:{line}:{column}" if line is not None else source
        raise ModelConfigError(f"{where}: {detail}") from None
    return message_to_dict(message)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json_config(text: str, source: str) -> dict:
    """Parse the load API's ``config`` parameter (a JSON ``ModelConfig``) into the JSON form.

    Unknown fields and wrong types are refused, as Triton does, with
    ``Invalid config override: <source>: ...``.
    """
    prefix = f"Invalid config override: {source}: "
    try:
        obj = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        raise ModelConfigError(f"{prefix}not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ModelConfigError(f"{prefix}expected a JSON object")
    return message_to_dict(message_from_dict(obj, prefix))


def read_config(model_dir: str, config_name: str | None = None) -> dict | None:
    """The parsed config file of the model in ``model_dir``, or ``None`` when it has none."""
    path = config_path(model_dir, config_name)
    try:
        text = read_config_text(model_dir, config_name)
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ModelConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return None if text is None else parse_pbtxt(text, path)
