"""The Trajectory Transformer: a GPT over discretized transitions.

Token i of dimension j embeds as row j*N + i of one table (every stop token uses the last
row); the token at window position p is predicted by head p mod T. Attention is causal and
never looks at value tokens (they summarize the future). One forward serves training and
planning: `forward` runs whole windows; `step` runs new tokens against a `KVCache`, and the
slots it is given decide where K/V are written and which part of the mask applies.

A goal-conditioned model (`GPTConfig(goal_conditioned=True)`, the authors' `ConditionalGPT`) puts
a goal's O observation tokens before every sequence: their own embedding table (O*N rows, token i
of dimension j at row j*N + i), no position embedding, causal among themselves and visible to
every trajectory token. The goal holds no window slot: positions, the value-token mask and the
window rule count from the trajectory's first token. Its keys and values are a segment apart
(`goal_keys`; in a cache `encode_goal`), computed once and read by every row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tt import ops
from tt.block_weights import BlockWeights
from tt.cache import KVCache, SharedPrefix


@dataclass
class GPTConfig:
    """Model arguments; defaults as published (n_embd = 32 per head x 4 heads)."""

    observation_dim: int
    action_dim: int
    n_bins: int = 100
    n_transitions: int = 10  # K: transitions per training window
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    embd_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    action_weight: float = 5.0
    reward_weight: float = 1.0
    value_weight: float = 1.0
    goal_conditioned: bool = False  # a goal's O observation tokens precede every sequence (ConditionalGPT)

    def __post_init__(self):
        for name in ("observation_dim", "action_dim", "n_bins", "n_transitions", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def transition_dim(self) -> int:
        return self.observation_dim + self.action_dim + 2

    @property
    def block_size(self) -> int:
        """Trajectory tokens of a window (positions and window slots count these alone)."""
        return self.n_transitions * self.transition_dim - 1

    @property
    def goal_tokens(self) -> int:
        """Tokens before every sequence: the goal's O observation tokens, or none."""
        return self.observation_dim if self.goal_conditioned else 0

    def to_dict(self) -> dict:
        return asdict(self)


# Decoding runs a whole forward per token: the layers' functions are called directly on their
# parameters, which skips nn.Module's per-call machinery (a sizeable share of a small step's time).
def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _layer_norm(x: torch.Tensor, layer: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)


def _dropout(x: torch.Tensor, layer: nn.Dropout) -> torch.Tensor:
    return ops.dropout(x, layer.p) if layer.training and layer.p > 0 else x


class SelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.n_head = config.n_head
        self.transition_dim = config.transition_dim
        self.dropout = config.attn_pdrop
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0, start: int = 0, key_start=None,
                last_only: bool = False, goal: SharedPrefix | None = None):
        """Attention output for every token of x, or for the last one only (`last_only`: the K/V of
        all of them still go to the cache). The goal segment (keys visible to every query) is
        `goal`'s, or the cache's."""
        B, L, C = x.shape
        qkv = _linear(x, self.qkv).view(B, L, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv
        prefix = None
        if cache is not None:
            k, v = cache.write(layer, start, qkv[1:])
            prefix = cache.prefix(layer)
            goal = goal if goal is not None else cache.goal(layer, B)
        if last_only:
            q, start, L = q[:, :, -1:], start + L - 1, 1
        y = ops.attention(q, k, v, transition_dim=self.transition_dim, q_offset=start, key_start=key_start,
                          dropout_p=self.dropout if self.training else 0.0, prefix=prefix, goal=goal)
        return _dropout(_linear(y.transpose(1, 2).reshape(B, L, C), self.proj), self.resid_drop)

    def goal_forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The goal tokens' attention `g [G, O, C]` -> (output [G, O, C], keys, values [G, h, O, D]):
        causal among themselves, never seeing a trajectory token."""
        G, O, C = g.shape
        q, k, v = _linear(g, self.qkv).view(G, O, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return _dropout(_linear(y.transpose(1, 2).reshape(G, O, C), self.proj), self.resid_drop), k, v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return _dropout(_linear(F.gelu(_linear(x, self.fc)), self.proj), self.drop)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, start=0, key_start=None, last_only: bool = False,
                goal: SharedPrefix | None = None):
        """The block on x [B, L, C]; with `last_only`, its output for the last token [B, 1, C] (all
        tokens' K/V still cached), which is all a model's last block owes a prefill. `goal`: this
        layer's goal segment (else the cache's, if it holds one)."""
        y = self.attn.forward(_layer_norm(x, self.ln1), cache, layer, start, key_start, last_only, goal)
        x = (x[:, -1:] if last_only else x) + y
        return x + self.mlp.forward(_layer_norm(x, self.ln2))

    def goal_forward(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on the goal tokens `g [G, O, C]` alone -> (output, this layer's goal keys and
        values [G, h, O, D])."""
        y, k, v = self.attn.goal_forward(_layer_norm(g, self.ln1))
        g = g + y
        return g + self.mlp.forward(_layer_norm(g, self.ln2)), k, v


class TrajectoryTransformer(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok_emb = nn.Embedding(c.n_bins * c.transition_dim + 1, c.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, c.block_size, c.n_embd))
        self.drop = nn.Dropout(c.embd_pdrop)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.head = nn.Parameter(torch.empty(c.transition_dim, c.n_bins + 1, c.n_embd))  # one head per kind
        if c.goal_conditioned:  # token i of goal dimension j embeds as row j*N + i
            self.goal_emb = nn.Embedding(c.n_bins * c.observation_dim, c.n_embd)
        self.apply(self._init_weights)
        nn.init.normal_(self.head, mean=0.0, std=0.02)
        kind_weights = torch.tensor([1.0] * c.observation_dim + [c.action_weight] * c.action_dim
                                    + [c.reward_weight, c.value_weight])
        self.register_buffer("kind_weights", kind_weights, persistent=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def transition_dim(self) -> int:
        return self.config.transition_dim

    @property
    def stop_token(self) -> int:
        return self.config.n_bins

    # ------------------------------------------------------------------ shared pieces

    def _embed(self, tokens: torch.Tensor, slots: torch.Tensor | int, positions: torch.Tensor | int) -> torch.Tensor:
        """tokens [R, n] at window `slots` [n] (kind = slot mod T) and `positions` [R|1, n]; a
        decode step's one slot and position may be ints (fewer small ops, i.e. kernels on a GPU)."""
        N, T = self.config.n_bins, self.transition_dim
        rows = torch.where(tokens == N, N * T, tokens + (slots % T) * N)
        return _dropout(F.embedding(rows, self.tok_emb.weight) + self.pos_emb[0, positions], self.drop)

    def _logits(self, x: torch.Tensor, first_slot: int) -> torch.Tensor:
        """x [R, n, d] after ln_f at window slots first_slot.. -> logits [R, n, N+1] from head slot mod T."""
        T = self.transition_dim
        R, n, d = x.shape
        first = first_slot % T
        if n == 1:
            return (x[:, 0] @ self.head[first].T)[:, None]
        pad_front = first
        pad_back = (-(first + n)) % T
        xp = F.pad(x, (0, 0, pad_front, pad_back)).view(R, -1, T, d)
        logits = torch.einsum("bntd,tvd->bntv", xp, self.head).reshape(R, -1, self.config.n_bins + 1)
        return logits[:, pad_front : pad_front + n]

    # ------------------------------------------------------------------ goals

    def check_goal(self, goal: torch.Tensor | None, rows: int | None = None) -> None:
        """A goal `[rows, O]` of observation tokens in [0, N) for a goal-conditioned model, none
        otherwise: a ValueError that says what is wrong."""
        c = self.config
        if goal is None:
            if c.goal_conditioned:
                raise ValueError("this model is goal-conditioned: give the goal's observation tokens [B, O] "
                                 "(goal=...)")
            return
        if not c.goal_conditioned:
            raise ValueError("a goal was given, but this model is not goal-conditioned (GPTConfig.goal_conditioned)")
        shape = (rows if rows is not None else goal.shape[0], c.observation_dim)
        if goal.dim() != 2 or tuple(goal.shape) != shape or goal.dtype.is_floating_point:
            raise ValueError(f"the goal must be integer tokens [{shape[0]}, {c.observation_dim}] (one observation "
                             f"per row), got {goal.dtype} {tuple(goal.shape)}")
        if goal.numel() and (int(goal.max()) >= c.n_bins or int(goal.min()) < 0):
            raise ValueError(f"goal tokens must lie in [0, {c.n_bins}) (observation bins; no stop token)")

    def goal_keys(self, goal: torch.Tensor) -> torch.Tensor:
        """The goals' keys and values `[2, n_layer, G, h, O, D]` from observation tokens `goal [G, O]`:
        the goal tokens run through the blocks alone (they never see the trajectory)."""
        self.check_goal(goal)
        kv = []
        g = self._embed_goal(goal.to(self.goal_emb.weight.device))
        for block in self.blocks:
            g, k, v = block.goal_forward(g)
            kv.append(torch.stack([k, v]))
        return torch.stack(kv, 1)

    def encode_goal(self, goal: torch.Tensor, cache: KVCache, group_rows: int = 1,
                    rows: torch.Tensor | None = None) -> None:
        """Put the goals `goal [G, O]` (observation tokens) into the cache's goal segment, once: row r
        then reads goal `(r // group_rows) % G`, or `rows[r]` (see `KVCache.read_goals`)."""
        cache.set_goal(self.goal_keys(goal).to(cache.kv.dtype), group_rows, rows)

    def _embed_goal(self, goal: torch.Tensor) -> torch.Tensor:
        """Goal tokens [G, O] -> embeddings [G, O, C] (row j*N + i; no position, no dropout, as the authors)."""
        rows = goal + torch.arange(self.config.observation_dim, device=goal.device) * self.config.n_bins
        return F.embedding(rows, self.goal_emb.weight)

    # ------------------------------------------------------------------ training forward

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, goal: torch.Tensor | None = None):
        """tokens [B, L] (a window starting at a transition boundary) -> logits [B, L, N+1],
        and the weighted cross-entropy when `targets [B, L]` are given. A goal-conditioned model
        takes each window's goal `goal [B, O]` (observation tokens), and only it does."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got {tuple(tokens.shape)}")
        B, L = tokens.shape
        if L > self.config.block_size:
            raise ValueError(f"sequence of {L} tokens exceeds the block size {self.config.block_size}")
        if tokens.numel() and (int(tokens.max()) > self.stop_token or int(tokens.min()) < 0):
            raise ValueError(f"tokens must lie in [0, {self.stop_token}] (N bins plus the stop token)")
        self.check_goal(goal, B)
        slots = torch.arange(L, device=tokens.device)
        x = self._embed(tokens, slots, slots[None])
        g = None if goal is None else self._embed_goal(goal.to(tokens.device))
        for block in self.blocks:
            segment = None
            if g is not None:  # row r reads goal r
                g, k, v = block.goal_forward(g)
                segment = SharedPrefix(k, v, 1)
            x = block(x, goal=segment)
        logits = self._logits(_layer_norm(x, self.ln_f), 0)
        if targets is None:
            return logits
        return logits, self.loss(logits, targets, loss_mask)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor | None = None):
        """Cross-entropy per target weighted by the target's kind (obs 1, act 5, reward 1, value 1),
        times the mask, averaged over all positions (as the authors)."""
        B, L = targets.shape
        ce = F.cross_entropy(logits.reshape(B * L, -1).float(), targets.reshape(-1), reduction="none")
        kinds = (torch.arange(L, device=targets.device) + 1) % self.transition_dim  # targets = tokens[1:]
        weights = self.kind_weights[kinds].repeat(B)
        if loss_mask is not None:
            weights = weights * loss_mask.reshape(-1)
        return (ce * weights).mean()

    # ------------------------------------------------------------------ inference with a KV cache

    def setup_cache(self, max_rows: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        c = self.config
        ref = self.tok_emb.weight
        return KVCache.empty(c.n_layer, max_rows, c.n_head, max_len or c.block_size, c.n_embd // c.n_head,
                             dtype or ref.dtype, ref.device)

    def step(self, tokens: torch.Tensor, cache: KVCache, start: int, key_start: torch.Tensor | None = None,
             last_only: bool = False, block_weights: ops.DecodeWeights | None = None
             ) -> torch.Tensor:
        """Run tokens [R, n] at window slots start..start+n of cache rows 0..R-1.

        Writes their K/V to the cache and attends to slots [0, start+n). `key_start [R]`
        (a multiple of T) marks rows whose window is left-padded: their positions count from
        it. Returns logits [R, n, N+1], or [R, N+1] for the last token when `last_only`.
        In inference, one token per row (on CPU also several with `last_only`, as a prefill or a
        re-encoding runs them) runs the blocks as one compiled call where there is one
        (`ops.decode_layers`: on CPU the blocks' arithmetic in their order, attention a query at
        a time; on Triton one kernel; hooks on the blocks are not called there). A caller
        stepping many times passes `block_weights()` once fetched. A goal-conditioned model reads the goals that
        `encode_goal` put in the cache.
        """
        R, n = tokens.shape
        if start + n > self.config.block_size:
            raise ValueError(f"window slot {start + n} exceeds the block size {self.config.block_size}")
        if self.config.goal_conditioned != (cache.goal_kv is not None):
            raise ValueError("a goal-conditioned model steps with a goal in the cache (encode_goal first)"
                             if self.config.goal_conditioned else "the cache holds a goal, but this model is not "
                             "goal-conditioned")
        slots = start if n == 1 else torch.arange(start, start + n, device=tokens.device)
        positions = slots if key_start is None else (slots - key_start[:, None]).clamp_min(0)
        x = self._embed(tokens.clamp_min(0), slots, positions)
        if (n == 1 or last_only) and not (self.training or torch.is_grad_enabled()) and ops.fused_decode(x):
            weights = block_weights if block_weights is not None else self.block_weights()  # one compiled call:
            x = ops.decode_layers(x[:, 0] if n == 1 else x, weights, self.config.n_head, cache, start,
                                  self.transition_dim, key_start)[:, None]  # the last token's output
        else:  # with last_only, the last block runs attention and MLP for the last token only
            for layer, block in enumerate(self.blocks):
                x = block(x, cache, layer, start, key_start, last_only and layer == len(self.blocks) - 1)
        if last_only:
            return self._logits(_layer_norm(x[:, -1:], self.ln_f), start + n - 1)[:, 0]
        return self._logits(_layer_norm(x, self.ln_f), start)

    def block_weights(self, rows: int | None = None) -> ops.DecodeWeights:
        """The blocks' parameters (`BlockWeights` of each, flat) as `ops.decode_layers` reads
        them (`ops.decode_weights`; given the `rows` of the decode steps to come, packed for them
        where that pays). Building them costs tens of microseconds (a copy for Triton; packing,
        a millisecond), so a decode loop fetches them once, not per token."""
        return ops.decode_weights([w for b in self.blocks for w in BlockWeights.of(b)], rows)

    def prefill(self, tokens: torch.Tensor, cache: KVCache, key_start: torch.Tensor | None = None) -> torch.Tensor:
        """Encode windows tokens [R, L] from slot 0; logits of the last token [R, N+1]."""
        return self.step(tokens, cache, 0, key_start, last_only=True)

    def decode(self, token: torch.Tensor, cache: KVCache, slot: int, key_start: torch.Tensor | None = None,
               block_weights: ops.DecodeWeights | None = None):
        """One new token [R] per row at `slot`; its logits [R, N+1]."""
        return self.step(token[:, None], cache, slot, key_start, last_only=True, block_weights=block_weights)

    # ------------------------------------------------------------------ the authors' checkpoints

    @classmethod
    def from_reference(cls, state_dict: dict, observation_dim: int, action_dim: int, n_head: int = 4,
                       **config_overrides) -> TrajectoryTransformer:
        """Build a model with identical logits from the authors' GPT `state_dict`, or from their
        `ConditionalGPT`'s (it has `goal_emb.weight`): then a goal-conditioned model. Their block size
        and position table count the O goal tokens too (positions past K*T-1 are never read: the
        goal takes none); their class masks the value tokens shifted by O (every T-th of the goal and
        trajectory together), tt masks the trajectory's real value tokens, so logits agree where
        the shift does not matter (see DESIGN, goal conditioning)."""
        sd = {k: v for k, v in state_dict.items() if not k.endswith(".mask")}
        goal_conditioned = "goal_emb.weight" in sd
        try:
            head = sd["head.weight"]
            T, V, d = head.shape
            n_layer = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
            block_size = sd["pos_emb"].shape[1]
            tok_rows = sd["tok_emb.weight"].shape[0]
        except KeyError as e:
            raise ValueError(f"not an authors' GPT state_dict: missing {e}") from e
        if T != observation_dim + action_dim + 2:
            raise ValueError(f"head has {T} outputs per transition but observation_dim + action_dim + 2 = "
                             f"{observation_dim + action_dim + 2}")
        if tok_rows != (V - 1) * T + 1:
            raise ValueError(f"tok_emb has {tok_rows} rows, expected {(V - 1) * T + 1} for N={V - 1}, T={T}")
        if goal_conditioned:  # ConditionalGPT: block size K*T-1 + O, goal_emb of N*O rows
            block_size -= observation_dim
            if sd["goal_emb.weight"].shape[0] != (V - 1) * observation_dim:
                raise ValueError(f"goal_emb has {sd['goal_emb.weight'].shape[0]} rows, expected "
                                 f"{(V - 1) * observation_dim} for N={V - 1}, O={observation_dim}")
        if (block_size + 1) % T:
            raise ValueError(f"block size {block_size} is not K*T-1 for T={T}")
        config = GPTConfig(observation_dim, action_dim, n_bins=V - 1, n_transitions=(block_size + 1) // T,
                           n_layer=n_layer, n_head=n_head, n_embd=d, goal_conditioned=goal_conditioned,
                           **config_overrides)
        model = cls(config).to(sd["tok_emb.weight"].dtype)
        ours = {"tok_emb.weight": sd["tok_emb.weight"], "pos_emb": sd["pos_emb"][:, :block_size], "head": head,
                "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"]}
        if goal_conditioned:
            ours["goal_emb.weight"] = sd["goal_emb.weight"]
        for i in range(n_layer):
            p = f"blocks.{i}."
            for part in ("weight", "bias"):
                qkv = [sd[p + f"attn.{n}.{part}"] for n in ("query", "key", "value")]
                ours[p + f"attn.qkv.{part}"] = torch.cat(qkv)
                for ours_name, theirs in (("attn.proj", "attn.proj"), ("mlp.fc", "mlp.0"), ("mlp.proj", "mlp.2"),
                                          ("ln1", "ln1"), ("ln2", "ln2")):
                    ours[p + f"{ours_name}.{part}"] = sd[p + f"{theirs}.{part}"]
        model.load_state_dict(ours)
        return model

