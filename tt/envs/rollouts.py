"""Batched rollouts: many environments stepped together, one policy call per step for all of them.

Episode k starts from `env.reset(seed=seed + k)` and draws its action noise from its own
generator seeded by (seed, k). Results are deterministic for a given seed and number of
environments (the batched policy's arithmetic, and so chaotic rollouts, depend on the batch size
in the last bits).
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from tt.progress import progress as progress_bar

# policy(observations [B, O], generators [B]) -> actions [B, A]
BatchPolicy = Callable[[np.ndarray, list[np.random.Generator]], np.ndarray]


def collect_episodes(make_env: Callable[[], gym.Env], policy: BatchPolicy, seed: int, *, steps: int | None = None,
                     episodes: int | None = None, n_envs: int = 16, desc: str = "rollouts",
                     progress: bool = True) -> list[dict]:
    """Episodes as Minari buffer fields (observations include the final one), in episode order.

    With `steps`, episodes run until their steps add up to exactly `steps`: the episode that
    crosses the budget is cut there and marked truncated (D4RL's fixed-size data sets). With
    `episodes`, that many whole episodes.
    """
    if (steps is None) == (episodes is None):
        raise ValueError("give either steps or episodes")
    if (steps is not None and steps < 1) or (episodes is not None and episodes < 1):
        raise ValueError(f"need at least one step and episode, got steps={steps}, episodes={episodes}")
    envs = [make_env() for _ in range(n_envs)]
    started = 0  # episodes started so far
    budget_used = 0  # steps taken by all started episodes (an upper bound check for `steps`)
    running: dict[int, tuple[int, dict, np.random.Generator]] = {}  # env slot -> (episode, fields, rng)
    finished: dict[int, dict] = {}
    obs = [None] * n_envs

    def want_more() -> bool:
        return started < episodes if episodes is not None else budget_used < steps

    def start(slot: int) -> None:
        nonlocal started
        obs[slot], _ = envs[slot].reset(seed=seed + started)
        fields = dict(observations=[obs[slot]], actions=[], rewards=[], terminations=[], truncations=[])
        running[slot] = (started, fields, np.random.default_rng([seed, started]))
        started += 1

    for slot in range(n_envs):
        if want_more():
            start(slot)
    bar = progress_bar(steps if steps is not None else episodes, desc, progress)
    while running:
        slots = sorted(running)
        actions = policy(np.stack([obs[s] for s in slots]), [running[s][2] for s in slots])
        for slot, action in zip(slots, actions):
            index, fields, _ = running[slot]
            env = envs[slot]
            obs[slot], reward, terminated, truncated, _ = env.step(action.astype(env.action_space.dtype))
            for key, value in (("observations", obs[slot]), ("actions", action), ("rewards", float(reward)),
                               ("terminations", bool(terminated)), ("truncations", bool(truncated))):
                fields[key].append(value)
            budget_used += 1
            if steps is not None and budget_used <= steps:  # episodes still running past the budget are cut later
                bar.update()
            if terminated or truncated:
                finished[index] = fields
                del running[slot]
                if episodes is not None:
                    bar.update()
                if want_more():
                    start(slot)
    bar.close()
    for env in envs:
        env.close()
    ordered = [finished[i] for i in range(started)]
    return _cut_to_budget(ordered, steps) if steps is not None else ordered


def _cut_to_budget(episodes: list[dict], steps: int) -> list[dict]:
    """The first episodes in order, the last one cut (and truncated) so the steps add up to `steps`."""
    kept, total = [], 0
    for fields in episodes:
        n = len(fields["rewards"])
        if total + n >= steps:
            cut = steps - total
            if cut < n:
                fields = {k: v[: cut + 1] if k == "observations" else v[:cut] for k, v in fields.items()}
                fields["terminations"][-1] = False
                fields["truncations"][-1] = True
            kept.append(fields)
            break
        kept.append(fields)
        total += n
    return kept


def as_buffers(episodes: list[dict], first_id: int = 0) -> list:
    """Minari EpisodeBuffers (arrays stacked) from `collect_episodes` output."""
    from minari.data_collector import EpisodeBuffer

    return [EpisodeBuffer(id=first_id + i, observations=np.stack(e["observations"]),
                          actions=np.stack(e["actions"]), rewards=list(e["rewards"]),
                          terminations=list(e["terminations"]), truncations=list(e["truncations"]))
            for i, e in enumerate(episodes)]


def returns_of(episodes: list[dict]) -> np.ndarray:
    return np.array([float(np.sum(e["rewards"])) for e in episodes])
