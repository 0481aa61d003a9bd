"""One imported version of a python-backend model, and how its instances are created.

The adapter between evserve and Triton's python-backend API has three parts: this module
imports ``model.py`` (through :mod:`.importer`) and runs ``auto_complete_config`` and
``initialize``; :mod:`.instance` runs ``execute`` and enforces Triton's contract on what it
returns; :mod:`.reply` turns one request's responses into exactly one answer.
"""

from __future__ import annotations

import json
import os
from typing import Any

from evserve.gpu.python_backend import pb_utils
from evserve.gpu.python_backend.importer import MODEL_FILE, PythonModelError, drop_modules, import_model_file
from evserve.gpu.python_backend.instance import ModelConfigLike, PythonModelInstance

__all__ = ["PythonModel", "PythonModelError"]


class PythonModel:
    """One imported version of a python-backend model: the ``TritonPythonModel`` class."""

    def __init__(self, name: str, version: int, model_dir: str, package: str, cls: type) -> None:
        self.name = name
        self.version = version
        self.model_dir = model_dir
        self.package = package
        self.cls = cls

    @classmethod
    def import_version(cls, model_dir: str, model_name: str, version: int) -> PythonModel:
        """Import ``<model_dir>/<version>/model.py`` under a name no other load shares."""
        version_dir = os.path.join(model_dir, str(version))
        path = os.path.join(version_dir, MODEL_FILE)
        if not os.path.isfile(path):
            raise PythonModelError(f"unable to find '{path}' for model '{model_name}'")
        package, module = import_model_file(model_name, version, version_dir)
        model_cls = getattr(module, "TritonPythonModel", None)
        if not isinstance(model_cls, type):
            drop_modules(package)
            raise PythonModelError(f"'{path}' does not define class TritonPythonModel")
        if not callable(getattr(model_cls, "execute", None)):
            drop_modules(package)
            raise PythonModelError(f"Python model '{path}' does not implement `execute` method.")
        return cls(model_name, version, model_dir, package, model_cls)

    def auto_complete(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The config after ``TritonPythonModel.auto_complete_config`` (a copy; ``cfg`` is unchanged)."""
        hook = getattr(self.cls, "auto_complete_config", None)
        if hook is None:
            return json.loads(json.dumps(cfg))
        result = hook(pb_utils.ModelConfig({"name": self.name, **cfg}))
        if not isinstance(result, pb_utils.ModelConfig):
            raise pb_utils.TritonModelException(
                f"auto_complete_config function in model '{self.name}' must return a valid pb.ModelConfig object."
            )
        return json.loads(json.dumps(result.as_dict()))

    def create_instance(
        self,
        config: ModelConfigLike,
        version: int,
        kind: str,
        device_id: int,
        repository_dir: str,
        instance_name: str | None = None,
    ) -> PythonModelInstance:
        """Instantiate the model and run ``initialize(args)``; its exceptions propagate (load fails).

        ``repository_dir`` is what Triton passes as ``model_repository``: the model's own
        directory. ``kind`` is "CPU"/"GPU" (a "KIND_" prefix is dropped).
        """
        kind = kind.removeprefix("KIND_")
        instance_name = instance_name or f"{config.name}_0_0"
        model = self.cls()
        initialize = getattr(model, "initialize", None)
        if initialize is not None:
            initialize(
                {
                    "model_config": json.dumps(config.raw),
                    "model_instance_kind": kind,
                    "model_instance_name": instance_name,
                    "model_instance_device_id": str(device_id),
                    "model_repository": repository_dir,
                    "model_version": str(version),
                    "model_name": config.name,
                }
            )
        return PythonModelInstance(model, config, version, instance_name)

    def release(self) -> None:
        """Forget the imported modules (after every instance is finalized), so reloads start clean."""
        drop_modules(self.package)
