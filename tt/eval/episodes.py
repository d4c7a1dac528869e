"""Evaluation: plan in the data set's environment, vectorized, and report returns and scores (a critic's
IQL policy, the baseline of TT+Q, is rolled out alike: `evaluate_policy`).

Writes `eval.json` (per-episode returns, normalized scores, planning time per step) and the plots
`returns.png` (the episodes against the data set's return distribution) and, for a planner,
`plan_vs_actual.png` (one plan against what then happened).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

from tt import distributed
from tt.checkpoint import Run, open_run
from tt.data import check_environment, episode_returns, load_dataset
from tt.eval.agents import Agent, PolicyAgent
from tt.goal_data import flat_observations, prepends_position
from tt.io import save_figure, write_json
from tt.progress import progress as progress_bar
from tt.search import Planner
from tt.video import EpisodeVideo, check_video_path, rendering_env

if TYPE_CHECKING:
    from tqdm import tqdm

ROUND_DRAWS = 2**40  # Philox offsets a round may use: round j draws from offset j * ROUND_DRAWS on


def evaluate(run: str | Run, episodes: int = 10, n_envs: int = 2, seed: int = 0, out: str | None = None,
             device: str | None = None, progress: bool = True, video: str | None = None, critic: str | None = None,
             **plan_overrides) -> dict:
    """Roll out `episodes` episodes with `tt.Planner`, `n_envs` environments at a time; returns the results.

    The episodes run in rounds of `n_envs` (the last may be smaller): round j plays episodes
    j*n_envs, j*n_envs+1, ... side by side in one vector environment, episode k's environment reset
    with seed + k, the planner drawing from Philox seed `seed` at offset j * ROUND_DRAWS. A round is
    a function of (seed, j) alone, so under torchrun (`tt.distributed`) the ranks share the rounds
    out, each on its own device, and gather results equal to one process's; rank 0 writes them.
    `video`: also render the first environment's first episode to this .mp4 or .gif file (`results["video"]`).
    `critic`: a critic directory guiding the return search (TT+Q; `tt.Planner.load`'s `critic`).
    """
    wall_started = time.perf_counter()
    _check_request(episodes, n_envs, video)
    run = open_run(run)
    dataset_id = run.data.get("dataset_id")
    if dataset_id is None:
        raise ValueError(f"run {run.path} names no data set (imported with --thresholds): evaluation needs the data "
                         "set for its environment and returns; import it again with --dataset ID")
    planner = Planner.from_run(run, device=distributed.local_device(device), seed=seed, critic=critic, **plan_overrides)
    planner.check_memory(min(n_envs, episodes))  # all environments plan in one batch: refused now, not at a plan
    dataset = load_dataset(dataset_id)
    check_environment(dataset, run.config, run.path)
    results, trace, data_returns = play(planner, dataset, episodes, n_envs, seed, progress, video)
    results = {"run": run.path, **results, "plan_config": planner.config.to_dict(), "critic": critic,
               "wall_seconds": time.perf_counter() - wall_started}
    if out and distributed.is_main():
        _write(results, data_returns, out, "Trajectory Transformer")
        plot_plan_vs_actual(trace, planner, os.path.join(out, "plan_vs_actual.png"))
    return results


def evaluate_policy(critic: str, episodes: int = 10, n_envs: int = 2, seed: int = 0, out: str | None = None,
                    device: str | None = None, progress: bool = True, video: str | None = None) -> dict:
    """Roll out the IQL policy of a critic directory (`tt train-critic`) as `evaluate` rolls out a planner
    (same rounds, seeds and results), in the environment of the data set it was trained on: the
    baseline TT+Q is read against. The policy acts with its mean action, as IQL evaluates it."""
    wall_started = time.perf_counter()
    _check_request(episodes, n_envs, video)
    agent = PolicyAgent.load(critic, distributed.local_device(device))
    dataset = load_dataset(agent.dataset_id)
    results, _, data_returns = play(agent, dataset, episodes, n_envs, seed, progress, video)
    results = {"critic": critic, "policy": "iql", **results, "wall_seconds": time.perf_counter() - wall_started}
    if out and distributed.is_main():
        _write(results, data_returns, out, "IQL policy")
    return results


def _check_request(episodes: int, n_envs: int, video: str | None) -> None:
    if episodes < 1 or n_envs < 1:
        raise ValueError(f"need at least one episode and one environment, got episodes={episodes}, envs={n_envs}")
    if video:
        check_video_path(video)  # a wrong suffix or a missing writer fails now, not after the episode


def _write(results: dict, data_returns: np.ndarray, out: str, label: str) -> None:
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "eval.json"), results)
    plot_returns(results, data_returns, os.path.join(out, "returns.png"), label)


def play(agent: Agent, dataset, episodes: int, n_envs: int, seed: int, progress: bool = True,
         video: str | None = None) -> tuple[dict, dict | None, np.ndarray]:
    """Play `episodes` episodes of `dataset`'s environment with `agent` in rounds (see `evaluate`).

    Returns (results: returns, lengths, normalized scores and their summaries, seconds per step in
    `agent.act`; the trace of the first episode for `plot_plan_vs_actual` (rank 0, else None); the
    data set's episode returns).
    """
    import minari

    n_envs = min(n_envs, episodes)
    data_returns = episode_returns(dataset)
    rounds = [range(first, min(first + n_envs, episodes)) for first in range(0, episodes, n_envs)]
    mine = distributed.shard(len(rounds))  # rank 0's include round 0: the trace and the video
    local, bar = [], None
    for j in mine:
        envs, obs, recorder = _open_round(agent, dataset, rounds[j], seed, video if j == 0 else None)
        if bar is None:  # after the first reset: an environment that cannot start says so before any bar
            bar = progress_bar(sum(len(rounds[k]) for k in mine), "evaluating", progress and distributed.is_main())
        local.append(_play_round(agent, envs, obs, recorder, j, seed, bar))
    if bar is not None:
        bar.close()
    trace = local[0][1] if local and mine.start == 0 else None
    played = [r for part in distributed.all_gather([r for r, _ in local]) for r in part]  # in round order

    returns = np.array([x for r in played for x in r["returns"]])
    plan_seconds = [x for r in played for x in r["plan_seconds"]]
    try:
        scores = minari.get_normalized_score(dataset, returns)
    except ValueError:
        scores = np.full_like(returns, np.nan)
    meta = dataset.storage.metadata
    results = {
        "dataset_id": dataset.spec.dataset_id, "episodes": int(len(returns)), "n_envs": n_envs, "seed": seed,
        "returns": returns.tolist(), "lengths": [x for r in played for x in r["lengths"]],
        "normalized_scores": [float(s) for s in scores],
        "mean_return": float(returns.mean()), "std_return": float(returns.std()),
        "mean_normalized_score": float(np.mean(scores)),
        "dataset_mean_return": float(data_returns.mean()),
        "ref_min_score": meta.get("ref_min_score"), "ref_max_score": meta.get("ref_max_score"),
        "plan_seconds_per_step": float(np.mean(plan_seconds)),
        "plan_seconds_per_env_step": float(np.mean(plan_seconds) / n_envs),
    }
    if video:
        results["video"] = played[0]["video"]
    return results, trace, data_returns


def observation_part(env: gym.Env, prepend: bool) -> gym.Env:
    """A goal environment (PointMaze, AntMaze: dict observations) observed as tt reads its data set
    (`tt.goal_data.flat_observations`, `prepend` as found in the data set: no goal, as D4RL's maze2d and
    AntMaze observations)."""
    space = env.observation_space
    n = space["observation"].shape[0] + (space["achieved_goal"].shape[0] if prepend else 0)
    return gym.wrappers.TransformObservation(env, lambda obs: flat_observations(obs, prepend),
                                             gym.spaces.Box(-np.inf, np.inf, (n,), np.float64))


def _open_round(agent: Agent, dataset, episodes: range, seed: int,
                video: str | None) -> tuple[gym.vector.SyncVectorEnv, np.ndarray, EpisodeVideo | None]:
    """The vector environment of a round (see `evaluate`), checked against the agent and reset: one
    environment per episode, episode k's seeded with seed + k. Returns it, its observations and the
    recorder of its first environment (`video`), if any."""
    observed = lambda env: env  # noqa: E731
    if isinstance(dataset.observation_space, gym.spaces.Dict):  # a goal task's: flat, as its data are read
        prepend = prepends_position(next(dataset.iterate_episodes()).observations)
        observed = lambda env: observation_part(env, prepend)  # noqa: E731
    env_fns = [lambda: observed(dataset.recover_environment(eval_env=True))] * len(episodes)
    recorder = None
    if video:  # environment 0 draws its episode; no extra planning
        recorder = EpisodeVideo(rendering_env(dataset), video)
        env_fns[0] = lambda: observed(recorder)
    envs = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        agent.check_env(envs)
        obs, _ = envs.reset(seed=seed + episodes.start)
    except Exception:
        envs.close()
        raise
    return envs, obs, recorder


def _play_round(agent: Agent, envs: gym.vector.SyncVectorEnv, obs: np.ndarray, recorder: EpisodeVideo | None,
                index: int, seed: int, bar: tqdm) -> tuple[dict, dict]:
    """Play round `index` in `envs` (from `_open_round`) until each environment's episode has ended once;
    closes them. Returns the round's record (returns, lengths, planning seconds per step, the video
    written) and the trace of its first environment (first plan, rollout) for `plot_plan_vs_actual`."""
    n = envs.num_envs
    agent.reset()
    agent.reseed(seed, index * ROUND_DRAWS)
    returns, lengths = [None] * n, [None] * n
    running, steps = np.zeros(n), np.zeros(n, dtype=int)
    plan_seconds, trace = [], {"actual": [], "plan": None}
    try:
        while None in returns:
            started = time.perf_counter()
            actions = agent.act(obs)
            plan_seconds.append(time.perf_counter() - started)
            if trace["plan"] is None:
                trace["plan"] = agent.current_plans[0]
            if returns[0] is None:
                trace["actual"].append(np.concatenate([obs[0], actions[0]]))
            obs, reward, terminated, truncated, _ = envs.step(actions.astype(envs.single_action_space.dtype))
            done = terminated | truncated
            agent.observe(reward, done)
            running += reward
            steps += 1
            for i in np.flatnonzero(done):
                if returns[i] is None:
                    returns[i], lengths[i] = float(running[i]), int(steps[i])
                    bar.update()
                    bar.set_postfix(mean_return=f"{np.mean([r for r in returns if r is not None]):.1f}",
                                    refresh=False)
                running[i], steps[i] = 0.0, 0
    finally:
        envs.close()
    record = {"round": index, "returns": returns, "lengths": lengths, "plan_seconds": plan_seconds,
              "video": recorder.written if recorder else None}
    return record, trace


def _figure(**kwargs):
    """A bare matplotlib Figure (rendered by Agg when saved): pyplot's figure list and the caller's
    backend are left alone, so evaluating from a notebook or a GUI program changes nothing there."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    save_figure(fig, path)


def plot_returns(results: dict, data_returns: np.ndarray, path: str, label: str = "Trajectory Transformer") -> None:
    fig = _figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    ax.hist(data_returns, bins=30, color="0.75", label="data set episodes")
    for r in results["returns"]:
        ax.axvline(r, color="tab:blue", alpha=0.6, lw=1.5)
    ax.axvline(results["dataset_mean_return"], color="0.3", ls="--", label="data set mean")
    ax.axvline(results["mean_return"], color="tab:blue", lw=3, label=f"{label} (mean)")
    if results.get("ref_max_score") is not None:
        ax.axvline(results["ref_max_score"], color="tab:green", ls=":", label="expert reference")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episodes")
    ax.set_title(results["dataset_id"])
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_plan_vs_actual(trace: dict | None, planner: Planner, path: str) -> None:
    """The first plan of the first episode (observations and actions) against the actual rollout (nothing
    without a trace; rank 0, which draws it, always plays the first round)."""
    if trace is None:
        return
    actual = np.array(trace["actual"])
    planned = trace["plan"].transitions[:, : planner.O + planner.A]
    dims = actual.shape[1]
    cols = min(dims, 4)
    rows = -(-dims // cols)
    fig = _figure(figsize=(3.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    H = len(planned)
    for d, ax in enumerate(axes.flat):
        if d >= dims:
            ax.axis("off")
            continue
        span = min(len(actual), 3 * H)
        ax.plot(range(span), actual[:span, d], color="0.3", label="actual")
        ax.plot(range(H), planned[:, d], "o-", color="tab:blue", ms=3, label="plan at t=0")
        ax.set_title(f"{'obs' if d < planner.O else 'action'} {d if d < planner.O else d - planner.O}", fontsize=9)
    axes.flat[0].legend(fontsize=7)
    _save(fig, path)
