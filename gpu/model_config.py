"""Model configuration: parsing config.pbtxt, Triton's defaults and checks, and the typed view.

Triton defines a model by the ``inference.ModelConfig`` protobuf, and clients see it twice: the
``/config`` endpoint returns its JSON form, and the python backend hands the same JSON to the
model's ``initialize``. To match both byte for byte in meaning, every config goes through the
real message (parsed by protobuf, against the schema tritonclient ships) and is printed the
way Triton prints it: proto field names, fields at default values included, enums as strings,
and 64-bit integers as JSON numbers rather than the strings protobuf produces.

``complete_config`` then applies what Triton's core does between reading a config and serving
the model (core ``model_config_utils.cc``: ``AutoCompleteBackendFields``,
``NormalizeModelConfig``, ``NormalizeInstanceGroup``, ``ValidateModelConfig``,
``ValidateInstanceGroup``, ``ValidateModelIOConfig``), restricted to what matters for the python
backend. Every error names the file and the field, because the message ends up verbatim in a
``load failed for model 'm': ...`` reply.
"""

from __future__ import annotations

import inspect
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from evserve.gpu.config_schema import new_model_config, schema
from evserve.gpu.repository import available_versions, config_path, read_config_text
from evserve.protocol.datatypes import CONFIG_TYPES, config_to_protocol
from evserve.protocol.types import ModelSignature, TensorSpec

PYTHON_BACKEND = "python"
PYTHON_MODEL_FILENAME = "model.py"
# Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS.
SEQUENCE_IDLE_DEFAULT_US = 1_000_000
WILDCARD_DIM = -1
_TENSORRT_PLATFORM = "tensorrt_plan"

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_LOCATION_PREFIX = re.compile(r"^\d+:\d+ : ")
# "Print fields at their default values", renamed in protobuf 5.26.
_PRINT_DEFAULTS = (
    "always_print_fields_with_no_presence"
    if "always_print_fields_with_no_presence" in inspect.signature(json_format.MessageToDict).parameters
    else "including_default_value_fields"
)


class ModelConfigError(Exception):
    """A model configuration that cannot be used; the message names the file and the field."""


# --------------------------------------------------------------------------------------------
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


def _unquote_int64(field: FieldDescriptor, value: Any) -> Any:
    if field.type in _INT64_TYPES and isinstance(value, str):
        return int(value)
    return value


def _upper_case_enum(field: FieldDescriptor, value: Any) -> Any:
    # Triton parses JSON configs with case_insensitive_enum_parsing: "kind_cpu" means KIND_CPU.
    if field.enum_type is None or not isinstance(value, str) or value in field.enum_type.values_by_name:
        return value
    upper = value.upper()
    return upper if upper in field.enum_type.values_by_name else value


def _message_to_dict(message: Message) -> dict:
    printed = json_format.MessageToDict(message, preserving_proto_field_name=True, **{_PRINT_DEFAULTS: True})
    return _transform(message.DESCRIPTOR, printed, _unquote_int64)


def _message_from_dict(obj: dict, error_prefix: str) -> Message:
    if not isinstance(obj, dict):
        raise ModelConfigError(f"{error_prefix}a model configuration must be an object, got {type(obj).__name__}")
    message = new_model_config()
    try:
        json_format.ParseDict(_transform(message.DESCRIPTOR, obj, _upper_case_enum), message)
    except json_format.ParseError as exc:
        # The first line says what is wrong; protobuf appends the list of every valid field name.
        raise ModelConfigError(f"{error_prefix}{str(exc).partition(chr(10))[0]}") from None
    return message


# --------------------------------------------------------------------------------------------
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
    return _message_to_dict(message)


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
    return _message_to_dict(_message_from_dict(obj, prefix))


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


# --------------------------------------------------------------------------------------------
# Completion: Triton's auto-fill and normalisation


def complete_config(
    cfg: dict,
    model_name: str,
    source: str,
    *,
    model_dir: str | None = None,
    gpu_count: int = 0,
    check_io: bool = True,
) -> dict:
    """Validate ``cfg`` and fill in Triton's defaults; the result is what ``/config`` returns.

    ``model_dir`` lets a config without ``backend`` be recognised as a python model by its
    ``<version>/model.py``. ``gpu_count`` is the number of usable GPUs, which decides what the
    default instance group and ``KIND_AUTO`` become. ``check_io=False`` skips the input/output
    checks, as Triton does before the python model's ``auto_complete_config`` has run; call
    again with the default afterwards. The function is idempotent.
    """
    message = _message_from_dict(cfg, f"{source}: ")
    _autofill(message, model_name, model_dir)
    _validate_model(message, model_name, source)
    _normalize(message)
    _normalize_instance_groups(message, gpu_count)
    _validate_instance_groups(message, gpu_count, source)
    if check_io:
        _validate_io(message, source)
    return _message_to_dict(message)


def _has_python_model(model_dir: str) -> bool:
    return any(
        os.path.isfile(os.path.join(model_dir, str(version), PYTHON_MODEL_FILENAME))
        for version in available_versions(model_dir)
    )


def _autofill(message: Any, model_name: str, model_dir: str | None) -> None:
    """Triton's ``AutoCompleteBackendFields``, for the python backend only.

    Triton looks at the first subdirectory only; any version directory with a model.py counts here.
    """
    if not message.name:
        message.name = model_name
    if not message.backend and not message.platform:
        if message.default_model_filename == PYTHON_MODEL_FILENAME or (
            not message.default_model_filename and model_dir is not None and _has_python_model(model_dir)
        ):
            message.backend = PYTHON_BACKEND
    if message.backend == PYTHON_BACKEND and not message.default_model_filename:
        message.default_model_filename = PYTHON_MODEL_FILENAME


def _normalize(message: Any) -> None:
    """Triton's ``NormalizeModelConfig``: defaults that depend on other fields."""
    if not message.HasField("version_policy"):
        message.version_policy.latest.num_versions = 1
    if message.HasField("dynamic_batching") and not message.dynamic_batching.preferred_batch_size:
        if message.max_batch_size > 0:
            message.dynamic_batching.preferred_batch_size.append(message.max_batch_size)
    if message.HasField("sequence_batching"):
        sequence = message.sequence_batching
        if sequence.max_sequence_idle_microseconds == 0:
            sequence.max_sequence_idle_microseconds = SEQUENCE_IDLE_DEFAULT_US
        if sequence.HasField("oldest") and not sequence.oldest.preferred_batch_size and message.max_batch_size > 0:
            sequence.oldest.preferred_batch_size.append(message.max_batch_size)
    if not message.HasField("ensemble_scheduling"):
        optimization = message.optimization
        if not optimization.HasField("input_pinned_memory"):
            optimization.input_pinned_memory.enable = True
        if not optimization.HasField("output_pinned_memory"):
            optimization.output_pinned_memory.enable = True


def _normalize_instance_groups(message: Any, gpu_count: int) -> None:
    """Triton's ``NormalizeInstanceGroup`` with the python backend's preferred group.

    Without ``instance_group`` there is one group named after the model: ``KIND_GPU`` on every
    GPU when there are GPUs (one instance per GPU), else one ``KIND_CPU`` instance.
    """
    if message.HasField("ensemble_scheduling"):
        return
    kinds = schema().ModelInstanceGroup
    if not message.instance_group:
        group = message.instance_group.add(name=message.name)
        if gpu_count > 0:
            group.kind = kinds.KIND_GPU
    for index, group in enumerate(message.instance_group):
        if not group.name:
            group.name = f"{message.name}_{index}"
        if group.kind == kinds.KIND_AUTO:
            on_gpus = gpu_count > 0 and all(0 <= gpu < gpu_count for gpu in group.gpus)
            group.kind = kinds.KIND_GPU if on_gpus else kinds.KIND_CPU
        if group.count < 1:
            group.count = 1
        if group.kind == kinds.KIND_GPU and not group.gpus:
            group.gpus.extend(range(gpu_count))


# --------------------------------------------------------------------------------------------
# Validation


def _fail(source: str, field: str, problem: str) -> ModelConfigError:
    return ModelConfigError(f"{source}: {field}: {problem}")


def _validate_model(message: Any, model_name: str, source: str) -> None:
    """The model-level checks of Triton's ``ValidateModelConfig`` and the repository manager."""
    name = message.name
    if name != model_name:
        raise _fail(
            source,
            "name",
            f"unexpected directory name '{model_name}' for model '{name}', directory name must equal model name",
        )
    if not message.backend and not message.platform:
        raise _fail(source, "backend", f"must specify 'platform' or 'backend' for '{name}'")
    if message.max_batch_size < 0:
        raise _fail(source, "max_batch_size", f"'max_batch_size' must be non-negative value for {name}")
    if message.HasField("dynamic_batching"):
        _validate_dynamic_batching(message, source)
    if message.HasField("sequence_batching"):
        _validate_sequence_batching(message, source)
    if message.model_transaction_policy.decoupled and message.response_cache.enable:
        raise _fail(source, "response_cache", f"Response Cache does not currently support decoupled model {name}")


def _validate_preferred_sizes(sizes: Iterable[int], max_batch_size: int, field: str, source: str) -> None:
    for size in sizes:
        if size <= 0:
            raise _fail(source, field, f"preferred batch size must be positive, got {size}")
        if size > max_batch_size:
            raise _fail(source, field, f"preferred batch size {size} must be <= max_batch_size {max_batch_size}")


def _validate_dynamic_batching(message: Any, source: str) -> None:
    batching = message.dynamic_batching
    _validate_preferred_sizes(
        batching.preferred_batch_size, message.max_batch_size, "dynamic_batching.preferred_batch_size", source
    )
    levels = batching.priority_levels
    if levels:
        if not 1 <= batching.default_priority_level <= levels:
            raise _fail(
                source,
                "dynamic_batching.default_priority_level",
                f"default priority level must be in range [1, {levels}]",
            )
        for level in batching.priority_queue_policy:
            if not 1 <= level <= levels:
                raise _fail(
                    source,
                    "dynamic_batching.priority_queue_policy",
                    f"priority queue policy must have priority level in range [1, {levels}], got {level}",
                )
    if batching.preserve_ordering:
        _validate_preserve_ordering(batching, source)


def _validate_preserve_ordering(batching: Any, source: str) -> None:
    if batching.priority_levels > 1:
        raise _fail(
            source,
            "dynamic_batching.preserve_ordering",
            "Only one priority level is allowed when 'preserve_ordering' is true",
        )
    delay = schema().ModelQueuePolicy.DELAY
    policies = [batching.default_queue_policy, *batching.priority_queue_policy.values()]
    if any(p.default_timeout_microseconds != 0 and p.timeout_action == delay for p in policies):
        raise _fail(
            source,
            "dynamic_batching.preserve_ordering",
            "Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true",
        )


def _validate_sequence_batching(message: Any, source: str) -> None:
    sequence = message.sequence_batching
    if message.response_cache.enable:
        problem = f"Response Cache does not currently support sequence batching model {message.name}"
        raise _fail(source, "response_cache", problem)
    if sequence.HasField("oldest"):
        _validate_preferred_sizes(
            sequence.oldest.preferred_batch_size,
            message.max_batch_size,
            "sequence_batching.oldest.preferred_batch_size",
            source,
        )
    if sequence.HasField("direct") and not 0.0 <= sequence.direct.minimum_slot_utilization <= 1.0:
        raise _fail(
            source,
            "sequence_batching.direct.minimum_slot_utilization",
            "sequence batching minimum slot utilization must be in range (0.0, 1.0]",
        )


def _validate_instance_groups(message: Any, gpu_count: int, source: str) -> None:
    """Triton's ``ValidateInstanceGroup``: kinds and GPU ids must fit this machine."""
    kinds = schema().ModelInstanceGroup
    for index, group in enumerate(message.instance_group):
        field = f"instance_group[{index}]"
        label = f"instance group {group.name} of model {message.name}"
        if group.kind == kinds.KIND_GPU:
            if not group.gpus:
                raise _fail(source, field, f"{label} has kind KIND_GPU but no GPUs are available")
            for gpu in group.gpus:
                if not 0 <= gpu < gpu_count:
                    available = ", ".join(map(str, range(gpu_count))) or "none"
                    problem = f"{label} specifies invalid gpu id {gpu}, available: {available}"
                    raise _fail(source, f"{field}.gpus", problem)
        elif group.kind in (kinds.KIND_CPU, kinds.KIND_MODEL):
            if group.gpus:
                kind = kinds.Kind.Name(group.kind)
                raise _fail(source, f"{field}.gpus", f"{label} has kind {kind} but specifies one or more GPUs")
        else:
            raise _fail(source, f"{field}.kind", f"{label} has unknown kind {group.kind}")
        if group.profile and message.platform != _TENSORRT_PLATFORM:
            raise _fail(source, f"{field}.profile", f"{label} specifies profiles, which only TensorRT models support")


def _validate_io(message: Any, source: str) -> None:
    """Triton's ``ValidateModelIOConfig``, plus unique names and label files kept inside the model."""
    formats = schema().ModelInput
    for kind, ios in (("input", message.input), ("output", message.output)):
        seen: set[str] = set()
        for index, io in enumerate(ios):
            field = f"{kind}[{index}]"
            _validate_io_shape(io, kind, field, message.max_batch_size, source)
            if io.name in seen:
                raise _fail(source, f"{field}.name", f"model {kind} '{io.name}' is declared more than once")
            seen.add(io.name)
            if io.is_shape_tensor and message.platform != _TENSORRT_PLATFORM:
                problem = "shape tensors are only supported for TensorRT platform"
                raise _fail(source, f"{field}.is_shape_tensor", problem)
            if io.is_non_linear_format_io and message.platform != _TENSORRT_PLATFORM:
                raise _fail(
                    source,
                    f"{field}.is_non_linear_format_io",
                    "Non-linear IO format is only supported for the TensorRT platform",
                )
            if kind == "input" and io.format in (formats.FORMAT_NHWC, formats.FORMAT_NCHW) and len(io.dims) != 3:
                raise _fail(source, f"{field}.format", "model input NHWC/NCHW require 3 dims")
            if kind == "output" and io.label_filename and not _stays_inside(io.label_filename):
                raise _fail(
                    source,
                    f"{field}.label_filename",
                    f"label file path '{io.label_filename}' for output '{io.name}' is outside model directory",
                )


def _stays_inside(relative: str) -> bool:
    normal = posixpath.normpath(relative.replace(os.sep, "/"))
    return not posixpath.isabs(normal) and normal != ".." and not normal.startswith("../") and "\0" not in normal


def _validate_io_shape(io: Any, kind: str, field: str, max_batch_size: int, source: str) -> None:
    """Triton's ``ValidateIOShape``: name, data type, dims and reshape."""
    if not io.name:
        raise _fail(source, f"{field}.name", f"model {kind} must specify 'name'")
    label = f"model {kind} '{io.name}'"
    data_types = schema().DataType
    if io.data_type not in data_types.values() or data_types.Name(io.data_type) not in CONFIG_TYPES:
        raise _fail(source, f"{field}.data_type", f"{label} must specify a valid 'data_type'")
    if not io.dims:
        raise _fail(source, f"{field}.dims", f"{label} must specify 'dims'")
    if any(dim < 1 and dim != WILDCARD_DIM for dim in io.dims):
        raise _fail(
            source,
            f"{field}.dims",
            f"{label} dimension must be integer >= 1, or {WILDCARD_DIM} to indicate a variable-size dimension",
        )
    if io.HasField("reshape"):
        _validate_reshape(list(io.dims), list(io.reshape.shape), f"{field}.reshape", label, max_batch_size, source)


def _element_count(dims: list[int]) -> int:
    """Triton's ``GetElementCount``: -1 if any dimension is variable, 0 for no dimensions."""
    if WILDCARD_DIM in dims:
        return WILDCARD_DIM
    count = 0
    for dim in dims:
        count = dim if count == 0 else count * dim
    return count


def _fixed_runs(dims: list[int]) -> list[int]:
    """Element counts of the runs of fixed dimensions between variable ones."""
    runs, current = [], 1
    for dim in dims:
        if dim == WILDCARD_DIM:
            runs.append(current)
            current = 1
        else:
            current *= dim
    runs.append(current)
    return runs


def _validate_reshape(
    dims: list[int], shape: list[int], field: str, label: str, max_batch_size: int, source: str
) -> None:
    if not shape and max_batch_size == 0:
        raise _fail(
            source,
            field,
            f"{label} cannot have empty reshape for non-batching model as scalar tensors are not supported",
        )
    if any(dim < 1 and dim != WILDCARD_DIM for dim in shape):
        raise _fail(
            source,
            field,
            f"{label} reshape dimensions must be integer >= 1, or {WILDCARD_DIM} to indicate a variable-size dimension",
        )
    dims_size, reshape_size = _element_count(dims), _element_count(shape)
    # An empty reshape (a scalar) is allowed for dims of one element.
    if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
        raise _fail(source, field, f"{label} has different size for dims and reshape")
    if dims_size == WILDCARD_DIM:
        dim_runs, shape_runs = _fixed_runs(dims), _fixed_runs(shape)
        if len(dim_runs) != len(shape_runs):
            raise _fail(source, field, f"{label} has different number of variable-size dimensions for dims and reshape")
        if dim_runs != shape_runs:
            raise _fail(source, field, f"{label} has different size for dims and reshape")


# --------------------------------------------------------------------------------------------
# The typed view the engine uses


@dataclass(frozen=True, slots=True)
class InstanceGroup:
    """One ``instance_group`` entry: ``count`` instances of ``kind`` on each of ``gpus``."""

    name: str
    count: int
    kind: str
    gpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """A ``ModelQueuePolicy``; ``max_queue_size`` 0 and ``default_timeout_us`` 0 mean no limit."""

    timeout_action: str
    default_timeout_us: int
    allow_timeout_override: bool
    max_queue_size: int

    @classmethod
    def from_json(cls, policy: dict) -> QueuePolicy:
        return cls(
            timeout_action=policy.get("timeout_action", "REJECT"),
            default_timeout_us=int(policy.get("default_timeout_microseconds", 0)),
            allow_timeout_override=bool(policy.get("allow_timeout_override", False)),
            max_queue_size=int(policy.get("max_queue_size", 0)),
        )


@dataclass(frozen=True, slots=True)
class DynamicBatching:
    """The ``dynamic_batching`` settings; the queue fields come from ``default_queue_policy``."""

    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    default_timeout_us: int
    timeout_action: str
    allow_timeout_override: bool
    preserve_ordering: bool
    priority_levels: int
    default_priority_level: int
    priority_queue_policies: dict[int, QueuePolicy]

    @classmethod
    def from_json(cls, batching: dict) -> DynamicBatching:
        default = QueuePolicy.from_json(batching.get("default_queue_policy", {}))
        return cls(
            max_queue_delay_us=int(batching.get("max_queue_delay_microseconds", 0)),
            preferred_batch_sizes=tuple(int(s) for s in batching.get("preferred_batch_size", ())),
            max_queue_size=default.max_queue_size,
            default_timeout_us=default.default_timeout_us,
            timeout_action=default.timeout_action,
            allow_timeout_override=default.allow_timeout_override,
            preserve_ordering=bool(batching.get("preserve_ordering", False)),
            priority_levels=int(batching.get("priority_levels", 0)),
            default_priority_level=int(batching.get("default_priority_level", 0)),
            priority_queue_policies={
                int(level): QueuePolicy.from_json(policy)
                for level, policy in batching.get("priority_queue_policy", {}).items()
            },
        )


def _tensor_spec(io: dict, *, is_input: bool) -> TensorSpec:
    reshape = io.get("reshape")
    return TensorSpec(
        name=io["name"],
        datatype=config_to_protocol(io["data_type"]),
        dims=tuple(int(d) for d in io.get("dims", ())),
        optional=bool(io.get("optional", False)) if is_input else False,
        reshape=tuple(int(d) for d in reshape.get("shape", ())) if reshape is not None else None,
    )


class ModelConfig:
    """Read-only typed access to a completed config (the output of :func:`complete_config`).

    ``raw`` is the completed dict itself, returned as is by ``/config`` and given to the python
    model; ``model_dir`` is needed only to locate label files.
    """

    def __init__(self, raw: dict, model_dir: str | None = None) -> None:
        self.raw = raw
        self.model_dir = model_dir
        self._inputs = {io["name"]: io for io in raw.get("input", ())}
        self._outputs = {io["name"]: io for io in raw.get("output", ())}
        self._input_specs = tuple(_tensor_spec(io, is_input=True) for io in raw.get("input", ()))
        self._output_specs = tuple(_tensor_spec(io, is_input=False) for io in raw.get("output", ()))
        self._instance_groups = [
            InstanceGroup(g["name"], int(g["count"]), g["kind"], tuple(int(x) for x in g.get("gpus", ())))
            for g in raw.get("instance_group", ())
        ]
        batching = raw.get("dynamic_batching")
        self._dynamic_batching = DynamicBatching.from_json(batching) if batching is not None else None

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def backend(self) -> str:
        return self.raw.get("backend", "")

    @property
    def platform(self) -> str:
        return self.raw.get("platform", "")

    @property
    def max_batch_size(self) -> int:
        return int(self.raw.get("max_batch_size", 0))

    @property
    def decoupled(self) -> bool:
        return bool(self.raw.get("model_transaction_policy", {}).get("decoupled", False))

    @property
    def instance_groups(self) -> list[InstanceGroup]:
        return list(self._instance_groups)

    @property
    def dynamic_batching(self) -> DynamicBatching | None:
        return self._dynamic_batching

    @property
    def version_policy(self) -> dict:
        return self.raw.get("version_policy", {"latest": {"num_versions": 1}})

    @property
    def parameters(self) -> dict[str, str]:
        """The ``parameters`` map with each value's ``string_value``."""
        return {key: value.get("string_value", "") for key, value in self.raw.get("parameters", {}).items()}

    def signature(self, version: str) -> ModelSignature:
        """What request validation needs for ``version`` of this model."""
        return ModelSignature(
            name=self.name,
            version=version,
            max_batch_size=self.max_batch_size,
            inputs=self._input_specs,
            outputs=self._output_specs,
        )

    def metadata(self, versions: list[str]) -> dict:
        """Triton's model metadata JSON; shapes gain a leading -1 when the model batches."""
        batch = [-1] if self.max_batch_size > 0 else []

        def describe(specs: tuple[TensorSpec, ...]) -> list[dict]:
            return [{"name": s.name, "datatype": s.datatype, "shape": [*batch, *s.dims]} for s in specs]

        return {
            "name": self.name,
            "versions": list(versions),
            "platform": self.platform or self.backend,
            "inputs": describe(self._input_specs),
            "outputs": describe(self._output_specs),
        }

    def input_config(self, name: str) -> dict | None:
        return self._inputs.get(name)

    def output_config(self, name: str) -> dict | None:
        return self._outputs.get(name)

    def label_file(self, output_name: str) -> str | None:
        """The path of the output's ``label_filename``, or ``None`` when it has none.

        Raises :class:`ModelConfigError` when the file resolves (through symlinks, say) to a
        place outside the model directory, which Triton refuses too.
        """
        io = self._outputs.get(output_name)
        filename = io.get("label_filename", "") if io is not None else ""
        if not filename:
            return None
        if self.model_dir is None:
            raise ModelConfigError(f"label file '{filename}' of output '{output_name}': model directory unknown")
        path = os.path.join(self.model_dir, filename)
        root = os.path.realpath(self.model_dir)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise ModelConfigError(
                f"label file path '{path}' for output '{output_name}' in model '{self.name}' is outside model directory"
            )
        return path
