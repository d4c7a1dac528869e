"""Goal reaching on a PointMaze: success over (start, goal) pairs in different rooms, and maps of
the driven paths.

    python -m tt.eval.goal --goals 50 --seed 0 --out DIR

measures the data's controller (noiseless, and with the data's action noise) and a random policy
on the same pairs and reset seeds, and writes DIR/controller.json and DIR/controller_paths.png.
A goal-conditioned model is measured with `evaluate` on the same pairs (same `seed`), its paths
drawn with `draw_paths`: `evaluate_goals(run, n_goals, seed)` (`tt eval` on a goal-conditioned run),
several goals at a time in one batch of plans (`evaluate_planner`).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from tt.checkpoint import Run, open_run
from tt.goal_data import SUCCESS_DISTANCE
from tt.io import save_figure, write_json
from tt.progress import progress as progress_bar
from tt.tasks.pointmaze import (
    MAX_EPISODE_STEPS,
    Cell,
    EpisodeRecorder,
    Maze,
    Policy,
    env_spec,
    make_env,
    maze_of,
    policies,
    rollout,
)

BASELINES = ("controller", "data", "random")


def episode_seed(seed: int, index: int) -> int:
    """The reset seed (PointMaze's +-0.25 m position noise of start and goal) of evaluation episode
    `index`: every policy measured with one `seed` meets the same positions."""
    return 1_000_000 * (seed + 1) + index


def evaluate(make_policy: Callable[[], Policy], pairs: Sequence[tuple[Cell, Cell]], seed: int,
             maze_name: str = "fourrooms", desc: str = "goals", progress: bool = True) -> dict:
    """One episode per (start, goal) pair with a fresh policy from `make_policy` each; the success
    rate (within PointMaze's 0.45 m before the time limit) with its standard error, the mean steps
    of the successes, and per episode its cells, goal, success, steps and driven path [n, 2]."""
    env = make_env(maze_name)
    rng = np.random.default_rng(seed)
    episodes = []
    bar = progress_bar(len(pairs), desc, progress)
    try:
        for i, (start, goal) in enumerate(pairs):
            episodes.append(episode_record(rollout(env, make_policy(), start, goal, episode_seed(seed, i), rng),
                                           start, goal))
            _report(bar, episodes)
    finally:
        bar.close()
        env.close()
    return summarize(episodes)


def evaluate_planner(planner, goal_columns: Sequence[int], pairs: Sequence[tuple[Cell, Cell]], seed: int,
                     maze_name: str = "fourrooms", n_envs: int = 10, desc: str = "goals",
                     progress: bool = True, max_episode_steps: int = MAX_EPISODE_STEPS) -> dict:
    """A goal-conditioned `tt.Planner` on one episode per (start, goal) pair, `n_envs` episodes at a
    time in one batch of plans: each environment takes the next pair when its episode ends, with its
    own goal (`set_goal`) and context. What `evaluate` returns, each episode also with `planned`: its
    first plan's predicted positions [H, 2]. Same pairs and reset seeds as `evaluate`; the planner's
    reward is 0 each step (PointMaze's sparse reward is 1 only where the episode ends)."""
    from tt.goal_data import goal_observations

    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    columns = np.asarray(goal_columns, dtype=np.int64)
    n_envs = min(n_envs, len(pairs))
    envs = [make_env(env_spec(maze_name, max_episode_steps)) for _ in range(n_envs)]
    lanes: list[tuple[int, EpisodeRecorder] | None] = [None] * n_envs
    results: dict[int, dict] = {}
    planned: dict[int, np.ndarray] = {}
    observations = np.zeros((n_envs, planner.O))
    next_pair = 0
    planner.reset(n_envs)
    bar = progress_bar(len(pairs), desc, progress)
    try:
        while len(results) < len(pairs):
            for lane in range(n_envs):  # idle lanes take the next pair
                if lanes[lane] is None and next_pair < len(pairs):
                    start, goal = pairs[next_pair]
                    lanes[lane] = (next_pair, EpisodeRecorder(envs[lane], start, goal, episode_seed(seed, next_pair)))
                    planner.set_goal(goal_observations(lanes[lane][1].obs["desired_goal"], columns, planner.O), lane)
                    next_pair += 1
                if lanes[lane] is not None:  # lanes without a pair plan from their last observation, unread
                    observations[lane] = lanes[lane][1].obs["observation"]
            actions = planner.act(observations)
            done = np.ones(n_envs, dtype=bool)
            for lane, held in enumerate(lanes):
                if held is None:
                    continue
                index, episode = held
                if index not in planned:
                    planned[index] = planner.current_plans[lane].transitions[:, columns]
                done[lane] = episode.step(actions[lane])
                if done[lane]:
                    results[index] = episode_record(episode.episode(), *pairs[index])
                    lanes[lane] = None
                    _report(bar, list(results.values()))
            planner.observe(0.0, done)
    finally:
        bar.close()
        for env in envs:
            env.close()
    result = summarize([results[i] for i in range(len(pairs))])
    for i, e in enumerate(result["episodes"]):
        e["planned"] = planned[i]
    return result


def episode_record(ep: dict, start: Cell, goal: Cell) -> dict:
    """An evaluation episode (`rollout`'s fields) as `evaluate` reports it."""
    return {"start": list(start), "goal": list(goal), "success": bool(ep["terminations"][-1]),
            "steps": len(ep["rewards"]), "goal_xy": ep["observations"]["desired_goal"][0].tolist(),
            "path": ep["observations"]["observation"][:, :2]}


def _report(bar, episodes: list[dict]) -> None:
    bar.update()
    bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.2f}", refresh=False)


def summarize(episodes: list[dict]) -> dict:
    """Success rate, its standard error over episodes, and mean steps to the goal (successes only)."""
    success = np.array([e["success"] for e in episodes], dtype=np.float64)
    steps = [e["steps"] for e in episodes if e["success"]]
    n = len(success)
    return {"episodes": episodes, "n": n, "success_rate": float(success.mean()),
            "se": float(np.sqrt(success.mean() * (1 - success.mean()) / max(n - 1, 1))),
            "mean_steps_to_goal": float(np.mean(steps)) if steps else None}


def draw_paths(target, maze: Maze, paths: Sequence[np.ndarray], goals: Sequence | np.ndarray | None = None,
               starts: Sequence | np.ndarray | None = None, planned: Sequence[np.ndarray | None] | None = None,
               reached: Sequence[bool] | None = None, title: str | None = None):
    """Draw the maze's walls and, per episode, its driven path [n, 2] (solid), its planned path
    (dashed, optional), its start (circle, default the path's first point) and goal (star, with
    the success radius); an episode not `reached` ends in a cross.

    `target` is a matplotlib Axes (returned) or a file path: a PNG written there (returned), from a
    bare Figure, so pyplot and the caller's backend are left alone."""
    if isinstance(target, (str, os.PathLike)):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 5.5))
        draw_paths(fig.subplots(), maze, paths, goals, starts, planned, reached, title)
        fig.tight_layout()
        save_figure(fig, target)
        return target
    from matplotlib.patches import Circle

    ax = target
    half_w, half_h = maze.cols * maze.scale / 2, maze.rows * maze.scale / 2
    ax.imshow(maze.wall, cmap="Greys", vmin=0, vmax=1.4, extent=(-half_w, half_w, -half_h, half_h),
              origin="upper", interpolation="nearest")
    for i, path in enumerate(paths):
        path = np.asarray(path, dtype=np.float64).reshape(-1, 2)
        color = f"C{i % 10}"
        ax.plot(path[:, 0], path[:, 1], color=color, lw=1.2, alpha=0.85)
        if planned is not None and planned[i] is not None:
            plan = np.asarray(planned[i], dtype=np.float64).reshape(-1, 2)
            ax.plot(plan[:, 0], plan[:, 1], color=color, lw=1.0, ls="--", alpha=0.85)
        start = path[0] if starts is None else np.asarray(starts[i], dtype=np.float64)
        ax.plot(*start, "o", color=color, ms=5, mec="black", mew=0.5)
        if goals is not None:
            goal = np.asarray(goals[i], dtype=np.float64)
            ax.plot(*goal, "*", color=color, ms=11, mec="black", mew=0.5)
            ax.add_patch(Circle(tuple(goal), SUCCESS_DISTANCE, fill=False, color=color, lw=0.8, alpha=0.7))
        if reached is not None and not reached[i]:
            ax.plot(*path[-1], "x", color="black", ms=8, mew=2)
    ax.set_xlim(-half_w, half_w)
    ax.set_ylim(-half_h, half_h)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def draw_results(path: str, maze: Maze, results: dict[str, dict]) -> None:
    """The paths of several policies' `evaluate` results side by side, one panel per policy, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * len(results), 5.2))
    for ax, (name, r) in zip(np.atleast_1d(fig.subplots(1, len(results))), results.items()):
        eps = r["episodes"]
        draw_paths(ax, maze, [e["path"] for e in eps], [e["goal_xy"] for e in eps],
                   reached=[e["success"] for e in eps],
                   title=f"{name}: success {100 * r['success_rate']:.0f} % of {r['n']} goals in another room")
    fig.tight_layout()
    save_figure(fig, path)


def without_paths(results: dict[str, dict]) -> dict[str, dict]:
    """Several policies' `evaluate` results with their episodes' driven paths left out (for JSON)."""
    return {name: {**r, "episodes": [{k: v for k, v in e.items() if k != "path"} for e in r["episodes"]]}
            for name, r in results.items()}


def evaluate_controller(n_goals: int = 50, seed: int = 0, out_dir: str | None = None, maze_name: str = "fourrooms",
                        progress: bool = True) -> dict:
    """The data's controller (noiseless and noisy) and a random policy on `n_goals` pairs of
    different rooms; with `out_dir`, controller.json (no paths) and controller_paths.png."""
    env = make_env(maze_name)
    maze = maze_of(env)
    env.close()
    pairs = maze.evaluation_pairs(n_goals, seed)
    pols = policies(maze)
    results = {name: evaluate(lambda name=name: pols[name], pairs, seed, maze_name, f"{name} on {maze_name}",
                              progress) for name in BASELINES}
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        draw_results(os.path.join(out_dir, "controller_paths.png"), maze, results)
        write_json(os.path.join(out_dir, "controller.json"),
                   {"maze": maze_name, "seed": seed, "n_goals": n_goals, "results": without_paths(results)})
    return results


def maze_task_of(run: Run) -> tuple[str, np.ndarray]:
    """(maze name, goal columns) of a goal-conditioned run trained on a tt pointmaze task; a ValueError otherwise."""
    from tt.tasks.pointmaze import TASKS

    data = run.data
    if not run.goal_conditioned:
        raise ValueError(f"run {run.path} is not goal-conditioned (train it with --goal-conditioned)")
    mazes = [name for name in TASKS if name in str(data.get("dataset_id", ""))]
    if not mazes or data.get("goal_columns") is None:
        raise ValueError(f"run {run.path} was trained on {data.get('dataset_id')!r}, not a tt pointmaze task "
                         f"({', '.join(TASKS)})")
    return mazes[0], np.asarray(data["goal_columns"], dtype=np.int64)


def evaluate_goals(run: str | Run, n_goals: int = 50, seed: int = 0, out: str | None = None,
                   device: str | None = None, n_envs: int = 10, progress: bool = True, **plan_overrides) -> dict:
    """A goal-conditioned run on `n_goals` (start, goal) pairs in different rooms of its maze (the
    pairs and reset seeds of `evaluate_controller` for the same `seed`), `n_envs` at a time,
    planning with the likelihood objective unless `plan_overrides` say otherwise: success rate, its
    standard error, mean steps to the goal; with `out`, goals.json (no paths) and goal_paths.png
    (driven paths solid, each episode's first plan dashed)."""
    from tt.search import Planner

    run = open_run(run)
    maze_name, columns = maze_task_of(run)
    planner = Planner.from_run(run, device=device, seed=seed, **{"objective": "likelihood", **plan_overrides})
    planner.check_memory(min(n_envs, n_goals))
    env = make_env(maze_name)
    maze = maze_of(env)
    env.close()
    pairs = maze.evaluation_pairs(n_goals, seed)
    started = time.perf_counter()
    result = evaluate_planner(planner, columns, pairs, seed, maze_name, n_envs, f"TT on {maze_name}",
                              progress)
    result.update(plan=planner.config.to_dict(), n_envs=n_envs, seconds=time.perf_counter() - started)
    if out is not None:
        eps = result["episodes"]
        os.makedirs(out, exist_ok=True)
        draw_paths(os.path.join(out, "goal_paths.png"), maze, [e["path"] for e in eps], [e["goal_xy"] for e in eps],
                   planned=[e["planned"] for e in eps], reached=[e["success"] for e in eps],
                   title=f"TT: success {100 * result['success_rate']:.0f} % of {result['n']} goals in another room")
        write_json(os.path.join(out, "goals.json"),
                   {"run": run.path, "maze": maze_name, "seed": seed, "n_goals": n_goals,
                    **{k: v for k, v in result.items() if k != "episodes"},
                    "episodes": [{k: v for k, v in e.items() if k not in ("path", "planned")} for e in eps]})
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--goals", type=int, default=50, help="evaluation (start, goal) pairs (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maze", default="fourrooms")
    parser.add_argument("--out", default=None, help="directory for controller.json and controller_paths.png")
    args = parser.parse_args(argv)
    results = evaluate_controller(args.goals, args.seed, args.out, args.maze)
    for name, r in results.items():
        steps = "-" if r["mean_steps_to_goal"] is None else f"{r['mean_steps_to_goal']:.1f}"
        print(f"{name:>10}: success {100 * r['success_rate']:.1f} % (s.e. {100 * r['se']:.1f}) over {r['n']} goals, "
              f"mean steps to goal {steps}")


if __name__ == "__main__":
    main()
