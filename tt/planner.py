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

import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from tt import ops
from tt.cache import KVCache
from tt.discretize import Discretizer
from tt.model import TrajectoryTransformer
from tt.rng import Philox


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
        if self.window not in ("exact", "cached"):
            raise ValueError(f"window must be 'exact' or 'cached', got {self.window!r}")
        if self.objective not in ("return", "likelihood"):
            raise ValueError(f"objective must be 'return' or 'likelihood', got {self.objective!r}")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be > 0 and finite, got {self.temperature}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PlanResult:
    tokens: torch.Tensor  # [B, H*T] the best beam of each plan, from the current observation on
    score: torch.Tensor  # [B] its predicted discounted return, or its log-likelihood (objective "likelihood")


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


def search_rows(config: PlanConfig, n_plans: int) -> int:
    """Rows of the KV cache a search of `n_plans` plans uses: every beam's E expansion copies for the
    return objective, one row per beam for the likelihood objective."""
    copies = config.n_expand if config.objective == "return" else 1
    return copies * n_plans * config.beam_width


def search_memory(model: TrajectoryTransformer, config: PlanConfig, n_plans: int) -> dict[str, int]:
    """Bytes a search of `n_plans` plans holds at its peak, by what holds them (a lower bound: the
    largest buffers, not every temporary): the KV cache of its rows over the block, a window's
    re-encoding (the MLP's activations of every row over the block), the logits and the likelihood
    search's candidates, and the rows' planned tokens."""
    c = model.config
    rows, length = search_rows(config, n_plans), c.block_size
    item = model.tok_emb.weight.element_size()
    tokens = c.n_bins + 1
    memory = {"KV cache": 2 * c.n_layer * rows * length * c.n_embd * item,
              "re-encoding": rows * length * 4 * c.n_embd * item,
              "logits": 2 * rows * tokens * 4,
              "planned tokens": 2 * n_plans * config.beam_width * (length + config.horizon * model.transition_dim) * 8}
    if config.objective == "likelihood":
        memory["candidates"] = 2 * n_plans * config.beam_width * tokens * 4
    return memory


def check_memory(model: TrajectoryTransformer, config: PlanConfig, n_plans: int) -> None:
    """Refuse, before anything is allocated, a search that cannot fit in its device's memory: the
    figure, what it is made of, and the limit."""
    device = model.tok_emb.weight.device
    memory = search_memory(model, config, n_plans)
    need, limit = sum(memory.values()), ops.available_memory(device)
    if need > limit:
        parts = ", ".join(f"{name} {size / 2**30:.1f}" for name, size in memory.items() if size >= 2**20)
        raise ValueError(f"planning {n_plans} environment(s) with beam_width={config.beam_width}, "
                         f"n_expand={config.n_expand}, horizon={config.horizon} ({config.objective}) needs at least "
                         f"{need / 2**30:.1f} GiB ({parts}), more than the {limit / 2**30:.1f} GiB available on "
                         f"{device}: lower the beam width, the expansions or the number of environments")


class _Search:
    """A batched search, prepared: its constants and the tensors it reads its inputs from (prefix
    tokens, padding). `run` does device work only, with no host synchronization, so a CUDA graph
    can capture it and replay it after `load` has put new inputs into the same tensors."""

    def __init__(self, model: TrajectoryTransformer, prefix: torch.Tensor, pad_transitions: list[int],
                 discretizer: Discretizer, config: PlanConfig, cache: KVCache | None,
                 goal: torch.Tensor | None = None):
        if model.training:
            raise RuntimeError("planning needs the model in eval mode (dropout off): call model.eval()")
        check_config(model, config)
        c = model.config
        self.model, self.config = model, config
        self.O, self.A, self.T = c.observation_dim, c.action_dim, c.transition_dim
        device = prefix.device
        self.B, L = prefix.shape
        self.W, self.E = config.beam_width, config.n_expand
        self.n_ctx = (L - self.O) // self.T  # context transitions of the longest prefix
        self.prefix = prefix
        model.check_goal(goal, self.B)
        self.goal = goal  # [B, O] each plan's goal (observation tokens) for a goal-conditioned model
        self.pad = torch.tensor(pad_transitions, device=device)  # padding transitions per plan
        self.padded = any(pad_transitions)  # fixed for this search: rows pass key_start or never do
        # transitions a window keeps: the authors crop to C*T-1 tokens (and to the block size)
        self.keep = min(config.max_context_transitions or c.n_transitions, c.n_transitions)
        rows = search_rows(config, self.B)
        max_len = c.block_size if config.window == "cached" else self.keep * self.T
        if cache is None or cache.max_rows < rows or cache.max_len < max_len:
            check_memory(model, config, self.B)
            cache = model.setup_cache(rows, max_len)
        self.cache = cache
        # fetched once (the model does not change during a search), packed for the search's rows
        self.block_weights = model.block_weights(rows)
        self.mids = torch.as_tensor(discretizer.midpoints[:, self.T - 2 :].T, dtype=torch.float32, device=device)
        self.discounts = config.discount ** torch.arange(config.horizon + 1, device=device, dtype=torch.float32)
        self._key_start: dict[tuple[int, int], torch.Tensor] = {}

    def load(self, prefix: torch.Tensor, pad_transitions: list[int]) -> None:
        """New inputs of the same shape (and padded or not as before) into the search's tensors."""
        if prefix.shape != self.prefix.shape or any(pad_transitions) != self.padded:
            raise ValueError("load: the prefix shape and whether it is padded must stay as prepared")
        self.prefix.copy_(prefix)
        self.pad.copy_(torch.tensor(pad_transitions))

    def set_window(self, first: int) -> None:
        """Cache slot 0 now holds transition `first` (prefix coordinates)."""
        self.window_start = first
        self._key_start.clear()

    def key_start(self, n_rows_per_plan: int, blocks: int = 1) -> torch.Tensor | None:
        """Per-row first real key slot of the current window for rows laid out [blocks, B, n]; None if unpadded."""
        if not self.padded:
            return None
        key = (n_rows_per_plan, blocks)
        if key not in self._key_start:
            start = (self.pad - self.window_start).clamp_min(0) * self.T
            self._key_start[key] = start.repeat_interleave(n_rows_per_plan).repeat(blocks)
        return self._key_start[key]

    def prefill(self, tokens: torch.Tensor, first: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Encode `tokens [rows, n]` (history from transition `first` on) as a fresh window: the
        plans' rows (`[B, n]` each), or the search's rows `rows`."""
        self.set_window(first)
        self.cache.share(0)
        self.filled = tokens.shape[1]
        if rows is None:
            key_start = self.key_start(len(tokens) // self.B)
            self.read_goals(len(tokens) // self.B)
        else:
            key_start = None if not self.padded else self.key_start(self.W)[rows]
            self.read_goals(table=rows // self.W)
        logits = self.model.prefill(tokens, self.cache, key_start)
        self.read_goals(self.W)  # the search's rows from here on
        return logits

    def read_goals(self, group_rows: int = 1, table: torch.Tensor | None = None) -> None:
        """Rows read their plan's goal: `group_rows` rows per plan, plan-major (the search's rows
        [E, B, W] and [B, W] with W), or plan `table[r]`; nothing without a goal."""
        if self.goal is not None:
            self.cache.read_goals(group_rows, table)

    def reencode(self, first: int, end: int, shared_until: int | None = None,
                 lineage: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the survivors' transitions [first, end) as a fresh window; logits of its last token.
        Rows share their tokens before transition `shared_until` with the other rows of their
        plan (by default: the plan's context), or, given `lineage [B*W]`, with the rows of equal
        lineage (the likelihood search: the beam each descends from at the last anchor; where
        `ops.lineages` cannot group rows, by plan), and then as many more tokens as every row has
        in common with its lineage (with `k_obs=1` the next observation: only actions branch).
        That part of the window is encoded once per plan or lineage and read by its rows as a
        shared prefix; the rest once per row."""
        T, W = self.T, self.W
        found = None if lineage is None else ops.lineages(lineage)
        if found is None:  # by plan: rows share the plan's context
            shared_until = None
        split = min(max(self.n_ctx if shared_until is None else shared_until, first), end)
        if split == first:  # nothing shared
            return self.prefill(self.hist[:, first * T : end * T], first)
        if found is None:  # a plan's rows: row p * W represents plan p
            split *= T
            self.prefill(self.hist[::W, first * T : split], first)
            self.cache.share(split - first * T, groups=self.B, group_rows=W)
        else:
            representatives, table = found
            split = split * T + self.common_tokens(representatives[table], split * T, end * T - 1)
            self.encode_lineages(representatives, first, split)
            self.cache.share(split - first * T, groups=len(representatives), rows=table)
        tokens = self.hist[:, split : end * T]
        logits = self.model.step(tokens, self.cache, split - first * T, self.key_start(W), last_only=True)
        self.filled = end * T - first * T
        return logits

    def encode_lineages(self, representatives: torch.Tensor, first: int, split: int) -> None:
        """Encode the lineages' windows, tokens [first * T, split) of rows `representatives`, into cache
        rows 0..D-1: what all lineages of a plan have in common once per plan, then each lineage's
        rest reading that as a prefix (the part a window move shifts is often the plan's context)."""
        T, W = self.T, self.W
        plans = representatives // W
        common = first * T + self.common_tokens(plans * W, first * T, split - 1, representatives)
        if common == first * T or len(representatives) == self.B:  # nothing to share
            self.prefill(self.hist[representatives, first * T : split], first, representatives)
            return
        self.prefill(self.hist[::W, first * T : common], first)
        self.cache.share(common - first * T, groups=self.B, rows=plans)
        self.read_goals(table=plans)
        key_start = None if not self.padded else self.key_start(W)[representatives]
        self.model.step(self.hist[representatives, common:split], self.cache, common - first * T, key_start,
                        last_only=True)
        self.read_goals(W)
        self.cache.materialize_prefix(len(representatives))

    def common_tokens(self, source: torch.Tensor, start: int, stop: int, rows: torch.Tensor | None = None) -> int:
        """How many of the tokens [start, stop) every row (of `rows`, else all) has in common with
        row `source[i]`, counted from `start` (a host synchronization: for the CPU search of
        `ops.lineages` only)."""
        tokens = self.hist[:, start:stop] if rows is None else self.hist[rows, start:stop]
        same = (tokens == self.hist[source, start:stop]).all(0)
        return int(same.cumprod(0).sum())

    def decode(self, token: torch.Tensor, blocks: int) -> torch.Tensor:
        """Append one token per row; rows are `blocks` copies of the B*W survivors."""
        logits = self.model.decode(token, self.cache, self.filled, self.key_start(self.W, blocks), self.block_weights)
        self.filled += 1
        return logits

    def open_plans(self) -> torch.Tensor:
        """Encode each plan's window up to its current observation once, make its context the prefix
        its rows share, and copy its observation to all its rows (`search_rows`); logits `[B, N+1]`."""
        T, O, W, B, K = self.T, self.O, self.W, self.B, self.model.config.n_transitions
        copies = search_rows(self.config, B) // (B * W)  # of each beam
        u = self.n_ctx
        first = max(0, u - (self.keep if self.config.window == "exact" else K) + 1)
        logits = self.prefill(self.hist[::W, first * T : u * T + O], first)
        self.cache.share((u - first) * T, groups=B, group_rows=W)
        self.cache.gather_rows(torch.arange(B, device=logits.device).repeat_interleave(W).repeat(copies), self.filled)
        return logits

    def window_moves(self, u: int) -> bool:
        """Whether transition `u` starts a new window: at every transition (`exact`), or when the
        block is full (`cached`)."""
        return self.config.window == "exact" or u - self.window_start > self.model.config.n_transitions - 1

    def next_transition(self, u: int, src: torch.Tensor) -> torch.Tensor:
        """Logits of the first token of transition `u` (its first observation token) for the
        survivors, which came from rows `src`: as the authors' cropped forward sees it."""
        if self.window_moves(u):
            return self.reencode(max(0, u - self.keep + 1), u)
        self.cache.gather_rows(src, self.filled)  # cached: move the survivors' rows into place
        return self.decode(self.hist[:, u * self.T - 1], blocks=1)

    def run(self, rng: Philox) -> PlanResult:
        """The search: the same as `tt.reference.beam_plan`'s (or `likelihood_plan`'s), token for token."""
        L, H, T = self.prefix.shape[1], self.config.horizon, self.T
        self.hist = torch.full((self.B * self.W, L + H * T), -1, dtype=torch.long, device=self.prefix.device)
        self.hist[:, :L] = self.prefix.repeat_interleave(self.W, 0)  # the survivors' tokens
        self.filled = 0  # cache slots in use
        if self.goal is not None:  # each plan's goal, encoded once and read by all its rows
            self.model.encode_goal(self.goal, self.cache, self.W)
        best = self._plan_likelihood() if self.config.objective == "likelihood" else self._plan_return(rng)
        start = self.n_ctx * T
        return PlanResult(self.hist[:: self.W, start : start + H * T], best)

    def _plan_return(self, rng: Philox) -> torch.Tensor:
        """Sample E expansions of every beam a transition at a time; keep the W best by predicted
        reward plus value. Returns each plan's best score."""
        config, cache = self.config, self.cache
        O, A, T, B, W, E, H = self.O, self.A, self.T, self.B, self.W, self.E, config.horizon
        BW, device = B * W, self.prefix.device
        rewards = torch.zeros(E * BW, H + 1, device=device)
        step_tokens = torch.empty(E * BW, A + 2, dtype=torch.long, device=device)

        def draw(logits, top_k, cdf, midpoints=None):
            return ops.sample_next(logits, temperature=config.temperature, top_k=top_k, cdf=cdf,
                                   midpoints=midpoints, rng=rng)

        src = torch.arange(E * BW, device=device)  # where each survivor came from (set by the top-k)
        for t in range(H):
            u = self.n_ctx + t  # the transition being planned, in prefix coordinates
            if t == 0:  # all W beams of a plan are equal until their first action
                logits = self.open_plans().repeat_interleave(W, 0).repeat(E, 1)
            else:
                logits = self.next_transition(u, src)
                for i in range(O):
                    token, _ = draw(logits, config.k_obs, config.cdf_obs)
                    self.hist[:, u * T + i] = token
                    logits = self.decode(token, blocks=1)
                cache.tile_rows(BW, E, slice(cache.shared, self.filled))  # the survivors' rows to every copy
                logits = logits.repeat(E, 1)
            for i in range(A):
                token, _ = draw(logits, config.k_act, config.cdf_act)
                step_tokens[:, i] = token
                logits = self.decode(token, blocks=E)
            step_tokens[:, A], r = draw(logits, config.k_rew, config.cdf_rew, self.mids[0])
            logits = self.decode(step_tokens[:, A], blocks=E)
            step_tokens[:, A + 1], v = draw(logits, config.k_rew, config.cdf_rew, self.mids[1])
            rewards[:, t], rewards[:, t + 1] = r, v
            # top-k per plan over its candidates e*W + w
            scores = (rewards * self.discounts).sum(-1).view(E, B, W).permute(1, 0, 2).reshape(B, E * W)
            values, _, src, kept_rewards, kept_tokens = ops.beam_select(scores, W, W, rewards, step_tokens)
            self.hist = self.hist[src % BW]  # src: the source row of each survivor
            self.hist[:, u * T + O : (u + 1) * T] = kept_tokens
            rewards = kept_rewards.repeat(E, 1)
        return values[:, 0]

    def _plan_likelihood(self) -> torch.Tensor:
        """Expand every beam by every token, a token at a time; keep the W most likely sequences
        (the authors' `beam_search`). Returns each plan's best log-likelihood.

        Beams re-rank at every token, but their cache rows are not copied whole: each survivor reads
        its window's first S slots from a row it shares them with (`ancestors`, the cache's prefix
        rows) and only the tokens planned since (about a transition's) move with it. After a window
        is re-encoded by lineage, S is what a row's lineage has in common; otherwise, at each
        transition every row's window is anchored (slots [0, S) its own) and read by its descendants."""
        config, O, A, T, B, W = self.config, self.O, self.A, self.T, self.B, self.W
        filters = [(config.k_obs, config.cdf_obs)] * O + [(config.k_act, config.cdf_act)] * A
        filters += [(config.k_rew, config.cdf_rew)] * 2
        device = self.prefix.device
        plan_rows = torch.arange(B, device=device)[:, None] * W
        self.identity = torch.arange(B * W, device=device)
        self.ancestors = self.identity.clone()  # the row each row reads its window's prefix from
        self.lineage = self.identity.clone()  # rows of equal lineage have planned the same tokens so far
        logits = self.open_plans().repeat_interleave(W, 0)
        self.anchor()
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32  # as log_probs returns
        logp_sum = torch.full((B, W), float("-inf"), dtype=dtype, device=device)
        logp_sum[:, 0] = 0.0  # one live beam per plan to begin with; a beam at -inf is dead
        first, end = self.n_ctx * T + O, (self.n_ctx + config.horizon) * T
        for position in range(first, end):
            top_k, cdf = filters[position % T]
            logp = ops.log_probs(logits, config.temperature, top_k, cdf)
            logp_sum, parents, tokens = ops.beam_expand(logp_sum, logp, W)
            u, new_transition, last = (position + 1) // T, (position + 1) % T == 0, position + 1 == end
            reencoding = new_transition and not last and self.window_moves(u)
            self.follow((plan_rows + parents).view(-1), move_cache=not (last or reencoding))
            self.hist[:, position] = tokens.view(-1)
            if last:
                break
            if reencoding:  # a new window: rows of one lineage share everything before the
                # transition just planned (and what they have in common of it)
                logits = self.reencode(max(0, u - self.keep + 1), u, shared_until=u - 1, lineage=self.lineage)
                if self.cache.prefix_rows is None:  # shared by plan: every row's window its own
                    self.anchor()
                else:  # each row reads its lineage's prefix, a survivor its ancestor's
                    self.ancestors = self.cache.prefix_rows
                    self.lineage.copy_(self.identity)
                continue
            if new_transition:  # cached: fold the ancestors' windows in
                self.anchor()
            logits = self.decode(self.hist[:, position], blocks=1)
        return logp_sum[:, 0]

    def anchor(self) -> None:
        """The rows' windows up to the transition just planned become the prefix their later tokens
        read (through `ancestors`, once beams re-rank). On CPU, after a first anchor, once per
        lineage (`ops.lineages`: the rows that descend from one beam at the last anchor share their
        windows that far, and what they have in common of the transition just planned), so rows
        read shared windows; otherwise every row's window becomes its own."""
        rows, T = self.B * self.W, self.T
        end = self.filled - self.filled % T
        found = None if self.cache.prefix_rows is None else ops.lineages(self.lineage)
        if found is None:
            self.cache.materialize_prefix(rows)
            self.ancestors.copy_(self.identity)
            self.lineage.copy_(self.identity)
            self.cache.share(end, groups=rows, rows=self.ancestors)
            return
        representatives, table = found
        first = self.window_start * T
        split = end + self.common_tokens(representatives[table], first + end, first + self.filled)
        self.cache.gather_windows(self.cache.prefix_rows[representatives], representatives, split)
        self.cache.share(split, groups=len(representatives), rows=table)
        self.ancestors = self.cache.prefix_rows
        self.lineage.copy_(self.identity)

    def follow(self, src: torch.Tensor, move_cache: bool = True) -> None:
        """Survivor i continues row `src[i]`: its tokens, lineage and ancestor's window, and (with
        `move_cache`) its cache slots planned since the anchor. Every per-row record of the search
        follows the survivors here, in one place, whatever the cache does next; a window about to be
        re-encoded from the tokens needs no cache move."""
        if ops.in_place(src):  # every survivor continues its own row (a top-1 filtered token): nothing moves
            return
        self.hist = self.hist[src]
        self.ancestors.copy_(self.ancestors[src])
        self.lineage.copy_(self.lineage[src])
        if move_cache:
            self.cache.gather_rows(src, self.filled)  # slots [anchor, filled) only


@torch.no_grad()
def beam_plan(model: TrajectoryTransformer, prefix_tokens: torch.Tensor, discretizer: Discretizer,
              config: PlanConfig = PlanConfig(), rng: Philox | torch.Generator | None = None,
              cache: KVCache | None = None, goal: torch.Tensor | None = None) -> PlanResult:
    """Plan B trajectories at once from `prefix_tokens [B, L]` (rows left-padded with -1 by whole
    transitions when their contexts differ in length). Same search as `tt.reference.beam_plan`;
    with the same `Philox` state a single plan draws exactly as the reference's. A goal-conditioned
    model plans towards `goal [B, O]` (each plan's goal as observation tokens), encoded once per
    plan into the cache's goal segment that all its beams read."""
    device = model.tok_emb.weight.device
    pad_transitions = check_prefix(model, prefix_tokens)
    if not isinstance(rng, Philox):
        rng = Philox.from_generator(rng, device)
    goal = None if goal is None else goal.to(device)
    return _Search(model, prefix_tokens.to(device), pad_transitions, discretizer, config, cache, goal).run(rng)


class CUDAGraphRecorder:
    """How `PlanGraphs` runs a search eagerly and records it: on the CUDA device of the search."""

    def __init__(self, device: torch.device):
        self.device = device

    def warm_up(self, run: Callable[[], PlanResult]) -> PlanResult:
        """Run once eagerly, off the capture's stream as torch advises (lazy initializations happen here)."""
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                result = run()
            torch.cuda.current_stream().wait_stream(side)
        return result

    def record(self, run: Callable[[], PlanResult]) -> tuple[Callable[[], None], PlanResult]:
        """Record `run` as a graph (nothing executes, so state such as the Philox offset is untouched);
        returns the replay function and the output tensors every replay rewrites."""
        with torch.cuda.device(self.device):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                result = run()
        return graph.replay, result


class PlanGraphs:
    """`beam_plan` replayed as CUDA graphs: a plan's whole search (hundreds of small kernels per
    planned transition) is captured once per input layout (number of plans, prefix length, padded
    or not) and replayed with new prefixes, one launch per plan.

    The Philox state is captured by address and advanced by every replay, so a sequence of plans
    draws exactly as the same sequence of eager plans. The first plan of a layout runs eagerly (it
    also warms up lazy initializations outside the capture); the next ones replay. At most
    `max_graphs` layouts are kept, the least recently used dropped first. `recorder` says how to
    run and record a search (a `CUDAGraphRecorder` by default). A graph may hold a copy of the
    model's weights (the fused decode step reads them stacked), so graphs are dropped and
    recaptured when a parameter has changed in place since (an optimizer step, `load_state_dict`).
    """

    def __init__(self, model: TrajectoryTransformer, discretizer: Discretizer, config: PlanConfig, rng: Philox,
                 max_graphs: int = 16, recorder: CUDAGraphRecorder | None = None):
        self.model, self.discretizer, self.config, self.rng = model, discretizer, config, rng
        self.max_graphs = max_graphs
        self.recorder = recorder if recorder is not None else CUDAGraphRecorder(model.tok_emb.weight.device)
        self.failed: str | None = None  # why capturing failed, if it did (plans then run eagerly)
        self._graphs: OrderedDict[tuple, tuple[_Search, Callable[[], None], PlanResult]] = OrderedDict()
        self._weights_version = self._parameter_versions()

    def _parameter_versions(self) -> tuple[int, ...]:
        """The parameters' version counters: every in-place change bumps one."""
        return tuple(p._version for p in self.model.parameters())

    @property
    def layouts(self) -> int:
        """How many captured layouts are held."""
        return len(self._graphs)

    @torch.no_grad()
    def plan(self, prefix_tokens: torch.Tensor, cache: KVCache | None = None) -> PlanResult:
        """`beam_plan(model, prefix_tokens, discretizer, config, rng, cache)`, from a graph when one
        is captured for this layout. Its tensors are the caller's (copies of the graph's outputs)."""
        if self.failed:
            return beam_plan(self.model, prefix_tokens, self.discretizer, self.config, self.rng, cache)
        pad_transitions = check_prefix(self.model, prefix_tokens)
        versions = self._parameter_versions()
        if versions != self._weights_version:  # the graphs' copies of the weights are stale
            self._graphs.clear()
            self._weights_version = versions
        key = (tuple(prefix_tokens.shape), any(pad_transitions))
        if key not in self._graphs:
            return self._capture(key, prefix_tokens, pad_transitions, cache)
        self._graphs.move_to_end(key)
        search, replay, result = self._graphs[key]
        search.load(prefix_tokens, pad_transitions)
        replay()
        return PlanResult(result.tokens.clone(), result.score.clone())

    def _capture(self, key: tuple, prefix_tokens: torch.Tensor, pad_transitions: list[int],
                 cache: KVCache | None) -> PlanResult:
        device = self.model.tok_emb.weight.device
        search = _Search(self.model, prefix_tokens.to(device, copy=True), pad_transitions, self.discretizer,
                         self.config, cache)
        eager = self.recorder.warm_up(lambda: search.run(self.rng))
        try:
            replay, result = self.recorder.record(lambda: search.run(self.rng))
        except RuntimeError as e:  # an op that cannot be captured: plan eagerly from now on
            warnings.warn(f"capturing the plan as a CUDA graph failed ({e}); planning eagerly", stacklevel=3)
            self.failed = str(e)
            return eager
        self._graphs[key] = (search, replay, result)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return eager


@dataclass
class Plan:
    """One environment's plan, for inspection."""

    tokens: np.ndarray  # [H, T]
    transitions: np.ndarray  # [H, T] bin midpoints; NaN where the model predicted the episode's end
    predicted_return: float  # the plan's score: its discounted return, or its log-likelihood ("likelihood")


class Planner:
    """Drop-in planner for a Gymnasium loop: `act(obs)`, step the environment, `observe(reward, done)`.

    Works on one observation `[O]` or a batch `[n, O]` (one per environment of a vector env);
    each environment keeps its own context of up to C real transitions, reset when it is done.

    What it does to the model it is given: moves it to `device` in place (`model.to(device)`;
    default: the device the model is on) and puts it in eval mode (`model.eval()`, dropout off),
    and keeps a reference to it; it does not change its weights. Train a copy, or call
    `model.train()` again, to go on training it. The planner draws from its own Philox generator
    (`seed`, or fresh entropy from the OS without one): torch's global generator is never read
    or reseeded. `check_env(env)` checks a Gymnasium environment's spaces against the model.

    A goal-conditioned model plans towards a goal observation `[O]`: `goal` for every environment,
    or `set_goal(g, env)` for one (each environment of a vector env its own). Goals are
    discretized with the observation bins; its decode steps read the goal segment in the fused
    kernels (C++ on CPU, Triton on GPUs), but its plans are not captured as CUDA graphs.
    """

    def __init__(self, model: TrajectoryTransformer, discretizer: Discretizer, config: PlanConfig = PlanConfig(),
                 device: str | torch.device | None = None, seed: int | None = None, goal: np.ndarray | None = None):
        if discretizer.transition_dim != model.transition_dim or discretizer.n_bins != model.config.n_bins:
            raise ValueError(f"discretizer ({discretizer.n_bins} bins, {discretizer.transition_dim} dims) does not "
                             f"match the model ({model.config.n_bins} bins, {model.transition_dim} dims)")
        self.device = ops.resolve_device(device) if device is not None else model.tok_emb.weight.device
        self.model = model.to(self.device).eval()
        self.discretizer = discretizer
        self.config = config
        check_config(model, config)
        check_memory(self.model, config, 1)
        ops.check_tokens_per_row(model.config.n_bins + 1, self.device)
        self.O, self.A, self.T = model.config.observation_dim, model.config.action_dim, model.transition_dim
        if seed is None:  # fresh entropy, not torch.seed(): that would reseed the caller's global generator
            seed = int.from_bytes(os.urandom(8), "little") % 2**62
        self.rng = Philox(seed, self.device)
        self.stats = {"plans": 0, "stop_tokens_in_actions": 0}
        self._cache: KVCache | None = None
        self._graphs = None
        self._default_goal: np.ndarray | None = None
        self._goals: dict[int, np.ndarray] = {}
        if config.cuda_graphs and self.device.type == "cuda" and not model.config.goal_conditioned:
            if ops.backends()["sample_next"]["cuda"] == "CUDA":
                self._graphs = PlanGraphs(self.model, discretizer, config, self.rng)
            else:
                warnings.warn("CUDA graphs need tt._C's CUDA kernels (not built): planning eagerly", stacklevel=2)
        self.reset()
        if goal is not None:
            self.set_goal(goal)

    @classmethod
    def load(cls, run_dir: str, device: str | torch.device | None = None, seed: int | None = None,
             goal: np.ndarray | None = None, **overrides) -> Planner:
        """A planner for a trained run directory; keyword arguments override `PlanConfig` fields.
        `device` as in training: "auto" (the default) is CUDA where there is one, else the CPU.
        `goal` as in the constructor (a goal-conditioned run)."""
        from tt.checkpoint import load_run

        device = ops.resolve_device(device or "auto")
        model, discretizer, _, _ = load_run(run_dir, device)
        return cls(model, discretizer, replace(PlanConfig(), **overrides), device, seed, goal)

    def check_env(self, env) -> None:
        """Refuse a Gymnasium environment (single or vector) whose observation or action size is not the
        model's: a ValueError that names both sizes."""
        spaces = {"observation": getattr(env, "single_observation_space", env.observation_space),
                  "action": getattr(env, "single_action_space", env.action_space)}
        for kind, size in (("observation", self.O), ("action", self.A)):
            shape = getattr(spaces[kind], "shape", None)
            if shape is None or len(shape) != 1 or shape[0] != size:
                raise ValueError(f"the model plans {kind}s of size {size}, the environment's {kind} space is "
                                 f"{spaces[kind]}")

    def reset(self, n_envs: int | None = None) -> None:
        """Forget every environment's context and plan."""
        self._n = n_envs
        self._context: list[list[np.ndarray]] = [[] for _ in range(n_envs or 0)]
        self._plans: list[Plan | None] = [None] * (n_envs or 0)
        self._age = [0] * (n_envs or 0)
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def set_goal(self, goal: np.ndarray, env: int | None = None) -> None:
        """The goal observation `[O]` to plan towards: of environment `env`, or of every environment
        (`env=None`; `[n, O]`: one per environment, in order). Plans made after this use it."""
        if not self.model.config.goal_conditioned:
            raise ValueError("set_goal: this model is not goal-conditioned (trained without --goal-conditioned)")
        goal = np.asarray(goal, dtype=np.float64)
        if goal.ndim not in (1, 2) or goal.shape[-1] != self.O or (goal.ndim == 2 and env is not None):
            raise ValueError(f"a goal is an observation [{self.O}] (or [n, {self.O}], one per environment), "
                             f"got shape {tuple(goal.shape)}")
        if not np.isfinite(goal).all():
            raise ValueError("the goal contains NaN or infinite values")
        if env is not None:
            if not 0 <= env < (self._n if self._n is not None else env + 1):
                raise ValueError(f"set_goal: environment {env} is not one of the {self._n} tracked")
            self._goals[env] = goal
        elif goal.ndim == 2:
            if self._n is not None and len(goal) != self._n:
                raise ValueError(f"set_goal: {len(goal)} goals for {self._n} environments")
            self._goals = dict(enumerate(goal))
        else:
            self._default_goal, self._goals = goal, {}

    def _goal_tokens(self, envs: list[int]) -> torch.Tensor | None:
        """The goals of environments `envs` as observation tokens `[len(envs), O]` (None without a goal model)."""
        if not self.model.config.goal_conditioned:
            return None
        goals = [self._goals.get(i, self._default_goal) for i in envs]
        missing = [i for i, g in zip(envs, goals) if g is None]
        if missing:
            raise ValueError(f"the model is goal-conditioned but environment(s) {missing} have no goal: give "
                             "Planner(..., goal=g) or call planner.set_goal(g, env)")
        return torch.from_numpy(self.discretizer.discretize(np.stack(goals), columns=slice(0, self.O)))

    @property
    def current_plans(self) -> list[Plan | None]:
        """Each environment's plan in use (None before its first act or after done)."""
        return list(self._plans)

    # ------------------------------------------------------------------ the control loop

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions for observation(s) `[O]` or `[n, O]`: the first action of each plan."""
        obs, single = self._check_obs(obs)
        if self._pending is not None:
            raise RuntimeError("act() called twice without observe(): report the step's reward and done first")
        need = [i for i in range(len(obs)) if self._plans[i] is None or self._age[i] % self.config.plan_freq == 0
                or self._age[i] >= self.config.horizon]
        if need:
            for i, plan in zip(need, self._plan(obs[need], need)):
                self._plans[i], self._age[i] = plan, 0
        actions = np.stack([self._action(self._plans[i].tokens[self._age[i]]) for i in range(len(obs))])
        self._pending = (obs, actions)
        return actions[0] if single else actions

    def observe(self, reward, done) -> None:
        """Complete the step begun by `act`: reward(s) from the environment, done = terminated or truncated."""
        if self._pending is None:
            raise RuntimeError("observe() called without a preceding act()")
        obs, actions = self._pending
        reward = np.broadcast_to(np.asarray(reward, dtype=np.float64), (len(obs),))
        done = np.broadcast_to(np.asarray(done, dtype=bool), (len(obs),))
        if not np.isfinite(reward).all():
            raise ValueError(f"non-finite reward {reward}")
        C = self.config.max_context_transitions or self.model.config.n_transitions  # None: what the model holds
        placeholder = self.discretizer.n_bins - 1  # the value slot of a context transition is never attended
        for i in range(len(obs)):
            if done[i]:
                self._context[i], self._plans[i], self._age[i] = [], None, 0
                continue
            transition = np.concatenate([obs[i], actions[i], [reward[i], 0.0]])
            tokens = self.discretizer.discretize(transition)
            tokens[-1] = placeholder
            self._context[i] = (self._context[i] + [tokens])[-C:]
            self._age[i] += 1
        self._pending = None

    def plan(self, obs: np.ndarray) -> Plan | list[Plan]:
        """Plan(s) from the current context and `obs`, without acting."""
        obs, single = self._check_obs(obs)
        plans = self._plan(obs, list(range(len(obs))))
        return plans[0] if single else plans

    # ------------------------------------------------------------------ internals

    def _check_obs(self, obs) -> tuple[np.ndarray, bool]:
        obs = np.asarray(obs, dtype=np.float64)
        single = obs.ndim == 1
        obs = obs[None] if single else obs
        if obs.ndim != 2 or obs.shape[1] != self.O:
            raise ValueError(f"observations must be [{self.O}] or [n, {self.O}], got {tuple(np.shape(obs))}")
        if not np.isfinite(obs).all():
            raise ValueError("observation contains NaN or infinite values")
        if self._n is None:
            self.reset(len(obs))
        elif len(obs) != self._n:
            raise ValueError(f"planner tracks {self._n} environments, got {len(obs)} observations; call reset()")
        return obs, single

    def check_memory(self, n_envs: int) -> None:
        """Refuse, before any plan, planning `n_envs` environments at once where it cannot fit in memory."""
        check_memory(self.model, self.config, n_envs)

    def _plan(self, obs: np.ndarray, envs: list[int]) -> list[Plan]:
        obs_tokens = self.discretizer.discretize(obs, columns=slice(0, self.O))
        prefixes = [torch.from_numpy(np.concatenate(self._context[i] + [obs_tokens[k]])) for k, i in enumerate(envs)]
        config = self.config
        prefix = pad_prefixes(prefixes, self.T)
        rows = search_rows(config, len(envs))
        length = self.model.config.block_size
        if self._cache is None or self._cache.max_rows < rows:
            check_memory(self.model, config, len(envs))
            self._cache = self.model.setup_cache(rows, length)
        if self._graphs is not None:
            result = self._graphs.plan(prefix, self._cache)
        else:
            result = beam_plan(self.model, prefix, self.discretizer, config, self.rng, self._cache,
                               self._goal_tokens(envs))
        self.stats["plans"] += len(envs)
        tokens = result.tokens.view(len(envs), config.horizon, self.T).cpu().numpy()
        return [Plan(t, self.discretizer.reconstruct(t), float(s)) for t, s in zip(tokens, result.score.tolist())]

    def _action(self, transition_tokens: np.ndarray) -> np.ndarray:
        """The action of a planned transition; a stop token there is read as the last bin, as the
        authors' reconstruction clips it (counted in `stats`)."""
        tokens = transition_tokens[self.O : self.O + self.A]
        stop = tokens == self.discretizer.stop_token
        if stop.any():
            self.stats["stop_tokens_in_actions"] += int(stop.sum())
            if self.stats["stop_tokens_in_actions"] == int(stop.sum()):
                warnings.warn("the plan's action holds a stop token (the model predicts the episode's end); "
                              "using the last bin, as the authors' reconstruction does", stacklevel=3)
            tokens = np.where(stop, self.discretizer.n_bins - 1, tokens)
        return self.discretizer.reconstruct(tokens, columns=slice(self.O, self.O + self.A))
