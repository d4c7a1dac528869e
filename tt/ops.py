"""The one place that chooses how each op runs: compiled (C++/CUDA, Triton) or reference.

Every caller in tt goes through these wrappers; they check arguments and pick a backend by
device and availability. `TT_BACKEND=reference` forces the plain-PyTorch references;
`backends()` says what runs.
"""

from __future__ import annotations

import torch

from tt import reference

OPS = ("attention", "sample_next", "beam_select")


def backends() -> dict[str, dict[str, str]]:
    """For each op, the implementation used on each device type."""
    return {op: {"cpu": "reference", "cuda": "reference"} for op in OPS}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    transition_dim: int,
    q_offset: int = 0,
    key_start: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Causal attention that never attends value tokens. q `[R, h, Lq, D]`, k/v `[R, h, Lk, D]`;
    query i sits at slot `q_offset + i`; `key_start [R]` marks left padding (see reference)."""
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"attention expects q [R,h,Lq,D] and k, v [R,h,Lk,D]; got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} disagree")
    if q_offset + q.shape[2] > k.shape[2]:
        raise ValueError(f"attention: queries reach slot {q_offset + q.shape[2]} but only {k.shape[2]} keys")
    return reference.attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                               key_start=key_start, dropout_p=dropout_p)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    cdf: float | None = None,
    midpoints: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row of `logits [R, N+1]` (see `reference.sample_next` for the semantics)."""
    if logits.dim() != 2:
        raise ValueError(f"sample_next expects logits [rows, N+1], got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= logits.shape[1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[1]}], got {top_k}")
    if cdf is not None and not 0.0 <= cdf <= 1.0:
        raise ValueError(f"cdf must be in [0, 1], got {cdf}")
    if midpoints is not None and midpoints.shape != (logits.shape[1] - 1,):
        raise ValueError(f"midpoints must be [{logits.shape[1] - 1}], got {tuple(midpoints.shape)}")
    return reference.sample_next(logits, temperature=temperature, top_k=top_k, cdf=cdf,
                                 midpoints=midpoints, generator=generator)


def beam_select(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of `scores [B, M]`, descending, ties to the lower index."""
    if scores.dim() != 2:
        raise ValueError(f"beam_select expects scores [B, M], got {tuple(scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"beam_select: k={k} must be in [1, {scores.shape[1]}]")
    return reference.beam_select(scores, k)
