"""The paper's locomotion tasks: Hopper, HalfCheetah and Walker2d (Gymnasium v5), D4RL's recipe.

The behaviour policies are Soft Actor-Critic agents trained by `scripts/train_policies.py` and
shipped in `tt/tasks/policies/` (actor weights in safetensors, a JSON card each). Variants, each
acting with SAC's own exploration (actions drawn from the policy's Gaussian):

    random         uniformly random actions
    medium         the medium policy (about a third to a half of the expert's return)
    expert         the best policy reached within the training budget
    medium-replay  checkpoints from the start of training up to the medium one, equal shares of
                   the steps in training order (standing in for D4RL's replay buffer)
    medium-expert  medium and expert episodes together, half the steps each

Reference scores are the random policy's and the expert's mean returns from the expert's card,
so `minari.get_normalized_score` gives D4RL's scale.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import sys
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from tt.tasks.actor import Actor, load_actor, load_card
from tt.tasks.rollouts import BatchPolicy, RolloutWorkers, as_buffers, default_workers

ENV_IDS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
VARIANTS = ("random", "medium", "expert", "medium-replay", "medium-expert")
DEFAULT_STEPS = {"medium-expert": 2_000_000}  # D4RL: 1M steps, medium-expert the two 1M sets together
EPISODE_STEPS = 1000  # the v5 environments' time limit: the smallest data set holds one whole episode
MIN_STEPS_PER_WORKER = 10_000  # below this, starting worker processes costs more than it saves
POLICY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")


def make_env(env_id: str, **kwargs) -> gym.Env:
    """`gym.make`, without MuJoCo's deprecation warning about HalfCheetah's `settotalmass` (once per
    environment: sixteen lines for one data set); other MuJoCo warnings still print."""
    import mujoco

    previous = mujoco.get_mju_user_warning()
    warn = lambda msg: None if "settotalmass" in msg else print(f"WARNING: {msg}", file=sys.stderr)
    mujoco.set_mju_user_warning(warn)
    try:
        return gym.make(env_id, **kwargs)
    finally:
        mujoco.set_mju_user_warning(previous)


def policy_path(task: str, name: str) -> str:
    return os.path.join(POLICY_DIR, f"{task}-{name}.safetensors")


def load_policy(task: str, name: str) -> Actor:
    """A shipped policy: `expert`, `medium` or `replay-<i>` of `hopper`, `halfcheetah` or `walker2d`."""
    if task not in ENV_IDS:
        raise ValueError(f"unknown locomotion task {task!r}; choose from {', '.join(ENV_IDS)}")
    path = policy_path(task, name)
    if not os.path.exists(path):
        shipped = ", ".join(sorted(os.path.basename(p) for p in glob.glob(os.path.join(POLICY_DIR, "*.safetensors"))))
        raise FileNotFoundError(f"no shipped policy {task}-{name} (shipped: {shipped or 'none'}); "
                                "train and ship it with scripts/train_policies.py")
    return load_actor(path)


def replay_names(task: str) -> list[str]:
    """The shipped medium-replay checkpoints of `task`, in training order."""
    found = glob.glob(policy_path(task, "replay-*"))
    indices = sorted(int(re.search(r"replay-(\d+)\.safetensors$", p).group(1)) for p in found)
    if not indices:
        raise FileNotFoundError(f"no shipped medium-replay checkpoints for {task} in {POLICY_DIR}")
    return [f"replay-{i}" for i in indices]


@dataclass
class UniformPolicy:
    """Uniformly random actions in [low, high] (a `BatchPolicy`, picklable for worker processes)."""

    low: np.ndarray
    high: np.ndarray

    def __call__(self, obs: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
        return np.stack([g.uniform(self.low, self.high) for g in rngs]).astype(np.float32)


def random_policy(env_id: str) -> BatchPolicy:
    space = make_env(env_id).action_space
    return UniformPolicy(space.low, space.high)


def sources(task: str, variant: str, steps: int) -> list[tuple[str, BatchPolicy, int]]:
    """(policy name, policy, steps) in the order the data set holds them."""
    if variant == "random":
        return [("random", random_policy(ENV_IDS[task]), steps)]
    if variant in ("medium", "expert"):
        return [(variant, load_policy(task, variant).batch_policy(), steps)]
    names = replay_names(task) if variant == "medium-replay" else ["medium", "expert"]
    shares = [steps * (i + 1) // len(names) - steps * i // len(names) for i in range(len(names))]
    return [(name, load_policy(task, name).batch_policy(), share) for name, share in zip(names, shares) if share]


def reference_scores(task: str) -> dict:
    card = load_card(policy_path(task, "expert"))
    if "return_mean" not in card or "reference_random_return" not in card:
        raise FileNotFoundError(f"the expert card of {task} has no measured returns ({policy_path(task, 'expert')})")
    return {"ref_min_score": float(card["reference_random_return"]), "ref_max_score": float(card["return_mean"])}


def generate(task: str, variant: str, steps: int | None, seed: int, progress: bool, n_envs: int = 16,
             workers: int | None = None) -> tuple[list, dict]:
    """Episodes (Minari buffers) of a locomotion variant, exactly `steps` steps, and its metadata.

    `workers` processes step the `n_envs` environments (default: `default_workers()`, one for small
    data sets); the data are the same for any number of either.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    steps = steps or DEFAULT_STEPS.get(variant, 1_000_000)
    if workers is None:
        workers = max(1, min(default_workers(), steps // MIN_STEPS_PER_WORKER))
    env_id = ENV_IDS[task]
    meta = {**reference_scores(task), "algorithm_name": f"SAC-{variant}"}
    buffers = []
    with RolloutWorkers(workers, preload=("gymnasium.envs.mujoco",)) as pool:
        for j, (name, policy, share) in enumerate(sources(task, variant, steps)):
            episodes = pool.collect(functools.partial(make_env, env_id), policy, seed=(seed * 16 + j) * 1_000_000,
                                    steps=share, n_envs=n_envs, desc=f"{task}-{variant} ({name})", progress=progress)
            buffers += as_buffers(episodes, first_id=len(buffers))
    return buffers, meta
