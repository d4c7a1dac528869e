"""Plain-PyTorch references: every op of `tt.ops` and the authors' planner.

This module is the test oracle and the baseline of every benchmark. It favours being
obviously right over being fast: each function mirrors the authors' code
(jannerm/trajectory-transformer, `trajectory/search`) step for step, with ties broken
deterministically (to the lower index) where theirs are left to the backend.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tt.cache import SharedPrefix
from tt.config import PlanConfig
from tt.rng import Philox

# ----------------------------------------------------------------------------- attention


def attention_mask(
    n_query: int,
    n_key: int,
    transition_dim: int,
    q_offset: int = 0,
    key_start: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    n_goal: int = 0,
) -> torch.Tensor:
    """Boolean mask `[R|1, 1, n_query, n_goal + n_key]`, True where a query may attend a key.

    Query i sits at window slot `q_offset + i`, key j at slot j. Allowed: causal (j <= i) and
    not a value token (j mod T != T-1). Rows with `key_start[r] > 0` are left-padded by whole
    transitions: their real queries never see keys before `key_start[r]`; padding queries see
    only padding keys, so they stay finite and never reach real positions.
    A goal-conditioned model's `n_goal` goal keys come first and are visible to every query (they
    hold no window slot: slots, positions and the value-token rule count from the trajectory).
    """
    q_slot = q_offset + torch.arange(n_query, device=device)[:, None]
    k_slot = torch.arange(n_key, device=device)[None, :]
    allowed = ((k_slot <= q_slot) & (k_slot % transition_dim != transition_dim - 1))[None, None]
    if key_start is not None:
        start = key_start.to(device)[:, None, None, None]
        allowed = allowed & ((k_slot >= start) == (q_slot >= start))
    if not n_goal:
        return allowed
    goal = torch.ones(*allowed.shape[:3], n_goal, dtype=torch.bool, device=device)
    return torch.cat([goal, allowed], -1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    transition_dim: int,
    q_offset: int = 0,
    key_start: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    prefix: SharedPrefix | None = None,
    goal: SharedPrefix | None = None,
) -> torch.Tensor:
    """Attention with the Trajectory Transformer mask; q `[R, h, Lq, D]`, k/v `[R, h, Lk, D]`.
    With a shared `prefix` (S slots), k/v hold slots S.. of each row, after its group's prefix.
    With a `goal` segment (a goal-conditioned model's goal keys and values `[G, h, O, D]`, each
    row reading its goal as rows read a shared prefix), its O keys come first, visible to all."""
    if prefix is not None:
        k, v = prefix.expand(q.shape[0], k, v)
    n_goal = 0 if goal is None else goal.length
    if goal is not None:
        k, v = goal.expand(q.shape[0], k, v)
    mask = attention_mask(q.shape[2], k.shape[2] - n_goal, transition_dim, q_offset, key_start, q.device, n_goal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """Attention over keys A and B together from each part's output `[..., D]` and log-sum-exp
    `[...]` (lse_b finite; lse_a -inf where A had no visible key)."""
    weight_a = torch.sigmoid(lse_a - lse_b)[..., None]  # softmax mass of A in the union
    return torch.where(weight_a > 0, torch.lerp(out_b, out_a.to(out_b.dtype), weight_a.to(out_b.dtype)), out_b)


# ----------------------------------------------------------------------------- sampling


def finite_or_minus_inf(logits: torch.Tensor) -> torch.Tensor:
    """NaN logits count as -inf (never drawn): the one NaN policy of `sample_next`, as in
    `csrc/sampling.h`, so nothing downstream sorts or draws from a NaN."""
    return logits.masked_fill(logits.isnan(), float("-inf"))


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension with infinities defined (`csrc/sampling.h`): logits equal to
    the row's maximum weigh exp(0) even when infinite, so +inf tokens share the mass equally and a
    row with no finite logit is uniform. For finite rows it is `logits.softmax(-1)` bit for bit."""
    zmax = logits.amax(dim=-1, keepdim=True)
    return torch.where(logits == zmax, 0.0, logits - zmax).softmax(dim=-1)


def cdf_filters(cdf: float | None) -> bool:
    """Whether the cdf filter acts: not for None and not for cdf >= 1, where the authors' rule is
    decided by float rounding (keep only the top token or filter every token); tt defines a cdf
    of 1 or more as no filter, in the reference, the C++ op and the CUDA kernel alike."""
    return cdf is not None and cdf < 1.0


def filter_cdf(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """The authors' cdf filter: drop (set to -1000) every token whose probability is at most the
    largest sorted probability whose cumulative sum stays below `threshold` (no filter for a
    threshold of 1 or more, see `cdf_filters`)."""
    if not cdf_filters(threshold):
        return logits
    probs = softmax(logits)
    probs_sorted, _ = torch.sort(probs, dim=-1)
    below = torch.cumsum(probs_sorted, dim=-1) < threshold
    bins = torch.arange(logits.shape[-1], device=logits.device)
    last_below = torch.argmax(below * bins, dim=-1)
    cutoff = probs_sorted.gather(-1, last_below[:, None])
    return logits.masked_fill(probs <= cutoff, -1000.0)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (and everything tied with the k-th), -inf elsewhere."""
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Random123's Philox4x32-10 blocks: counter words `[n, 4]` and key words `[n, 2]` (32-bit
    values in any integer dtype) to output words `[n, 4]` (uint64 holding 32-bit values)."""
    mask = np.uint64(0xFFFFFFFF)
    c = [np.asarray(counter, dtype=np.uint64)[:, i] for i in range(4)]
    k0, k1 = (np.asarray(key, dtype=np.uint64)[:, i] for i in range(2))
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return np.stack(c, axis=1)


def philox_uniform(seed: int, offset: int, n: int) -> torch.Tensor:
    """Uniforms in [0, 1) (float64) for rows 0..n-1 from Philox4x32-10, as `csrc/philox.h`.

    Counter (row lo, row hi, offset lo, offset hi), key (seed lo, seed hi); the uniform takes the
    top 53 bits of the first two output words.
    """
    mask = 0xFFFFFFFF
    rows = np.arange(n, dtype=np.uint64)
    counter = np.stack([rows & np.uint64(mask), rows >> np.uint64(32), np.full(n, offset & mask, np.uint64),
                        np.full(n, (offset >> 32) & mask, np.uint64)], axis=1)
    key = np.tile(np.array([seed & mask, (seed >> 32) & mask], np.uint64), (n, 1))
    words = philox4x32_10(counter, key)
    bits = ((words[:, 0] << np.uint64(32)) | words[:, 1]) >> np.uint64(11)
    return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    cdf: float | None = None,
    midpoints: torch.Tensor | None = None,
    rng: torch.Generator | Philox | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw one token per row of `logits [R, N+1]`.

    Order as the authors: temperature, cdf filter, top-k filter, softmax, draw. When
    `midpoints [N]` are given, also return the expectation of the bin midpoints under the raw
    (pre-filter, temperature-scaled) probabilities with the stop token's mass dropped.
    The draw is `torch.multinomial` with a torch generator (the authors' way), or, with a `Philox`,
    the inverse CDF at `philox_uniform(seed, offset, R)`, advancing it: the compiled ops' draw,
    uniform for uniform.
    Non-finite logits: NaN counts as -inf, and infinities follow `softmax` (+inf tokens share the
    mass, a row with no finite logit is uniform); a cdf of 1 or more filters nothing.
    Returns (tokens [R] int64, expectation [R] or None).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logits = finite_or_minus_inf(logits / temperature)
    raw_probs = softmax(logits)
    if cdf_filters(cdf):
        logits = filter_cdf(logits, cdf)
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if isinstance(rng, Philox):
        cum = softmax(logits.double()).cumsum(dim=-1)
        target = philox_uniform(*rng.current(), len(logits)).to(cum.device)[:, None] * cum[:, -1:]
        tokens = torch.searchsorted(cum, target, right=True)[:, 0].clamp_max(logits.shape[-1] - 1)
        rng.advance()
    else:
        tokens = torch.multinomial(softmax(logits), 1, generator=rng)[:, 0]
    expectation = None
    if midpoints is not None:
        expectation = raw_probs[:, :-1] @ midpoints.to(raw_probs)
    return tokens, expectation


# ----------------------------------------------------------------------------- beam selection


def beam_select(scores: torch.Tensor, k: int, group: int | None = None, terms: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None):
    """Top-k of each row of `scores [B, M]`, descending, ties to the lower index, NaN last (after
    -inf, among themselves by index), as the C++ op and the CUDA kernel order them.

    Candidate m of plan b is row `(m // group) * B * group + b * group + m % group` of `terms` and
    `tokens` (the planner's [E, B, W] layout; group = M gives plan-major rows). Returns (values
    [B, k], indices [B, k], rows [B*k], terms[rows], tokens[rows]), the last two None if not given.
    """
    B, M = scores.shape
    group = group or M
    nan = scores.isnan()
    _, order = torch.sort(scores.masked_fill(nan, float("-inf")), dim=-1, descending=True, stable=True)
    _, nan_last = torch.sort(nan.gather(-1, order).to(torch.uint8), dim=-1, stable=True)
    indices = order.gather(-1, nan_last)[:, :k]
    values = scores.gather(-1, indices)
    plan = torch.arange(B, device=scores.device)[:, None]
    rows = ((indices // group) * B * group + plan * group + indices % group).reshape(-1)
    return (values, indices, rows, None if terms is None else terms[rows],
            None if tokens is None else tokens[rows])


def beam_expand(scores: torch.Tensor, logp: torch.Tensor, k: int):
    """The likelihood search's batched top-k: every beam of every plan expanded by every token.

    `scores [B, W]` are the beams' cumulative log-probabilities (-inf: a dead beam), `logp [B*W, V]`
    the log-probabilities of the next token, row `b * W + w` for beam w of plan b. Candidate
    `c = w * V + v` of plan b scores `scores[b, w] + logp[b * W + w, v]` (one float32 addition, as
    the C++ op and the CUDA kernel compute it). Per plan the k best: descending, ties to the lower
    c (beam-major), -0 equal to +0, -inf after every finite score (a plan with fewer than k finite
    candidates ends with -inf ones, by index), NaN last (after -inf, by index).
    Returns (values [B, k], parents [B, k] (w), tokens [B, k] (v)).
    """
    B, W = scores.shape
    V = logp.shape[1]
    candidates = (scores[:, :, None] + logp.reshape(B, W, V)).reshape(B, W * V)
    nan = candidates.isnan()
    key = torch.where(nan | (candidates == 0), 0.0, candidates)  # -0 as +0 whatever the sort does with it
    _, order = torch.sort(key.masked_fill(nan, float("-inf")), dim=-1, descending=True, stable=True)
    _, nan_last = torch.sort(nan.gather(-1, order).to(torch.uint8), dim=-1, stable=True)
    index = order.gather(-1, nan_last)[:, :k]
    return candidates.gather(-1, index), index // V, index % V


# ----------------------------------------------------------------------------- the authors' planner


def crop_window(x: torch.Tensor, max_block: int, transition_dim: int) -> torch.Tensor:
    """Drop whole transitions from the front until at most `max_block` tokens remain."""
    excess = x.shape[1] - max_block
    if excess <= 0:
        return x
    n_crop = -(-excess // transition_dim) * transition_dim
    return x[:, n_crop:]


def exact_crop(model, config: PlanConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The authors' window: every forward sees at most C*T - 1 tokens (and the block size), cropped
    at a transition boundary (`crop_window`)."""
    C, T = config.max_context_transitions, model.transition_dim
    max_block = min(model.config.block_size, C * T - 1 if C else model.config.block_size)
    return lambda x: crop_window(x, max_block, T)


def cached_window_starts(n_ctx: int, n_transitions: int, keep: int, horizon: int) -> dict[int, int]:
    """The `cached` window's first transition while transition u (n_ctx <= u < n_ctx + horizon) is
    planned: it holds everything the block holds from the current observation's transition, grows
    until u would not fit, then slides to the last keep-1 transitions before u."""
    start = max(0, n_ctx - n_transitions + 1)
    starts = {n_ctx: start}
    for u in range(n_ctx + 1, n_ctx + horizon):
        if u - start > n_transitions - 1:
            start = max(0, u - keep + 1)
        starts[u] = start
    return starts


def cached_crop(model, config: PlanConfig, n_ctx: int, pad: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """tt's `cached` window as a crop (not the authors' conditioning: the oracle of tt's own mode).
    The rule counts transitions in the batch's coordinates: `n_ctx` is the longest context of the
    plans searched together and `pad` this plan's padding transitions (n_ctx minus its context), so
    a plan's windows depend on the batch it was planned in."""
    T, K = model.transition_dim, model.config.n_transitions
    keep = min(config.max_context_transitions or K, K)
    starts = cached_window_starts(n_ctx, K, keep, config.horizon)

    def crop(x: torch.Tensor) -> torch.Tensor:
        u = x.shape[1] // T + pad  # the transition of the token predicted next, in the batch's coordinates
        return x[:, max(0, starts[u] - pad) * T :]

    return crop


def window_crop(model, config: PlanConfig, n_ctx: int | None = None, pad: int = 0
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The crop of `config.window`: the authors' (`exact`), or tt's `cached` rule for a plan with `pad`
    padding transitions in a batch whose longest context is `n_ctx` transitions."""
    if config.window == "exact":
        return exact_crop(model, config)
    if n_ctx is None:
        raise ValueError("the cached window's crop needs the batch's longest context (n_ctx)")
    return cached_crop(model, config, n_ctx, pad)


def goal_forward(model, x: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
    """The model's logits for windows `x [R, L]`, every row conditioned on `goal [O]` when given."""
    return model(x) if goal is None else model(x, goal=goal[None].expand(len(x), -1))


def sample_tokens(model, x, n, crop, top_k, cdf, temperature, rng, midpoints=None, goal=None):
    """Append n sampled tokens to every row of x, each from a full forward of the window `crop(x)`
    (conditioned on `goal [O]` for a goal-conditioned model).
    Returns (x, expectations [rows, n] when `midpoints [n, N]` are given)."""
    expectations = []
    for i in range(n):
        logits = goal_forward(model, crop(x), goal)[:, -1]
        token, expectation = sample_next(logits, temperature=temperature, top_k=top_k, cdf=cdf,
                                         midpoints=None if midpoints is None else midpoints[i], rng=rng)
        x = torch.cat([x, token[:, None]], dim=1)
        expectations.append(expectation)
    return x, (torch.stack(expectations, 1) if midpoints is not None else None)


@torch.no_grad()
def beam_plan(model, prefix: torch.Tensor, midpoints: torch.Tensor, config: PlanConfig,
              rng: torch.Generator | Philox | None = None, goal: torch.Tensor | None = None,
              crop: Callable[[torch.Tensor], torch.Tensor] | None = None,
              q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' `beam_plan` for one prefix `[L]` (context transitions, then an observation).

    `midpoints [N, T]` are the discretizer's bin midpoints. Returns the best beam's planned
    tokens `[H * T]` and its score. `config.max_context_transitions=None` means no cropping
    beyond the model's block size. Draws come from `rng`: a torch generator (multinomial, as the
    authors) or a `Philox` (the compiled ops' draws, so fast and reference plans can match draw
    for draw). A goal-conditioned model conditions every forward on `goal [O]` (observation tokens).
    `crop` is the window every forward sees (default: the authors', `exact_crop`).
    `q_fn(observations, actions) -> [rows]` (TT+Q): candidate transition t is worth the discounted
    predicted rewards before it plus discount**t * Q(s_t, a_t), (s_t, a_t) its tokens' bin midpoints (a
    stop token as the last bin), in place of its reward and the value after it.
    """
    O, A, T = model.config.observation_dim, model.config.action_dim, model.transition_dim
    H, W, E = config.horizon, config.beam_width, config.n_expand
    sample = dict(crop=crop or exact_crop(model, config), temperature=config.temperature, rng=rng, goal=goal)
    rew_val_midpoints = midpoints[:, T - 2 :].T.to(torch.float32)

    x = prefix[None].repeat(W, 1)
    rewards = torch.zeros(W, H + 1, device=prefix.device)
    discounts = config.discount ** torch.arange(H + 1, device=prefix.device, dtype=torch.float32)
    for t in range(H):
        x, rewards = x.repeat(E, 1), rewards.repeat(E, 1)
        x, _ = sample_tokens(model, x, A, top_k=config.k_act, cdf=config.cdf_act, **sample)
        x, r_v = sample_tokens(model, x, 2, top_k=config.k_rew, cdf=config.cdf_rew, midpoints=rew_val_midpoints,
                               **sample)
        rewards[:, t], rewards[:, t + 1] = r_v[:, 0], r_v[:, 1]
        if q_fn is None:
            scores = (rewards * discounts).sum(-1)
        else:
            s_a = x[:, -(T) : -2].clamp(max=model.config.n_bins - 1)  # transition t's observation and action
            values = torch.stack([midpoints[s_a[:, d], d] for d in range(O + A)], 1).to(torch.float32)
            rewards[:, t + 1] = q_fn(values[:, :O], values[:, O:]).to(torch.float32)
            scores = (rewards[:, :t] * discounts[:t]).sum(-1) + discounts[t] * rewards[:, t + 1]
        values, index, *_ = beam_select(scores[None], W)
        x, rewards = x[index[0]], rewards[index[0]]
        if t < H - 1:
            x, _ = sample_tokens(model, x, O, top_k=config.k_obs, cdf=config.cdf_obs, **sample)
    return x[0, -H * T :], values[0, 0]


# ----------------------------------------------------------------------------- likelihood search (imitation)


def log_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
              cdf: float | None = None) -> torch.Tensor:
    """The authors' `get_logp` on the last logits `[R, N+1]`: temperature, cdf filter (-1000),
    top-k filter (-inf), log-softmax; non-finite logits as `sample_next` treats them (NaN as -inf,
    +inf tokens share the mass, a row with no finite logit is uniform)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logits = finite_or_minus_inf(logits / temperature)
    if cdf_filters(cdf):
        logits = filter_cdf(logits, cdf)
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    zmax = logits.amax(dim=-1, keepdim=True)
    return torch.where(logits == zmax, 0.0, logits - zmax).log_softmax(dim=-1)


@torch.no_grad()
def likelihood_plan(model, prefix: torch.Tensor, config: PlanConfig, goal: torch.Tensor | None = None,
                    crop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' `beam_search` for one prefix `[L]` (context transitions, then an observation):
    a full forward of the cropped window per token, every beam expanded by every token, the W
    most likely sequences kept (ties to the lower beam-major index; a candidate at -inf never
    survives, so the search starts with one beam). Tokens are planned as `beam_plan` plans them
    (the first action, reward and value, then whole transitions, H in all), each filtered by its
    kind's top-k and cdf. A goal-conditioned model conditions every forward on `goal [O]` (observation
    tokens). `crop` is the window every forward sees (default: the authors', `exact_crop`). Returns
    the best sequence's tokens `[H * T]` (from the observation on) and its log-likelihood."""
    O, T = model.config.observation_dim, model.transition_dim
    crop = crop or exact_crop(model, config)
    filters = config.filters(model.config.observation_dim, model.config.action_dim)
    x, logp_sum = prefix[None], torch.zeros(1, device=prefix.device)
    start = x.shape[1] - O
    for position in range(x.shape[1], start + config.horizon * T):
        logits = goal_forward(model, crop(x), goal)[:, -1]
        top_k, cdf = filters[position % T]
        candidates = (logp_sum[:, None] + log_probs(logits, config.temperature, top_k, cdf)).view(1, -1)
        values, index, *_ = beam_select(candidates, min(config.beam_width, candidates.shape[1]))
        keep = values[0] > float("-inf")
        V = logits.shape[-1]
        x = torch.cat([x[index[0, keep] // V], (index[0, keep] % V)[:, None]], dim=1)
        logp_sum = values[0, keep]
    return x[0, start:], logp_sum[0]


# ----------------------------------------------------------------------------- what a plan scores


@torch.no_grad()
def plan_score(model, prefix: torch.Tensor, tokens: torch.Tensor, midpoints: torch.Tensor, config: PlanConfig,
               goal: torch.Tensor | None = None, crop: Callable[[torch.Tensor], torch.Tensor] | None = None,
               q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The score that the plan `tokens [H * T]` (from the current observation on, as the searches return
    them) has after `prefix [L]`, recomputed from its tokens alone with a full forward of the window
    (`crop`, default the authors') per scored token: for the return objective the discounted sum of
    the predicted rewards' expectations plus the last value's, as `beam_plan` scores its beams (with
    `q_fn`, TT+Q: the rewards before the last transition plus discount**(H-1) * its Q); for
    the likelihood objective the sum of the planned tokens' filtered log-probabilities, as
    `likelihood_plan`. The invariant every search keeps: the score it reports is its plan's score."""
    O, T, H = model.config.observation_dim, model.transition_dim, config.horizon
    crop = crop or exact_crop(model, config)
    x = torch.cat([prefix, tokens[O:]])[None]
    start = len(prefix) - O  # the plan's first token (its observation) in x

    def logits_at(position: int) -> torch.Tensor:  # the logits that predict token `position` of x
        return goal_forward(model, crop(x[:, :position]), goal)[:, -1]

    if config.objective == "likelihood":
        filters = config.filters(model.config.observation_dim, model.config.action_dim)
        total = torch.zeros((), dtype=torch.float64)
        for position in range(len(prefix), start + H * T):
            top_k, cdf = filters[position % T]
            logp = log_probs(logits_at(position), config.temperature, top_k, cdf)
            total = total + logp[0, x[0, position]].double()
        return total
    rew_val_midpoints = midpoints[:, T - 2 :].T.to(torch.float32)

    def expectation(position: int, kind: int) -> torch.Tensor:  # as `sample_next` computes it, without a draw
        logits = logits_at(position)
        logits = finite_or_minus_inf((logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits)
                                     / config.temperature)
        probs = softmax(logits)
        return (probs[:, :-1] @ rew_val_midpoints[kind].to(probs))[0]

    discounts = config.discount ** torch.arange(H + 1, dtype=torch.float32)
    if q_fn is not None:  # TT+Q: the rewards before the last transition, then Q of the last one
        rewards = [expectation(start + t * T + T - 2, 0) for t in range(H - 1)]
        s_a = x[0, start + (H - 1) * T : start + H * T - 2].clamp(max=model.config.n_bins - 1)
        values = torch.stack([midpoints[s_a[d], d] for d in range(T - 2)]).to(torch.float32)[None]
        q = q_fn(values[:, :O], values[:, O:]).to(torch.float32)[0]
        return (torch.stack(rewards) * discounts[: H - 1]).sum() + discounts[H - 1] * q if rewards else discounts[0] * q
    terms = [expectation(start + t * T + T - 2, 0) for t in range(H)] + [expectation(start + H * T - 1, 1)]
    return (torch.stack(terms) * discounts).sum()


# ----------------------------------------------------------------------------- open-loop prediction


@torch.no_grad()
def sample_continuations(model, prefix: torch.Tensor, forced: torch.Tensor, samples: int, config: PlanConfig,
                         rng: torch.Generator | Philox | None = None,
                         crop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """`samples` continuations of each prefix `[B, L]` (all of one length: context transitions, then an
    observation), a full forward of the cropped window per drawn token, as `sample_tokens` draws.

    `forced [B, n]` holds the n tokens that follow each prefix: a token to take as it is (the
    prediction's real actions), or -1 where the model draws, at the same positions in every row.
    Drawn tokens are filtered by their kind's top-k and cdf (`config.k_obs`, `cdf_obs`, ...), at
    `config.temperature`, conditioning on at most `config.max_context_transitions` transitions (the
    planner's window rule; `crop`, by default the authors' `exact_crop`). Rows are laid out
    `[B, samples]` and one `sample_next` call draws a position for all of them, so a `Philox` gives
    the fast path's draws. Returns tokens `[B, samples, n]`.
    """
    T = model.transition_dim
    crop = crop or exact_crop(model, config)
    filters = config.filters(model.config.observation_dim, model.config.action_dim)
    B, L = prefix.shape
    x, given = prefix.repeat_interleave(samples, 0), forced.repeat_interleave(samples, 0)
    for i in range(forced.shape[1]):
        if forced[0, i] >= 0:
            token = given[:, i]
        else:
            logits = model(crop(x))[:, -1]
            top_k, cdf = filters[(L + i) % T]
            token, _ = sample_next(logits, temperature=config.temperature, top_k=top_k, cdf=cdf, rng=rng)
        x = torch.cat([x, token[:, None]], dim=1)
    return x[:, L:].reshape(B, samples, -1)
