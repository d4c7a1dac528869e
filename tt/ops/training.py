"""Training's dropout and attention on the CPU, where the generic kernels are slow.

Dropout's masks are the largest random draws of a training step (one per attention matrix): torch
draws them element by element from its Mersenne twister; `tt::dropout_mask` draws Philox words in
parallel from one seed, itself drawn from torch's generator (so `torch.manual_seed` and a checkpoint's
RNG state still make a run reproducible). Same distribution, other draws. Attention with dropout runs
as its math (scores, the TT mask as an additive bias built once per shape, softmax, dropout, values),
which autograd differentiates, instead of SDPA's math path that draws its own mask.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from tt import reference
from tt.ops import dispatch


class _MaskedScale(torch.autograd.Function):
    """x * scale where mask, else x * 0 (as torch's dropout: NaN stays NaN); the gradient is the same map
    of the output's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        out = torch.empty_like(x)
        torch.ops.tt.dropout_apply(x, mask, scale, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        torch.ops.tt.dropout_apply(grad, mask, ctx.scale, out)
        return out, None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)`: each element zeroed with probability p, the rest scaled by 1/(1-p);
    on the CPU with tt._C from a Philox mask (`tt::dropout_mask`), elsewhere (and under torch.compile,
    whose Inductor draws its own) torch's."""
    if not training or p == 0.0:
        return x
    if torch.compiler.is_compiling() or not (0.0 < p < 1.0) or not dispatch.compiled("dropout_mask", x.device) \
            or x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return F.dropout(x, p, training)
    x = x.contiguous()
    seed = int(torch.randint(0, 2**62, (1,)))  # torch's generator: seeded and checkpointed with the run
    mask = torch.empty(x.shape, dtype=torch.bool)
    torch.ops.tt.dropout_mask(seed, 0, float(p), mask)
    return _MaskedScale.apply(x, mask, 1.0 / (1.0 - p))


@functools.lru_cache(maxsize=32)
def _mask_bias(n_query: int, n_key: int, transition_dim: int, q_offset: int, dtype: torch.dtype) -> torch.Tensor:
    """The TT mask as an additive bias `[n_query, n_key]` (0 allowed, -inf not): built once per shape."""
    allowed = reference.attention_mask(n_query, n_key, transition_dim, q_offset)[0, 0]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, transition_dim: int, q_offset: int,
              key_start: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """TT-masked attention for training on the CPU, q `[R, h, Lq, D]`, k, v `[R, h, Lk, D]`, with
    `dropout` on the attention weights (what `reference.attention` computes, with this module's draws)."""
    scores = q @ k.transpose(-1, -2)
    bias_dtype = torch.float32 if scores.dtype in (torch.bfloat16, torch.float16) else scores.dtype
    if key_start is None:
        build = _mask_bias.__wrapped__ if torch.compiler.is_compiling() else _mask_bias  # compiled: a constant
        bias = build(q.shape[2], k.shape[2], transition_dim, q_offset, bias_dtype)
    else:
        allowed = reference.attention_mask(q.shape[2], k.shape[2], transition_dim, q_offset, key_start)
        bias = torch.zeros(allowed.shape, dtype=bias_dtype).masked_fill_(~allowed, float("-inf"))
    weights = torch.softmax(scores.to(bias_dtype) * (1.0 / math.sqrt(q.shape[-1])) + bias, dim=-1)
    return dropout(weights, dropout_p).to(v.dtype) @ v
