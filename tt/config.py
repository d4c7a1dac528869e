"""Planning settings, below everything that reads them (the search, the reference oracle, the CLI)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

OBJECTIVES = ("return", "likelihood")  # the built-in objectives a PlanConfig names (tt.search.objectives)
WINDOWS = ("exact", "cached")  # how a search conditions each token (DESIGN, "The window rule")

Filter = tuple[int | None, float | None]  # (top_k, cdf) of one token kind; None: that filter is off


@dataclass(frozen=True)
class PlanConfig:
    """Planning settings; names and defaults as the authors' flags."""

    horizon: int = 15
    beam_width: int = 128
    n_expand: int = 2
    max_context_transitions: int | None = 5
    k_obs: int | None = 1
    k_act: int | None = None
    k_rew: int | None = 1
    cdf_obs: float | None = None
    cdf_act: float | None = 0.6
    cdf_rew: float | None = None
    temperature: float = 1.0
    discount: float = 0.99
    plan_freq: int = 1
    window: str = "exact"
    objective: str = "return"  # "return": reward plus value (offline RL); "likelihood": imitation
    cuda_graphs: bool = True  # on CUDA, tt.Planner replays each plan's search as a CUDA graph

    def __post_init__(self):
        for name in ("horizon", "beam_width", "n_expand", "plan_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_context_transitions", "k_obs", "k_act", "k_rew"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        for name in ("cdf_obs", "cdf_act", "cdf_rew"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {getattr(self, name)}")
        if not math.isfinite(self.discount):
            raise ValueError(f"discount must be finite, got {self.discount}")
        if self.max_context_transitions == 1 and self.horizon > 1:
            raise ValueError("max_context_transitions=1 leaves nothing to condition the next observation on "
                             "(the authors' crop empties the window): use >= 2, or horizon=1")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be 'exact' or 'cached', got {self.window!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be 'return' or 'likelihood', got {self.objective!r}")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be > 0 and finite, got {self.temperature}")

    def to_dict(self) -> dict:
        return asdict(self)

    def filters(self, observation_dim: int, action_dim: int) -> list[Filter]:
        """Each token kind's (top_k, cdf), by offset in a transition: observation, action, reward, value."""
        return [(self.k_obs, self.cdf_obs)] * observation_dim + [(self.k_act, self.cdf_act)] * action_dim + \
            [(self.k_rew, self.cdf_rew)] * 2
