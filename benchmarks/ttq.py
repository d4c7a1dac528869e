"""TT, TT+Q and the critic's own IQL policy on the built-in sparse mazes, side by side: one row per maze
and agent from the `tt eval` results committed under benchmarks/ttq/<maze>/<agent>/eval.json (agents
`tt`, `ttq`, `iql`), with the episodes that reached the goal (a return above 0) and the normalized score
(D4RL's maze2d references, x100) with its standard error over episodes. Agents not run say so.

    python benchmarks/ttq.py            # writes benchmarks/ttq/table.md, table.json and ttq.png
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from tt.eval.score import standard_error  # noqa: E402
from tt.io import save_figure, write_json, write_text  # noqa: E402

MAZES = ("pointmaze-medium", "pointmaze-large")
AGENTS = {"tt": "TT (value tokens)", "ttq": "TT+Q (IQL critic)", "iql": "IQL policy"}


def row(maze: str, agent: str, root: str) -> dict:
    path = os.path.join(root, maze, agent, "eval.json")
    if not os.path.exists(path):
        return {"maze": maze, "agent": AGENTS[agent], "status": "not run yet"}
    with open(path) as f:
        e = json.load(f)
    scores, returns = 100 * np.asarray(e["normalized_scores"], dtype=float), np.asarray(e["returns"], dtype=float)
    n = len(scores)
    return {"maze": maze, "agent": AGENTS[agent], "status": "done", "episodes": n,
            "reached the goal": int((returns > 0).sum()), "mean return": float(returns.mean()),
            "score": float(scores.mean()), "s.e.": standard_error(scores),
            "data set mean return": e["dataset_mean_return"], "plan": e.get("plan_config"),
            "critic": e.get("critic"), "run": e.get("run")}


def plot(rows: list[dict], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    width = 0.8 / len(AGENTS)
    for k, name in enumerate(AGENTS.values()):
        done = [(i, r) for i, maze in enumerate(MAZES) for r in rows
                if r["maze"] == maze and r["agent"] == name and r["status"] == "done"]
        ax.bar([i + (k - 1) * width for i, _ in done], [r["score"] for _, r in done], width,
               yerr=[r["s.e."] or 0.0 for _, r in done], capsize=3, label=name)
    ax.set_xticks(range(len(MAZES)), MAZES)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_ylabel("normalized score (D4RL maze2d references)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(root: str = os.path.join(HERE, "ttq")) -> str:
    rows = [row(maze, agent, root) for maze in MAZES for agent in AGENTS]
    lines = ["| maze | agent | episodes | reached the goal | mean return | normalized score (± s.e.) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "done":
            lines.append(f"| {r['maze']} | {r['agent']} | not run yet | | | |")
            continue
        se = "-" if r["s.e."] is None else f"{r['s.e.']:.1f}"
        lines.append(f"| {r['maze']} | {r['agent']} | {r['episodes']} | {r['reached the goal']} | "
                     f"{r['mean return']:.1f} | **{r['score']:.1f}** ± {se} |")
    table = "\n".join(lines) + "\n"
    write_json(os.path.join(root, "table.json"), rows)
    write_text(os.path.join(root, "table.md"), table)
    plot(rows, os.path.join(root, "ttq.png"))
    return table


if __name__ == "__main__":
    print(main())
