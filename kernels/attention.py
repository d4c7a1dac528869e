"""Fused attention with the Trajectory Transformer mask (Triton): training forward and backward,
KV-cache decode with an optional split over the cache length, and one-query decode after a
prefix that groups of rows share (the planner's context, read once per group).

Shapes: q `[R, H, Lq, D]`, k and v `[R, H, Lk, D]`, any strides (the cache is read in place).
Query i sits at window slot `q_offset + i`, key j at slot j. A query attends a key when
`j <= q_offset + i` (causal), `j % T != T - 1` (never a value token) and, for rows left-padded
by whole transitions (`key_start [R]`), both lie on the same side of `key_start[r]`.
A goal-conditioned model's goal segment (keys and values `goal_k, goal_v [G, H, O, D]`; row r
reads goal `goal_rows[r]`, or `(r // goal_group_rows) % G` without that table) holds no window
slot: every query attends all O goal keys, scored in the same online softmax as the window's
(forward only: training with a goal takes the reference, see `tt.ops.attention`).
Numerics: scores, softmax statistics and accumulators in fp32 for fp32/bf16/fp16 inputs; fp32
products use IEEE precision (no TF32), so decoding matches the reference closely enough for
token-for-token greedy plans. Head dims 16 to 128 (padded to a power of two inside). Dropout
on the attention weights uses Triton's Philox at (seed, position), regenerated in the backward.
The mask is computed from positions inside the kernels; none is ever materialized.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation; IEEE-exact fp32 products when asked (no TF32)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _probs(q, k, lse, offs_m, offs_n, L, sm_scale, T: tl.constexpr, IEEE: tl.constexpr):
    """Recomputed attention probabilities of a training window block (backward), masked."""
    s = _dot(q, tl.trans(k), IEEE) * sm_scale
    allowed = _mask(offs_m, offs_n, L, 0, T, False) & (offs_m < L)[:, None]
    return tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)


@triton.jit
def _mask(q_pos, k_pos, Lk, ks, T: tl.constexpr, HAS_KS: tl.constexpr):
    allowed = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] % T != T - 1) & (k_pos[None, :] < Lk)
    if HAS_KS:
        allowed = allowed & ((k_pos[None, :] >= ks) == (q_pos[:, None] >= ks))
    return allowed


@triton.jit
def _softmax_step(m_i, l_i, s):
    """Fold a block of scores `s [M, N]` into running softmax statistics (max `m_i`, sum `l_i`):
    the new max and sum, the factor that rescales what came before, the block's weights."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    return m_new, l_i * alpha + tl.sum(p, 1), alpha, p


@triton.jit
def _attend_goal(q, m_i, l_i, acc, GK, GV, base, s_gn, n_goal, offs_d, d_ok, sm_scale, IEEE: tl.constexpr,
                 UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """Fold goal keys [0, n_goal) at GK + base (+ key * s_gn, the head dimension contiguous; values
    at GV + the same), which all the queries q [M, BLOCK_D] see, into their online softmax: a
    matrix product per BLOCK_N keys."""
    for start in range(0, n_goal, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_goal
        ptr = base + offs_n[:, None] * s_gn + offs_d[None, :]
        k = tl.load(GK + ptr, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(GV + ptr, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        s = _dot(q, tl.trans(k), IEEE) * sm_scale
        m_i, l_i, alpha, p = _softmax_step(m_i, l_i, tl.where(n_ok[None, :], s, float("-inf")))
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return m_i, l_i, acc


@triton.jit
def _attend(q, m_i, l_i, acc, K, V, base, s_slot, lo, hi, offs_d, row_ok, d_ok, ks, sm_scale,
            T: tl.constexpr, WINDOW: tl.constexpr, HAS_KS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Fold the keys of slots [lo, hi) of each row, at `K + base [M]` (+ slot * s_slot, the head
    dimension contiguous; values at V + the same), into the online softmax of the fp32 queries
    q [M, BLOCK_D]. Rows differ in where they read, so scores are elementwise products summed over
    the head dimension, not a matrix product. WINDOW: window keys before the queries (never a value
    token; with HAS_KS a real query sees no padding key, slots before its row's key_start `ks`);
    otherwise a goal segment's keys, all visible."""
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        ptr = base[:, None, None] + offs_n[None, :, None] * s_slot + offs_d[None, None, :]
        ok = row_ok[:, None, None] & n_ok[None, :, None] & d_ok[None, None, :]
        k = tl.load(K + ptr, mask=ok, other=0.0).to(tl.float32)
        s = tl.sum(q[:, None, :] * k, 2) * sm_scale
        allowed = n_ok[None, :]
        if WINDOW:
            allowed = allowed & (offs_n[None, :] % T != T - 1)
            if HAS_KS:
                allowed = allowed & (offs_n[None, :] >= ks[:, None])
        s = tl.where(allowed, s, float("-inf"))
        m_i, l_i, alpha, p = _softmax_step(m_i, l_i, s)
        v = tl.load(V + ptr, mask=ok, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, 1)
    return m_i, l_i, acc


@triton.jit
def _goal_of(GR, rows, row_ok, goals, goal_group_rows, HAS_GR: tl.constexpr):
    """The goal that each of `rows` reads (int64): the row table GR, or its group of goal_group_rows."""
    if HAS_GR:
        return tl.load(GR + rows, mask=row_ok, other=0).to(tl.int64)
    else:
        return ((rows // goal_group_rows) % goals).to(tl.int64)


@triton.jit
def _kept(seed, pid_rh, offs_m, offs_n, Lq, Lk, dropout_p):
    """Which attention weights dropout keeps: one uniform per (row*head, query, key), so the
    forward and both backward kernels drop the same entries."""
    rnd = tl.rand(seed, ((pid_rh * Lq + offs_m[:, None]) * Lk + offs_n[None, :]).to(tl.uint32))
    return rnd >= dropout_p


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, KS, GK, GV, GR,
                s_qr, s_qh, s_qm, s_qd, s_kr, s_kh, s_kn, s_kd, s_vr, s_vh, s_vn, s_vd,
                s_os, s_or, s_oh, s_om, s_od, s_ls, s_lr, s_lh, s_gg, s_gh, s_gn,
                H, Lq, Lk, q_offset, split_len, sm_scale, dropout_p, seed, goals, goal_group_rows, n_goal,
                T: tl.constexpr, D: tl.constexpr, HAS_KS: tl.constexpr, DROPOUT: tl.constexpr,
                HAS_GOAL: tl.constexpr, HAS_GR: tl.constexpr,
                IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr):
    pid_m, pid_rh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r, h = pid_rh // H, pid_rh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + r * s_qr + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=(offs_m < Lq)[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    q_pos = q_offset + offs_m
    ks = 0
    if HAS_KS:
        ks = tl.load(KS + r)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if HAS_GOAL:  # the row's goal keys, in the first split: every query sees them (no dropout here)
        goal_base = _goal_of(GR, r, True, goals, goal_group_rows, HAS_GR) * s_gg + h * s_gh
        m_i, l_i, acc = _attend_goal(q, m_i, l_i, acc, GK, GV, goal_base, s_gn, tl.where(split == 0, n_goal, 0),
                                     offs_d, d_ok, sm_scale, IEEE, UPCAST, BLOCK_N)
    lo = split * split_len
    hi = tl.minimum(tl.minimum(Lk, q_offset + (pid_m + 1) * BLOCK_M), lo + split_len)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n < Lk)[:, None] & d_ok[None, :]
        k = tl.load(K + r * s_kr + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_ok, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        s = _dot(q, tl.trans(k), IEEE) * sm_scale
        s = tl.where(_mask(q_pos, offs_n, Lk, ks, T, HAS_KS), s, float("-inf"))
        m_new, l_i, alpha, p = _softmax_step(m_i, l_i, s)
        if DROPOUT:
            p = tl.where(_kept(seed, pid_rh, offs_m, offs_n, Lq, Lk, dropout_p), p / (1.0 - dropout_p), 0.0)
        v = tl.load(V + r * s_vr + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_ok, other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + split * s_os + r * s_or + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :] * s_od,
             out.to(O.dtype.element_ty), mask=(offs_m < Lq)[:, None] & d_ok[None, :])
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(l_safe))
    tl.store(LSE + split * s_ls + r * s_lr + h * s_lh + offs_m, lse, mask=offs_m < Lq)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV,
                     s_r, s_h, s_m, s_d, s_lr, s_lh,
                     H, L, sm_scale, dropout_p, seed,
                     T: tl.constexpr, D: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dK, dV for one block of keys, looping over the queries that can see them. All of q, k, v,
    dO, dK, dV share one contiguous layout [R, H, L, D] (strides s_*)."""
    pid_n, pid_rh = tl.program_id(0), tl.program_id(1)
    r, h = pid_rh // H, pid_rh % H
    base = r * s_r + h * s_h
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    kv_ok = (offs_n < L)[:, None] & d_ok[None, :]
    k = tl.load(K + base + offs_n[:, None] * s_m + offs_d[None, :] * s_d, mask=kv_ok, other=0.0)
    v = tl.load(V + base + offs_n[:, None] * s_m + offs_d[None, :] * s_d, mask=kv_ok, other=0.0)
    if UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    start_m = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M
    for start in range(start_m, L, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q_ok = (offs_m < L)[:, None] & d_ok[None, :]
        q = tl.load(Q + base + offs_m[:, None] * s_m + offs_d[None, :] * s_d, mask=q_ok, other=0.0)
        do = tl.load(DO + base + offs_m[:, None] * s_m + offs_d[None, :] * s_d, mask=q_ok, other=0.0)
        if UPCAST:
            q, do = q.to(tl.float32), do.to(tl.float32)
        lse = tl.load(LSE + r * s_lr + h * s_lh + offs_m, mask=offs_m < L, other=0.0)
        delta = tl.load(DELTA + r * s_lr + h * s_lh + offs_m, mask=offs_m < L, other=0.0)
        p = _probs(q, k, lse, offs_m, offs_n, L, sm_scale, T, IEEE)
        dp = _dot(do, tl.trans(v), IEEE)
        if DROPOUT:
            keep = _kept(seed, pid_rh, offs_m, offs_n, L, L, dropout_p)
            p_drop = tl.where(keep, p / (1.0 - dropout_p), 0.0)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        else:
            p_drop = p
        ds = p * (dp - delta[:, None])
        dv += _dot(tl.trans(p_drop.to(do.dtype)), do, IEEE)
        dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    tl.store(DK + base + offs_n[:, None] * s_m + offs_d[None, :] * s_d, (dk * sm_scale).to(DK.dtype.element_ty),
             mask=kv_ok)
    tl.store(DV + base + offs_n[:, None] * s_m + offs_d[None, :] * s_d, dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ,
                   s_r, s_h, s_m, s_d, s_lr, s_lh,
                   H, L, sm_scale, dropout_p, seed,
                   T: tl.constexpr, D: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ for one block of queries, looping over the keys they can see."""
    pid_m, pid_rh = tl.program_id(0), tl.program_id(1)
    r, h = pid_rh // H, pid_rh % H
    base = r * s_r + h * s_h
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_ok = (offs_m < L)[:, None] & d_ok[None, :]
    q = tl.load(Q + base + offs_m[:, None] * s_m + offs_d[None, :] * s_d, mask=q_ok, other=0.0)
    do = tl.load(DO + base + offs_m[:, None] * s_m + offs_d[None, :] * s_d, mask=q_ok, other=0.0)
    if UPCAST:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(LSE + r * s_lr + h * s_lh + offs_m, mask=offs_m < L, other=0.0)
    delta = tl.load(DELTA + r * s_lr + h * s_lh + offs_m, mask=offs_m < L, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi = tl.minimum(L, (pid_m + 1) * BLOCK_M)
    for start in range(0, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n < L)[:, None] & d_ok[None, :]
        k = tl.load(K + base + offs_n[:, None] * s_m + offs_d[None, :] * s_d, mask=kv_ok, other=0.0)
        v = tl.load(V + base + offs_n[:, None] * s_m + offs_d[None, :] * s_d, mask=kv_ok, other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        p = _probs(q, k, lse, offs_m, offs_n, L, sm_scale, T, IEEE)
        dp = _dot(do, tl.trans(v), IEEE)
        if DROPOUT:
            dp = tl.where(_kept(seed, pid_rh, offs_m, offs_n, L, L, dropout_p), dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    tl.store(DQ + base + offs_m[:, None] * s_m + offs_d[None, :] * s_d, (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=q_ok)


# one compiled kernel for a plan's steps
@triton.jit(do_not_specialize=["n", "S", "Lk", "q_offset", "goals", "goal_group_rows"])
def _decode_after_prefix_kernel(Q, PK, PV, K, V, O, KS, PR, GK, GV, GR,
                                s_qr, s_qh, s_qd, s_pg, s_ph, s_pn, s_pd, s_kr, s_kh, s_kn, s_kd,
                                s_or, s_oh, s_od, s_gg, s_gh, s_gn,
                                G, n, S, Lk, q_offset, sm_scale, goals, goal_group_rows, n_goal,
                                T: tl.constexpr, D: tl.constexpr, HAS_KS: tl.constexpr, HAS_PR: tl.constexpr,
                                HAS_GOAL: tl.constexpr, HAS_GR: tl.constexpr,
                                IEEE: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr):
    """One query per row at slot q_offset: a tile of rows of one group reads the group's shared
    prefix keys (slots [0, S)) as one matrix product, then each row's own keys (slots S + j), in
    one online softmax (no partial outputs, no merge). With a prefix row table (HAS_PR: row r
    reads prefix PR[r]; the launch passes one group of all n = R rows) the rows of a tile read
    different prefixes, so their prefix scores are elementwise products summed over the head
    dimension (BLOCK_N keys at a time), as for their own keys. A goal segment (HAS_GOAL) comes
    first in the same softmax: each row's goal keys, gathered BLOCK_G at a time (rows of a tile
    may read different goals)."""
    pid_m, bg, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = bg % G
    offs_j = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_j < n
    rows = bg * n + offs_j
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + rows[:, None] * s_qr + h * s_qh + offs_d[None, :] * s_qd, mask=q_ok, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    q_pos = tl.full([BLOCK_M], q_offset, tl.int32)
    ks = tl.zeros([BLOCK_M], tl.int32)
    if HAS_KS:
        ks = tl.load(KS + rows, mask=row_ok, other=0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if HAS_GOAL:  # each row's goal keys: all visible, no window slot
        goal_base = _goal_of(GR, rows, row_ok, goals, goal_group_rows, HAS_GR) * s_gg + h * s_gh
        m_i, l_i, acc = _attend(q.to(tl.float32), m_i, l_i, acc, GK, GV, goal_base, s_gn, 0, n_goal, offs_d, row_ok,
                                d_ok, ks, sm_scale, T, False, False, BLOCK_G)
    if HAS_PR:  # each row's own prefix row: a gathered tile [BLOCK_M, BLOCK_N, BLOCK_D]
        q32 = q.to(tl.float32)
        prefix_base = tl.load(PR + rows, mask=row_ok, other=0).to(tl.int64) * s_pg + h * s_ph
        for start in range(0, S, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_ok = offs_n < S
            ptr = prefix_base[:, None, None] + offs_n[None, :, None] * s_pn + offs_d[None, None, :] * s_pd
            ok = row_ok[:, None, None] & n_ok[None, :, None] & d_ok[None, None, :]
            k = tl.load(PK + ptr, mask=ok, other=0.0).to(tl.float32)
            s = tl.sum(q32[:, None, :] * k, 2) * sm_scale
            allowed = (offs_n[None, :] <= q_pos[:, None]) & (offs_n[None, :] % T != T - 1) & n_ok[None, :]
            if HAS_KS:
                allowed = allowed & ((offs_n[None, :] >= ks[:, None]) == (q_pos[:, None] >= ks[:, None]))
            s = tl.where(allowed, s, float("-inf"))
            m_i, l_i, alpha, p = _softmax_step(m_i, l_i, s)
            v = tl.load(PV + ptr, mask=ok, other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v, 1)
    else:
        for start in range(0, S, BLOCK_N):  # the group's prefix: keys shared by every row of the tile
            offs_n = start + tl.arange(0, BLOCK_N)
            kv_ok = (offs_n < S)[:, None] & d_ok[None, :]
            base = g * s_pg + h * s_ph + offs_n[:, None] * s_pn + offs_d[None, :] * s_pd
            k = tl.load(PK + base, mask=kv_ok, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
            s = _dot(q, tl.trans(k), IEEE) * sm_scale
            allowed = (offs_n[None, :] <= q_pos[:, None]) & (offs_n[None, :] % T != T - 1) & (offs_n[None, :] < S)
            if HAS_KS:
                allowed = allowed & ((offs_n[None, :] >= ks[:, None]) == (q_pos[:, None] >= ks[:, None]))
            s = tl.where(allowed, s, float("-inf"))
            m_new, l_i, alpha, p = _softmax_step(m_i, l_i, s)
            v = tl.load(PV + base, mask=kv_ok, other=0.0)
            if UPCAST:
                v = v.to(tl.float32)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m_i = m_new
    q32 = q.to(tl.float32)
    for j in range(0, Lk):  # each row's own keys, one slot at a time (they differ from row to row)
        pos = S + j
        base = rows[:, None] * s_kr + h * s_kh + j * s_kn + offs_d[None, :] * s_kd
        k = tl.load(K + base, mask=q_ok, other=0.0).to(tl.float32)
        s = tl.sum(q32 * k, 1) * sm_scale
        allowed = (pos <= q_pos) & (pos % T != T - 1)
        if HAS_KS:
            allowed = allowed & ((pos >= ks) == (q_pos >= ks))
        m_i, l_i, alpha, p = _softmax_step(m_i, l_i, tl.where(allowed, s, float("-inf"))[:, None])
        v = tl.load(V + base, mask=q_ok, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + p * v
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + rows[:, None] * s_or + h * s_oh + offs_d[None, :] * s_od, out.to(O.dtype.element_ty), mask=q_ok)


def _precision(dtype: torch.dtype) -> dict:
    """IEEE fp32 products for fp32 inputs; bf16 tiles go through fp32 in the interpreter, whose
    bf16 dot is wrong (on GPUs bf16 runs natively)."""
    upcast = dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    return dict(IEEE=dtype == torch.float32 or upcast, UPCAST=upcast)


def _key_start(key_start, device: torch.device, unused: torch.Tensor) -> torch.Tensor:
    """`key_start` as the kernels read it: int32 or int64 (the planner's, without a conversion
    kernel per call), contiguous, on the device; `unused` stands in for the pointer when None."""
    if key_start is None:
        return unused
    if key_start.dtype not in (torch.int32, torch.int64):
        key_start = key_start.long()
    return key_start.to(device).contiguous()


def _goal_args(goal_k, goal_v, goal_group_rows: int, goal_rows, unused: torch.Tensor) -> tuple[tuple, dict]:
    """A goal segment `goal_k, goal_v [G, H, O, D]` as the kernels read it: (keys, values, row
    table, strides of G, H and O, G, group rows, O) and the switches HAS_GOAL, HAS_GR; `unused`
    stands in for absent pointers. Keys and values end up sharing strides, the head dimension
    contiguous (a copy otherwise: a goal is a few keys)."""
    if goal_k is None:
        return (unused, unused, unused, 0, 0, 0, 1, 1, 0), dict(HAS_GOAL=False, HAS_GR=False)
    if goal_k.stride() != goal_v.stride() or goal_k.stride(3) != 1:
        goal_k, goal_v = goal_k.contiguous(), goal_v.contiguous()
    rows = unused if goal_rows is None else goal_rows.contiguous()
    return ((goal_k, goal_v, rows, *goal_k.stride()[:3], goal_k.shape[0], max(goal_group_rows, 1), goal_k.shape[2]),
            dict(HAS_GOAL=True, HAS_GR=goal_rows is not None))


def _on_device(t: torch.Tensor):
    """Launch on `t`'s GPU: Triton launches on the current device, which need not be the tensors'
    (a model on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _blocks(D: int) -> tuple[int, int, int]:
    block_d = max(16, triton.next_power_of_2(D))
    return 32, 32, block_d


def attention_forward(q, k, v, transition_dim: int, q_offset: int = 0, key_start=None, dropout_p: float = 0.0,
                      seed: int = 0, splits: int | None = None, goal_k=None, goal_v=None, goal_group_rows: int = 1,
                      goal_rows=None):
    """Attention output `[R, H, Lq, D]` and log-sum-exp `[R, H, Lq]` (fp32), over the goal
    segment's keys (when given, without dropout) and the window's visible keys."""
    if goal_k is not None and dropout_p > 0:
        raise ValueError("the Triton attention drops no goal weights: dropout with a goal takes the reference")
    R, H, Lq, D = q.shape
    Lk = k.shape[2]
    BLOCK_M, BLOCK_N, BLOCK_D = _blocks(D)
    if splits is None:  # flash-decoding: few query rows against a long cache -> split the keys
        rows = R * H * triton.cdiv(Lq, BLOCK_M)
        splits = max(1, min(triton.cdiv(Lk, 4 * BLOCK_N), 128 // max(rows, 1))) if Lq <= BLOCK_M else 1
    split_len = triton.cdiv(triton.cdiv(Lk, splits), BLOCK_N) * BLOCK_N
    splits = triton.cdiv(Lk, split_len)
    out = torch.empty((splits, R, H, Lq, D), device=q.device, dtype=q.dtype if splits == 1 else torch.float32)
    lse = torch.empty((splits, R, H, Lq), device=q.device, dtype=torch.float32)
    ks = _key_start(key_start, q.device, lse)
    goal, has_goal = _goal_args(goal_k, goal_v, goal_group_rows, goal_rows, lse)
    grid = (triton.cdiv(Lq, BLOCK_M), R * H, splits)
    with _on_device(q):
        _fwd_kernel[grid](
            q, k, v, out, lse, ks, *goal[:3], *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            *lse.stride()[:3], *goal[3:6], H, Lq, Lk, q_offset, split_len, 1.0 / math.sqrt(D), dropout_p, seed,
            *goal[6:], T=transition_dim, D=D, HAS_KS=key_start is not None, DROPOUT=dropout_p > 0, **has_goal,
            **_precision(q.dtype), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    if splits == 1:
        return out[0], lse[0]
    total = torch.logsumexp(lse, dim=0)  # combine the splits by their softmax mass
    weights = torch.exp(lse - total).nan_to_num(0.0)
    return (weights[..., None] * out).sum(0).to(q.dtype), total


def decode_after_prefix(q, k, v, prefix_k, prefix_v, group_rows: int, transition_dim: int, q_offset: int,
                        key_start=None, out=None, prefix_rows=None, goal_k=None, goal_v=None, goal_group_rows: int = 1,
                        goal_rows=None):
    """One query per row `q [R, H, 1, D]` against its group's shared prefix `prefix_k/v [G, H, S, D]`
    (slots [0, S)) and its own keys `k, v [R, H, Lk, D]` (slots S..); rows are laid out
    `[blocks, G, group_rows]`, or row r reads prefix `prefix_rows[r]` when that table (int64 `[R]`,
    values trusted to lie in [0, G)) is given. With a goal segment `goal_k, goal_v [G', H, O, D]`
    (row r reads goal `goal_rows[r]`, or `(r // goal_group_rows) % G'`) its keys count too.
    Returns `[R, H, 1, D]` (written into `out` when given)."""
    if prefix_k.stride() != prefix_v.stride():  # the kernel reads keys and values with one set of strides
        prefix_k, prefix_v = prefix_k.contiguous(), prefix_v.contiguous()
    if k.stride() != v.stride():
        k, v = k.contiguous(), v.contiguous()
    R, H, _, D = q.shape
    G, S = prefix_k.shape[0], prefix_k.shape[2]
    _, BLOCK_N, BLOCK_D = _blocks(D)
    out = torch.empty((R, H, 1, D), device=q.device, dtype=q.dtype) if out is None else out
    ks = _key_start(key_start, q.device, out)
    if prefix_rows is not None:  # one group of all R rows, each reading its own prefix row
        group_rows, G = R, 1
        BLOCK_M = 16
        BLOCK_N = max(2, 256 // BLOCK_D)  # the gathered tile [16, BLOCK_N, BLOCK_D]: 4096 values
        pr = prefix_rows.contiguous()
    else:
        BLOCK_M = min(32, max(16, triton.next_power_of_2(group_rows)))
        pr = out
    goal, has_goal = _goal_args(goal_k, goal_v, goal_group_rows, goal_rows, out)
    # the goal's gathered tile [BLOCK_M, BLOCK_G, BLOCK_D]: at most 4096 values, or 2 keys
    BLOCK_G = max(2, min(4096 // (BLOCK_M * BLOCK_D), triton.next_power_of_2(max(goal[-1], 1))))
    grid = (triton.cdiv(group_rows, BLOCK_M), R // group_rows, H)
    with _on_device(q):
        _decode_after_prefix_kernel[grid](
            q, prefix_k, prefix_v, k, v, out, ks, pr, *goal[:3], q.stride(0), q.stride(1), q.stride(3),
            *prefix_k.stride(), *k.stride(), out.stride(0), out.stride(1), out.stride(3), *goal[3:6],
            G, group_rows, S, k.shape[2], q_offset, 1.0 / math.sqrt(D), *goal[6:],
            T=transition_dim, D=D, HAS_KS=key_start is not None, HAS_PR=prefix_rows is not None, **has_goal,
            **_precision(q.dtype),
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_G=BLOCK_G)
    return out


class TTAttention(torch.autograd.Function):
    """Training attention (q_offset 0, no padding) with its fused backward."""

    @staticmethod
    def forward(ctx, q, k, v, transition_dim: int, dropout_p: float, seed: int):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = attention_forward(q, k, v, transition_dim, 0, None, dropout_p, seed, splits=1)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.transition_dim, ctx.dropout_p, ctx.seed = transition_dim, dropout_p, seed
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dout = dout.contiguous()
        R, H, L, D = q.shape
        BLOCK_M, BLOCK_N, BLOCK_D = _blocks(D)
        delta = (dout.float() * out.float()).sum(-1)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = dict(T=ctx.transition_dim, D=D, DROPOUT=ctx.dropout_p > 0, **_precision(q.dtype),
                      BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
        args = (*q.stride(), *lse.stride()[:2], H, L, 1.0 / math.sqrt(D), ctx.dropout_p, ctx.seed)
        with _on_device(q):
            _bwd_dkdv_kernel[(triton.cdiv(L, BLOCK_N), R * H)](q, k, v, dout, lse, delta, dk, dv, *args, **common)
            _bwd_dq_kernel[(triton.cdiv(L, BLOCK_M), R * H)](q, k, v, dout, lse, delta, dq, *args, **common)
        return dq, dk, dv, None, None, None


def attention(q, k, v, *, transition_dim: int, q_offset: int = 0, key_start=None, dropout_p: float = 0.0,
              seed: int | None = None, goal_k=None, goal_v=None, goal_group_rows: int = 1, goal_rows=None):
    """The TT-masked attention on Triton: differentiable for whole windows, cache reads otherwise.
    A goal segment (see `attention_forward`) is read by the forward only: no gradient, no dropout."""
    if seed is None and dropout_p > 0:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, goal_k, goal_v))
    if needs_grad:
        if q_offset != 0 or key_start is not None or q.shape[2] != k.shape[2] or goal_k is not None:
            raise ValueError("the Triton attention backward covers whole windows (q_offset 0, no padding, no goal)")
        return TTAttention.apply(q, k, v, transition_dim, dropout_p, seed or 0)
    return attention_forward(q, k, v, transition_dim, q_offset, key_start, dropout_p, seed or 0, None, goal_k, goal_v,
                             goal_group_rows, goal_rows)[0]
