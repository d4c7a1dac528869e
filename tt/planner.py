"""Beam-search planning with a KV cache: `beam_plan` for B plans at once, and `tt.Planner`.

Rows of the search are laid out `[E, B, W]` (expansion copy, plan, beam): the W survivors of
every plan are the first B*W rows, so beams are decoded there and copied to the other E-1
blocks only after the tokens they share (the window and the observation) are in the cache.
Inside a plan, candidate e*W + w is beam w's copy e, the authors' order, so ties in the top-k
resolve as in `tt.reference.beam_plan`.

Window modes (see DESIGN "The window rule"):
- `exact`: every transition re-encodes its C-1 previous transitions in one batched prefill,
  then decodes token by token, so each token sees what the authors' cropped forward sees.
- `cached`: the prefix is encoded once and the cache grows; it slides (re-encodes the last
  C-1 transitions) only when the model's block size would be exceeded.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from tt import ops
from tt.cache import KVCache
from tt.discretize import Discretizer
from tt.model import TrajectoryTransformer


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

    def __post_init__(self):
        for name in ("horizon", "beam_width", "n_expand", "plan_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_context_transitions is not None and self.max_context_transitions < 1:
            raise ValueError(f"max_context_transitions must be >= 1 or None, got {self.max_context_transitions}")
        if self.max_context_transitions == 1 and self.horizon > 1:
            raise ValueError("max_context_transitions=1 leaves nothing to condition the next observation on "
                             "(the authors' crop empties the window): use >= 2, or horizon=1")
        if self.window not in ("exact", "cached"):
            raise ValueError(f"window must be 'exact' or 'cached', got {self.window!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PlanResult:
    tokens: torch.Tensor  # [B, H*T] the best beam of each plan
    score: torch.Tensor  # [B] its predicted discounted return


def pad_prefixes(prefixes: list[torch.Tensor], transition_dim: int) -> torch.Tensor:
    """Left-pad prefixes (each c*T + O tokens) with -1 by whole transitions to one [B, L] tensor."""
    length = max(len(p) for p in prefixes)
    if any((length - len(p)) % transition_dim for p in prefixes):
        raise ValueError("prefixes must differ in length by whole transitions")
    return torch.stack([torch.cat([p.new_full((length - len(p),), -1), p]) for p in prefixes])


class _Search:
    """State of one batched search: token history of the survivors, the cache and the window."""

    def __init__(self, model: TrajectoryTransformer, prefix: torch.Tensor, config: PlanConfig,
                 cache: KVCache | None):
        c = model.config
        self.model, self.config = model, config
        self.O, self.A, self.T = c.observation_dim, c.action_dim, c.transition_dim
        T = self.T
        B, L = prefix.shape
        if (L - self.O) % T or L < self.O:
            raise ValueError(f"prefix length {L} is not c*T + O (T={T}, O={self.O})")
        self.B, self.W, self.E = B, config.beam_width, config.n_expand
        self.n_ctx = (L - self.O) // T  # context transitions of the longest prefix
        pad = (prefix[:, : self.n_ctx * T] < 0).view(B, self.n_ctx, T)
        if pad.any() and not pad.all(-1).eq(pad.any(-1)).all():
            raise ValueError("prefix padding (-1) must cover whole transitions")
        if (prefix[:, self.n_ctx * T :] < 0).any():
            raise ValueError("the observation tokens of a prefix cannot be padding")
        self.pad_transitions = pad.all(-1).sum(-1)  # [B]
        # transitions a window keeps: the authors crop to C*T-1 tokens (and to the block size)
        self.keep = min(config.max_context_transitions or c.n_transitions, c.n_transitions)
        rows = self.E * B * self.W
        max_len = c.block_size if config.window == "cached" else self.keep * T
        if cache is None or cache.max_rows < rows or cache.max_len < max_len:
            cache = model.setup_cache(rows, max_len)
        self.cache = cache
        H = config.horizon
        self.hist = torch.full((B * self.W, L + H * T), -1, dtype=torch.long, device=prefix.device)
        self.hist[:, :L] = prefix.repeat_interleave(self.W, 0)
        self.window_start = 0  # transition index (in prefix coordinates) at cache slot 0
        self.filled = 0  # cache slots in use

    def key_start(self, n_rows_per_plan: int, blocks: int = 1) -> torch.Tensor | None:
        """Per-row first real key slot for the current window, rows laid out [blocks, B, n]."""
        start = (self.pad_transitions - self.window_start).clamp_min(0) * self.T
        if not start.any():
            return None
        return start.repeat_interleave(n_rows_per_plan).repeat(blocks)

    def prefill(self, tokens: torch.Tensor, first: int) -> torch.Tensor:
        """Encode `tokens [rows, n]` (history from transition `first` on) as a fresh window."""
        self.window_start, self.filled = first, tokens.shape[1]
        return self.model.prefill(tokens, self.cache, self.key_start(len(tokens) // self.B))

    def decode(self, token: torch.Tensor, blocks: int) -> torch.Tensor:
        """Append one token per row; rows are `blocks` copies of the B*W survivors."""
        logits = self.model.decode(token, self.cache, self.filled, self.key_start(self.W, blocks))
        self.filled += 1
        return logits


@torch.no_grad()
def beam_plan(model: TrajectoryTransformer, prefix_tokens: torch.Tensor, discretizer: Discretizer,
              config: PlanConfig = PlanConfig(), generator: torch.Generator | None = None,
              cache: KVCache | None = None) -> PlanResult:
    """Plan B trajectories at once from `prefix_tokens [B, L]` (rows left-padded with -1 by whole
    transitions when their contexts differ in length). Same search as `tt.reference.beam_plan`."""
    if model.training:
        raise RuntimeError("beam_plan needs the model in eval mode (dropout off): call model.eval()")
    device = model.tok_emb.weight.device
    prefix = prefix_tokens.to(device)
    if prefix.dim() != 2:
        raise ValueError(f"prefix_tokens must be [B, L], got {tuple(prefix.shape)}")
    if prefix.numel() and int(prefix.max()) > model.stop_token:
        raise ValueError(f"prefix tokens exceed the stop token {model.stop_token}")
    s = _Search(model, prefix, config, cache)
    O, A, T, B, W, E, H = s.O, s.A, s.T, s.B, s.W, s.E, config.horizon
    BW = B * W
    mids = torch.as_tensor(discretizer.midpoints[:, T - 2 :].T, dtype=torch.float32, device=device)
    discounts = config.discount ** torch.arange(H + 1, device=device, dtype=torch.float32)
    rewards = torch.zeros(E * BW, H + 1, device=device)
    step_tokens = torch.empty(E * BW, A + 2, dtype=torch.long, device=device)
    plan_rows = torch.arange(B, device=device)[:, None] * W  # first survivor row of each plan

    def draw(logits, top_k, cdf, midpoints=None):
        return ops.sample_next(logits, temperature=config.temperature, top_k=top_k, cdf=cdf,
                               midpoints=midpoints, generator=generator)

    K = model.config.n_transitions
    for t in range(H):
        u = s.n_ctx + t  # the transition being planned, in prefix coordinates
        if t == 0:
            # all W beams of a plan are equal: encode one row per plan, then copy it to every row
            first = max(0, u - (s.keep if config.window == "exact" else K) + 1)
            logits = s.prefill(s.hist[::W, first * T : u * T + O], first)
            s.cache.gather_rows(torch.arange(B, device=device).repeat_interleave(W).repeat(E), s.filled)
            logits = logits.repeat_interleave(W, 0).repeat(E, 1)
        else:
            # the survivors' next observation, each token conditioned as the authors' cropped forward
            if config.window == "exact" or u - s.window_start > K - 1:
                first = max(0, u - s.keep + 1)
                logits, shared_from = s.prefill(s.hist[:, first * T : u * T], first), 0
            else:  # cached: move the survivors' rows into place, continue with the value token
                s.cache.gather_rows(src.repeat(E), s.filled)
                shared_from = s.filled
                logits = s.decode(s.hist[:, u * T - 1], blocks=1)
            for i in range(O):
                token, _ = draw(logits, config.k_obs, config.cdf_obs)
                s.hist[:, u * T + i] = token
                logits = s.decode(token, blocks=1)
            s.cache.tile_rows(BW, E, slice(shared_from, s.filled))
            logits = logits.repeat(E, 1)
        for i in range(A):
            token, _ = draw(logits, config.k_act, config.cdf_act)
            step_tokens[:, i] = token
            logits = s.decode(token, blocks=E)
        step_tokens[:, A], r = draw(logits, config.k_rew, config.cdf_rew, mids[0])
        logits = s.decode(step_tokens[:, A], blocks=E)
        step_tokens[:, A + 1], v = draw(logits, config.k_rew, config.cdf_rew, mids[1])
        rewards[:, t], rewards[:, t + 1] = r, v
        # top-k per plan over its candidates e*W + w
        scores = (rewards * discounts).sum(-1).view(E, B, W).permute(1, 0, 2).reshape(B, E * W)
        values, index = ops.beam_select(scores, W)
        src = ((index // W) * BW + plan_rows + index % W).reshape(-1)  # source row of each survivor
        s.hist = s.hist[src % BW]
        s.hist[:, u * T + O : (u + 1) * T] = step_tokens[src]
        rewards = rewards[src].repeat(E, 1)
    start = s.n_ctx * T
    return PlanResult(s.hist[plan_rows[:, 0], start : start + H * T], values[:, 0])
