"""Attention after a shared prefix (cascade attention): each group's queries against its prefix in one
batch, each row against its own keys (and a goal segment), merged by their log-sum-exps; the
compiled one-query kernel; the checks of prefixes and goal segments."""

from __future__ import annotations

import torch

from tt import reference
from tt.cache import SharedPrefix
from tt.ops import dispatch


def int64(key_start: torch.Tensor | None) -> torch.Tensor | None:
    """key_start as the C++ ops read it: contiguous int64 (the planner's already is: no copy)."""
    return None if key_start is None else key_start.to(torch.long).contiguous()


def check_prefix(q: torch.Tensor, prefix: SharedPrefix, transition_dim: int, q_offset: int,
                  dropout_p: float) -> None:
    R, h, _, D = q.shape
    G, S = prefix.k.shape[0], prefix.length
    if prefix.k.shape != prefix.v.shape or prefix.k.shape[1:] != (h, S, D) or prefix.k.device != q.device:
        raise ValueError(f"attention: shared prefix k/v must be [G, {h}, S, {D}] on {q.device}, "
                         f"got {tuple(prefix.k.shape)}, {tuple(prefix.v.shape)} on {prefix.k.device}")
    if prefix.rows is not None:  # a row table: any number of rows, each reading any of the G prefixes
        rows = prefix.rows
        if not isinstance(rows, torch.Tensor) or rows.shape != (R,) or rows.dtype != torch.long \
                or rows.device != q.device:
            what = (f"{rows.dtype} {tuple(rows.shape)} on {rows.device}" if isinstance(rows, torch.Tensor)
                    else type(rows).__name__)
            raise ValueError(f"attention: the shared prefix's rows must be int64 [{R}] on {q.device} (one prefix "
                             f"row per query row), got {what}")
    elif R % (G * prefix.group_rows):
        raise ValueError(f"attention: {R} rows are not whole blocks of {G} groups x {prefix.group_rows} rows")
    if q_offset < S or (S % transition_dim and prefix.rows is None):
        raise ValueError(f"attention: a shared prefix lies before the queries and, read by groups of rows, "
                         f"covers whole transitions; got {S} slots (T={transition_dim}) and queries from slot "
                         f"{q_offset}")
    if dropout_p:
        raise ValueError("attention: a shared prefix is for inference (no dropout)")


def check_goal(q: torch.Tensor, goal: SharedPrefix) -> None:
    """A goal segment: keys and values `[G, h, O, D]` on q's device, and a row table (if any) `[R]`."""
    R, h, _, D = q.shape
    if goal.k.shape != goal.v.shape or goal.k.dim() != 4 or goal.k.shape[1] != h or goal.k.shape[3] != D \
            or goal.k.shape[0] < 1 or goal.length < 1 or goal.k.device != q.device or goal.k.dtype != q.dtype:
        raise ValueError(f"attention: goal k/v must be [G, {h}, O, {D}] {q.dtype} on {q.device}, got "
                         f"{tuple(goal.k.shape)}, {tuple(goal.v.shape)} {goal.k.dtype} on {goal.k.device}")
    if goal.rows is not None and (goal.rows.shape != (R,) or goal.rows.dtype != torch.long
                                  or goal.rows.device != q.device):
        raise ValueError(f"attention: the goal's rows must be int64 [{R}] on {q.device}, got "
                         f"{goal.rows.dtype} {tuple(goal.rows.shape)} on {goal.rows.device}")
    if goal.group_rows < 1:
        raise ValueError(f"attention: the goal's group_rows must be >= 1, got {goal.group_rows}")


def one_query(q, k, v, prefix: SharedPrefix | None, transition_dim: int, q_slot: int, key_start,
                      goal: SharedPrefix | None = None):
    """One query per row on the compiled kernel: the goal, the prefix and the row's keys in one pass."""
    out = torch.empty(q.shape[0], q.shape[1], q.shape[3], dtype=q.dtype, device=q.device)
    pk, pv, rows = (prefix.k, prefix.v, prefix.rows) if prefix is not None else (None, None, None)
    gk, gv, grows = (goal.k, goal.v, goal.rows) if goal is not None else (None, None, None)
    torch.ops.tt.decode_attention(q[:, :, 0], k, v, pk, pv, prefix.group_rows if prefix is not None else 1, rows,
                                  q_slot, transition_dim, int64(key_start), out, gk, gv,
                                  goal.group_rows if goal is not None else 1, grows)
    return out[:, :, None]


def goal_kwargs(goal: SharedPrefix | None) -> dict:
    """A goal segment as the Triton launchers take it (keyword arguments; none without a goal)."""
    if goal is None:
        return {}
    return dict(goal_k=goal.k, goal_v=goal.v, goal_group_rows=goal.group_rows, goal_rows=goal.rows)


def attention_lse(q, k, v, transition_dim: int, q_offset: int, key_start,
                   goal: SharedPrefix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TT-masked attention output `[R, h, Lq, D]` and its log-sum-exp `[R, h, Lq]` (fp32), over the
    `goal` segment's keys too when given."""
    if dispatch.resolved(q.device).attention == "triton":
        return dispatch.triton_attention().attention_forward(q, k, v, transition_dim, q_offset, key_start,
                                                     **goal_kwargs(goal))
    n_goal = 0 if goal is None else goal.length
    if goal is not None:  # the goal keys in front (Triton reads them in place)
        k, v = goal.expand(q.shape[0], k, v)
    mask = reference.attention_mask(q.shape[2], k.shape[2] - n_goal, transition_dim, q_offset, key_start, q.device,
                                    n_goal)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5 + bias
    lse = scores.logsumexp(-1)
    return ((scores - lse[..., None]).exp().to(v.dtype) @ v), lse


def attention_after_prefix(q, k, v, prefix: SharedPrefix, transition_dim: int, q_offset: int, key_start,
                            goal: SharedPrefix | None = None):
    """Cascade attention: each group's queries against its shared prefix in one batch (the prefix
    read once), each row against its own keys and its `goal` segment's (if any), merged by their
    log-sum-exps (on Triton, one query per row runs all parts in one kernel, also with a row table
    `prefix.rows`)."""
    R, h, Lq, D = q.shape
    G, S, n = prefix.k.shape[0], prefix.length, prefix.group_rows
    if Lq == 1 and dispatch.resolved(q.device).attention == "triton":  # decode: one kernel, no partial outputs
        return dispatch.triton_attention().decode_after_prefix(q, k, v, prefix.k, prefix.v, n, transition_dim, q_offset,
                                                       key_start, prefix_rows=prefix.rows, **goal_kwargs(goal))
    if prefix.rows is not None:
        # A row table, several queries per row (or one where neither tt::decode_attention nor
        # Triton runs): no groups of rows to batch against a prefix, so each row's whole window is
        # gathered (a copy of its prefix, as the reference does) and attended at once. The fused
        # kernels (C++ decode_attention / decode_layers, Triton) read the table in place instead.
        k, v = prefix.expand(R, k, v)
        return attention_lse(q, k, v, transition_dim, q_offset, key_start, goal)[0]
    blocks = R // (G * n)
    grouped = q.view(blocks, G, n, h, Lq, D).permute(1, 3, 0, 2, 4, 5).reshape(G, h, blocks * n * Lq, D)
    group_start = None if key_start is None else key_start.view(blocks, G, n)[0, :, 0]
    # every query sits after the prefix, so only the value-token and padding masks act there
    out_p, lse_p = attention_lse(grouped, prefix.k, prefix.v, transition_dim, q_offset, group_start)
    out_r, lse_r = attention_lse(q, k, v, transition_dim, q_offset - S, None, goal)
    if group_start is not None:  # a group whose prefix is all padding contributes nothing
        lse_p = lse_p.masked_fill((group_start >= S)[:, None, None], float("-inf"))
    out_p = out_p.view(G, h, blocks, n, Lq, D).permute(2, 0, 3, 1, 4, 5).reshape(R, h, Lq, D)
    lse_p = lse_p.view(G, h, blocks, n, Lq).permute(2, 0, 3, 1, 4).reshape(R, h, Lq)
    return reference.merge_attention(out_p, lse_p, out_r, lse_r)
