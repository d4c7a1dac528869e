"""What evaluation plays: an agent acting in a vector environment, `tt.Planner` or a critic's IQL policy.

Both follow one protocol (`Agent`), so `tt.eval.episodes.play` rolls out either with the same rounds,
seeds and results: TT, TT+Q and the IQL policy they are read against are evaluated alike.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from tt.checkpoint import load_critic
from tt.critic import Critic
from tt.search.planner import check_env_sizes, check_observations


class Agent(Protocol):
    """An agent in evaluation's loop: per round `reset`, `reseed`; per step `act`, then `observe`."""

    def check_env(self, env) -> None:
        """Refuse an environment whose observation or action size the agent does not take (ValueError)."""

    def reset(self, n_envs: int | None = None) -> None:
        """Forget every environment's history."""

    def reseed(self, seed: int, offset: int = 0) -> None:
        """Draw random numbers from stream `seed` at `offset` from now on."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions `[n, A]` for observations `[n, O]`."""

    def observe(self, reward, done) -> None:
        """Complete the step begun by `act`."""

    @property
    def current_plans(self) -> list:
        """Each environment's plan in use (None where the agent does not plan)."""


class PolicyAgent:
    """A critic directory's IQL policy as an `Agent`: the mean action of its Gaussian, as IQL evaluates
    it, for observations as the critic's data set is read. Deterministic: `reseed` changes nothing."""

    def __init__(self, critic: Critic, dataset_id: str):
        self.critic, self.dataset_id = critic, dataset_id
        self.device = critic.action_low.device
        self.O, self.A = critic.shape.observation_dim, critic.shape.action_dim
        self._n = 0

    @classmethod
    def load(cls, critic_dir: str, device: torch.device | str = "cpu") -> PolicyAgent:
        """The policy of a critic directory (`tt train-critic`); a missing or damaged one is a CheckpointError."""
        critic, _, _ = load_critic(critic_dir, device)
        if critic.shape.dataset_id is None:
            raise ValueError(f"critic {critic_dir} names no data set: its policy has no environment to act in")
        return cls(critic, critic.shape.dataset_id)

    def check_env(self, env) -> None:
        check_env_sizes(env, self.O, self.A, "the IQL policy takes")

    def reset(self, n_envs: int | None = None) -> None:
        self._n = n_envs or 0

    def reseed(self, seed: int, offset: int = 0) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs, single = check_observations(obs, self.O)
        self._n = len(obs)
        actions = self.critic.act(torch.from_numpy(obs).to(self.device)).double().cpu().numpy()
        return actions[0] if single else actions

    def observe(self, reward, done) -> None:
        pass

    @property
    def current_plans(self) -> list:
        return [None] * self._n
