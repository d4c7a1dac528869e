import json
import os
import subprocess
import sys
import textwrap

import pytest

from tt.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:the plan's action holds a stop token")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, pendulum_medium):
    out = str(tmp_path_factory.mktemp("run") / "r")
    assert main(["train", "--dataset", "pendulum-medium", "--out", out, "--preset", "small", "--steps", "5",
                 "--device", "cpu"]) == 0
    return out


def test_eval_writes_results_and_plots(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert main(["eval", "--run", tiny_run, "--episodes", "3", "--envs", "2", "--horizon", "2", "--beam-width", "2",
                 "--n-expand", "1", "--no-cuda-graphs", "--out", out]) == 0
    results = json.load(open(os.path.join(out, "eval.json")))
    assert results["episodes"] == 3 and len(results["returns"]) == 3 and results["lengths"] == [200] * 3
    assert results["dataset_id"] == "tt/pendulum/medium-v0"
    assert results["plan_config"]["horizon"] == 2 and results["plan_config"]["beam_width"] == 2
    assert results["plan_config"]["cuda_graphs"] is False
    assert all(-2000 < r <= 0 for r in results["returns"])
    for png in ("returns.png", "plan_vs_actual.png"):
        assert os.path.getsize(os.path.join(out, png)) > 1000
    assert "normalized score" in capsys.readouterr().out


def test_eval_and_train_name_a_missing_device(tiny_run, tmp_path, capsys):
    assert main(["eval", "--run", tiny_run, "--episodes", "1", "--device", "cuda:99"]) == 2
    assert "'cuda:99' asked for" in capsys.readouterr().err
    assert main(["train", "--dataset", "pendulum-medium", "--out", str(tmp_path / "r"), "--device", "cuda:99"]) == 2
    assert "'cuda:99' asked for" in capsys.readouterr().err


def test_eval_rejects_an_impossible_plan_config(tiny_run, capsys):
    assert main(["eval", "--run", tiny_run, "--episodes", "1", "--max-context-transitions", "1"]) == 2
    assert "max_context_transitions=1" in capsys.readouterr().err


def test_demo_runs_end_to_end_when_cut_short(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))  # the demo makes the full data set
    assert main(["demo", "--out", str(tmp_path / "demo"), "--train-steps", "3", "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "data set mean return" in out and "Trajectory Transformer return" in out
    assert os.path.exists(tmp_path / "demo" / "eval" / "returns.png")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_comes_back_without_page_faults():
    """What `tt` sets for itself: freed activations (here three 16 MiB blocks a cycle, as a
    prefill's layers) are reused, not returned to the kernel and faulted in again (checked in a
    fresh process, where the setting is process-wide)."""
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from tt.memory import retain_freed_memory
        if sys.argv[1] == "retain":
            assert retain_freed_memory()
        def cycle():
            blocks = [np.ones(4 << 20, dtype=np.float32) for _ in range(3)]
            del blocks
        cycle()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            cycle()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    faults = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("retain", "default")}
    assert faults["retain"] < 100 < 1000 < faults["default"]  # glibc's default trims and faults back (~6000 here)
