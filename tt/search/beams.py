"""The rows of a search and their KV cache: the window rule, shared prefixes, lineages and goals.

A search's loop sees beams: it opens them on the plans' current observations, extends them a token
at a time (`step`), forks survivors from their parents (`fork`, `select`) and moves to the next
transition (`next_transition`, `advance`); how the cache holds the windows behind them is decided
here. Rows are laid out `[copies, B, W]` (copy, plan, beam): the W beams of every plan are the first
B*W rows, decoded there and copied to the other copies only after the tokens they share.

Window modes (DESIGN, "The window rule"):
- `exact`: every transition re-encodes its C-1 previous transitions in one batched prefill,
  then decodes token by token, so each token sees what the authors' cropped forward sees.
- `cached`: the prefix is encoded once and the cache grows; it slides (re-encodes the last
  C-1 transitions) only when the model's block size would be exceeded.
"""

from __future__ import annotations

import torch

from tt.cache import KVCache
from tt.config import PlanConfig
from tt.model import TrajectoryTransformer


def lineages(lineage: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Rows that share a history, encoded once: `lineage [R]` (equal values: equal history) to one
    representative row per lineage `[D]` and each row's lineage `[R]` in [0, D). On CPU only: the
    number of lineages is data-dependent, which elsewhere would cost a host synchronization (and a
    CUDA graph could not capture it); None there, and the caller shares less."""
    if lineage.device.type != "cpu":
        return None
    distinct, table = torch.unique(lineage, return_inverse=True)
    rows = torch.arange(len(lineage))
    representatives = torch.empty(len(distinct), dtype=torch.long).scatter_(0, table, rows)
    return representatives, table


def in_place(rows: torch.Tensor) -> bool:
    """Whether `rows [R]` is 0, 1, ..., R-1 (row i stays row i), where that is cheap to know: on CPU.
    Elsewhere the answer would cost a host synchronization (and break CUDA graph capture): False."""
    return rows.device.type == "cpu" and torch.equal(rows, torch.arange(len(rows)))


def window_transitions(model: TrajectoryTransformer, config: PlanConfig) -> int:
    """Transitions a window keeps: the authors crop to C*T-1 tokens (and to the block size)."""
    return min(config.max_context_transitions or model.config.n_transitions, model.config.n_transitions)


def cache_length(model: TrajectoryTransformer, config: PlanConfig) -> int:
    """Cache slots a row needs: the block (`cached`), or one window (`exact`)."""
    return model.config.block_size if config.window == "cached" else window_transitions(model, config) * \
        model.transition_dim


class Beams:
    """The beams of B plans searched together: their tokens (`tokens [B*W, L + n]`, the prefix then
    what is planned) and the cache rows that encode them. `copies` rows per beam (a transition's
    expansions). With `reranking`, beams change places at every token (`fork`): their windows are then
    shared by lineage and anchored at each transition, so a survivor moves only its latest slots."""

    def __init__(self, model: TrajectoryTransformer, prefix: torch.Tensor, pad_transitions: list[int],
                 config: PlanConfig, copies: int, cache: KVCache, goal: torch.Tensor | None = None):
        c = model.config
        self.model, self.config, self.cache, self.copies = model, config, cache, copies
        self.O, self.T = c.observation_dim, c.transition_dim
        self.prefix = prefix
        self.B, L = prefix.shape
        self.W = config.beam_width
        self.n_ctx = (L - self.O) // self.T  # context transitions of the longest prefix
        self.goal = goal  # [B, O] each plan's goal (observation tokens) for a goal-conditioned model
        self.pad = torch.tensor(pad_transitions, device=prefix.device)  # padding transitions per plan
        self.padded = any(pad_transitions)  # fixed for this search: rows pass key_start or never do
        self.keep = window_transitions(model, config)
        # fetched once (the model does not change during a search), packed for the search's rows
        self.block_weights = model.block_weights(copies * self.B * self.W)
        self._key_start: dict[tuple[int, int], torch.Tensor] = {}

    def load(self, prefix: torch.Tensor, pad_transitions: list[int]) -> None:
        """New inputs of the same shape (and padded or not as before) into the search's tensors."""
        if prefix.shape != self.prefix.shape or any(pad_transitions) != self.padded:
            raise ValueError("load: the prefix shape and whether it is padded must stay as prepared")
        self.prefix.copy_(prefix)
        self.pad.copy_(torch.tensor(pad_transitions))

    # ------------------------------------------------------------------ what a loop calls

    def open(self, planned: int, reranking: bool = False) -> torch.Tensor:
        """Start a search of `planned` tokens after the prefixes: encode each plan's window up to its
        current observation once, make its context the prefix its rows share, and copy its observation
        to every row. Returns the logits of every row `[copies * B * W, N+1]`."""
        L, W, B = self.prefix.shape[1], self.W, self.B
        self.tokens = torch.full((B * W, L + planned), -1, dtype=torch.long, device=self.prefix.device)
        self.tokens[:, :L] = self.prefix.repeat_interleave(W, 0)
        self.end, self.reranking, self.filled = L + planned, reranking, 0  # filled: cache slots in use
        self.src = None  # where each row came from at the last selection
        if self.goal is not None:  # each plan's goal, encoded once and read by all its rows
            self.model.encode_goal(self.goal, self.cache, W)
        u, K = self.n_ctx, self.model.config.n_transitions
        first = max(0, u - (self.keep if self.config.window == "exact" else K) + 1)
        logits = self.prefill(self.tokens[::W, first * self.T : L], first)
        self.cache.share((u - first) * self.T, groups=B, group_rows=W)
        rows = torch.arange(B, device=logits.device).repeat_interleave(W).repeat(self.copies)
        self.cache.gather_rows(rows, self.filled)
        if reranking:
            self.identity = torch.arange(B * W, device=logits.device)
            self.ancestors = self.identity.clone()  # the row each row reads its window's prefix from
            self.lineage = self.identity.clone()  # rows of equal lineage have planned the same tokens so far
            self.anchor()
        return logits.repeat_interleave(W, 0).repeat(self.copies, 1)

    def step(self, token: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """Append one token per row; rows are `copies` copies of the B*W beams. Next logits."""
        logits = self.model.decode(token, self.cache, self.filled, self.key_start(self.W, copies), self.block_weights)
        self.filled += 1
        return logits

    def expand(self) -> None:
        """Every beam's rows of the transition so far to each of its copies (before its action)."""
        self.cache.tile_rows(self.B * self.W, self.copies, slice(self.cache.shared, self.filled))

    def select(self, src: torch.Tensor, position: int, tokens: torch.Tensor) -> None:
        """The beams continue candidate rows `src [B*W]` (of `copies * B * W`), whose tokens from
        `position` on are `tokens`. Their cache rows move at the next transition."""
        self.tokens = self.tokens[src % (self.B * self.W)]
        self.tokens[:, position : position + tokens.shape[1]] = tokens
        self.src = src

    def next_transition(self, u: int) -> torch.Tensor:
        """Logits of the first token of transition `u` (its first observation token) for the beams, as
        the authors' cropped forward sees it: a fresh window, or the last selection's rows moved into
        place and the last token decoded."""
        if self.window_moves(u):
            return self.reencode(max(0, u - self.keep + 1), u)
        self.cache.gather_rows(self.src, self.filled)
        return self.step(self.tokens[:, u * self.T - 1])

    def fork(self, src: torch.Tensor | None, position: int) -> None:
        """Beam i continues row `src[i]` (None: every beam its own), whose token at `position` is being
        chosen: its tokens, lineage and ancestor's window, and its cache slots planned since the anchor
        (unless the next token opens a new window, or there is none). Every per-row record of the
        search follows the survivors here, in one place, whatever the cache does next."""
        if src is None or in_place(src):  # every beam continues its own row: nothing moves
            return
        self.tokens = self.tokens[src]
        self.ancestors.copy_(self.ancestors[src])
        self.lineage.copy_(self.lineage[src])
        nxt = position + 1
        if nxt < self.end and not (nxt % self.T == 0 and self.window_moves(nxt // self.T)):
            self.cache.gather_rows(src, self.filled)  # slots [anchor, filled) only

    def advance(self, position: int) -> torch.Tensor:
        """The logits that follow the token at `position`: a new window where transition `position + 1`
        starts one (re-encoded by lineage while beams re-rank), else that token decoded."""
        u, new_transition = (position + 1) // self.T, (position + 1) % self.T == 0
        if new_transition and self.window_moves(u):
            if not self.reranking:
                return self.reencode(max(0, u - self.keep + 1), u)
            # rows of one lineage share everything before the transition just planned (and what
            # they have in common of it)
            logits = self.reencode(max(0, u - self.keep + 1), u, shared_until=u - 1, lineage=self.lineage)
            if self.cache.prefix_rows is None:  # shared by plan: every row's window its own
                self.anchor()
            else:  # each row reads its lineage's prefix, a survivor its ancestor's
                self.ancestors = self.cache.prefix_rows
                self.lineage.copy_(self.identity)
            return logits
        if new_transition and self.reranking:  # cached: fold the ancestors' windows in
            self.anchor()
        return self.step(self.tokens[:, position])

    def window_moves(self, u: int) -> bool:
        """Whether transition `u` starts a new window: at every transition (`exact`), or when the
        block is full (`cached`)."""
        return self.config.window == "exact" or u - self.window_start > self.model.config.n_transitions - 1

    # ------------------------------------------------------------------ windows in the cache

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
        self.window_start = first  # cache slot 0 now holds transition `first` (prefix coordinates)
        self._key_start.clear()
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
        [copies, B, W] and [B, W] with W), or plan `table[r]`; nothing without a goal."""
        if self.goal is not None:
            self.cache.read_goals(group_rows, table)

    def reencode(self, first: int, end: int, shared_until: int | None = None,
                 lineage: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the beams' transitions [first, end) as a fresh window; logits of its last token.
        Rows share their tokens before transition `shared_until` with the other rows of their
        plan (by default: the plan's context), or, given `lineage [B*W]`, with the rows of equal
        lineage (the beam each descends from at the last anchor; where `lineages` cannot group
        rows, by plan), and then as many more tokens as every row has in common with its lineage
        (with `k_obs=1` the next observation: only actions branch). That part of the window is
        encoded once per plan or lineage and read by its rows as a shared prefix; the rest once per
        row."""
        T, W = self.T, self.W
        found = None if lineage is None else lineages(lineage)
        if found is None:  # by plan: rows share the plan's context
            shared_until = None
        split = min(max(self.n_ctx if shared_until is None else shared_until, first), end)
        if split == first:  # nothing shared
            return self.prefill(self.tokens[:, first * T : end * T], first)
        if found is None:  # a plan's rows: row p * W represents plan p
            split *= T
            self.prefill(self.tokens[::W, first * T : split], first)
            self.cache.share(split - first * T, groups=self.B, group_rows=W)
        else:
            representatives, table = found
            split = split * T + self.common_tokens(representatives[table], split * T, end * T - 1)
            self.encode_lineages(representatives, first, split)
            self.cache.share(split - first * T, groups=len(representatives), rows=table)
        tokens = self.tokens[:, split : end * T]
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
            self.prefill(self.tokens[representatives, first * T : split], first, representatives)
            return
        self.prefill(self.tokens[::W, first * T : common], first)
        self.cache.share(common - first * T, groups=self.B, rows=plans)
        self.read_goals(table=plans)
        key_start = None if not self.padded else self.key_start(W)[representatives]
        self.model.step(self.tokens[representatives, common:split], self.cache, common - first * T, key_start,
                        last_only=True)
        self.read_goals(W)
        self.cache.materialize_prefix(len(representatives))

    def common_tokens(self, source: torch.Tensor, start: int, stop: int, rows: torch.Tensor | None = None) -> int:
        """How many of the tokens [start, stop) every row (of `rows`, else all) has in common with
        row `source[i]`, counted from `start` (a host synchronization: for the CPU search of
        `lineages` only)."""
        tokens = self.tokens[:, start:stop] if rows is None else self.tokens[rows, start:stop]
        same = (tokens == self.tokens[source, start:stop]).all(0)
        return int(same.cumprod(0).sum())

    def anchor(self) -> None:
        """The rows' windows up to the transition just planned become the prefix their later tokens
        read (through `ancestors`, once beams re-rank). On CPU, after a first anchor, once per
        lineage (`lineages`: the rows that descend from one beam at the last anchor share their
        windows that far, and what they have in common of the transition just planned), so rows
        read shared windows; otherwise every row's window becomes its own."""
        rows, T = self.B * self.W, self.T
        end = self.filled - self.filled % T
        found = None if self.cache.prefix_rows is None else lineages(self.lineage)
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
