"""`tt score`: the paper's protocol over several runs (training seeds), a row per data set."""

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest

from tt.cli import main
from tt.eval.score import NO_REFERENCE, _json_safe, combine_evaluations, format_table, run_names, score_runs, summarize

pytestmark = pytest.mark.filterwarnings("ignore:the plan's action holds a stop token")

PLAN = ["--horizon", "2", "--beam-width", "2", "--n-expand", "1", "--no-cuda-graphs"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, pendulum_medium):
    """Two tiny runs on pendulum-medium, training seeds 0 and 1."""
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (0, 1):
        out = str(root / f"seed{seed}")
        assert main(["train", "--dataset", "pendulum-medium", "--out", out, "--preset", "small", "--steps", "5",
                     "--device", "cpu", "--seed", str(seed)]) == 0
        runs.append(out)
    return runs


@pytest.fixture(scope="module")
def scored(two_runs, tmp_path_factory):
    """`tt score` over both runs: (output directory, printed text, score.json)."""
    out = str(tmp_path_factory.mktemp("score") / "score")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["score", *two_runs, "--episodes", "2", "--envs", "2", "--jobs", "1", *PLAN, "--out", out]) == 0
    with open(os.path.join(out, "score.json")) as f:
        return out, printed.getvalue(), json.load(f)


def fmt(value):
    return "-" if value is None else f"{value:.1f}"


def test_score_mean_and_standard_errors_follow_each_runs_eval(scored):
    out, _, summary = scored
    evals = [json.load(open(os.path.join(out, name, "eval.json"))) for name in ("seed0", "seed1")]
    per_episode = [100 * np.array(e["normalized_scores"]) for e in evals]
    run_means = [s.mean() for s in per_episode]
    pooled = np.concatenate(per_episode)
    (row,) = summary["datasets"]
    assert row["dataset_id"] == "tt/pendulum/medium-v0" and row["n_runs"] == 2 and row["episodes_per_run"] == 2
    assert row["score"] == pytest.approx(np.mean(run_means), rel=1e-12)
    assert row["se_runs"] == pytest.approx(np.std(run_means, ddof=1) / math.sqrt(2), rel=1e-12)
    assert row["se_episodes"] == pytest.approx(np.std(pooled, ddof=1) / math.sqrt(4), rel=1e-12)
    assert row["mean_return"] == pytest.approx(np.mean([np.mean(e["returns"]) for e in evals]), rel=1e-12)
    assert [r["score"] for r in summary["runs"]] == pytest.approx(run_means, rel=1e-12)
    assert summary["average"] is None  # one data set: no average row


def test_score_baseline_is_the_data_sets_mean_return_normalized(scored):
    out, _, summary = scored
    e = json.load(open(os.path.join(out, "seed0", "eval.json")))
    (row,) = summary["datasets"]
    assert row["dataset_mean_return"] == pytest.approx(e["dataset_mean_return"], rel=1e-12)
    expected = 100 * (e["dataset_mean_return"] - e["ref_min_score"]) / (e["ref_max_score"] - e["ref_min_score"])
    assert row["dataset_score"] == pytest.approx(expected, rel=1e-9)


def test_score_table_prints_the_json_numbers(scored):
    _, printed, summary = scored
    (row,) = summary["datasets"]
    (line,) = [ln for ln in printed.splitlines() if ln.startswith(row["dataset_id"])]
    assert line.split() == [row["dataset_id"], "2", "2", fmt(row["score"]), fmt(row["se_runs"]),
                            fmt(row["se_episodes"]), fmt(row["mean_return"]), fmt(row["dataset_score"]),
                            fmt(row["dataset_mean_return"])]
    for run in summary["runs"]:
        (line,) = [ln for ln in printed.splitlines() if ln.startswith(run["name"] + " ")]
        assert line.split()[:4] == [run["name"], row["dataset_id"], "2", fmt(run["score"])]


def test_score_records_options_plan_and_plot(scored, two_runs):
    out, printed, summary = scored
    assert summary["plan_config"]["horizon"] == 2 and summary["plan_config"]["beam_width"] == 2
    assert summary["plan_config"]["cuda_graphs"] is False
    options = summary["options"]
    assert options["runs"] == two_runs and options["episodes"] == 2 and options["n_envs"] == 2
    assert "--horizon 2" in options["command"] and "--no-cuda-graphs" in options["command"]
    assert options["command"] in printed
    with open(os.path.join(out, "score.png"), "rb") as f:
        png = f.read()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


@pytest.mark.slow
def test_score_is_reproducible_run_by_run(scored, two_runs):
    """The same seeds for every run: scoring one run alone repeats its episodes exactly."""
    _, _, summary = scored
    alone = score_runs([two_runs[1]], episodes=2, n_envs=2, progress=False, horizon=2, beam_width=2, n_expand=1,
                       cuda_graphs=False)
    assert alone["runs"][0]["returns"] == summary["runs"][1]["returns"]


def test_runs_scored_in_processes_of_their_own_play_the_same_episodes(scored, two_runs, tmp_path):
    """`--jobs 2`: each run evaluated in a spawned process with its share of the threads gives the episodes
    of one process evaluating the runs in turn (`scored`: --jobs 1), and writes each run's folder as that
    one does."""
    settings = dict(episodes=2, n_envs=2, progress=False, horizon=2, beam_width=2, n_expand=1, cuda_graphs=False)
    apart = score_runs(two_runs, jobs=2, out=str(tmp_path / "apart"), **settings)
    assert [r["returns"] for r in apart["runs"]] == [r["returns"] for r in scored[2]["runs"]]
    assert sorted(os.listdir(tmp_path / "apart")) == ["score.json", "score.png", "seed0", "seed1"]
    assert os.path.isfile(tmp_path / "apart" / "seed1" / "eval.json")
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        score_runs(two_runs, jobs=0, **settings)


def test_runs_scored_separately_combine_into_one_score(scored, tmp_path):
    """`tt score --from-evals` over the per-run folders of a score gives that score's numbers; it
    refuses evaluations made with other settings, a folder without eval.json and plan flags."""
    out, _, summary = scored
    folders = [os.path.join(out, r["name"]) for r in summary["runs"]]
    combined_out = str(tmp_path / "combined")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["score", "--from-evals", *folders, "--out", combined_out]) == 0
    with open(os.path.join(combined_out, "score.json")) as f:
        combined = json.load(f)
    assert combined["datasets"] == summary["datasets"] and combined["plan_config"] == summary["plan_config"]
    assert [r["scores"] for r in combined["runs"]] == [r["scores"] for r in summary["runs"]]
    assert os.path.isfile(os.path.join(combined_out, "score.png"))
    other = tmp_path / "other"
    other.mkdir()
    with open(os.path.join(folders[1], "eval.json")) as f:
        evaluation = json.load(f)
    with open(other / "eval.json", "w") as f:
        json.dump({**evaluation, "seed": evaluation["seed"] + 1}, f)
    with pytest.raises(ValueError, match="evaluated otherwise"):
        combine_evaluations([folders[0], str(other)])
    with pytest.raises(ValueError, match="holds no eval.json"):
        combine_evaluations([folders[0], str(tmp_path)])
    with pytest.raises(ValueError, match="of one run"):
        combine_evaluations([folders[0], folders[0]])
    assert main(["score", "--from-evals", *folders, "--horizon", "3"]) == 2


def test_score_names_a_missing_run_before_evaluating_any(two_runs, tmp_path, capsys):
    missing, out = str(tmp_path / "no-such-run"), str(tmp_path / "score")
    assert main(["score", two_runs[0], missing, "--episodes", "1", "--out", out]) == 2
    assert f"tt: error: no run directory at {missing}" in capsys.readouterr().err
    assert not os.path.exists(out)


@pytest.mark.parametrize("argv, message", [(["--episodes", "0"], "at least one episode"),
                                           (["--envs", "0"], "at least one episode and one environment")])
def test_score_rejects_no_episodes(two_runs, tmp_path, capsys, argv, message):
    assert main(["score", two_runs[0], *argv, "--out", str(tmp_path / "score")]) == 2
    assert message in capsys.readouterr().err


def test_score_rejects_no_runs_and_a_run_given_twice(two_runs, capsys):
    with pytest.raises(ValueError, match="no runs to score"):
        score_runs([])
    assert main(["score", two_runs[0], two_runs[0] + "/", "--episodes", "1"]) == 2
    assert "given twice" in capsys.readouterr().err


def test_run_names_lengthen_only_repeated_basenames():
    assert run_names(["runs/hopper/s0", "runs/walker/s0/", "runs/pm"]) == ["hopper-s0", "walker-s0", "pm"]
    assert run_names(["a/x/s0", "b/x/s0"]) == ["a-x-s0", "b-x-s0"]


HAND_RUNS = [
    {"name": "a1", "dataset_id": "A", "normalized_scores": [0.5, 0.7], "returns": [-100.0, -200.0]},
    {"name": "b1", "dataset_id": "B", "normalized_scores": [0.2, 0.4, 0.6], "returns": [1.0, 2.0, 6.0]},
    {"name": "a2", "dataset_id": "A", "normalized_scores": [0.8, 1.0], "returns": [-300.0, -50.0]},
]
HAND_DATASETS = {"A": {"mean_return": -400.0, "score": 30.0}, "B": {"mean_return": 2.0, "score": 10.0}}


def test_summarize_statistics_on_hand_made_numbers():
    summary = summarize(HAND_RUNS, HAND_DATASETS)
    a, b = summary["datasets"]
    assert (a["dataset_id"], a["runs"], a["n_runs"]) == ("A", ["a1", "a2"], 2)
    assert a["episodes_per_run"] == 2 and a["episodes"] == 4
    assert a["score"] == pytest.approx(75.0)  # runs' means 60 and 90
    assert a["se_runs"] == pytest.approx(15.0)  # std([60, 90], ddof=1) = 15 sqrt(2), over sqrt(2)
    assert a["se_episodes"] == pytest.approx(math.sqrt(1300 / 3) / 2)  # [50, 70, 80, 100]: squares 1300, n-1 = 3
    assert a["mean_return"] == pytest.approx(-162.5) and a["dataset_score"] == 30.0
    assert a["dataset_mean_return"] == -400.0
    assert b["n_runs"] == 1 and b["score"] == pytest.approx(40.0)
    assert b["se_runs"] is None  # undefined with one run
    assert b["se_episodes"] == pytest.approx(20 / math.sqrt(3))
    avg = summary["average"]
    assert avg["n_datasets"] == 2 and avg["score"] == pytest.approx(57.5) and avg["dataset_score"] == 20.0
    assert avg["se_runs"] is None  # B has none
    assert avg["se_episodes"] == pytest.approx(math.sqrt(1300 / 3 / 4 + 400 / 3) / 2)
    assert [r["score"] for r in summary["runs"]] == pytest.approx([60.0, 40.0, 90.0])


def test_table_shows_undefined_errors_as_dashes_and_an_average_row():
    lines = format_table(summarize(HAND_RUNS, HAND_DATASETS)).splitlines()
    (b,) = [ln for ln in lines if ln.startswith("B ")]
    assert b.split() == ["B", "1", "3", "40.0", "-", "11.5", "3.0", "10.0", "2.0"]
    (avg,) = [ln for ln in lines if ln.startswith("average")]
    assert avg.split() == ["average", "(2", "data", "sets)", "57.5", "-", "7.8", "-", "20.0", "-"]
    widths = {len(ln) for ln in lines[:5]}
    assert len(widths) == 1  # header, rule and rows aligned


def test_data_sets_without_reference_scores_are_named_not_nan():
    runs = [*HAND_RUNS, {"name": "c1", "dataset_id": "C", "normalized_scores": [math.nan] * 2, "returns": [5.0, 7.0]}]
    summary = summarize(runs, {**HAND_DATASETS, "C": {"mean_return": 4.0, "score": math.nan}})
    c = summary["datasets"][2]
    assert not c["reference_scores"] and c["se_runs"] is None and c["se_episodes"] is None
    assert summary["average"]["datasets"] == ["A", "B"]  # the average is over scored data sets only
    table = format_table(summary)
    (line,) = [ln for ln in table.splitlines() if ln.startswith("C ")]
    assert NO_REFERENCE in line and "nan" not in table.lower()
    from_json = json.loads(json.dumps(_json_safe(summary), allow_nan=False))  # NaN written as null
    assert format_table(from_json) == table
