"""The one place that chooses how each op runs: compiled (C++/CUDA, Triton) or reference.

Every caller in tt goes through these wrappers: they check arguments, allocate outputs and
pick a backend by device and availability (`dispatch`: resolved once per device, overridden by
`use(...)`; `backends()` says what runs). The compiled ops come from the extension `tt._C`
(`torch.ops.tt.*`); without it the plain-PyTorch references run (with a warning, once).
"""

from __future__ import annotations

import math
import numbers

import torch

from tt import reference
from tt.cache import KVCache, SharedPrefix
from tt.ops import cascade, dispatch, training
from tt.ops.dispatch import Choices, backends, choices, compiled_library, stale_ops, use, using
from tt.ops.packing import DecodeWeights, PackedWeights, decode_weights
from tt.ops.training import dropout
from tt.rng import Philox

__all__ = ["BEAM_EXPAND_MAX_CANDIDATES", "CUDA_BEAM_EXPAND_MAX_K", "CUDA_MAX_TOKENS", "Choices", "DecodeWeights",
           "LOOPED_QUERIES", "PackedWeights", "attention", "backends", "beam_expand", "beam_select",
           "check_tokens_per_row", "choices", "compiled_library", "decode_layers", "decode_weights", "dropout",
           "fused_decode", "log_probs", "philox_uniform", "sample_next", "stale_ops", "use", "using"]

CUDA_MAX_TOKENS = 1024  # tokens per row (N+1) the CUDA sample_next kernel takes (kSampleNextMaxVocab)
BEAM_EXPAND_MAX_CANDIDATES = 2**30  # W*V per plan on every backend (kBeamExpandMaxCandidates)
CUDA_BEAM_EXPAND_MAX_K = 4096  # survivors per plan the CUDA beam_expand kernel takes (kBeamExpandMaxK)
# Queries per row up to which attention after a table of prefixes runs the one-query kernel per query.
LOOPED_QUERIES = 16


def check_tokens_per_row(n_tokens: int, device: torch.device | str) -> None:
    """Refuse, on the host and before any planning, a vocabulary (N+1 tokens) that the kernel
    `sample_next` would run on cannot take: the CUDA kernel holds a row in one block's shared memory."""
    if n_tokens <= CUDA_MAX_TOKENS:  # first: this runs once per sampled token
        return
    device = torch.device(device)
    if device.type == "cuda" and dispatch.compiled("sample_next", device):
        raise ValueError(f"{n_tokens - 1} bins ({n_tokens} tokens with the stop token) are more than the CUDA "
                         f"sampling kernel takes ({CUDA_MAX_TOKENS} tokens, {CUDA_MAX_TOKENS - 1} bins): plan on "
                         "the CPU or use fewer bins")


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
    """Causal attention that never attends value tokens. q `[R, h, Lq, D]`, k/v `[R, h, Lk, D]`;
    query i sits at slot `q_offset + i`; `key_start [R]` marks left padding (see reference).
    With a shared `prefix` (slots [0, S) per group of rows, or per row by its table `prefix.rows`),
    k/v hold each row's slots S... With a `goal` segment (a goal-conditioned model's goal keys and
    values `[G, h, O, D]`, read per group of rows or by the table `goal.rows` as a prefix is), its
    keys are visible to every query: the softmax runs over them and the window's visible keys.
    The kernels read the goal segment in place, in the same softmax pass: on CPU the compiled
    decode kernel (one query per row), on Triton every kernel of inference (decode, prefill).
    Where the result needs a gradient or dropout (training), and on CPU for several queries per
    row, the goal keys are concatenated in front, as the reference does."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"attention expects q [R,h,Lq,D] and k, v [R,h,Lk,D]; got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree")
    n_keys = k.shape[2] + (0 if prefix is None else prefix.length)
    if q_offset + q.shape[2] > n_keys:
        raise ValueError(f"attention: queries reach slot {q_offset + q.shape[2]} but only {n_keys} keys")
    if not q.device == k.device == v.device:
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if key_start is not None and (key_start.shape != (q.shape[0],) or key_start.device != q.device
                                  or key_start.dtype.is_floating_point or key_start.dtype == torch.bool):
        raise ValueError(f"attention: key_start must be integers [{q.shape[0]}] on {q.device}, got "
                         f"{key_start.dtype} {tuple(key_start.shape)} on {key_start.device}")
    if prefix is not None:
        cascade.check_prefix(q, prefix, transition_dim, q_offset, dropout_p)
    if goal is not None:
        cascade.check_goal(q, goal)
    if torch.compiler.is_compiling():  # under torch.compile (training's --compile): plain torch, fused by Inductor
        if prefix is None and goal is None:
            return training.attention(q, k, v, transition_dim, q_offset, key_start, dropout_p)
        return reference.attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset, key_start=key_start,
                                   dropout_p=dropout_p, prefix=prefix, goal=goal)
    backend = dispatch.resolved(q.device).attention
    trains = bool(dropout_p) or (torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *(() if goal is None else (goal.k, goal.v)))))
    if backend == "native" and q.dtype == torch.float32 and not dropout_p \
            and dispatch.has_kernel("decode_attention", q.device.type):
        if q.shape[2] == 1:
            return cascade.one_query(q, k, v, prefix, transition_dim, q_offset, key_start, goal)
        if prefix is not None and prefix.rows is not None and q.shape[2] <= LOOPED_QUERIES and not trains:
            # a few queries per row after prefixes read through a table: the kernel reads the table in
            # place, a query at a time (each seeing its row's keys up to its own slot), where the
            # alternative gathers every row's whole window first
            S = prefix.length
            return torch.cat([cascade.one_query(q[:, :, i : i + 1], k[:, :, : q_offset + i + 1 - S],
                                                v[:, :, : q_offset + i + 1 - S], prefix, transition_dim, q_offset + i,
                                                key_start, goal) for i in range(q.shape[2])], 2)
    if goal is not None:
        if backend != "triton" or trains:  # the goal keys in front, one masked attention (SDPA's autograd)
            return reference.attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                                       key_start=key_start, dropout_p=dropout_p, prefix=prefix, goal=goal)
    if prefix is not None and backend != "reference":
        return cascade.attention_after_prefix(q, k, v, prefix, transition_dim, q_offset, key_start, goal)
    if backend == "native" and prefix is None and q.device.type == "cpu" and trains:
        return training.attention(q, k, v, transition_dim, q_offset, key_start, dropout_p)  # CPU training
    if backend == "triton":
        return dispatch.triton_attention().attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                                             key_start=key_start, dropout_p=dropout_p, **cascade.goal_kwargs(goal))
    return reference.attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                               key_start=key_start, dropout_p=dropout_p, prefix=prefix)


def fused_decode(x: torch.Tensor) -> bool:
    """Whether a step on `x [R, n, C]` (n tokens per row, the last one's output wanted) runs its
    blocks in one call (`decode_layers`): on CPU the C++ op (float32, tt._C built, native
    attention; any n), on Triton's attention backend the Triton kernel (n = 1; float32, bfloat16
    or float16, widths up to kernels.decode.MAX_WIDTH); both read a goal-conditioned model's
    goal segment. `use(decode="blocks")` (`TT_DECODE=blocks`) turns both off."""
    backend = dispatch.resolved(x.device).decode
    if backend == "C++":
        return x.dtype == torch.float32
    return (backend == "Triton" and x.shape[1] == 1 and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and dispatch.triton_decode().supports(x.shape[-1], 4 * x.shape[-1]))


def decode_layers(x: torch.Tensor, weights, n_head: int, cache: KVCache, slot: int,
                  transition_dim: int, key_start: torch.Tensor | None = None) -> torch.Tensor:
    """The blocks of one decode step, `x [R, C]` -> `[R, C]`: what `Block.forward` computes for one
    token per row at `slot`, K/V written to `cache` (see `fused_decode` for where it runs); on
    CPU also `x [R, L, C]`, L tokens per row at slots slot.., -> the last one's output `[R, C]`.
    `weights` come from `decode_weights` (a list is stacked here, per call, where Triton runs).
    The cache's goal segment, if it holds one, is read by every row, on either backend."""
    goal = cache.goal(0, len(x))
    if goal is not None:
        cascade.check_goal((x if x.dim() == 2 else x[:, -1]).reshape(len(x), n_head, 1, -1), goal)
    packed = None
    if isinstance(weights, PackedWeights):
        weights, packed = weights.weights, weights.packed
    if dispatch.resolved(x.device).decode == "Triton":
        stacked = weights if isinstance(weights, tuple) else dispatch.triton_decode().stack_weights(weights)
        return dispatch.triton_decode().decode_layers(x.contiguous(), stacked, n_head, cache.kv, slot, cache.shared,
                                              cache.groups, cache.group_rows, transition_dim, key_start,
                                              prefix_rows=cache.prefix_rows, goal_kv=cache.goal_kv,
                                              goal_group_rows=cache.goal_group_rows,
                                              goal_rows=None if goal is None else goal.rows)
    goal_k, goal_v = (None, None) if goal is None else cache.goal_kv
    return torch.ops.tt.decode_layers(x.contiguous(), weights, cache.k, cache.v, n_head, slot, cache.shared,
                                      cache.groups, cache.group_rows, cache.prefix_rows, transition_dim,
                                      cascade.int64(key_start), goal_k, goal_v, 1 if goal is None else goal.group_rows,
                                      None if goal is None else goal.rows, packed)


def _check_logits(op: str, logits: torch.Tensor, temperature: float) -> None:
    """What sampling and the likelihood search ask of their logits `[R, N+1]` and temperature."""
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"{op} expects logits [rows, N+1], got {tuple(logits.shape)}")
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    cdf: float | None = None,
    midpoints: torch.Tensor | None = None,
    rng: Philox | torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row of `logits [R, N+1]` (see `reference.sample_next` for the semantics, the
    same on every backend: NaN logits count as -inf, infinities are defined, a cdf of 1 or more
    filters nothing).

    With a `Philox` the draw is the same on every backend and device; with a torch generator
    the reference draws by multinomial and the compiled op from a Philox seeded by it.
    """
    _check_logits("sample_next", logits, temperature)
    if top_k is not None and not 1 <= top_k <= logits.shape[1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[1]}], got {top_k}")
    if cdf is not None and not 0.0 <= cdf <= 1.0:
        raise ValueError(f"cdf must be in [0, 1], got {cdf}")
    if midpoints is not None and midpoints.shape != (logits.shape[1] - 1,):
        raise ValueError(f"midpoints must be [{logits.shape[1] - 1}], got {tuple(midpoints.shape)}")
    if isinstance(rng, Philox) and rng.device != logits.device:
        raise ValueError(f"the Philox state is on {rng.device}, the logits on {logits.device}")
    check_tokens_per_row(logits.shape[1], logits.device)
    if not dispatch.compiled("sample_next", logits.device):
        return reference.sample_next(logits, temperature=temperature, top_k=top_k, cdf=cdf, midpoints=midpoints,
                                     rng=rng)
    philox = rng if isinstance(rng, Philox) else Philox.from_generator(rng, logits.device)
    rows = logits.shape[0]
    tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    expectation = torch.empty(rows if midpoints is not None else 0, dtype=acc, device=logits.device)
    mids = None if midpoints is None else midpoints.to(device=logits.device, dtype=acc).contiguous()
    torch.ops.tt.sample_next(logits.contiguous(), float(temperature), top_k or 0, -1.0 if cdf is None else float(cdf),
                             mids, philox.state, tokens, expectation)
    philox.advance()
    return tokens, (expectation if midpoints is not None else None)


def philox_uniform(seed: int, offset: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The uniforms `sample_next` draws for rows 0..n-1 at (seed, offset), float64 `[n]`."""
    device = torch.device(device)
    if not dispatch.compiled("philox_uniform", device):
        return reference.philox_uniform(seed, offset, n).to(device)
    out = torch.empty(n, dtype=torch.float64, device=device)
    torch.ops.tt.philox_uniform(seed, offset, out)
    return out


def beam_select(scores: torch.Tensor, k: int, group: int | None = None, terms: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None):
    """Top-k of each row of `scores [B, M]`, descending, ties to the lower index, NaN last (on every
    backend; checking for NaN would cost a host synchronization per step), and the gather of
    the survivors' rows of `terms` and `tokens` (layout: see `reference.beam_select`).
    Returns (values [B, k], indices [B, k], rows [B*k], terms[rows], tokens[rows])."""
    if scores.dim() != 2:
        raise ValueError(f"beam_select expects scores [B, M], got {tuple(scores.shape)}")
    B, M = scores.shape
    if not 1 <= k <= M:
        raise ValueError(f"beam_select: k={k} must be in [1, {M}]")
    group = group or M
    if M % group:
        raise ValueError(f"beam_select: group {group} does not divide {M} candidates")
    for name, t in (("terms", terms), ("tokens", tokens)):
        if t is not None and (t.dim() != 2 or t.shape[0] != B * M):
            raise ValueError(f"beam_select: {name} must be [B*M={B * M}, n], got {tuple(t.shape)}")
    if not dispatch.compiled("beam_select", scores.device) or M > 4096:
        return reference.beam_select(scores, k, group, terms, tokens)
    device = scores.device
    terms_in = terms if terms is not None else torch.empty(B * M, 0, device=device)
    tokens_in = tokens if tokens is not None else torch.empty(B * M, 0, dtype=torch.long, device=device)
    values = torch.empty(B, k, dtype=scores.dtype, device=device)
    indices = torch.empty(B, k, dtype=torch.long, device=device)
    rows = torch.empty(B * k, dtype=torch.long, device=device)
    terms_out = torch.empty(B * k, terms_in.shape[1], dtype=terms_in.dtype, device=device)
    tokens_out = torch.empty(B * k, tokens_in.shape[1], dtype=torch.long, device=device)
    torch.ops.tt.beam_select(scores.contiguous(), k, group, terms_in.contiguous(), tokens_in.contiguous(),
                             values, indices, rows, terms_out, tokens_out)
    return (values, indices, rows, terms_out if terms is not None else None,
            tokens_out if tokens is not None else None)


def log_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
              cdf: float | None = None) -> torch.Tensor:
    """Filtered log-probabilities `[R, N+1]` of the likelihood search (the authors' `get_logp`; see
    `reference.log_probs`: temperature, cdf filter to -1000, top-k filter to -inf, log-softmax, NaN
    logits as -inf). float16 and bfloat16 logits are upcast to float32, as the reference does.

    On CPU one C++ op (`tt::log_probs`, float32 and float64; bit for bit the reference on x86, see
    csrc/cpu/log_probs.cpp); elsewhere, and where a gradient is needed, the reference's tensor ops
    (no host synchronization either way)."""
    _check_logits("log_probs", logits, temperature)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or not 1 <= top_k <= logits.shape[1]):
        raise ValueError(f"top_k must be None or an integer in [1, {logits.shape[1]}], got {top_k!r}")
    if cdf is not None and not 0.0 <= cdf <= 1.0:
        raise ValueError(f"cdf must be None or in [0, 1], got {cdf}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if (logits.dtype not in (torch.float32, torch.float64) or not dispatch.compiled("log_probs", logits.device)
            or (logits.requires_grad and torch.is_grad_enabled())):
        return reference.log_probs(logits, temperature, top_k, cdf)
    logits = logits.contiguous()
    out = torch.empty_like(logits)
    torch.ops.tt.log_probs(logits, float(temperature), 0 if top_k is None else int(top_k),
                           -1.0 if cdf is None else float(cdf), out)
    return out


def beam_expand(scores: torch.Tensor, logp: torch.Tensor, k: int):
    """The likelihood search's batched top-k (see `reference.beam_expand`, the same on every backend):
    candidate `c = w * V + v` of plan b scores `scores[b, w] + logp[b * W + w, v]` (float32); per plan
    the k best, descending, ties to the lower c, -inf after every finite score, NaN last.
    float64 inputs (the exactness tests' models) take the reference.
    `scores [B, W]`, `logp [B*W, V]`, 1 <= k <= W*V. Returns (values [B, k], parents [B, k],
    tokens [B, k]); a -inf survivor is a dead beam."""
    if scores.dim() != 2 or logp.dim() != 2:
        raise ValueError(f"beam_expand expects scores [B, W] and logp [B*W, V], got {tuple(scores.shape)} and "
                         f"{tuple(logp.shape)}")
    B, W = scores.shape
    V = logp.shape[1]
    if logp.shape[0] != B * W:
        raise ValueError(f"beam_expand: logp must have one row per beam, B*W={B * W}, got {logp.shape[0]}")
    if scores.dtype != logp.dtype or scores.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"beam_expand: scores and logp must both be float32 (or float64), got {scores.dtype} and "
                         f"{logp.dtype}")
    if scores.device != logp.device:
        raise ValueError(f"beam_expand: scores are on {scores.device}, logp on {logp.device}")
    if W * V > BEAM_EXPAND_MAX_CANDIDATES:
        raise ValueError(f"beam_expand: at most {BEAM_EXPAND_MAX_CANDIDATES} candidates per plan, got W*V={W * V}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= W * V:
        raise ValueError(f"beam_expand: k={k!r} must be an integer in [1, W*V={W * V}]")
    k = int(k)
    device = scores.device
    if (not dispatch.compiled("beam_expand", device) or scores.dtype == torch.float64
            or (device.type == "cuda" and k > CUDA_BEAM_EXPAND_MAX_K)):
        return reference.beam_expand(scores, logp, k)  # the kernels take float32 (float64: models in tests)
    values = torch.empty(B, k, dtype=torch.float32, device=device)
    parents = torch.empty(B, k, dtype=torch.long, device=device)
    tokens = torch.empty(B, k, dtype=torch.long, device=device)
    torch.ops.tt.beam_expand(scores.contiguous(), logp.contiguous(), k, values, parents, tokens)
    return values, parents, tokens
