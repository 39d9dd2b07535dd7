"""Atomic writes: the old file or the whole new one, with the umask's permissions, nothing left
behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from dpda.atomic import atomic_folder, atomic_path, write_text_atomic
from dpda.checkpoint import save_state, save_weights
from dpda.config import ExperimentConfig, save_config


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_umasks_permissions(tmp_path, umask_022):
    write_text_atomic(tmp_path / "results.json", "{}")
    save_weights(tmp_path / "final.safetensors", {"w": torch.zeros(2)}, {"config": {}})
    save_config(ExperimentConfig(), tmp_path / "config.yaml")
    save_state(tmp_path / "state", {"step": 3, "weights": torch.ones(2)})
    files = [
        "results.json",
        "final.safetensors",
        "final.json",
        "config.yaml",
        *(str(p.relative_to(tmp_path)) for p in (tmp_path / "state").iterdir()),
    ]
    assert {name: mode(tmp_path / name) for name in files} == dict.fromkeys(files, 420)
    with atomic_folder(tmp_path / "converted") as folder:
        (folder / "config.json").write_text("{}")
    assert mode(tmp_path / "converted") == 0o755 and mode(tmp_path / "converted" / "config.json") == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "scores.txt"
    target.write_text("old")

    def write_file() -> None:
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")

    def write_folder() -> None:
        with atomic_folder(tmp_path / "folder") as folder:
            (folder / "part").write_text("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file()
    with pytest.raises(RuntimeError, match="killed"):
        write_folder()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.txt"]
