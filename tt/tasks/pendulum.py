"""The pendulums: Pendulum-v1 and MuJoCo InvertedPendulum-v5 with scripted experts.

Variants: `expert` (the controller with a little Gaussian action noise, as D4RL's expert data come
from a stochastic policy, and on Pendulum-v1 from start states drawn from the whole state space:
without them the data hold no state off the controller's own path, and an imitator's first error
leaves everything it has seen), `medium` (more action noise and random
actions mixed in) and `mixed` (medium episodes plus random-policy episodes). Reference scores
come from the noiseless controller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from tt.progress import progress as progress_bar

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]
VARIANTS = ("expert", "medium", "mixed")


def pendulum_expert(env: gym.Env) -> Callable[[np.ndarray], np.ndarray]:
    """Energy-pumping swing-up, PD balance near the top (Pendulum-v1: theta'' = 15 sin + 3 u)."""

    def act(obs: np.ndarray) -> np.ndarray:
        cos, sin, omega = obs
        if cos > 0.85:
            u = -(12.0 * np.arctan2(sin, cos) + 2.5 * omega)
        else:
            energy = 0.5 * omega**2 + 15.0 * cos  # 15 = upright at rest
            u = 2.0 * np.sign(omega * (15.0 - energy)) if abs(omega) > 1e-3 else 2.0
        return np.clip(np.array([u]), -2.0, 2.0)

    return act


def pendulum_any_state(env: gym.Env, rng: np.random.Generator) -> np.ndarray:
    """Put Pendulum-v1 in a state drawn from all of it (angle and the whole velocity range, where
    its own reset draws speeds up to 1) and return the observation: the expert's data then show it
    braking from too much energy, a state an imitator reaches and the expert's own swing-up does not."""
    sim = env.unwrapped
    sim.state = np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-sim.max_speed, sim.max_speed)])
    return sim._get_obs()


def inverted_pendulum_lqr(env: gym.Env) -> Callable[[np.ndarray], np.ndarray]:
    """Discrete LQR on the MuJoCo dynamics, linearized at upright by finite differences."""
    sim = env.unwrapped
    sim.reset(seed=0)
    nq = sim.model.nq

    def step_from(state: np.ndarray, u: float) -> np.ndarray:
        sim.set_state(state[:nq], state[nq:])
        sim.do_simulation(np.array([u]), sim.frame_skip)
        return np.concatenate([sim.data.qpos, sim.data.qvel])

    n, eps = 2 * nq, 1e-5
    x0 = np.zeros(n)
    f0 = step_from(x0, 0.0)
    A = np.stack([(step_from(x0 + eps * np.eye(n)[i], 0.0) - f0) / eps for i in range(n)], axis=1)
    B = ((step_from(x0, eps) - f0) / eps)[:, None]
    Q, R = np.diag([1.0, 10.0, 0.1, 0.1]), np.array([[0.1]])
    P = Q.copy()
    for _ in range(2000):  # Riccati iteration to the infinite-horizon gain
        K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A - B @ K)
    sim.reset(seed=0)
    low, high = env.action_space.low, env.action_space.high
    return lambda obs: np.clip(-K @ obs, low, high)


@dataclass(frozen=True)
class ScriptedTask:
    env_id: str
    expert: Callable[[gym.Env], Callable[[np.ndarray], np.ndarray]]
    noise: float  # std of Gaussian action noise in `medium`, in units of the action range / 2
    random_prob: float  # probability of a uniformly random action in `medium`
    episodes: int  # default number of episodes per variant
    expert_noise: float = 0.2  # std of the action noise in `expert`, same units (returns as the controller's)
    expert_starts: Callable[[gym.Env, np.random.Generator], np.ndarray] | None = None  # `expert` start states


TASKS: dict[str, ScriptedTask] = {
    "pendulum": ScriptedTask("Pendulum-v1", pendulum_expert, noise=1.0, random_prob=0.3, episodes=100,
                             expert_starts=pendulum_any_state),
    "invertedpendulum": ScriptedTask("InvertedPendulum-v5", inverted_pendulum_lqr, noise=0.4, random_prob=0.0,
                                     episodes=50),
}


def rollout(env: gym.Env, policy: Policy, seed: int, rng: np.random.Generator,
            start: Callable[[gym.Env, np.random.Generator], np.ndarray] | None = None) -> dict:
    """One episode as Minari buffer fields (observations include the final one), from the
    environment's reset or, given, from the state `start` sets."""
    obs, _ = env.reset(seed=seed)
    if start is not None:
        obs = start(env, rng)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    while True:
        action = policy(obs, rng).astype(env.action_space.dtype)
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terminations.append(bool(terminated))
        truncations.append(bool(truncated))
        if terminated or truncated:
            break
    return dict(observations=np.stack(observations), actions=np.stack(actions), rewards=rewards,
                terminations=terminations, truncations=truncations)


def policies(task: ScriptedTask, env: gym.Env) -> dict[str, Policy]:
    expert = task.expert(env)
    low, high = env.action_space.low, env.action_space.high
    scale = (high - low) / 2.0

    def noisy(noise: float, random_prob: float) -> Policy:
        def act(obs, rng):
            if rng.random() < random_prob:
                return rng.uniform(low, high)
            return np.clip(expert(obs) + rng.normal(0.0, noise, size=low.shape) * scale, low, high)

        return act

    return {
        "controller": lambda obs, rng: expert(obs),
        "expert": noisy(task.expert_noise, 0.0),
        "medium": noisy(task.noise, task.random_prob),
        "random": lambda obs, rng: rng.uniform(low, high),
    }


def generate(task_name: str, variant: str, episodes: int | None, seed: int, progress: bool) -> tuple[list, dict]:
    """Episodes (Minari buffer fields) of a pendulum variant, and its reference scores."""
    from minari.data_collector import EpisodeBuffer

    task = TASKS[task_name]
    env = gym.make(task.env_id)
    pols = policies(task, env)
    episodes = episodes or task.episodes
    rng = np.random.default_rng(seed)
    plan = {"expert": [("expert", episodes)], "medium": [("medium", episodes)],
            "mixed": [("medium", episodes), ("random", episodes // 2)]}[variant]
    buffers = []
    bar = progress_bar(sum(n for _, n in plan), f"generating {task_name}-{variant}", progress)
    for policy_name, count in plan:
        for _ in range(count):
            episode = rollout(env, pols[policy_name], seed=seed * 100_000 + len(buffers), rng=rng,
                              start=task.expert_starts if policy_name == "expert" else None)
            buffers.append(EpisodeBuffer(id=len(buffers), **episode))
            bar.update()
    bar.close()

    ref_rng = np.random.default_rng(10_000 + seed)  # reference scores from separate seeds
    ref = {k: float(np.mean([sum(rollout(env, pols[k], seed=1_000_000 + i, rng=ref_rng)["rewards"])
                             for i in range(10)])) for k in ("random", "controller")}
    return buffers, {"ref_min_score": ref["random"], "ref_max_score": ref["controller"],
                     "algorithm_name": f"scripted-{variant}"}
