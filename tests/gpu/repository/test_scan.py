"""Model repository on disk: models, version directories, config files, change detection.

Version-directory cases mirror Triton's qa ``test_parse_ignore_zero_prefixed_version`` and
``test_parse_ignore_non_intergral_version``; the duplicate-name case mirrors L0_lifecycle.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evserve.gpu.repository.scan import (
    DUPLICATE_REASON,
    ModelSource,
    available_versions,
    config_path,
    fingerprint,
    is_valid_model_name,
    read_config_text,
    scan_repositories,
    select_versions,
)


def make_model(repository: Path, name: str, versions: tuple[str, ...] = ("1",)) -> Path:
    model = repository / name
    model.mkdir(parents=True)
    (model / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n')
    for version in versions:
        (model / version).mkdir()
        (model / version / "model.py").write_text("class TritonPythonModel: pass\n")
    return model


# -- scanning ---------------------------------------------------------------------------------


def test_scan_finds_model_directories_only(tmp_path: Path) -> None:
    make_model(tmp_path, "simple")
    make_model(tmp_path, "add.sub-2_x")
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / ".git").mkdir()
    (tmp_path / "bad name").mkdir()
    models, unavailable = scan_repositories([str(tmp_path)])
    assert sorted(models) == ["add.sub-2_x", "simple"]
    assert models["simple"] == ModelSource("simple", os.path.join(str(tmp_path), "simple"), str(tmp_path))
    assert unavailable == {}


def test_name_in_two_repositories_is_served_from_neither(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    make_model(first, "shared")
    make_model(second, "shared")
    make_model(second, "only_b")
    models, unavailable = scan_repositories([str(first), str(second)])
    assert list(models) == ["only_b"]
    assert models["only_b"].repository == str(second)
    assert unavailable == {"shared": DUPLICATE_REASON}
    assert DUPLICATE_REASON == "model appears in two or more repositories"


def test_the_same_repository_listed_twice_counts_once(tmp_path: Path) -> None:
    make_model(tmp_path, "simple")
    models, unavailable = scan_repositories([str(tmp_path), str(tmp_path) + os.sep])
    assert list(models) == ["simple"]
    assert unavailable == {}


def test_symlinked_model_directory_is_a_model(tmp_path: Path) -> None:
    real = make_model(tmp_path / "elsewhere", "real")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "linked").symlink_to(real, target_is_directory=True)
    models, _ = scan_repositories([str(tmp_path / "repo")])
    assert list(models) == ["linked"]


def test_missing_repository_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan_repositories([str(tmp_path / "nope")])


@pytest.mark.parametrize("name", ["simple", "a", "A.b-c_d", "0", "x" * 128, "..a", "a.."])
def test_valid_model_names(name: str) -> None:
    assert is_valid_model_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "x" * 129, "caf\u00e9", "a\0b", "a\\b", "%2e"])
def test_invalid_model_names(name: str) -> None:
    assert not is_valid_model_name(name)


# -- versions ---------------------------------------------------------------------------------


def test_versions_ignore_leading_zeros_and_non_integers(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m", ("0", "1", "2", "10", "01", "007", "v1", "1.5", "-1", "1abc", "\u0663"))
    (model / "3").write_text("a file, not a version directory")
    (model / str(2**63)).mkdir()  # beyond int64: Triton cannot hold it either
    (model / "configs").mkdir()
    assert available_versions(str(model)) == [0, 1, 2, 10]


def test_versions_of_missing_directory_are_empty(tmp_path: Path) -> None:
    assert available_versions(str(tmp_path / "nope")) == []


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"latest": {"num_versions": 1}}, [7]),
        ({"latest": {"num_versions": 2}}, [3, 7]),
        ({"latest": {"num_versions": 10}}, [1, 3, 7]),
        ({"latest": {"num_versions": 0}}, []),
        ({"all": {}}, [1, 3, 7]),
        ({}, [1, 3, 7]),
        ({"specific": {"versions": [3, 1]}}, [1, 3]),
        ({"specific": {"versions": [2, 7]}}, [7]),
        ({"specific": {"versions": []}}, []),
    ],
)
def test_select_versions(policy: dict, expected: list[int]) -> None:
    assert select_versions(policy, [7, 1, 3]) == expected


# -- config files -----------------------------------------------------------------------------


def test_read_config_text(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m")
    assert read_config_text(str(model)) == 'name: "m"\nbackend: "python"\n'
    assert config_path(str(model)) == os.path.join(str(model), "config.pbtxt")


def test_missing_config_is_none(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert read_config_text(str(tmp_path / "m")) is None


def test_named_config_is_chosen_when_present(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m")
    (model / "configs").mkdir()
    (model / "configs" / "h100.pbtxt").write_text("max_batch_size: 64")
    assert read_config_text(str(model), "h100") == "max_batch_size: 64"
    assert config_path(str(model), "h100") == os.path.join(str(model), "configs", "h100.pbtxt")
    # Triton falls back to config.pbtxt when the named file does not exist.
    assert read_config_text(str(model), "a100") == 'name: "m"\nbackend: "python"\n'


def test_non_utf8_config_raises(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_bytes(b"\xff")
    with pytest.raises(UnicodeDecodeError):
        read_config_text(str(tmp_path))


# -- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_is_stable(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m")
    assert fingerprint(str(model)) == fingerprint(str(model))


def test_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m")
    before = fingerprint(str(model))
    (model / "config.pbtxt").write_text('name: "m"\nbackend: "python"\nmax_batch_size: 4\n')
    assert fingerprint(str(model)) != before


def test_fingerprint_sees_a_same_size_edit_through_mtime(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m")
    script = model / "1" / "model.py"
    before = fingerprint(str(model))
    stat = script.stat()
    os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint(str(model)) != before


@pytest.mark.parametrize("change", ["add-version", "remove-version", "add-label-file"])
def test_fingerprint_sees_structure_changes(tmp_path: Path, change: str) -> None:
    model = make_model(tmp_path, "m", ("1", "2"))
    before = fingerprint(str(model))
    if change == "add-version":
        (model / "3").mkdir()
    elif change == "remove-version":
        (model / "2" / "model.py").unlink()
        (model / "2").rmdir()
    else:
        (model / "labels.txt").write_text("cat\n")
    assert fingerprint(str(model)) != before


def test_fingerprint_ignores_python_bytecode_caches(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m")
    before = fingerprint(str(model))
    cache = model / "1" / "__pycache__"
    cache.mkdir()
    (cache / "model.cpython-311.pyc").write_bytes(b"\0" * 64)
    assert fingerprint(str(model)) == before


def test_fingerprint_survives_symlink_loops_and_missing_dirs(tmp_path: Path) -> None:
    model = make_model(tmp_path, "m")
    (model / "1" / "loop").symlink_to(model, target_is_directory=True)
    (model / "dangling").symlink_to(tmp_path / "nowhere")
    assert len(fingerprint(str(model))) == 32
    assert fingerprint(str(tmp_path / "missing")) != fingerprint(str(model))


def test_an_unreadable_entry_does_not_hide_the_other_models(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    models, unavailable = scan_repositories([str(tmp_path)])
    assert set(models) == {"good"}
    assert "loop" in unavailable and "cannot read" in unavailable["loop"]
