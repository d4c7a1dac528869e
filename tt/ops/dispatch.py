"""How each op runs: the compiled kernels of `tt._C` (C++, CUDA), Triton, or the PyTorch reference.

The choice is resolved once per device (`implementation`, printed by `backends()`). Overrides come
through one call, `use(backend=..., attention=..., decode=...)`; without one, the environment
(`TT_BACKEND`, `TT_ATTENTION`, `TT_DECODE`) is read once, at the first op that asks.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

OPS = ("attention", "sample_next", "beam_select", "beam_expand", "log_probs", "decode_attention", "decode_layers")
CHOICES = {"backend": ("auto", "reference"), "attention": ("auto", "native", "triton", "reference"),
           "decode": ("auto", "fused", "blocks")}
ENVIRONMENT = {"backend": "TT_BACKEND", "attention": "TT_ATTENTION", "decode": "TT_DECODE"}


@dataclass(frozen=True)
class Choices:
    """What runs where, as asked: `backend="reference"` runs every op's PyTorch reference;
    `attention="triton"` runs Triton's attention anywhere (on CPU under TRITON_INTERPRET=1), "native"
    the compiled decode kernel or PyTorch, "reference" the masked PyTorch attention; `decode="blocks"`
    runs a decode step block by block in Python instead of one fused call. "auto": the device's best."""

    backend: str = "auto"
    attention: str = "auto"
    decode: str = "auto"

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} ({ENVIRONMENT[name]}): one of {', '.join(allowed)}")

    @classmethod
    def from_environment(cls) -> Choices:
        return cls(**{name: os.environ.get(var, "").lower() or "auto" for name, var in ENVIRONMENT.items()})


_choices: Choices | None = None  # the process's choices; None until the first op asks (then the environment's)


def choices() -> Choices:
    """The choices in force (the environment's, read once, unless `use` set others)."""
    global _choices
    if _choices is None:
        _choices = Choices.from_environment()
    return _choices


def use(*, backend: str | None = None, attention: str | None = None, decode: str | None = None) -> Choices:
    """Override how ops run from now on (None: keep that choice as it is; "": "auto", as an unset variable);
    returns the choices before."""
    global _choices
    before = choices()
    asked = {k: v.lower() or "auto" for k, v in dict(backend=backend, attention=attention, decode=decode).items()
             if v is not None}
    _choices = replace(before, **asked)
    return before


@contextmanager
def using(**asked: str) -> Iterator[Choices]:
    """`use(**asked)` for the duration of a `with` block."""
    before = use(**asked)
    try:
        yield choices()
    finally:
        use(**vars(before))


# ----------------------------------------------------------------------------- the compiled library


def _fake_sample_next(logits, temperature, top_k, cdf, midpoints, rng_state, tokens, expectation):
    return None


def _fake_beam_select(scores, k, group, terms, tokens, values, indices, rows, terms_out, tokens_out):
    return None


def _fake_beam_expand(scores, logp, k, values, parents, tokens):
    return None


def _fake_log_probs(logits, temperature, top_k, cdf, out):
    return None


def _fake_philox_uniform(seed, offset, out):
    return None


def _fake_dropout_mask(seed, offset, p, mask):
    return None


def _fake_dropout_apply(x, mask, scale, out):
    return None


def _fake_decode_attention(q, k, v, prefix_k, prefix_v, group_rows, prefix_rows, q_slot, transition_dim, key_start,
                           out, goal_k=None, goal_v=None, goal_group_rows=1, goal_rows=None):
    return None


def _fake_decode_layers(x, weights, cache_k, cache_v, n_head, slot, shared, groups, group_rows, prefix_rows,
                        transition_dim, key_start, goal_k=None, goal_v=None, goal_group_rows=1, goal_rows=None,
                        packed=None):
    return x.new_empty(x.shape[0], x.shape[-1])  # [R, C]: the last token's output


def _fake_decode_pack(weights, rows):
    return []  # packing happens before a search runs, never under tracing


# Each op's fake (meta) implementation; its parameters are the op's schema as this Python code calls it.
FAKES = {"sample_next": _fake_sample_next, "beam_select": _fake_beam_select, "beam_expand": _fake_beam_expand,
         "log_probs": _fake_log_probs, "philox_uniform": _fake_philox_uniform,
         "dropout_mask": _fake_dropout_mask, "dropout_apply": _fake_dropout_apply,
         "decode_attention": _fake_decode_attention, "decode_layers": _fake_decode_layers,
         "decode_pack": _fake_decode_pack}


def stale_ops(fakes: dict = FAKES) -> list[str]:
    """The ops that tt._C lacks or registers with other arguments than `fakes` say (a library built
    from older sources than the Python code), as readable lines."""
    problems = []
    for name, fake in fakes.items():
        if not hasattr(torch.ops.tt, name):
            problems.append(f"tt::{name} is missing")
            continue
        have = [a.name for a in getattr(torch.ops.tt, name).default._schema.arguments]
        want = list(inspect.signature(fake).parameters)
        if have != want:
            problems.append(f"tt::{name} takes ({', '.join(have)}), the Python code passes ({', '.join(want)})")
    return problems


@functools.cache
def compiled_library() -> bool:
    """Load tt._C (registers torch.ops.tt.*) and its fake implementations; False (the PyTorch
    reference ops) if it is missing or was built from other sources than this Python code."""
    try:
        import tt._C  # noqa: F401
    except ImportError as e:
        warnings.warn(f"tt._C is not built ({e}); using the PyTorch reference ops. "
                      "Reinstall with `pip install -e . --no-build-isolation` to build them.", stacklevel=3)
        return False
    problems = stale_ops()
    if problems:
        warnings.warn(f"tt._C is out of date ({'; '.join(problems)}); using the PyTorch reference ops. "
                      "Rebuild it with `pip install -e . --no-build-isolation`.", stacklevel=3)
        return False
    for name, fake in FAKES.items():
        torch.library.register_fake(f"tt::{name}")(fake)
    return True


@functools.cache
def has_kernel(op: str, device_type: str) -> bool:
    """Whether tt._C registers `op` for `device_type`."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return (key is not None and compiled_library()
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"tt::{op}", key))


@functools.cache
def triton_attention():
    """The Triton attention module, or None where Triton is not importable."""
    try:
        from tt.kernels import attention as module
    except ImportError:
        return None
    return module


@functools.cache
def triton_decode():
    from tt.kernels import decode as module  # importable wherever the attention backend is Triton

    return module


# ----------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolved:
    """How ops run on one device type under one set of choices."""

    compiled: frozenset[str]  # the ops whose compiled kernel runs
    attention: str  # "triton", "native" (the compiled decode kernel where built, else PyTorch) or "reference"
    decode: str  # what runs a decode step's blocks: "C++", "Triton" or "Python blocks"


@functools.cache
def _resolve(asked: Choices, device_type: str) -> Resolved:
    # every compiled op (attention has none: it composes them)
    compiled = frozenset(op for op in FAKES if asked.backend != "reference" and has_kernel(op, device_type))
    if asked.attention == "reference" or asked.backend == "reference":
        attention = "reference"
    elif asked.attention == "triton":
        if triton_attention() is None:
            raise RuntimeError("attention='triton' (TT_ATTENTION=triton) but Triton is not importable")
        attention = "triton"
    else:
        attention = "triton" if device_type == "cuda" and triton_attention() is not None else "native"
    if asked.decode == "blocks":
        decode = "Python blocks"
    elif attention == "native" and "decode_layers" in compiled:
        decode = "C++"
    else:
        decode = "Triton" if attention == "triton" else "Python blocks"
    return Resolved(compiled, attention, decode)


def resolved(device: torch.device) -> Resolved:
    """How ops run on `device` now (resolved once per device type and set of choices)."""
    return _resolve(choices(), device.type)


def compiled(op: str, device: torch.device) -> bool:
    """Whether the compiled `op` runs for tensors on `device`."""
    return op in resolved(device).compiled


def backends() -> dict[str, dict[str, str]]:
    """For each op, the implementation used on each device type."""
    names = {"cpu": "C++", "cuda": "CUDA"}
    report = {}
    for dev, name in names.items():
        r = _resolve(choices(), dev)
        for op in OPS:
            report.setdefault(op, {})[dev] = name if op in r.compiled else "reference"
        report["attention"][dev] = "Triton" if r.attention == "triton" else "reference"
        # one query per row: the compiled kernel where there is one, else attention's path
        if report["decode_attention"][dev] == "reference" or r.attention != "native":
            report["decode_attention"][dev] = report["attention"][dev]
        report["decode_layers"][dev] = r.decode
    return report
