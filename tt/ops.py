"""The one place that chooses how each op runs: compiled (C++/CUDA, Triton) or reference.

Every caller in tt goes through these wrappers: they check arguments, allocate outputs and
pick a backend by device and availability. The compiled ops come from the extension `tt._C`
(`torch.ops.tt.*`); without it the plain-PyTorch references run (with a warning, once).
`TT_BACKEND=reference` forces the references; `backends()` says what runs.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from tt import reference
from tt.rng import Philox

OPS = ("attention", "sample_next", "beam_select")


@functools.cache
def _compiled_library() -> bool:
    """Load tt._C (registers torch.ops.tt.*) and its fake implementations; False if it is missing."""
    try:
        import tt._C  # noqa: F401
    except ImportError as e:
        warnings.warn(f"tt._C is not built ({e}); using the PyTorch reference ops. "
                      "Reinstall with `pip install -e . --no-build-isolation` to build them.", stacklevel=3)
        return False

    @torch.library.register_fake("tt::sample_next")
    def _(logits, temperature, top_k, cdf, midpoints, rng_state, tokens, expectation):
        return None

    @torch.library.register_fake("tt::beam_select")
    def _(scores, k, group, terms, tokens, values, indices, rows, terms_out, tokens_out):
        return None

    @torch.library.register_fake("tt::philox_uniform")
    def _(seed, offset, out):
        return None

    return True


def _compiled(op: str, device: torch.device) -> bool:
    """Whether the compiled `op` runs for tensors on `device` (and is not overridden)."""
    if os.environ.get("TT_BACKEND", "").lower() == "reference" or not _compiled_library():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"tt::{op}", key)


@functools.cache
def _triton_attention():
    """The Triton attention module, or None where Triton is not importable."""
    try:
        from tt.kernels import attention as module
    except ImportError:
        return None
    return module


def _use_triton_attention(device: torch.device) -> bool:
    """Triton on CUDA; `TT_ATTENTION=triton` forces it anywhere (on CPU with TRITON_INTERPRET=1),
    `TT_ATTENTION=reference` or `TT_BACKEND=reference` forces the reference."""
    choice = os.environ.get("TT_ATTENTION", "").lower()
    if os.environ.get("TT_BACKEND", "").lower() == "reference" or choice == "reference":
        return False
    if choice == "triton":
        if _triton_attention() is None:
            raise RuntimeError("TT_ATTENTION=triton but Triton is not importable")
        return True
    return device.type == "cuda" and _triton_attention() is not None


def backends() -> dict[str, dict[str, str]]:
    """For each op, the implementation used on each device type."""
    names = {"cpu": "C++", "cuda": "CUDA"}
    report = {op: {dev: (names[dev] if _compiled(op, torch.device(dev)) else "reference") for dev in names}
              for op in OPS if op != "attention"}
    report["attention"] = {dev: ("Triton" if _use_triton_attention(torch.device(dev)) else "reference")
                           for dev in names}
    return report


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
    if not (q.device == k.device == v.device) or (key_start is not None and key_start.shape != (q.shape[0],)):
        raise ValueError("attention: q, k, v (and key_start [R]) must be on one device")
    if _use_triton_attention(q.device):
        return _triton_attention().attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                                             key_start=key_start, dropout_p=dropout_p)
    return reference.attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                               key_start=key_start, dropout_p=dropout_p)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    cdf: float | None = None,
    midpoints: torch.Tensor | None = None,
    rng: Philox | torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row of `logits [R, N+1]` (see `reference.sample_next` for the semantics).

    With a `Philox` the draw is the same on every backend and device; with a torch generator
    the reference draws by multinomial and the compiled op from a Philox seeded by it.
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"sample_next expects logits [rows, N+1], got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= logits.shape[1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[1]}], got {top_k}")
    if cdf is not None and not 0.0 <= cdf <= 1.0:
        raise ValueError(f"cdf must be in [0, 1], got {cdf}")
    if midpoints is not None and midpoints.shape != (logits.shape[1] - 1,):
        raise ValueError(f"midpoints must be [{logits.shape[1] - 1}], got {tuple(midpoints.shape)}")
    if isinstance(rng, Philox) and rng.device != logits.device:
        raise ValueError(f"the Philox state is on {rng.device}, the logits on {logits.device}")
    if not _compiled("sample_next", logits.device):
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
    if not _compiled("philox_uniform", device):
        return reference.philox_uniform(seed, offset, n).to(device)
    out = torch.empty(n, dtype=torch.float64, device=device)
    torch.ops.tt.philox_uniform(seed, offset, out)
    return out


def beam_select(scores: torch.Tensor, k: int, group: int | None = None, terms: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None):
    """Top-k of each row of `scores [B, M]`, descending, ties to the lower index, and the gather of
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
    if not _compiled("beam_select", scores.device) or M > 4096:
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
