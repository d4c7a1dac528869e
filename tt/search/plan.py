"""A batched search, checked and prepared: `Search` (what CUDA graphs capture) and `beam_plan`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tt.cache import KVCache
from tt.config import PlanConfig
from tt.device import available_memory
from tt.discretize import Discretizer
from tt.model import TrajectoryTransformer
from tt.rng import Philox
from tt.search.beams import Beams, cache_length
from tt.search.objectives import Objective, named


@dataclass
class PlanResult:
    tokens: torch.Tensor  # [B, H*T] the best beam of each plan, from the current observation on
    score: torch.Tensor  # [B] its score: what the search's objective maximizes (`Objective.meaning`)


def pad_prefixes(prefixes: list[torch.Tensor], transition_dim: int) -> torch.Tensor:
    """Left-pad prefixes (each c*T + O tokens) with -1 by whole transitions to one [B, L] tensor."""
    length = max(len(p) for p in prefixes)
    if any((length - len(p)) % transition_dim for p in prefixes):
        raise ValueError("prefixes must differ in length by whole transitions")
    return torch.stack([torch.cat([p.new_full((length - len(p),), -1), p]) for p in prefixes])


def check_prefix(model: TrajectoryTransformer, prefix: torch.Tensor) -> list[int]:
    """Check `prefix [B, L]` (c*T + O tokens each, left-padded with -1 by whole transitions) and
    return each plan's number of padding transitions."""
    T, O = model.transition_dim, model.config.observation_dim
    if prefix.dim() != 2:
        raise ValueError(f"prefix_tokens must be [B, L], got {tuple(prefix.shape)}")
    B, L = prefix.shape
    if (L - O) % T or L < O:
        raise ValueError(f"prefix length {L} is not c*T + O (T={T}, O={O})")
    if prefix.numel() and int(prefix.max()) > model.stop_token:
        raise ValueError(f"prefix tokens exceed the stop token {model.stop_token}")
    n_ctx = (L - O) // T
    pad = (prefix[:, : n_ctx * T] < 0).view(B, n_ctx, T)
    if pad.any() and not pad.all(-1).eq(pad.any(-1)).all():
        raise ValueError("prefix padding (-1) must cover whole transitions")
    if (prefix[:, n_ctx * T :] < 0).any():
        raise ValueError("the observation tokens of a prefix cannot be padding")
    return pad.all(-1).sum(-1).tolist()


def check_config(model: TrajectoryTransformer, config: PlanConfig) -> None:
    """Refuse, before any search starts, settings the model cannot plan with: a top-k filter over more
    tokens than a position has (N bins and the stop token)."""
    tokens = model.config.n_bins + 1
    for name in ("k_obs", "k_act", "k_rew"):
        k = getattr(config, name)
        if k is not None and k > tokens:
            raise ValueError(f"{name}={k}: the model has {tokens} tokens per position ({model.config.n_bins} bins "
                             f"and the stop token); use at most {tokens}, or none (no top-k filter)")


def search_rows(config: PlanConfig, n_plans: int, objective: Objective | None = None) -> int:
    """Rows of the KV cache a search of `n_plans` plans uses: its objective's rows per beam (default: the
    one `config.objective` names) for every beam."""
    objective = objective or named(config.objective)
    return objective.copies(config) * n_plans * config.beam_width


def search_memory(model: TrajectoryTransformer, config: PlanConfig, n_plans: int,
                  objective: Objective | None = None) -> dict[str, int]:
    """Bytes a search of `n_plans` plans holds at its peak, by what holds them (a lower bound: the
    largest buffers, not every temporary): the KV cache of its rows over the block, a window's
    re-encoding (the MLP's activations of every row over the block), the logits and the objective's
    candidates, and the rows' planned tokens."""
    objective = objective or named(config.objective)
    c = model.config
    rows, length = search_rows(config, n_plans, objective), c.block_size
    item = model.tok_emb.weight.element_size()
    tokens = c.n_bins + 1
    memory = {"KV cache": 2 * c.n_layer * rows * length * c.n_embd * item,
              "re-encoding": rows * length * 4 * c.n_embd * item,
              "logits": 2 * rows * tokens * 4,
              "planned tokens": 2 * n_plans * config.beam_width * (length + config.horizon * model.transition_dim) * 8}
    if objective.candidates(config, tokens):
        memory["candidates"] = n_plans * objective.candidates(config, tokens) * 4
    return memory


def check_memory(model: TrajectoryTransformer, config: PlanConfig, n_plans: int,
                 objective: Objective | None = None) -> None:
    """Refuse, before anything is allocated, a search that cannot fit in its device's memory: the
    figure, what it is made of, and the limit."""
    device = model.tok_emb.weight.device
    memory = search_memory(model, config, n_plans, objective)
    need, limit = sum(memory.values()), available_memory(device)
    if need > limit:
        parts = ", ".join(f"{name} {size / 2**30:.1f}" for name, size in memory.items() if size >= 2**20)
        raise ValueError(f"planning {n_plans} environment(s) with beam_width={config.beam_width}, "
                         f"n_expand={config.n_expand}, horizon={config.horizon} ({config.objective}) needs at least "
                         f"{need / 2**30:.1f} GiB ({parts}), more than the {limit / 2**30:.1f} GiB available on "
                         f"{device}: lower the beam width, the expansions or the number of environments")


class Search:
    """A batched search, prepared: its constants, its beams and the tensors it reads its inputs from
    (prefix tokens, padding). `run` does device work only, with no host synchronization, so a CUDA
    graph can capture it and replay it after `load` has put new inputs into the same tensors.
    `objective`: what it maximizes (default: the one `config.objective` names)."""

    def __init__(self, model: TrajectoryTransformer, prefix: torch.Tensor, pad_transitions: list[int],
                 discretizer: Discretizer, config: PlanConfig, cache: KVCache | None,
                 goal: torch.Tensor | None = None, objective: Objective | None = None):
        if model.training:
            raise RuntimeError("planning needs the model in eval mode (dropout off): call model.eval()")
        check_config(model, config)
        model.check_goal(goal, len(prefix))
        self.objective = objective or named(config.objective)
        T = model.transition_dim
        rows = search_rows(config, len(prefix), self.objective)
        max_len = cache_length(model, config)
        if cache is None or cache.max_rows < rows or cache.max_len < max_len:
            check_memory(model, config, len(prefix), self.objective)
            cache = model.setup_cache(rows, max_len)
        self.beams = Beams(model, prefix, pad_transitions, config, self.objective.copies(config), cache, goal)
        self.mids = torch.as_tensor(discretizer.midpoints[:, T - 2 :].T, dtype=torch.float32, device=prefix.device)

    def load(self, prefix: torch.Tensor, pad_transitions: list[int]) -> None:
        """New inputs of the same shape (and padded or not as before) into the search's tensors."""
        self.beams.load(prefix, pad_transitions)

    def run(self, rng: Philox, on_transition: Callable[[], None] | None = None) -> PlanResult:
        """The search its objective names, the same as the reference's (`tt.reference.beam_plan`,
        `likelihood_plan`, `sample_continuations`) token for token. The beams' tokens stay in
        `self.beams.tokens`."""
        beams = self.beams
        score = self.objective.search(beams, self.objective, rng, self.mids, on_transition)
        start, n = beams.n_ctx * beams.T, beams.config.horizon * beams.T
        return PlanResult(beams.tokens[:: beams.W, start : start + n], score)


@torch.no_grad()
def beam_plan(model: TrajectoryTransformer, prefix_tokens: torch.Tensor, discretizer: Discretizer,
              config: PlanConfig = PlanConfig(), rng: Philox | torch.Generator | None = None,
              cache: KVCache | None = None, goal: torch.Tensor | None = None,
              objective: Objective | None = None) -> PlanResult:
    """Plan B trajectories at once from `prefix_tokens [B, L]` (rows left-padded with -1 by whole
    transitions when their contexts differ in length). Same search as `tt.reference.beam_plan`
    (or `likelihood_plan`); with the same `Philox` state a single plan draws exactly as the
    reference's. A goal-conditioned model plans towards `goal [B, O]` (each plan's goal as
    observation tokens), encoded once per plan into the cache's goal segment that all its beams
    read. `objective`: what the search maximizes (default: the one `config.objective` names)."""
    device = model.tok_emb.weight.device
    pad_transitions = check_prefix(model, prefix_tokens)
    if not isinstance(rng, Philox):
        rng = Philox.from_generator(rng, device)
    goal = None if goal is None else goal.to(device)
    search = Search(model, prefix_tokens.to(device), pad_transitions, discretizer, config, cache, goal, objective)
    return search.run(rng)
