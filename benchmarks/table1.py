"""The paper's Table 1 at CPU scale: one row per locomotion data set of tt's own, from the `tt score`
results committed under benchmarks/table1/<data set>/score.json (one folder per cell, its runs' seeds
pooled as `tt score` pools them), beside the data set's mean, the best behaviour policy in it and the
paper's number (on D4RL's data, not these). Cells not run yet say so.

    python benchmarks/table1.py            # writes benchmarks/table1/table.md and table.json
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tt.io import write_json, write_text  # noqa: E402

TASKS = ("halfcheetah", "hopper", "walker2d")
VARIANTS = ("medium", "medium-replay", "medium-expert")
# The paper's Table 1 (D4RL v2 data, 15 seeds; DESIGN.md).
PAPER = {"halfcheetah-medium-expert": 95.0, "halfcheetah-medium": 46.9, "halfcheetah-medium-replay": 41.9,
         "hopper-medium-expert": 110.0, "hopper-medium": 61.1, "hopper-medium-replay": 91.5,
         "walker2d-medium-expert": 101.9, "walker2d-medium": 79.0, "walker2d-medium-replay": 82.6}
# tt's behaviour policies, mean returns over 20 episodes (benchmarks/RESULTS.md, "Behaviour policies"):
# random (the reference 0), medium and expert (the reference 100). The best behaviour in a data set:
# medium for -medium and -medium-replay (its last checkpoint is the medium policy), expert for -medium-expert.
POLICIES = {"halfcheetah": (-301.8, 2564.4, 6155.3), "hopper": (21.4, 407.2, 892.2), "walker2d": (2.1, 722.3, 1648.2)}


def best_behaviour(task: str, variant: str) -> float:
    random, medium, expert = POLICIES[task]
    best = expert if variant == "medium-expert" else medium
    return 100.0 * (best - random) / (expert - random)


def cell(task: str, variant: str, root: str) -> dict:
    name = f"{task}-{variant}"
    row = {"data set": name, "best behaviour": best_behaviour(task, variant), "paper (D4RL data)": PAPER[name]}
    path = os.path.join(root, name, "score.json")
    if not os.path.exists(path):
        return {**row, "status": "not run yet"}
    with open(path) as f:
        score = json.load(f)
    (data,) = score["datasets"]
    se = data["se_runs"] if data["se_runs"] is not None else data["se_episodes"]
    return {**row, "status": "done", "data set mean": data["dataset_score"], "TT": data["score"], "s.e.": se,
            "s.e. over": "runs" if data["se_runs"] is not None else "episodes", "runs": data["n_runs"],
            "episodes per run": data["episodes_per_run"], "command": score["options"]["command"]}


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(root: str = os.path.join(HERE, "table1")) -> str:
    rows = [cell(task, variant, root) for task in TASKS for variant in VARIANTS]
    lines = ["| data set (tt's own) | data set mean | best behaviour in it | TT (mean ± s.e.) | runs x episodes "
             "| paper, on D4RL's data |", "|---|---|---|---|---|---|"]
    for r in rows:
        tt = (f"**{fmt(r['TT'])}** ± {fmt(r['s.e.'])} ({r['s.e. over']})" if r["status"] == "done"
              else "not run yet")
        size = f"{r['runs']} x {r['episodes per run']}" if r["status"] == "done" else "-"
        lines.append(f"| {r['data set']} | {fmt(r.get('data set mean'))} | {fmt(r['best behaviour'])} | {tt} | {size} "
                     f"| {fmt(r['paper (D4RL data)'])} |")
    table = "\n".join(lines) + "\n"
    write_json(os.path.join(root, "table.json"), rows)
    write_text(os.path.join(root, "table.md"), table)
    return table


if __name__ == "__main__":
    print(main())
