"""Shipped behaviour policies: the actor of a Soft Actor-Critic agent as a few lines of torch.

A policy file is safetensors (the actor's weights, float32) with a JSON card beside it (task,
training steps, seed, wall time, measured returns). The network is stable-baselines3's SAC
actor: an MLP with ReLU, then a mean head and a log-std head (clamped to [-20, 2]); an action
is tanh of the mean (`deterministic`) or of a draw from the Gaussian (SAC's own exploration),
scaled to the action space. Only torch is needed to act; stable-baselines3 is needed only to
train (`scripts/train_policies.py`).

A row's action does not depend on the batch it comes in: `Actor.act` evaluates the network on
blocks of exactly `BLOCK` rows (the last one padded), so every matrix product has one shape, and
the elementwise functions run on whole blocks. Matrix-product kernels pick their blocking and
reduction order by shape; with one shape and one thread a row's result is a function of that
row alone (checked by tests/test_locomotion.py for every row position). That is what makes a
rollout's data independent of the number of environments stepped together and of the worker
process that ran an episode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tt.io import atomic_write, read_json

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
BLOCK = 8  # rows per network evaluation: one shape for every call


@dataclass
class Actor:
    """A squashed-Gaussian MLP policy over a Box action space [low, high]."""

    hidden: list[tuple[torch.Tensor, torch.Tensor]]  # (weight [out, in], bias [out]) per ReLU layer
    mu: tuple[torch.Tensor, torch.Tensor]
    log_std: tuple[torch.Tensor, torch.Tensor]
    low: np.ndarray
    high: np.ndarray

    @property
    def observation_dim(self) -> int:
        return self.hidden[0][0].shape[1] if self.hidden else self.mu[0].shape[1]

    @property
    def action_dim(self) -> int:
        return self.mu[0].shape[0]

    def act(self, obs: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Actions [B, A] for observations [B, O]: the mean action, or with standard-normal `noise`
        [B, A] a draw from the policy's Gaussian (SAC's exploration), squashed and scaled. Row i
        of the result depends on row i of the inputs alone (blocks of `BLOCK` rows)."""
        obs = np.asarray(obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.observation_dim:
            raise ValueError(f"observations must be [B, {self.observation_dim}], got {list(obs.shape)}")
        n = len(obs)
        if noise is not None and noise.shape != (n, self.action_dim):
            raise ValueError(f"noise must be {[n, self.action_dim]}, got {list(noise.shape)}")
        out = np.empty((n, self.action_dim), dtype=np.float32)
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            out[start:stop] = self._act_block(obs[start:stop], None if noise is None else noise[start:stop])
        return out

    @torch.no_grad()
    def _act_block(self, obs: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """`act` for at most `BLOCK` rows, zero-padded to `BLOCK` in fresh (aligned) buffers."""
        n = len(obs)
        x = torch.zeros(BLOCK, self.observation_dim)
        x[:n] = torch.from_numpy(obs)
        for weight, bias in self.hidden:
            x = torch.relu(torch.nn.functional.linear(x, weight, bias))
        mean = torch.nn.functional.linear(x, *self.mu).numpy()
        if noise is not None:
            padded = np.zeros((BLOCK, self.action_dim), dtype=np.float32)
            padded[:n] = noise
            log_std = torch.nn.functional.linear(x, *self.log_std).clamp(LOG_STD_MIN, LOG_STD_MAX).numpy()
            mean = mean + np.exp(log_std) * padded
        squashed = np.tanh(mean)
        return (self.low + (squashed[:n] + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)

    def batch_policy(self, deterministic: bool = False) -> ActorPolicy:
        """A `tt.tasks.rollouts.BatchPolicy` (picklable, for worker processes): each row's noise from
        its episode's own generator."""
        return ActorPolicy(self, deterministic)

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, (weight, bias) in enumerate(self.hidden):
            tensors[f"hidden.{i}.weight"], tensors[f"hidden.{i}.bias"] = weight, bias
        tensors["mu.weight"], tensors["mu.bias"] = self.mu
        tensors["log_std.weight"], tensors["log_std.bias"] = self.log_std
        tensors["action_low"] = torch.as_tensor(self.low, dtype=torch.float32)
        tensors["action_high"] = torch.as_tensor(self.high, dtype=torch.float32)
        return {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], source: str = "policy") -> Actor:
        try:
            n_hidden = len({k.split(".")[1] for k in tensors if k.startswith("hidden.")})
            hidden = [(tensors[f"hidden.{i}.weight"], tensors[f"hidden.{i}.bias"]) for i in range(n_hidden)]
            actor = cls(hidden, (tensors["mu.weight"], tensors["mu.bias"]),
                        (tensors["log_std.weight"], tensors["log_std.bias"]),
                        tensors["action_low"].numpy(), tensors["action_high"].numpy())
        except KeyError as e:
            raise ValueError(f"{source} is not a tt actor: missing tensor {e}") from e
        widths = [actor.observation_dim] + [w.shape[0] for w, _ in hidden]
        layers = [*(w for w, _ in hidden), actor.mu[0], actor.log_std[0]]
        inputs = widths[:-1] + [widths[-1], widths[-1]]
        if any(w.shape[1] != n for w, n in zip(layers, inputs)) or actor.log_std[0].shape[0] != actor.action_dim \
                or actor.low.shape != (actor.action_dim,) or actor.high.shape != (actor.action_dim,):
            raise ValueError(f"{source}: actor tensors have inconsistent shapes")
        return actor

    @classmethod
    def from_sb3(cls, model) -> Actor:
        """The actor of a stable-baselines3 SAC model (`model.actor`)."""
        actor = model.actor
        linears = [m for m in actor.latent_pi if isinstance(m, torch.nn.Linear)]
        space = model.action_space
        params = lambda m: (m.weight.detach().cpu().clone(), m.bias.detach().cpu().clone())
        return cls([params(m) for m in linears], params(actor.mu), params(actor.log_std),
                   np.asarray(space.low, dtype=np.float32), np.asarray(space.high, dtype=np.float32))


@dataclass
class ActorPolicy:
    """`Actor.batch_policy`: actions for a batch of episodes, row i's noise drawn from `rngs[i]`."""

    actor: Actor
    deterministic: bool = False

    def __call__(self, obs: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
        if self.deterministic:
            return self.actor.act(obs)
        noise = np.stack([g.standard_normal(self.actor.action_dim, dtype=np.float32) for g in rngs])
        return self.actor.act(obs, noise)


def save_actor(path: str, actor: Actor, card: dict | None = None) -> None:
    """Write `path` (safetensors) atomically, and its card as `path` with `.json` when given."""
    with atomic_write(path) as tmp:
        save_file(actor.state_dict(), tmp)
    if card is not None:
        from tt.io import write_json

        write_json(os.path.splitext(path)[0] + ".json", card)


def load_actor(path: str) -> Actor:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no policy file {path}")
    try:
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"corrupt policy file {path}: {e}") from e
    return Actor.from_state_dict(tensors, source=path)


def load_card(path: str) -> dict:
    card_path = os.path.splitext(path)[0] + ".json"
    return read_json(card_path) if os.path.exists(card_path) else {}

