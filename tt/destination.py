"""Where a command writes: what already lies there, and whether the command may replace it.

No command destroys what it did not make: a destination that holds something of another kind is
refused, one of the command's own kind only with `--overwrite` (or `--resume` for training), and
then the old one is replaced whole once the new one is complete (`staging_beside`, then
`tt.io.swap_directory`), never removed before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

from tt.io import swap_directory

DESCRIPTIONS = {
    "run": "a tt run (tt train, tt import-reference)",
    "ensemble": "a dynamics ensemble (tt train-dynamics)",
    "critic": "a critic (tt train-critic)",
    "unfinished": "a training stopped before its first checkpoint (its metrics.jsonl alone)",
    "evaluation": "an evaluation (tt eval)",
    "score": "a score (tt score)",
    "prediction": "a prediction (tt predict)",
    "file": "a file",
    "directory": "a directory of other files",
}
RECORDS = {"eval.json": "evaluation", "goals.json": "evaluation", "score.json": "score", "predict.json": "prediction"}


def kind_of(path: str) -> str | None:
    """What lies at `path`: None (nothing, or an empty directory), "run", "critic", "unfinished" (a `tt train`
    or `tt train-critic` stopped before its first checkpoint), "ensemble", "file" or "directory"."""
    if not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return "file"
    names = set(os.listdir(path))
    if not names:
        return None
    if "checkpoint.json" in names:
        try:
            with open(os.path.join(path, "checkpoint.json")) as f:
                return "critic" if "critic.safetensors" in json.load(f).get("sha256", {}) else "run"
        except (OSError, ValueError, AttributeError):
            return "run"
    if {"model.safetensors", "discretizer.safetensors"} <= names:
        return "run"
    if "metrics.jsonl" in names and all(n == "metrics.jsonl" or n.startswith(".step-") for n in names):
        return "unfinished"
    if {"config.json", "model.safetensors"} <= names:
        return "ensemble"
    found = {RECORDS[name] for name in names & RECORDS.keys()}
    return found.pop() if len(found) == 1 else "directory"


def check_destination(path: str, makes: str, overwrite: bool, resume: bool = False) -> bool:
    """Refuse to write `makes` ("run" or "ensemble") at `path` over what is there without leave;
    returns whether the new one replaces an old one (so must be built beside it, then swapped in)."""
    found = kind_of(path)
    if overwrite and resume:
        raise ValueError("--overwrite and --resume: give one (--resume continues the run, --overwrite replaces it)")
    if resume:
        return False  # training checks that `path` holds a run it can continue
    if found is None:
        return False
    if found == "unfinished" and makes in ("run", "critic"):  # nothing to keep but a log: replaced, asked or not
        return True
    if found != makes:
        raise ValueError(f"{path} holds {DESCRIPTIONS[found]}, not {DESCRIPTIONS[makes]}: nothing was written; "
                         "choose another --out")
    if not overwrite:
        hint = "--resume to continue it or --overwrite" if makes == "run" else "--overwrite"
        raise ValueError(f"{path} already holds {DESCRIPTIONS[makes]}: give {hint} to replace it (the old one stays "
                         "until the new one is complete)")
    return True


@contextlib.contextmanager
def destination(path: str, makes: str, overwrite: bool, writes: bool = True) -> Iterator[str]:
    """Where a command writes `makes`: `path` itself when nothing is there; with `overwrite`, over one of
    its own kind, a folder beside it that replaces it whole once the command has finished (and is
    removed if it fails); anything else is refused (`check_destination`) before the command works.
    A process that `writes` nothing (a torchrun rank but the first) checks, and is given `path`."""
    if not check_destination(path, makes, overwrite) or not writes:
        yield path
        return
    staging = staging_beside(path, makes)
    try:
        yield staging
        swap_directory(staging, path)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)


def staging_beside(path: str, what: str) -> str:
    """A new empty directory beside `path` to build its replacement in (same file system: one rename)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(dir=parent, prefix=f".tmp-{what}-{os.path.basename(os.path.abspath(path))}-")
