"""The paper's evaluation protocol (Janner et al. 2021, Table 1): score runs, a row per data set.

Every run is evaluated with the same seeds (`tt.eval.episodes.evaluate`), its episodes normalized as
D4RL does, x100 (`minari.get_normalized_score`: 0 = random, 100 = expert). Runs of one data set
are its training seeds; a data set's row keeps their spread: the standard error over runs (of
the per-run means) and over all its episodes pooled. `score_runs` writes `score.json` and
`score.png` beside one folder of evaluation results per run.
"""

from __future__ import annotations

import json
import math
import os
import shlex

import numpy as np
import torch

from tt import distributed
from tt.checkpoint import open_run
from tt.config import PlanConfig
from tt.data import episode_returns, load_dataset
from tt.io import save_figure, write_json
from tt.progress import progress as progress_bar
from tt.search import check_config

NO_REFERENCE = "no reference scores"


def standard_error(values) -> float | None:
    """std (ddof=1) / sqrt(n); None below two values (undefined, not zero)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def run_names(runs: list[str]) -> list[str]:
    """A folder name per run: its basename, lengthened by parent folders where basenames repeat.

    `a/seed0 b/seed0` -> `a-seed0 b-seed0`: each run's results land in a folder of their own.
    """
    parts = [os.path.abspath(r).strip(os.sep).split(os.sep) for r in runs]
    names = [p[-1] for p in parts]
    for depth in range(2, max(map(len, parts)) + 1):
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            break
        names = ["-".join(p[-depth:]) if n in clashes else n for n, p in zip(names, parts)]
    return names


def summarize(runs: list[dict], datasets: dict[str, dict]) -> dict:
    """Per-run and per-data-set statistics, normalized scores x100; an average row over data sets.

    runs:     [{"name", "dataset_id", "normalized_scores" (fractions, NaN without reference
              scores), "returns"}, ...]; other keys are kept in the run's entry.
    datasets: {dataset_id: {"mean_return": float, "score": the data set's mean return x100, or NaN}}
    A data set's `score` is the mean of its runs' means (the pooled mean when every run has as
    many episodes); `se_runs` is the standard error of the runs' means (None with one run);
    `se_episodes` that of all its episodes pooled. NaN stands where there are no reference scores.
    """
    run_rows = []
    for run in runs:
        scores = 100 * np.asarray(run["normalized_scores"], dtype=float)
        kept = {k: v for k, v in run.items() if k != "normalized_scores"}
        run_rows.append({**kept, "scores": scores.tolist(), "score": _mean(scores),
                         "se_episodes": standard_error(scores), "mean_return": _mean(run["returns"]),
                         "episodes": len(scores)})
    rows = []
    for dataset_id in dict.fromkeys(r["dataset_id"] for r in run_rows):  # in the order given
        group = [r for r in run_rows if r["dataset_id"] == dataset_id]
        pooled = np.concatenate([r["scores"] for r in group])
        referenced = bool(np.isfinite(pooled).all())
        episodes = sorted({r["episodes"] for r in group})
        rows.append({
            "dataset_id": dataset_id, "runs": [r["name"] for r in group], "n_runs": len(group),
            "episodes_per_run": episodes[0] if len(episodes) == 1 else episodes,
            "episodes": len(pooled), "reference_scores": referenced,
            "score": _mean([r["score"] for r in group]),
            "se_runs": standard_error([r["score"] for r in group]) if referenced else None,
            "se_episodes": standard_error(pooled) if referenced else None,
            "mean_return": _mean([r["mean_return"] for r in group]),
            "dataset_score": float(datasets[dataset_id]["score"]),
            "dataset_mean_return": float(datasets[dataset_id]["mean_return"]),
        })
    return {"runs": run_rows, "datasets": rows, "average": _average(rows)}


def _average(rows: list[dict]) -> dict | None:
    """The paper's Average: the mean of the data sets' scores (those with reference scores).

    Its standard errors combine the data sets' (independent) ones: sqrt(sum se^2) / K.
    """
    scored = [r for r in rows if r["reference_scores"]]
    if len(rows) < 2 or not scored:
        return None

    def combined(key: str) -> float | None:
        ses = [r[key] for r in scored]
        return None if None in ses else float(math.sqrt(sum(s * s for s in ses)) / len(ses))

    return {"datasets": [r["dataset_id"] for r in scored], "n_datasets": len(scored),
            "score": _mean([r["score"] for r in scored]), "se_runs": combined("se_runs"),
            "se_episodes": combined("se_episodes"), "dataset_score": _mean([r["dataset_score"] for r in scored])}


def dataset_baseline(dataset_id: str) -> dict:
    """The data set's Minari id and its own mean episode return, raw and normalized x100 (NaN without
    reference scores): the baseline a score is read against."""
    import minari

    dataset = load_dataset(dataset_id)  # a built-in short name resolves to its Minari id
    mean_return = float(episode_returns(dataset).mean())
    try:
        score = 100 * float(np.asarray(minari.get_normalized_score(dataset, np.array([mean_return])))[0])
    except ValueError:
        score = math.nan
    return {"dataset_id": dataset.spec.dataset_id, "mean_return": mean_return, "score": score}


def command_line(runs: list[str], episodes: int, n_envs: int, seed: int, device: str | None,
                 plan_overrides: dict) -> str:
    """The `tt score` command that reproduces these options (written beside the numbers)."""
    args = ["tt", "score", *runs, "--episodes", str(episodes), "--envs", str(n_envs), "--seed", str(seed)]
    if device:
        args += ["--device", device]
    return shlex.join(args + PlanConfig.command_flags(plan_overrides))


def score_runs(runs: list[str], episodes: int = 10, n_envs: int = 2, seed: int = 0, out: str | None = None,
               device: str | None = None, progress: bool = True, jobs: int = 1, **plan_overrides) -> dict:
    """Evaluate every run with the same seeds and summarize them by data set (see `summarize`).

    Every run directory, data set and the plan settings are checked before the first episode, so
    a typo fails at once rather than after hours of evaluation. With `out`, each run's results go
    to `out/<run name>/` and the summary to `out/score.json` and `out/score.png`. Under torchrun every
    run's episodes are shared out over the ranks (see `evaluate`); rank 0 writes, every rank returns
    the summary. `jobs` > 1: that many runs are evaluated at once, each in a process of its own with its
    share of this process's threads (see `evaluate_runs`).
    """
    if not runs:
        raise ValueError("no runs to score: pass one or more run directories")
    if episodes < 1 or n_envs < 1:
        raise ValueError(f"need at least one episode and one environment, got episodes={episodes}, envs={n_envs}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if jobs > 1 and distributed.world_size() > 1:
        raise ValueError("--jobs evaluates runs in processes of its own: under torchrun the ranks share every run's "
                         "episodes already; leave --jobs out")
    if len({os.path.realpath(r) for r in runs}) < len(runs):
        raise ValueError("a run directory is given twice: each run would count as another training seed")
    plan_config = PlanConfig(**plan_overrides).to_dict()
    configured, loaded = {}, []
    for path in runs:  # before any episode: every run can be scored with these settings
        run = open_run(path)
        if run.goal_conditioned:
            raise ValueError(f"{path} is a goal-conditioned run: tt score averages returns over runs; measure its "
                             f"success rate with `tt eval --run {path}`")
        check_config(run.model, PlanConfig(**plan_overrides))
        configured[run.data["dataset_id"]] = None
        loaded.append(run)
    datasets = {b["dataset_id"]: b for b in map(dataset_baseline, configured)}
    names = run_names(runs)

    settings = dict(episodes=episodes, n_envs=n_envs, seed=seed, device=device, **plan_overrides)
    outs = [os.path.join(out, name) if out else None for name in names]
    results = evaluate_runs(loaded if jobs == 1 else list(runs), outs, names, settings, jobs, progress)
    evaluated = [_scored_run(name, path, r) for name, path, r in zip(names, runs, results)]
    options = {"runs": list(runs), "episodes": episodes, "n_envs": n_envs, "seed": seed, "device": device,
               "plan_overrides": dict(plan_overrides),
               "command": command_line(runs, episodes, n_envs, seed, device, plan_overrides)}
    return _finish(evaluated, datasets, options, plan_config, out)


def evaluate_runs(runs: list, outs: list[str | None], names: list[str], settings: dict, jobs: int,
                  progress: bool) -> list[dict]:
    """`evaluate` each run (a directory or an opened run) with `settings`, its results to its `outs`
    entry; in order. With `jobs` > 1, that many at once in processes of their own (spawned), each with
    its share of this process's threads: the environments step in one thread, and a process per run
    keeps every core busy where one process would leave all but one waiting for the environments.
    An evaluation does not depend on the process it runs in: the same seeds give the same episodes."""
    from tt.eval.episodes import evaluate

    bar = progress_bar(len(runs), "scoring runs", progress and distributed.is_main())
    if jobs == 1:
        results = []
        for run, where, name in zip(runs, outs, names):
            bar.set_postfix_str(name)
            results.append(evaluate(run, out=where, progress=progress, **settings))
            bar.update()
        bar.close()
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = min(jobs, len(runs))
    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_with_threads, threads, run, where, settings) for run, where in zip(runs, outs)]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        try:
            results = [f.result() for f in futures]
        except BaseException:  # the first failure ends the score: the runs not started are not waited for
            pool.shutdown(cancel_futures=True)
            raise
    bar.close()
    return results


def _evaluate_with_threads(threads: int, run: str, out: str | None, settings: dict) -> dict:
    """`evaluate` in a worker process of `evaluate_runs`, with torch on `threads` threads."""
    from tt.eval.episodes import evaluate

    torch.set_num_threads(threads)
    return evaluate(run, out=out, progress=False, **settings)


def combine_evaluations(folders: list[str], out: str | None = None) -> dict:
    """The summary of runs evaluated before, one `eval.json` per folder (as `tt eval` and `tt score`
    write them): what one `score_runs` call over those runs gives, for runs scored separately (in
    parallel, or one at a time). The evaluations must agree on episodes, environments, seed and plan
    settings, so that every run met the same start states."""
    if not folders:
        raise ValueError("no evaluations to combine: pass one or more folders holding eval.json")
    evals = []
    for folder in folders:
        path = os.path.join(folder, "eval.json")
        if not os.path.isfile(path):
            raise ValueError(f"{folder} holds no eval.json: pass the folders `tt eval` or `tt score` wrote")
        with open(path) as f:
            evals.append(json.load(f))
        if evals[-1].get("policy"):
            raise ValueError(f"{folder} holds an evaluation of a critic's {evals[-1]['policy']} policy, not of a run: "
                             "the score combines runs' evaluations")
    settings = [(len(e["returns"]), e["n_envs"], e["seed"], e["plan_config"]) for e in evals]
    for folder, setting in zip(folders, settings):
        if setting != settings[0]:
            raise ValueError(f"{folder} was evaluated otherwise than {folders[0]} (episodes, environments, seed or "
                             f"plan settings): {setting[:3]} {setting[3]} against {settings[0][:3]} {settings[0][3]}")
    runs = [e["run"] for e in evals]
    if len({os.path.realpath(r) for r in runs}) < len(runs):
        raise ValueError("two evaluations are of one run: each would count as another training seed")
    datasets = {b["dataset_id"]: b for b in map(dataset_baseline, dict.fromkeys(e["dataset_id"] for e in evals))}
    for e in evals:  # NaN (no reference scores) was written as null
        e["normalized_scores"] = [math.nan if v is None else v for v in e["normalized_scores"]]
    evaluated = [_scored_run(name, run, e) for name, run, e in zip(run_names(runs), runs, evals)]
    episodes, n_envs, seed, plan_config = settings[0]
    options = {"evaluations": list(folders), "runs": runs, "episodes": episodes, "n_envs": n_envs, "seed": seed,
               "command": shlex.join(["tt", "score", "--from-evals", *folders])}
    return _finish(evaluated, datasets, options, plan_config, out)


def _scored_run(name: str, run: str, results: dict) -> dict:
    """What `summarize` reads of one run's evaluation."""
    return {"name": name, "run": run, "dataset_id": results["dataset_id"], "returns": results["returns"],
            "normalized_scores": results["normalized_scores"],
            "plan_seconds_per_step": results["plan_seconds_per_step"], "wall_seconds": results["wall_seconds"]}


def _finish(evaluated: list[dict], datasets: dict, options: dict, plan_config: dict, out: str | None) -> dict:
    """The summary with its options and plan settings; written to `out` (score.json, score.png)."""
    summary = summarize(evaluated, datasets)
    summary["options"] = options
    summary["plan_config"] = plan_config
    if out and distributed.is_main():
        write_json(os.path.join(out, "score.json"), _json_safe(summary))
        plot_scores(summary, os.path.join(out, "score.png"))
    return summary


def _json_safe(obj):
    """NaN (no reference scores) as null: `json` would write the non-standard `NaN`."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _fmt(value: float | None, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "-"


def format_table(summary: dict) -> str:
    """An aligned plain-text table: a row per data set (and the average), then a row per run.

    Takes `score_runs`' summary or a `score.json` read back (where NaN is null)."""
    header = ["data set", "runs", "episodes/run", "score", "s.e. runs", "s.e. episodes", "return",
              "data set score", "data set return"]
    rows = []
    for d in summary["datasets"]:
        score = _fmt(d["score"]) if d["reference_scores"] else NO_REFERENCE
        per_run = d["episodes_per_run"]
        rows.append([d["dataset_id"], str(d["n_runs"]), str(per_run) if isinstance(per_run, int) else
                     "/".join(map(str, per_run)), score, _fmt(d["se_runs"]), _fmt(d["se_episodes"]),
                     _fmt(d["mean_return"]), _fmt(d["dataset_score"]), _fmt(d["dataset_mean_return"])])
    average = summary.get("average")
    if average:
        rows.append([f"average ({average['n_datasets']} data sets)", "", "", _fmt(average["score"]),
                     _fmt(average["se_runs"]), _fmt(average["se_episodes"]), "-", _fmt(average["dataset_score"]),
                     "-"])
    lines = _align([header, *rows])
    lines.insert(1, "-" * len(lines[0]))

    run_header = ["run", "data set", "episodes", "score", "s.e. episodes", "return", "plan s/step"]
    run_rows = [[r["name"], r["dataset_id"], str(r["episodes"]),
                 _fmt(r["score"]) if _finite(r["score"]) else NO_REFERENCE, _fmt(r["se_episodes"]),
                 _fmt(r["mean_return"]), _fmt(r.get("plan_seconds_per_step"), 4)] for r in summary["runs"]]
    run_lines = _align([run_header, *run_rows])
    run_lines.insert(1, "-" * len(run_lines[0]))

    notes = ["score: normalized return x100 (0 random, 100 expert), the mean of the runs' means;",
             "s.e.: standard error of the runs' means and of all episodes pooled; data set: its own mean return"]
    options = summary.get("options")
    if options:
        notes.append(f"command: {options['command']}")
    return "\n".join([*lines, "", *run_lines, "", *notes])


def _align(rows: list[list[str]]) -> list[str]:
    """Left-align the first column, right-align the others, two spaces between columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def plot_scores(summary: dict, path: str) -> None:
    """A bar per data set (mean score, standard error over runs), each run's mean as a dot, and
    the data set's own mean return as a marker; data sets without reference scores are labelled.

    Takes `score_runs`' summary or a `score.json` read back. A bare Figure: pyplot and the caller's
    matplotlib backend are left alone."""
    from matplotlib.figure import Figure

    rows = summary["datasets"]
    labelled: set[str] = set()

    def label(text: str) -> str | None:  # each legend entry once
        first = text not in labelled
        labelled.add(text)
        return text if first else None

    fig = Figure(figsize=(max(4.0, 1.6 * len(rows) + 1.5), 4.0))
    ax = fig.subplots()
    for x, d in enumerate(rows):
        if not d["reference_scores"]:
            ax.text(x, 50, NO_REFERENCE, ha="center", va="center", rotation=90, fontsize=8, color="0.4")
            continue
        se = d["se_runs"]
        ax.bar(x, d["score"], width=0.6, color="tab:blue", alpha=0.7, yerr=se, capsize=6,
               label=label("Trajectory Transformer (s.e. over runs)"))
        run_scores = [r["score"] for r in summary["runs"] if r["dataset_id"] == d["dataset_id"]]
        offsets = np.linspace(-0.15, 0.15, len(run_scores)) if len(run_scores) > 1 else [0.0]
        ax.plot(x + np.asarray(offsets), run_scores, "o", color="0.15", ms=4, label=label("a run's mean"))
        if _finite(d["dataset_score"]):
            ax.plot([x - 0.35, x + 0.35], [d["dataset_score"]] * 2, color="tab:orange", lw=2.5,
                    label=label("data set mean return"))
    for level in (0, 100):
        ax.axhline(level, color="0.6", ls=":", lw=1)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([d["dataset_id"] for d in rows], rotation=15, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("normalized score (x100)")
    episodes = sorted({r["episodes"] for r in summary["runs"]})
    ax.set_title(f"episodes per run: {'/'.join(map(str, episodes))}", fontsize=9)
    if labelled:
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
