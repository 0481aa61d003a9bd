"""The model manager's options: one frozen object, validated with Triton's flag names."""

from __future__ import annotations

import dataclasses

import pytest

from evserve.gpu.options import ModelManagerOptions


def test_bad_mode_options_are_refused() -> None:
    with pytest.raises(ValueError, match="--model-control-mode"):
        ModelManagerOptions(control_mode="sometimes")
    with pytest.raises(ValueError, match="--load-model requires"):
        ModelManagerOptions(control_mode="none", startup_models=["a"])
    with pytest.raises(ValueError, match="must be the only"):
        ModelManagerOptions(control_mode="explicit", startup_models=["*", "a"])
    with pytest.raises(ValueError, match="--repository-poll-secs"):
        ModelManagerOptions(control_mode="poll", poll_secs=0)


def test_options_keep_startup_models_immutable() -> None:
    assert ModelManagerOptions(control_mode="explicit", startup_models=["a", "b"]).startup_models == ("a", "b")


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelManagerOptions().poll_secs = 1  # type: ignore[misc]
