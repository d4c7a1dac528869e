import json
import os

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


def test_eval_rejects_an_impossible_plan_config(tiny_run, capsys):
    assert main(["eval", "--run", tiny_run, "--episodes", "1", "--max-context-transitions", "1"]) == 2
    assert "max_context_transitions=1" in capsys.readouterr().err


def test_demo_runs_end_to_end_when_cut_short(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))  # the demo makes the full data set
    assert main(["demo", "--out", str(tmp_path / "demo"), "--train-steps", "3", "--episodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "data set mean return" in out and "Trajectory Transformer return" in out
    assert os.path.exists(tmp_path / "demo" / "eval" / "returns.png")
