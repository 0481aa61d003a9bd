"""The BLS model-control calls, which in-process models cannot make."""

from __future__ import annotations

from evserve.gpu.python_backend.pb_utils.errors import TritonModelException

# Model-control API of BLS: unsupported in-process.


def _model_control_unsupported(call: str) -> TritonModelException:
    return TritonModelException(f"pb_utils.{call}() is not supported by evserve; use the HTTP model control API.")


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    raise _model_control_unsupported("load_model")


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    raise _model_control_unsupported("unload_model")


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    raise _model_control_unsupported("is_model_ready")
