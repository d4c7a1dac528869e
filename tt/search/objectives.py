"""What a search maximizes. An objective says which loop searches for it (`tt.search.loops`), how many
cache rows a beam needs, how candidates are scored and what a plan's score means (`meaning`).

- `Return`: the predicted discounted reward plus the value token (offline RL; the authors'
  `beam_plan` with its `value_fn`, which a learned critic can replace).
- `Likelihood`: the likeliest token sequence (imitation; the authors' `beam_search`).
- `ForcedActions`: samples with given tokens where they are forced, nothing ranked (open-loop
  prediction: the model's futures under the data's actions).

A new objective subclasses `TransitionObjective` or `TokenObjective`; the loops do not change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tt import ops
from tt.config import Filter, PlanConfig
from tt.rng import Philox
from tt.search.loops import Candidates, token_search, transition_search

ValueFn = Callable[[Candidates], tuple[torch.Tensor, torch.Tensor]]


class Objective(ABC):
    """What a search maximizes."""

    meaning: str  # what a plan's score is

    def copies(self, config: PlanConfig) -> int:
        """Cache rows per beam."""
        return 1

    def candidates(self, config: PlanConfig, tokens: int) -> int:
        """Candidates a plan's search scores at once beyond its rows' logits (its memory: `tokens` per position)."""
        return 0


class TransitionObjective(Objective):
    """Searched a transition at a time: `copies` sampled expansions of every beam, W best kept by `score`."""

    search = staticmethod(transition_search)

    def copies(self, config: PlanConfig) -> int:
        return config.n_expand

    def estimate(self, candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        """Transition `candidates.t`'s reward and the value after it, per candidate: by default the
        expectations of the predicted reward and value tokens."""
        return candidates.reward, candidates.value

    def score(self, terms: torch.Tensor, discounts: torch.Tensor, t: int) -> torch.Tensor:
        """Each candidate of transition `t` scored from its terms `[rows, H + 1]` (`estimate`'s pairs of
        transitions 0..t: each transition's reward, then the value after t)."""
        return (terms * discounts).sum(-1)


class TokenObjective(Objective):
    """Searched a token at a time: each beam's next token and the beam it continues chosen by `extend`."""

    search = staticmethod(token_search)
    reranks = True  # beams change places (their cache windows are then shared by lineage)

    def length(self, config: PlanConfig, transition_dim: int, observation_dim: int) -> int:
        """Tokens searched after the prefixes' observations."""
        return config.horizon * transition_dim - observation_dim

    def initial_scores(self, B: int, W: int, logits: torch.Tensor) -> torch.Tensor:
        """Each plan's beams' scores `[B, W]` before the first token."""
        return torch.zeros(B, W, dtype=torch.float64 if logits.dtype == torch.float64 else torch.float32,
                           device=logits.device)

    @abstractmethod
    def extend(self, scores: torch.Tensor, logits: torch.Tensor, i: int, token_filter: Filter, temperature: float,
               rng: Philox) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Choose the `i`-th token after the observations: from each beam's `logits [B*W, N+1]` and
        `scores [B, W]`, the new scores, each new beam's parent beam `[B, W]` in its plan (None: each
        continues its own) and its token `[B*W]`."""


@dataclass(frozen=True)
class Return(TransitionObjective):
    """The discounted sum of a plan's predicted rewards plus the value after its last transition, as the
    authors' `beam_plan` scores beams. `value_fn` replaces the (reward, value) estimates of each
    candidate transition (the authors' `value_fn`; e.g. a learned critic); by default the
    expectations of the predicted reward and value tokens."""

    value_fn: ValueFn | None = None
    meaning = "predicted return: discounted predicted rewards plus the value after the plan"

    def estimate(self, candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        return super().estimate(candidates) if self.value_fn is None else self.value_fn(candidates)


QFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CriticReturn(TransitionObjective):
    """TT+Q (the paper's AntMaze result): the return search with a learned critic in place of the value
    token. Candidate transition t is worth its plan's discounted predicted rewards before t plus
    discount**t * Q(s_t, a_t), (s_t, a_t) the bin midpoints of its tokens (a stop token read as the last
    bin, as the planner acts), Q evaluated for every candidate of a transition in one call.

    `q_fn(observations [rows, O], actions [rows, A]) -> [rows]`: the critic (`tt.critic.Critic.value`);
    `midpoints [N, T]`: the run's bin midpoints, on the planner's device."""

    q_fn: QFn
    midpoints: torch.Tensor
    meaning = "predicted return with a critic: discounted predicted rewards, then discount**t * Q(s_t, a_t)"

    def estimate(self, candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        observations = candidates.observations  # a property that gathers them: read once
        O = observations.shape[1]
        tokens = torch.cat([observations, candidates.actions], 1)
        values = bin_values(self.midpoints[:, : tokens.shape[1]], tokens)
        return candidates.reward, self.q_fn(values[:, :O], values[:, O:]).to(candidates.reward.dtype)

    def score(self, terms: torch.Tensor, discounts: torch.Tensor, t: int) -> torch.Tensor:
        return (terms[:, :t] * discounts[:t]).sum(-1) + discounts[t] * terms[:, t + 1]


def bin_values(midpoints: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The bin midpoints `[rows, D]` of `tokens [rows, D]` (column d from `midpoints[:, d]`); a stop
    token is read as the last bin."""
    return torch.gather(midpoints.T, 1, tokens.clamp(max=midpoints.shape[0] - 1).T).T


@dataclass(frozen=True)
class Likelihood(TokenObjective):
    """The likeliest plan: every beam expanded by every token, the W most likely sequences kept (ties to
    the lower beam-major index; a beam at -inf is dead), as the authors' `beam_search`."""

    meaning = "log-likelihood: the sum of the plan's filtered token log-probabilities"

    def candidates(self, config: PlanConfig, tokens: int) -> int:
        return 2 * config.beam_width * tokens

    def initial_scores(self, B: int, W: int, logits: torch.Tensor) -> torch.Tensor:
        scores = super().initial_scores(B, W, logits).fill_(float("-inf"))
        scores[:, 0] = 0.0  # one live beam per plan to begin with
        return scores

    def extend(self, scores, logits, i, token_filter, temperature, rng):
        logp = ops.log_probs(logits, temperature, *token_filter)
        return ops.beam_expand(scores, logp, scores.shape[1])


@dataclass
class ForcedActions(TokenObjective):
    """Samples of what follows each prefix: `forced [B, n]` holds the n tokens after its observation, a
    token to take as it is (the data's actions) or -1 where every beam draws its own (observation,
    reward and value), at the same positions in every row. Nothing is ranked: beams are samples."""

    forced: torch.Tensor
    drawn: list[bool] = field(init=False, repr=False)  # read once: the loop never waits for the device
    meaning = "none: continuations are sampled, not ranked (0)"
    reranks = False

    def __post_init__(self):
        self.drawn = (self.forced[0] < 0).tolist()

    def length(self, config: PlanConfig, transition_dim: int, observation_dim: int) -> int:
        return self.forced.shape[1]

    def extend(self, scores, logits, i, token_filter, temperature, rng):
        W = scores.shape[1]
        if not self.drawn[i]:
            return scores, None, self.forced[:, i].repeat_interleave(W)
        top_k, cdf = token_filter
        tokens, _ = ops.sample_next(logits, temperature=temperature, top_k=top_k, cdf=cdf, rng=rng)
        return scores, None, tokens


def named(name: str) -> Objective:
    """The built-in objective a `PlanConfig.objective` names."""
    objectives = {"return": Return, "likelihood": Likelihood}
    if name not in objectives:
        raise ValueError(f"unknown objective {name!r}: one of {sorted(objectives)}")
    return objectives[name]()
