"""Crash-safe files: write beside the target, fsync, then switch it in with one rename.

A SIGKILL or power cut at any moment leaves either the old file (or directory) or the new one,
never a mix: the rename is the commit, and the fsyncs before and after it order the data ahead
of the name on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

FILE_MODE = 0o644  # mkstemp (and safetensors) make files private; results and checkpoints are not


def fsync_path(path: str) -> None:
    """Flush a file's data, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync every file and directory under `path`, children before their parents."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """Yield a temporary path; on success it replaces `path` in one rename, on error it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_text(path: str, text: str) -> None:
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt JSON file {path}: {e}") from e


def read_state_dict(path: str) -> dict:
    """Tensors from a PyTorch `.pt` (tensors only: `weights_only`) or a `.safetensors` file; a missing,
    truncated or foreign file is one ValueError that names it and says what was expected."""
    import torch
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ValueError(f"no state dict file {path}")
    try:
        if path.endswith(".safetensors"):
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling and safetensors raise many kinds: each is a damaged or foreign file
        reason = str(e).split(". ")[0][:120]  # torch's unpickling advice (weights_only=False) is not ours to give
        raise ValueError(f"{path} is damaged or not a state dict ({type(e).__name__}: {reason}): give the tensors "
                         "of a model saved by torch.save (.pt, read weights-only) or safetensors (.safetensors)") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def append_line(path: str, line: str) -> None:
    """Append one line and fsync: a crash loses at most the line being written."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a crash mid-append) is skipped."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"corrupt JSON-lines file {path}, line {i + 1}: {e}") from e
    return records


def save_figure(fig, path: str, dpi: int = 100) -> str:
    """Write a matplotlib figure as a PNG atomically (a reader never sees half an image); returns `path`."""
    with atomic_write(os.fspath(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return os.fspath(path)


def write_jsonl(path: str, records: list[dict]) -> None:
    """Replace a JSON-lines file atomically."""
    with atomic_write(path) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step with renameat2(RENAME_EXCHANGE); False where the OS cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def swap_directory(new: str, target: str) -> None:
    """Put the finished directory `new` at `target`, replacing what was there.

    Linux swaps the two in one atomic step; elsewhere the old one is renamed aside first, so a
    crash in between leaves it beside the target (`.old-*`) rather than losing both.
    """
    fsync_tree(new)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    if not os.path.exists(target):
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # now holds the old contents
    else:
        old = tempfile.mkdtemp(dir=parent, prefix=".old-" + os.path.basename(target))
        os.rmdir(old)
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    fsync_path(parent)


def plot_losses(metrics_path: str, png_path: str, keys: tuple[str, ...] = ("loss",),
                ylabel: str = "weighted cross-entropy") -> None:
    """Losses (`keys` of the records) against step from metrics.jsonl, as a PNG (a bare Figure: pyplot and
    the caller's matplotlib backend are left alone)."""
    from matplotlib.figure import Figure

    records = read_jsonl(metrics_path)
    if not records:
        return
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key in keys:
        ax.plot([r["step"] for r in records], [r[key] for r in records], label=key)
    if len(keys) > 1:
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path)
