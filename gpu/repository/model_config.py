"""The typed, read-only view of a completed model configuration that the engine uses."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from evserve.gpu.repository.config_parse import ModelConfigError
from evserve.protocol.datatypes import config_to_protocol
from evserve.protocol.types import ModelSignature, TensorSpec


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
    default_queue_policy: QueuePolicy
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
            default_queue_policy=default,
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
    def response_cache(self) -> bool:
        """Whether ``response_cache { enable: true }`` asks for the server's response cache."""
        return bool(self.raw.get("response_cache", {}).get("enable", False))

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

    def labels(self, output_name: str) -> list[str]:
        """The class labels of a classification output: the lines of its label file ([] without one).

        Disk I/O (cached per path): the engine calls it on worker threads, never on a loop thread.
        """
        path = self.label_file(output_name)
        return _read_label_file(path) if path else []


# lru_cache is thread-safe; two workers racing on the first read both read the same file.
@functools.lru_cache(maxsize=256)
def _read_label_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]
