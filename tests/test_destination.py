"""No command destroys what it did not make: `--overwrite` replaces a run or an ensemble whole, only
once the new one is complete; a replacement that fails leaves the old one as it was. (The refusals,
one per kind of destination, are in test_bad_inputs.py.)"""

import os
import shutil
from pathlib import Path

import pytest

from tt import train as train_module
from tt.checkpoint import load_run
from tt.cli import main
from tt.destination import kind_of

SMALL = ["--dataset", "pendulum-medium", "--preset", "small", "--batch-size", "16", "--save-every", "2"]


def files_of(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory, pendulum_medium):
    out = tmp_path_factory.mktemp("destination") / "run"
    assert main(["train", *SMALL, "--out", str(out), "--steps", "2", "--seed", "1"]) == 0
    return out


def test_overwrite_replaces_a_run_once_the_new_one_is_complete(old_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    seen = {}
    trainer = train_module.train

    def train_and_look(cfg, where, **kwargs):  # the old run is whole while the new one trains beside it
        seen["where"], seen["old"] = where, files_of(out)
        return trainer(cfg, where, **kwargs)

    monkeypatch.setattr(train_module, "train", train_and_look)
    assert main(["train", *SMALL, "--out", str(out), "--steps", "4", "--overwrite"]) == 0
    assert os.path.dirname(seen["where"]) == str(tmp_path) and seen["where"] != str(out)
    assert seen["old"] == files_of(old_run)
    assert load_run(str(out))[3] == 4 and kind_of(str(out)) == "run"
    assert sorted(os.listdir(tmp_path)) == ["run"]  # nothing left beside it


def test_a_failed_overwrite_leaves_the_old_run_as_it_was(old_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(old_run, out)
    before = files_of(out)

    def train_then_fail(cfg, where, **kwargs):  # a failure half-way through the new run
        (Path(where) / "metrics.jsonl").write_text("{}\n")
        raise ValueError("the data set ran out")

    monkeypatch.setattr(train_module, "train", train_then_fail)
    assert main(["train", *SMALL, "--out", str(out), "--steps", "4", "--overwrite"]) == 2
    assert "the data set ran out" in capsys.readouterr().err
    assert files_of(out) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_kinds_of_destination(tmp_path, old_run):
    assert kind_of(str(tmp_path / "missing")) is None and kind_of(str(tmp_path)) is None  # nothing, or empty
    assert kind_of(str(old_run)) == "run"
    (tmp_path / "f").write_text("x")
    assert kind_of(str(tmp_path / "f")) == "file" and kind_of(str(tmp_path)) == "directory"


def test_an_evaluation_is_replaced_only_when_asked(old_run, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--run", str(old_run), "--out", str(out), "--episodes", "1", "--envs", "1", "--horizon", "1",
            "--beam-width", "2"]
    assert main(argv) == 0 and kind_of(str(out)) == "evaluation"
    first = files_of(out)
    capsys.readouterr()
    assert main([*argv, "--seed", "1"]) == 2
    assert "already holds an evaluation (tt eval): give --overwrite" in capsys.readouterr().err
    assert files_of(out) == first
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert files_of(out)[Path("eval.json")] != first[Path("eval.json")]  # the new evaluation, whole
    assert sorted(os.listdir(tmp_path)) == ["eval"]


def test_a_training_stopped_before_its_first_checkpoint_is_replaced(tmp_path, pendulum_medium):
    """A `tt train` killed before its first save leaves metrics.jsonl alone (and maybe a staging folder):
    the next `tt train` into it replaces it instead of refusing a directory of other files."""
    from tt.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 20, "loss": 7.0}\n')
    (out / ".step-00000500-x").mkdir()
    assert kind_of(str(out)) == "unfinished"
    assert main(["train", "--dataset", "pendulum-medium", "--out", str(out), "--preset", "small", "--steps", "2",
                 "--batch-size", "8", "--n-transitions", "2", "--device", "cpu"]) == 0
    assert kind_of(str(out)) == "run" and not (out / ".step-00000500-x").exists()
