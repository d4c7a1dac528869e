"""One decode step of the whole transformer in one Triton kernel: every block (LayerNorm, QKV,
K/V into the cache, attention over the row's cache and its shared prefix (its group's, or the
row its prefix row table names) and a goal-conditioned model's goal segment, projection, MLP) for
one new token per row.

Why: a decode step through the PyTorch blocks is ~50 small kernels; at planner sizes (a few
hundred rows of width 128) each moves a few kilobytes, so a plan of ~250 steps is bound by
launches, even replayed from a CUDA graph. In a decode step a row reads only its own keys and
its group's shared prefix, which no row writes, so rows are independent from the first block to
the last: a program takes a tile of rows through all blocks, with the residual stream in
registers.

Numerics: activations, LayerNorm statistics, softmax and accumulators in fp32; fp32 weights
multiply with IEEE precision (no TF32), close enough for token-for-token greedy plans; bf16/fp16
weights multiply on tensor cores with fp32 accumulation. The cache stores K/V in its dtype and
attention reads the new key rounded as the cache holds it. Widths up to `MAX_WIDTH`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tt.block_weights import PER_BLOCK, BlockWeights

from .attention import _attend, _dot, _goal_args, _goal_of, _key_start, _on_device, _precision, _softmax_step

MAX_WIDTH = 256  # the residual tile [rows, width] and one head's weights stay in registers


def supports(n_embd: int, hidden: int) -> bool:
    """Whether the kernel takes a model of this width and MLP width."""
    return n_embd <= MAX_WIDTH and hidden <= 4 * MAX_WIDTH


def stack_weights(weights: list[torch.Tensor]) -> BlockWeights:
    """The blocks' parameters (`BlockWeights` of each, flat) as one contiguous tensor
    `[n_layer, ...]` per field, the form the kernel reads; built once per search, not per step."""
    if len(weights) % PER_BLOCK:
        raise ValueError(f"expected {PER_BLOCK} weights per block, got {len(weights)} in all")
    return BlockWeights(*(torch.stack(weights[i::PER_BLOCK]).contiguous() for i in range(PER_BLOCK)))


@triton.jit
def _layer_norm(h, W, B, offs_c, c_ok, C: tl.constexpr, eps):
    """LayerNorm over the C real columns of h [M, BLOCK_C] (padding columns come out 0)."""
    mean = tl.sum(h, 1) / C
    diff = tl.where(c_ok[None, :], h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, 1) / C + eps)
    w = tl.load(W + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    b = tl.load(B + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    return diff * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _linear(a, W, B, outs, out_ok, ins, in_ok, ld, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """a [M, len(ins)] (fp32) times the rows `outs` / columns `ins` of the row-major weight W
    (leading dimension ld), transposed, plus bias B[outs] (when B is given): [M, len(outs)] fp32."""
    w = tl.load(W + outs[None, :] * ld + ins[:, None], mask=out_ok[None, :] & in_ok[:, None], other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    y = _dot(a.to(w.dtype), w, IEEE)
    if B is not None:
        y += tl.load(B + outs, mask=out_ok, other=0.0).to(tl.float32)[None, :]
    return y


# one compiled kernel for every step of a plan: the slot and the row layout are not specialized on
@triton.jit(do_not_specialize=["R", "slot", "shared", "groups", "group_rows", "goals", "goal_group_rows"])
def _decode_layers_kernel(X, OUT, KV, KS, PR, GK, GV, GR,
                          LN1W, LN1B, QKVW, QKVB, PROJW, PROJB, LN2W, LN2B, FCW, FCB, MPW, MPB,
                          s_kind, s_layer, s_row, s_head, s_slot, s_gg, s_gh, s_gn, s_glayer,
                          R, slot, shared, groups, group_rows, goals, goal_group_rows, n_goal, sm_scale, eps,
                          N_LAYER: tl.constexpr, C: tl.constexpr, H: tl.constexpr, D: tl.constexpr,
                          HIDDEN: tl.constexpr, T: tl.constexpr, HAS_KS: tl.constexpr, HAS_PR: tl.constexpr,
                          HAS_GOAL: tl.constexpr, HAS_GR: tl.constexpr,
                          IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    offs_h = tl.arange(0, BLOCK_H)
    rc_ok = row_ok[:, None] & c_ok[None, :]
    rd_ok = row_ok[:, None] & d_ok[None, :]
    h = tl.load(X + rows[:, None] * C + offs_c[None, :], mask=rc_ok, other=0.0).to(tl.float32)
    ks = tl.zeros([BLOCK_R], tl.int32)
    if HAS_KS:
        ks = tl.load(KS + rows, mask=row_ok, other=0).to(tl.int32)
    own_rows = rows.to(tl.int64) * s_row
    if HAS_PR:  # where each row's prefix lives: the row table, or the row's group
        group_rows_base = tl.load(PR + rows, mask=row_ok, other=0).to(tl.int64) * s_row
    else:
        group_rows_base = ((rows // group_rows) % groups).to(tl.int64) * s_row
    if HAS_GOAL:  # each row's goal (the goal segment: keys of every layer, apart from the cache)
        goal_rows_base = _goal_of(GR, rows, row_ok, goals, goal_group_rows, HAS_GR) * s_gg
    kv_layer = KV  # advanced a layer at a time (no layer * stride product to overflow int32)
    goal_k, goal_v = GK, GV
    for layer in range(N_LAYER):
        a = _layer_norm(h, LN1W + layer * C, LN1B + layer * C, offs_c, c_ok, C, eps)
        qkv_w, qkv_b = QKVW + layer * 3 * C * C, QKVB + layer * 3 * C
        h += tl.load(PROJB + layer * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        for head in tl.static_range(H):
            cols = head * D + offs_d
            q = _linear(a, qkv_w, qkv_b, cols, d_ok, offs_c, c_ok, C, IEEE, UPCAST)
            k = _linear(a, qkv_w, qkv_b, C + cols, d_ok, offs_c, c_ok, C, IEEE, UPCAST)
            v = _linear(a, qkv_w, qkv_b, 2 * C + cols, d_ok, offs_c, c_ok, C, IEEE, UPCAST)
            head_base = head * s_head
            new = kv_layer + (head_base + own_rows + slot * s_slot)[:, None] + offs_d[None, :]
            k = k.to(KV.dtype.element_ty)  # attention reads the new key and value as the cache holds them
            v = v.to(KV.dtype.element_ty)
            tl.store(new, k, mask=rd_ok)
            tl.store(new + s_kind, v, mask=rd_ok)
            m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_R], tl.float32)
            acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
            if HAS_GOAL:  # the goal's keys: every query sees them
                m_i, l_i, acc = _attend(q, m_i, l_i, acc, goal_k, goal_v, goal_rows_base + head * s_gh, s_gn, 0, n_goal,
                                        offs_d, row_ok, d_ok, ks, sm_scale, T, False, False, BLOCK_N)
            m_i, l_i, acc = _attend(q, m_i, l_i, acc, kv_layer, kv_layer + s_kind, head_base + group_rows_base, s_slot,
                                    0, shared, offs_d, row_ok, d_ok, ks, sm_scale, T, True, HAS_KS, BLOCK_N)
            m_i, l_i, acc = _attend(q, m_i, l_i, acc, kv_layer, kv_layer + s_kind, head_base + own_rows, s_slot,
                                    shared, slot, offs_d, row_ok, d_ok, ks, sm_scale, T, True, HAS_KS, BLOCK_N)
            # the new key itself (a query sees its own slot unless it is a value token)
            s = tl.sum(q * k.to(tl.float32), 1) * sm_scale
            s = tl.where(slot % T != T - 1, s, float("-inf"))
            m_i, l_i, alpha, p = _softmax_step(m_i, l_i, s[:, None])
            acc = acc * alpha[:, None] + p * v.to(tl.float32)
            y = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            # residuals add into h as they come (a holds the LayerNorm of h from before the sublayer)
            h += _linear(y, PROJW + layer * C * C, None, offs_c, c_ok, cols, d_ok, C, IEEE, UPCAST)
        a = _layer_norm(h, LN2W + layer * C, LN2B + layer * C, offs_c, c_ok, C, eps)
        h += tl.load(MPB + layer * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        for j in tl.static_range(0, HIDDEN, BLOCK_H):
            hid = j + offs_h
            hid_ok = hid < HIDDEN
            f = _linear(a, FCW + layer * HIDDEN * C, FCB + layer * HIDDEN, hid, hid_ok, offs_c, c_ok, C,
                        IEEE, UPCAST)
            f = 0.5 * f * (1.0 + tl.erf(f * 0.7071067811865476))  # exact GELU, as F.gelu
            h += _linear(f, MPW + layer * C * HIDDEN, None, offs_c, c_ok, hid, hid_ok, HIDDEN, IEEE, UPCAST)
        kv_layer += s_layer
        if HAS_GOAL:
            goal_k += s_glayer
            goal_v += s_glayer
    tl.store(OUT + rows[:, None] * C + offs_c[None, :], h.to(OUT.dtype.element_ty), mask=rc_ok)


def decode_layers(x: torch.Tensor, weights: BlockWeights, n_head: int, kv: torch.Tensor, slot: int,
                  shared: int, groups: int, group_rows: int, transition_dim: int, key_start=None,
                  prefix_rows: torch.Tensor | None = None, eps: float = 1e-5,
                  out: torch.Tensor | None = None, goal_kv: torch.Tensor | None = None, goal_group_rows: int = 1,
                  goal_rows: torch.Tensor | None = None) -> torch.Tensor:
    """The blocks of one decode step: `x [R, C]` (one new token per row at window `slot`) -> `[R, C]`.

    `weights` are `stack_weights(...)`; `kv [2, n_layer, rows, n_head, len, D]` is the KV cache
    (the token's K/V are written at `slot`). Row r attends slots [0, shared) of row
    `(r // group_rows) % groups` (the shared prefix), or of row `prefix_rows[r]` when that table
    (int64 `[R]`, values trusted to lie in [0, groups), as key_start's) is given, and its own
    slots [shared, slot]. With a goal segment `goal_kv [2, n_layer, G, n_head, O, D]` (the cache's
    `goal_kv`) row r also attends, in every layer, the O keys of goal `goal_rows[r]` (a table as
    prefix_rows), or `(r // goal_group_rows) % G`, in the same softmax."""
    R, C = x.shape
    weights = BlockWeights(*weights)
    n_layer, hidden = weights.ln1_weight.shape[0], weights.fc_weight.shape[1]
    D = C // n_head
    for name, t in (("cache", kv), ("goal segment", goal_kv)):
        if t is not None and (t.dim() != 6 or t.shape[:2] != (2, n_layer) or t.shape[3] != n_head or t.shape[5] != D):
            raise ValueError(f"decode_layers: the {name} must be [2, {n_layer}, rows, {n_head}, len, {D}], "
                             f"got {tuple(t.shape)}")
    if kv.stride(5) != 1 or not x.is_contiguous():
        raise ValueError("decode_layers: x and the cache's head dimension must be contiguous")
    if not (shared <= slot < kv.shape[4] and R <= kv.shape[2]):
        raise ValueError(f"decode_layers: {R} rows at slot {slot} (after {shared} shared) do not fit a cache "
                         f"of {kv.shape[2]} rows x {kv.shape[4]} slots")
    if not supports(C, hidden):
        raise ValueError(f"decode_layers: width {C} / MLP {hidden} exceed the kernel's {MAX_WIDTH}")
    has_pr = prefix_rows is not None and shared > 0
    for name, table in (("prefix_rows", prefix_rows if has_pr else None), ("goal_rows", goal_rows)):
        if table is not None and (table.shape != (R,) or table.dtype != torch.long or table.device != x.device):
            raise ValueError(f"decode_layers: {name} must be int64 [{R}] on {x.device}, got {table.dtype} "
                             f"{tuple(table.shape)} on {table.device}")
    out = torch.empty_like(x) if out is None else out
    ks = _key_start(key_start, x.device, out)
    pr = prefix_rows.contiguous() if has_pr else out
    if goal_kv is not None and goal_kv.stride(5) != 1:  # layers a stride apart, heads contiguous
        goal_kv = goal_kv.contiguous()
    goal, has_goal = _goal_args(*((goal_kv[0, 0], goal_kv[1, 0]) if goal_kv is not None else (None, None)),
                                goal_group_rows, goal_rows, out)
    # 8 rows a program: twice the programs of 16 (more SMs busy at a few hundred rows) while the
    # weights are read from L2 by half as many; fp32 spills 32 bytes here against ~4.5 KB at 16
    BLOCK_R = 8
    BLOCK_C = max(16, triton.next_power_of_2(C))
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_H = min(32, max(16, triton.next_power_of_2(hidden)))
    with _on_device(x):
        _decode_layers_kernel[(triton.cdiv(R, BLOCK_R),)](
            x, out, kv, ks, pr, *goal[:3], *weights, *kv.stride()[:5], *goal[3:6],
            0 if goal_kv is None else goal_kv.stride(1), R, slot, shared, max(groups, 1), max(group_rows, 1),
            *goal[6:], 1.0 / math.sqrt(D), eps,
            N_LAYER=n_layer, C=C, H=n_head, D=D, HIDDEN=hidden, T=transition_dim, HAS_KS=key_start is not None,
            HAS_PR=has_pr, **has_goal,
            **_precision(weights.qkv_weight.dtype), BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, BLOCK_H=BLOCK_H,
            BLOCK_N=8, num_warps=8)
    return out
