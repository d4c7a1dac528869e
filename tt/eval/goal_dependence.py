"""Does a goal-conditioned model act on its goal? The first action's distribution, one state, two goals.

    python -m tt.eval.goal_dependence --run RUN --states 50 --seed 0 --out DIR

For each of `states` evaluation starts of the run's maze (the pairs and reset seeds of `tt eval`'s
goal evaluation) the model sees the start's observation alone (an episode's first step) with two
goals in different rooms: the pair's own and one drawn from a third room. It reports, per state and
averaged, how far apart the two first-action distributions are (total variation over the joint of the
action tokens, computed exactly: one forward for the first action dimension, one batched forward for
the second given each first), and the same for the data's policy (the waypoint controller with the
data's action noise, binned by the run's bins: exact). A model whose distributions barely move while
the data's do has not learned to act on the goal; the cosine between the model's expected action and
the noiseless controller's says whether it moves the right way. DIR gets goal_dependence.json and
goal_dependence.png.

With `--play EPISODES` the same distribution is also played as two policies on `tt eval`'s pairs, each step
from the current observation alone: its most likely token pair (what a likelihood search's argmax picks)
and its expected action. Where the expected action reaches goals the most likely tokens miss, the model
knows the way and the mode of its distribution (the bounds' bins) is what fails; the results and paths go
to goal_dependence.json and play_paths.png.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np
import torch

from tt.checkpoint import Run, open_run
from tt.discretize import Discretizer
from tt.eval.goal import draw_results, episode_seed, evaluate, maze_task_of, without_paths
from tt.eval.score import standard_error
from tt.goal_data import goal_observations
from tt.io import save_figure, write_json
from tt.model import TrajectoryTransformer
from tt.tasks.pointmaze import ACTION_NOISE, EpisodeRecorder, Policy, WaypointController, make_env, maze_of

PLAYED = ("mode", "mean")  # the policies made of the first action's distribution


@torch.no_grad()
def first_action_distribution(model: TrajectoryTransformer, discretizer: Discretizer, observation: np.ndarray,
                              goal: np.ndarray) -> np.ndarray:
    """The model's distribution of the first action's tokens `[N, N]` (two action dimensions) for an
    episode's first observation `[O]` and a goal observation `[O]`: p(a0) p(a1 | a0), over the N bins (the
    stop token's mass left out and each factor renormalized, as a plan's action never holds it)."""
    c = model.config
    O, N = c.observation_dim, c.n_bins
    if c.action_dim != 2:
        raise ValueError(f"the joint first action is computed for two action dimensions, the model has {c.action_dim}")
    device = next(model.parameters()).device
    obs = torch.as_tensor(discretizer.discretize(observation, columns=slice(0, O)), device=device)
    goal_tokens = torch.as_tensor(discretizer.discretize(goal, columns=slice(0, O)), device=device)
    first = model(obs[None], goal=goal_tokens[None])[0, O - 1, :N].double().softmax(-1)
    rows = torch.cat([obs.expand(N, O), torch.arange(N, device=device)[:, None]], 1)
    second = model(rows, goal=goal_tokens.expand(N, O))[:, O, :N].double().softmax(-1)
    return (first[:, None] * second).cpu().numpy()


def data_action_distribution(discretizer: Discretizer, observation_dim: int, action: np.ndarray,
                             noise: float) -> np.ndarray:
    """The data policy's exact distribution of action tokens `[N, N]`: clip(action + N(0, noise)) to [-1, 1]
    per dimension, independently, binned by the run's action bins (the clip's point masses at -1 and +1
    fall in the bins that hold them, whatever the thresholds repeat)."""
    O = observation_dim
    marginals = []
    for d in range(2):
        inner = torch.as_tensor(discretizer.thresholds[1:-1, O + d], dtype=torch.float64)
        if noise > 0:
            below = torch.special.ndtr((inner - float(action[d])) / noise)  # P(a + noise < t)
        else:
            below = (inner > float(action[d])).double()
        below = torch.where(inner <= -1.0, 0.0, torch.where(inner > 1.0, 1.0, below))  # the clip: P(x < t)
        marginals.append(torch.diff(below, prepend=torch.zeros(1), append=torch.ones(1)).numpy())
    return np.outer(*marginals)


def bound_mass(joint: np.ndarray, discretizer: Discretizer, observation_dim: int) -> float:
    """Mass of a token distribution `[N, N]` on actions at a bound (-1 or +1 in either dimension): the tokens
    of the bins holding the bounds and beyond (quantile bins of clipped actions repeat thresholds at the
    bounds, so those bins need not be the first and the last)."""
    columns = slice(observation_dim, observation_dim + 2)
    low, high = (discretizer.discretize(np.full(2, bound), columns=columns) for bound in (-1.0, 1.0))
    tokens = np.arange(joint.shape[0])
    at_bound = [(tokens <= low[d]) | (tokens >= high[d]) for d in range(2)]
    return float(joint[at_bound[0][:, None] | at_bound[1][None, :]].sum())


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def expected_action(joint: np.ndarray, discretizer: Discretizer, observation_dim: int) -> np.ndarray:
    """The mean action `[2]` of a token distribution `[N, N]`, each token at its bin's midpoint."""
    mids = discretizer.midpoints[:, observation_dim : observation_dim + 2]
    return np.array([joint.sum(1) @ mids[:, 0], joint.sum(0) @ mids[:, 1]])


def first_action_policy(run: Run, columns: np.ndarray, kind: str) -> Policy:
    """A policy acting on the run's first-action distribution for the current observation and the
    episode's goal: its most likely token pair at the bins' midpoints (`mode`) or its mean (`mean`)."""
    if kind not in PLAYED:
        raise ValueError(f"unknown policy {kind!r}; expected one of {', '.join(PLAYED)}")
    model, discretizer, O = run.model, run.discretizer, run.model.config.observation_dim
    mids = discretizer.midpoints[:, O : O + 2]

    def act(obs: dict, rng: np.random.Generator) -> np.ndarray:
        joint = first_action_distribution(model, discretizer, obs["observation"],
                                          goal_observations(obs["desired_goal"], columns, O))
        if kind == "mean":
            return expected_action(joint, discretizer, O)
        first, second = np.unravel_index(np.argmax(joint), joint.shape)
        return np.array([mids[first, 0], mids[second, 1]])

    return act


def play(run: str | Run, n_goals: int = 50, seed: int = 0, out_dir: str | None = None, progress: bool = True) -> dict:
    """Each of `PLAYED`'s policies on `tt eval`'s first `n_goals` pairs and reset seeds: what
    `tt.eval.goal.evaluate` returns, per policy; with `out_dir`, their paths in play_paths.png."""
    run = open_run(run)
    maze_name, columns = maze_task_of(run)
    env = make_env(maze_name)
    maze = maze_of(env)
    env.close()
    pairs = maze.evaluation_pairs(n_goals, seed)
    results = {f"{kind} first action": evaluate(lambda kind=kind: first_action_policy(run, columns, kind), pairs,
                                                seed, maze_name, desc=f"the {kind} first action", progress=progress)
               for kind in PLAYED}
    if out_dir is not None:
        draw_results(os.path.join(out_dir, "play_paths.png"), maze, results)
    return results


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def goal_dependence(run: str | Run, n_states: int = 50, seed: int = 0, noise: float = ACTION_NOISE) -> dict:
    """The measurement of the module's docstring: per state the two goals, the model's and the data's
    total variation between the goals' first-action distributions, the cosine of each expected action
    with the noiseless controller's, and the mass on actions at the bounds; their means over states and
    standard errors (`*_se`, None below two states)."""
    run = open_run(run)
    maze_name, columns = maze_task_of(run)
    model, discretizer, O = run.model, run.discretizer, run.model.config.observation_dim
    env = make_env(maze_name)
    maze = maze_of(env)
    controller = WaypointController(maze)
    rooms = maze.rooms
    if len(set(rooms.values())) < 3:
        raise ValueError(f"the {maze_name} maze has fewer than three rooms: the second goal is drawn from a room "
                         "neither the start's nor the first goal's")
    rng = np.random.default_rng([seed, 1])  # the second goals' stream, apart from the pairs' (seed)
    records = []
    try:
        for i, (start, goal) in enumerate(maze.evaluation_pairs(n_states, seed)):
            obs = EpisodeRecorder(env, start, goal, episode_seed(seed, i)).obs
            third = [c for c in sorted(rooms) if rooms[c] not in (rooms[start], rooms[goal])]
            other = third[rng.integers(len(third))]
            goals_xy = (np.asarray(obs["desired_goal"], np.float64), maze.cell_center(other))
            actions = [controller({"observation": obs["observation"], "desired_goal": g}) for g in goals_xy]
            distributions = {
                "model": [first_action_distribution(model, discretizer, obs["observation"],
                                                    goal_observations(g, columns, O)) for g in goals_xy],
                "data": [data_action_distribution(discretizer, O, a, noise) for a in actions]}
            record = {"start": list(start), "goals": [list(goal), list(other)],
                      "controller": [a.tolist() for a in actions]}
            for who, (p, q) in distributions.items():
                record[f"{who}_tv"] = total_variation(p, q)
                record[f"{who}_cosine"] = [cosine(expected_action(x, discretizer, O), a)
                                           for x, a in zip((p, q), actions)]
                record[f"{who}_bound_mass"] = float(np.mean([bound_mass(x, discretizer, O) for x in (p, q)]))
            records.append(record)
    finally:
        env.close()
    summary = {}
    for who in ("model", "data"):
        for key in ("tv", "cosine", "bound_mass"):
            per_state = [float(np.mean(r[f"{who}_{key}"])) for r in records]
            summary[f"{who}_{key}"] = float(np.mean(per_state))
            summary[f"{who}_{key}_se"] = standard_error(per_state)
    return {"run": run.path, "maze": maze_name, "seed": seed, "states": n_states, "noise": noise, **summary,
            "records": records}


def plot(result: dict, path: str) -> None:
    """Per state: the model's total variation between its two goals against the data's; and the
    cosines of the expected actions with the controller's."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    records = result["records"]
    left.scatter([r["data_tv"] for r in records], [r["model_tv"] for r in records], s=14)
    left.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    left.set_xlabel("data's policy: TV between the two goals' first actions")
    left.set_ylabel("model: TV between the two goals' first actions")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1)
    left.set_title(f"goal dependence: model {result['model_tv']:.2f}, data {result['data_tv']:.2f} (mean TV)",
                   fontsize=9)
    bins = np.linspace(-1, 1, 21)
    right.hist([c for r in records for c in r["data_cosine"]], bins=bins, alpha=0.6, label="data's policy")
    right.hist([c for r in records for c in r["model_cosine"]], bins=bins, alpha=0.6, label="model")
    right.set_xlabel("cosine(expected first action, noiseless controller's)")
    right.set_ylabel("(state, goal)")
    right.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a goal-conditioned run on a tt maze")
    parser.add_argument("--states", type=int, default=50, help="evaluation starts measured (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--play", type=int, default=0, metavar="EPISODES",
                        help="also play the first action's mode and mean as policies on this many goals (default 0)")
    parser.add_argument("--out", help="directory for goal_dependence.json and goal_dependence.png")
    args = parser.parse_args(argv)
    if args.play < 0:
        parser.error(f"--play must be >= 0, got {args.play}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    run = open_run(args.run)
    result = goal_dependence(run, args.states, args.seed)
    if args.play:
        result["play"] = without_paths(play(run, args.play, args.seed, args.out))
    if args.out:
        write_json(os.path.join(args.out, "goal_dependence.json"), result)
        plot(result, os.path.join(args.out, "goal_dependence.png"))
    print(f"mean total variation between two goals' first actions: model {result['model_tv']:.3f}, data "
          f"{result['data_tv']:.3f}; cosine with the controller's action: model {result['model_cosine']:.2f}, data "
          f"{result['data_cosine']:.2f}; mass on the bounds' bins: model {result['model_bound_mass']:.2f}, data "
          f"{result['data_bound_mass']:.2f}")
    for kind, r in result.get("play", {}).items():
        print(f"the {kind} as a policy: success {100 * r['success_rate']:.1f} % (s.e. "
              f"{100 * r['se']:.1f}) over {r['n']} goals")


if __name__ == "__main__":
    main()
