"""Nothing lost on a crash: checkpoints, the training log and data sets are switched in by renames.

The drill kills `tt train` with SIGKILL at chosen moments (inside a step, inside a checkpoint
save, between a save's rename and its switch, mid-append of the log, before old checkpoints are
removed), resumes each time with `--resume`, and ends bit-identical to a run never interrupted.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tt import checkpoint as checkpoint_module
from tt import io as io_module
from tt.checkpoint import CheckpointError, checkpoint_folder, load_run
from tt.discretize import Discretizer
from tt.io import read_jsonl
from tt.model import GPTConfig, TrajectoryTransformer
from tt.tasks import make_dataset

# Runs `tt train` in a fresh process that SIGKILLs itself at the n-th call of one function.
DRILL = r"""
import os, signal, sys
point, n = os.environ["DRILL_KILL"].split(":") if os.environ.get("DRILL_KILL") else ("", "0")
calls = {"n": 0}

def kill_on_call(module, name, before=None):
    original = getattr(module, name)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == int(n):
            if before:
                before(*args)
            else:
                original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(module, name, wrapper)

import torch
import tt.checkpoint, tt.train

def torn_append(path, line):
    with open(path, "a") as f:
        f.write(line[: len(line) // 2])

if point == "step":  # after backward, before the optimizer step
    kill_on_call(torch.nn.utils, "clip_grad_norm_", before=lambda *a: None)
elif point == "save":  # the weights written into the staging folder, the rest not
    kill_on_call(tt.checkpoint, "save_file")
elif point == "switch":  # the step folder renamed into place, checkpoint.json not yet switched
    kill_on_call(tt.checkpoint, "fsync_path")
elif point == "cleanup":  # switched, the previous step folder not yet removed
    kill_on_call(tt.checkpoint, "_remove_stale", before=lambda *a: None)
elif point == "metrics":  # half a line appended to metrics.jsonl
    kill_on_call(tt.train, "append_line", before=torn_append)

from tt.cli import main
sys.exit(main(sys.argv[1:]))
"""

STEPS, SAVE_EVERY = 30, 5


def tt_train(out, kill="", resume=False):
    args = ["train", "--dataset", "pendulum-medium", "--out", out, "--preset", "small", "--steps", str(STEPS),
            "--save-every", str(SAVE_EVERY), "--device", "cpu", "--seed", "3"] + (["--resume"] if resume else [])
    env = {**os.environ, "DRILL_KILL": kill, "OMP_NUM_THREADS": "1", "TT_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-c", DRILL, *args], env=env, capture_output=True, text=True, timeout=300)


def tiny_run(tmp_path):
    model = TrajectoryTransformer(GPTConfig(3, 1, n_bins=10, n_transitions=2, n_layer=1, n_head=1, n_embd=8))
    run = str(tmp_path / "run")
    checkpoint_module.save_run(run, model, Discretizer(np.linspace(0, 1, 11)[:, None].repeat(6, 1)), {})
    return run, model


def step_folders(run):
    return sorted(name for name in os.listdir(run) if "step-" in name)


def test_sigkill_drill_resumes_bit_identical(pendulum_medium, tmp_path):
    reference = str(tmp_path / "reference")
    assert tt_train(reference).returncode == 0

    run = str(tmp_path / "drill")
    # (kill point and call, the step the run must then load, what the crash leaves behind)
    drill = [("step:7", 5, None), ("save:2", 10, ".step-00000015-"), ("switch:1", 10, "step-00000015"),
             ("metrics:1", 15, None), ("cleanup:1", 20, "step-00000015")]
    for i, (kill, loadable_step, leftover) in enumerate(drill):
        result = tt_train(run, kill, resume=i > 0)
        assert result.returncode == -signal.SIGKILL, (kill, result.stderr[-2000:])
        assert load_run(run)[3] == loadable_step, kill  # the last committed checkpoint survives
        if leftover:
            assert any(name.startswith(leftover) for name in step_folders(run)), (kill, step_folders(run))
    last = tt_train(run, resume=True)
    assert last.returncode == 0, last.stderr[-2000:]

    assert step_folders(run) == ["step-00000030"]  # stale and staging folders removed by the next save
    ours, theirs = (load_file(os.path.join(checkpoint_folder(r), "model.safetensors")) for r in (run, reference))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_jsonl(os.path.join(run, "metrics.jsonl"))]
    want = [{k: v for k, v in r.items() if k != "elapsed_s"}
            for r in read_jsonl(os.path.join(reference, "metrics.jsonl"))]
    assert strip == want  # the torn line cut, nothing logged twice


def test_files_are_not_private(pendulum_medium, tmp_path):
    run = str(tmp_path / "run")
    assert tt_train(run).returncode == 0
    folder = checkpoint_folder(run)
    assert os.stat(folder).st_mode & 0o777 == 0o755
    for name in [*os.listdir(folder)]:
        assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o644, name
    for name in ("checkpoint.json", "metrics.jsonl", "loss.png"):
        assert os.stat(os.path.join(run, name)).st_mode & 0o777 == 0o644, name


def test_save_crash_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """A save that fails before its switch leaves the previous checkpoint loadable."""
    run, model = tiny_run(tmp_path)
    before = open(os.path.join(run, "checkpoint.json")).read()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_module.save_run(run, model, load_run(run)[1], {}, step=1)
    monkeypatch.undo()
    assert open(os.path.join(run, "checkpoint.json")).read() == before
    assert load_run(run)[3] == 0


def test_a_record_without_its_folder_is_refused(tmp_path):
    """checkpoint.json names the step folder and its files' digests; one that does not is refused in a line."""
    run, _ = tiny_run(tmp_path)
    record = json.load(open(os.path.join(run, "checkpoint.json")))
    del record["folder"]
    json.dump(record, open(os.path.join(run, "checkpoint.json"), "w"))
    with pytest.raises(CheckpointError, match="names no checkpoint folder"):
        load_run(run)


def test_resaving_the_committed_step_never_touches_it(tmp_path):
    run, model = tiny_run(tmp_path)
    discretizer = load_run(run)[1]
    checkpoint_module.save_run(run, model, discretizer, {}, step=0)
    assert step_folders(run) == ["step-00000000-1"]
    assert load_run(run)[3] == 0


def test_torn_log_line_is_skipped_and_others_are_errors(tmp_path):
    path = str(tmp_path / "m.jsonl")
    open(path, "w").write('{"step": 1}\n{"step": 2}\n{"ste')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    open(path, "w").write('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_swap_directory(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(io_module, "_exchange", lambda a, b: False)
    target, new = tmp_path / "data", tmp_path / "new"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    io_module.swap_directory(str(new), str(target))
    assert os.listdir(target) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_exchange_is_atomic_on_linux(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux's")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    assert io_module._exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b" / "x").read_text() == "a"


def test_data_make_failure_keeps_the_old_data_set(pendulum_medium, monkeypatch):
    """`tt data make` builds beside the data set: a crash while writing leaves the old one whole."""
    import minari

    old_steps = minari.load_dataset("tt/pendulum/medium-v0").total_steps
    root = os.environ["MINARI_DATASETS_PATH"]
    original = minari.create_dataset_from_buffers

    def crash_midway(**kwargs):
        original(**kwargs)  # written, into the staging root
        raise KeyboardInterrupt

    monkeypatch.setattr(minari, "create_dataset_from_buffers", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        make_dataset("pendulum-medium", episodes=2, seed=0, progress=False)
    monkeypatch.undo()
    assert os.environ["MINARI_DATASETS_PATH"] == root
    assert minari.load_dataset("tt/pendulum/medium-v0").total_steps == old_steps
    assert not [name for name in os.listdir(root) if name.startswith(".tt-build-")]
