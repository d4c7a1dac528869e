"""Atomic writes: the target appears whole or not at all, as an ordinary readable file."""

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from tt.io import atomic_write, read_json, write_json


def test_atomic_files_get_ordinary_permissions(tmp_path):
    """mkstemp and safetensors create files 0600; results and checkpoints are shared like any file."""
    write_json(str(tmp_path / "a.json"), {"x": 1})
    with atomic_write(str(tmp_path / "w.safetensors")) as tmp:
        save_file({"w": torch.zeros(2)}, tmp)
    for name in ("a.json", "w.safetensors"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
    assert read_json(str(tmp_path / "a.json")) == {"x": 1}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = str(tmp_path / "r.json")
    write_json(path, {"old": True})
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("crash mid-write")
    assert read_json(path) == {"old": True} and os.listdir(tmp_path) == ["r.json"]
