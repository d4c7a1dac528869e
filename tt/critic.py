"""A learned critic for the return search (TT+Q): Implicit Q-Learning's networks, as they plan.

IQL (Kostrikov et al. 2021) trains twin Q(s, a) networks towards r + discount * V(s'), V(s) as an
expectile of the (Polyak-averaged) target Q's minimum, and a Gaussian policy by advantage-weighted
regression. Planning reads the target Q's minimum (what IQL's own value and policy losses read);
the policy is the critic's own IQL agent, for comparison. `tt.iql` trains these with TorchRL's
`IQLLoss`; the twin Q's weights are stacked `[2, ...]`, as TorchRL keeps them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CriticShape:
    """What a critic's networks are sized by, and what data it was trained on (checked when planning)."""

    observation_dim: int
    action_dim: int
    hidden: int = 256
    layers: int = 2
    dataset_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    """`layers` hidden ReLU layers of `hidden` units, then a linear output (IQL's networks)."""
    sizes = [inputs] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        modules += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*modules, nn.Linear(sizes[-1], outputs))


class TwinQ(nn.Module):
    """Two Q(s, a) MLPs evaluated as one: weights `[2, out, in]`, one batched product per layer."""

    def __init__(self, observation_dim: int, action_dim: int, hidden: int, layers: int):
        super().__init__()
        sizes = [observation_dim + action_dim] + [hidden] * layers + [1]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(2, b, a)) for a, b in zip(sizes[:-1], sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(2, b)) for b in sizes[1:])
        for w in self.weights:  # nn.Linear's initialization, per network
            bound = 1.0 / math.sqrt(w.shape[2])
            nn.init.uniform_(w, -bound, bound)
        for b, w in zip(self.biases, self.weights):
            bound = 1.0 / math.sqrt(w.shape[2])
            nn.init.uniform_(b, -bound, bound)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Both networks' Q values `[2, rows]`."""
        x = torch.cat([observations, actions], -1).expand(2, -1, -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x[..., 0]


class GaussianPolicy(nn.Module):
    """IQL's policy: a tanh-squashed mean and a state-independent log standard deviation."""

    def __init__(self, observation_dim: int, action_dim: int, hidden: int, layers: int):
        super().__init__()
        self.mean = mlp(observation_dim, hidden, layers, action_dim)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, standard deviation) of each observation's action distribution."""
        return torch.tanh(self.mean(observations)), self.log_std.clamp(-5.0, 2.0).exp().expand(len(observations), -1)


class Critic(nn.Module):
    """IQL's networks: `q` (twin Q, as trained), `target_q` (its Polyak average: what plans read), `v`
    and `policy`. Inputs are the environment's observations and actions (in the action space's units,
    the policy's scaled to [-1, 1] by `action_low`/`action_high`)."""

    def __init__(self, shape: CriticShape):
        super().__init__()
        self.shape = shape
        O, A, H, L = shape.observation_dim, shape.action_dim, shape.hidden, shape.layers
        self.q = TwinQ(O, A, H, L)
        self.target_q = TwinQ(O, A, H, L)
        self.target_q.load_state_dict(self.q.state_dict())
        self.target_q.requires_grad_(False)
        self.v = mlp(O, H, L, 1)
        self.policy = GaussianPolicy(O, A, H, L)
        self.register_buffer("action_low", -torch.ones(A))
        self.register_buffer("action_high", torch.ones(A))

    def scaled(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions in the action space's units to [-1, 1], as the networks take them."""
        return 2.0 * (actions - self.action_low) / (self.action_high - self.action_low) - 1.0

    @torch.no_grad()
    def value(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """min over the twin target Q of Q(s, a), `[rows]` in the weights' dtype, for actions in the action
        space's units: what the return search adds for a candidate transition."""
        dtype = self.action_low.dtype
        return self.target_q(observations.to(dtype), self.scaled(actions.to(dtype))).min(0).values

    @torch.no_grad()
    def act(self, observations: torch.Tensor) -> torch.Tensor:
        """The IQL policy's mean action, in the action space's units."""
        mean, _ = self.policy(observations.float())
        return self.action_low + (mean + 1.0) * 0.5 * (self.action_high - self.action_low)
