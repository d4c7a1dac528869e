"""The one place that chooses how each op runs: compiled (C++/CUDA, Triton) or reference.

Every caller in tt goes through these wrappers: they check arguments, allocate outputs and
pick a backend by device and availability. The compiled ops come from the extension `tt._C`
(`torch.ops.tt.*`); without it the plain-PyTorch references run (with a warning, once).
`TT_BACKEND=reference` forces the references; `backends()` says what runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import os
import warnings

import torch

from tt import reference
from tt.cache import KVCache, SharedPrefix
from tt.rng import Philox

OPS = ("attention", "sample_next", "beam_select", "beam_expand", "log_probs", "decode_attention", "decode_layers")
CUDA_MAX_TOKENS = 1024  # tokens per row (N+1) the CUDA sample_next kernel takes (kSampleNextMaxVocab)
BEAM_EXPAND_MAX_CANDIDATES = 2**30  # W*V per plan on every backend (kBeamExpandMaxCandidates)
CUDA_BEAM_EXPAND_MAX_K = 4096  # survivors per plan the CUDA beam_expand kernel takes (kBeamExpandMaxK)


def check_tokens_per_row(n_tokens: int, device: torch.device | str) -> None:
    """Refuse, on the host and before any planning, a vocabulary (N+1 tokens) that the kernel
    `sample_next` would run on cannot take: the CUDA kernel holds a row in one block's shared memory."""
    if n_tokens <= CUDA_MAX_TOKENS:  # first: this runs once per sampled token
        return
    device = torch.device(device)
    if device.type == "cuda" and _compiled("sample_next", device):
        raise ValueError(f"{n_tokens - 1} bins ({n_tokens} tokens with the stop token) are more than the CUDA "
                         f"sampling kernel takes ({CUDA_MAX_TOKENS} tokens, {CUDA_MAX_TOKENS - 1} bins): plan on "
                         "the CPU or use fewer bins")


def resolve_device(device: str | torch.device) -> torch.device:
    """The device to run on: "auto" is CUDA where there is one, else the CPU; a CUDA device this
    machine or torch build does not have is an error that says so (not a driver traceback later)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: {e}") from e
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {count} CUDA device(s) "
                             f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
    return device


def available_memory(device: torch.device | str) -> int:
    """Bytes a new allocation can take on `device`: on CUDA the device's free memory plus what torch's
    caching allocator holds unused; on the CPU the least of the system's available memory, this
    process's cgroup allowance and its address-space limit (`ulimit -v`), each where it is known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    limits = []
    meminfo = _read_fields("/proc/meminfo")
    if "MemAvailable" in meminfo:
        limits.append(meminfo["MemAvailable"] * 1024)
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            cap = f.read().strip()
            if cap != "max":
                limits.append(int(cap) - int(g.read()))
    except (OSError, ValueError):
        pass
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _read_fields("/proc/self/status").get("VmSize", 0) * 1024)
    return max(0, min(limits)) if limits else 2**63 - 1


def _read_fields(path: str) -> dict[str, int]:
    """`Name: value kB` lines of a /proc file as {name: value}; empty where the file is not there."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                value = rest.split()
                if value and value[0].isdigit():
                    fields[name] = int(value[0])
    except OSError:
        pass
    return fields


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
def _compiled_library() -> bool:
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


def _compiled(op: str, device: torch.device) -> bool:
    """Whether the compiled `op` runs for tensors on `device` (and is not overridden)."""
    return os.environ.get("TT_BACKEND", "").lower() != "reference" and _has_kernel(op, device.type)


@functools.cache
def _has_kernel(op: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return (key is not None and _compiled_library()
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"tt::{op}", key))


@functools.cache
def _triton_attention():
    """The Triton attention module, or None where Triton is not importable."""
    try:
        from tt.kernels import attention as module
    except ImportError:
        return None
    return module


def _attention_backend(device: torch.device) -> str:
    """"triton" on CUDA, "native" (the compiled decode kernel where built, else PyTorch) elsewhere;
    `TT_ATTENTION=triton` forces Triton anywhere (on CPU with TRITON_INTERPRET=1),
    `TT_ATTENTION=reference` or `TT_BACKEND=reference` forces "reference"."""
    choice = os.environ.get("TT_ATTENTION", "").lower()
    if choice == "reference" or os.environ.get("TT_BACKEND", "").lower() == "reference":
        return "reference"
    if choice == "triton":
        if _triton_attention() is None:
            raise RuntimeError("TT_ATTENTION=triton but Triton is not importable")
        return "triton"
    return "triton" if device.type == "cuda" and _triton_attention() is not None else "native"


def backends() -> dict[str, dict[str, str]]:
    """For each op, the implementation used on each device type."""
    names = {"cpu": "C++", "cuda": "CUDA"}
    report = {op: {dev: (names[dev] if _compiled(op, torch.device(dev)) else "reference") for dev in names}
              for op in OPS if op != "attention"}
    report["attention"] = {dev: ("Triton" if _attention_backend(torch.device(dev)) == "triton" else "reference")
                           for dev in names}
    for dev in names:  # one query per row: the compiled kernel where there is one, else attention's path
        if report["decode_attention"][dev] == "reference" or _attention_backend(torch.device(dev)) != "native":
            report["decode_attention"][dev] = report["attention"][dev]
        report["decode_layers"][dev] = _decode_backend(torch.device(dev))
    return report


# Queries per row up to which attention after a table of prefixes runs the one-query kernel per query.
LOOPED_QUERIES = 16


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
        _check_prefix(q, prefix, transition_dim, q_offset, dropout_p)
    if goal is not None:
        _check_goal(q, goal)
    backend = _attention_backend(q.device)
    if backend == "native" and q.dtype == torch.float32 and not dropout_p \
            and _has_kernel("decode_attention", q.device.type):
        if q.shape[2] == 1:
            return _decode_attention(q, k, v, prefix, transition_dim, q_offset, key_start, goal)
        if prefix is not None and prefix.rows is not None and q.shape[2] <= LOOPED_QUERIES \
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
            # a few queries per row after prefixes read through a table: the kernel reads the table in
            # place, a query at a time (each seeing its row's keys up to its own slot), where the
            # alternative gathers every row's whole window first
            S = prefix.length
            return torch.cat([_decode_attention(q[:, :, i : i + 1], k[:, :, : q_offset + i + 1 - S],
                                                v[:, :, : q_offset + i + 1 - S], prefix, transition_dim, q_offset + i,
                                                key_start, goal) for i in range(q.shape[2])], 2)
    if goal is not None:
        training = dropout_p or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, goal.k, goal.v)))
        if backend != "triton" or training:  # the goal keys in front, one masked attention (SDPA's autograd)
            return reference.attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                                       key_start=key_start, dropout_p=dropout_p, prefix=prefix, goal=goal)
    if prefix is not None and backend != "reference":
        return _attention_after_prefix(q, k, v, prefix, transition_dim, q_offset, key_start, goal)
    if backend == "triton":
        return _triton_attention().attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                                             key_start=key_start, dropout_p=dropout_p, **_goal_kwargs(goal))
    return reference.attention(q, k, v, transition_dim=transition_dim, q_offset=q_offset,
                               key_start=key_start, dropout_p=dropout_p, prefix=prefix)


def fused_decode(x: torch.Tensor) -> bool:
    """Whether a step on `x [R, n, C]` (n tokens per row, the last one's output wanted) runs its
    blocks in one call (`decode_layers`): on CPU the C++ op (float32, tt._C built, native
    attention; any n), on Triton's attention backend the Triton kernel (n = 1; float32, bfloat16
    or float16, widths up to kernels.decode.MAX_WIDTH); both read a goal-conditioned model's
    goal segment. `TT_DECODE=blocks` turns both off."""
    backend = _decode_backend(x.device)
    if backend == "C++":
        return x.dtype == torch.float32
    return (backend == "Triton" and x.shape[1] == 1 and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and _triton_decode().supports(x.shape[-1], 4 * x.shape[-1]))


def _decode_backend(device: torch.device) -> str:
    """"C++", "Triton" or "Python blocks": what runs a decode step's blocks on `device`."""
    if os.environ.get("TT_DECODE", "").lower() == "blocks":
        return "Python blocks"
    backend = _attention_backend(device)
    if backend == "native" and _has_kernel("decode_layers", device.type):
        return "C++"
    return "Triton" if backend == "triton" else "Python blocks"


@functools.cache
def _triton_decode():
    from tt.kernels import decode as module  # importable wherever the attention backend is Triton

    return module


@dataclasses.dataclass(frozen=True)
class PackedWeights:
    """The blocks' parameters for the C++ `decode_layers`, with their GEMM weights packed for steps
    of a given number of rows (`tt::decode_pack`: MKL's packed GEMM operands, faster at planner
    sizes). The packed copies are a snapshot: `decode_layers` refuses them once a weight has
    changed in place (an optimizer step, `load_state_dict`); fetch them again then."""

    weights: list[torch.Tensor]
    packed: list[torch.Tensor]


# What decode_layers takes as the blocks' parameters (see decode_weights).
DecodeWeights = list[torch.Tensor] | tuple[torch.Tensor, ...] | PackedWeights


def decode_weights(weights: list[torch.Tensor], rows: int | None = None) -> DecodeWeights:
    """The blocks' parameters (12 per block, csrc/ops.h order) in the form `decode_layers` reads on
    their device: stacked per kind `[n_layer, ...]` for Triton; for the C++ op the list itself, or
    given the `rows` of the steps to come, `PackedWeights` (where packing is available and pays)."""
    if not weights:
        return weights
    backend = _decode_backend(weights[0].device)
    if backend == "Triton":
        return _triton_decode().stack_weights(weights)
    if backend == "C++" and rows and weights[0].dtype == torch.float32:
        with torch.no_grad():
            packed = torch.ops.tt.decode_pack(weights, rows)
        if packed:
            return PackedWeights(weights, packed)
    return weights


def decode_layers(x: torch.Tensor, weights, n_head: int, cache: KVCache, slot: int,
                  transition_dim: int, key_start: torch.Tensor | None = None) -> torch.Tensor:
    """The blocks of one decode step, `x [R, C]` -> `[R, C]`: what `Block.forward` computes for one
    token per row at `slot`, K/V written to `cache` (see `fused_decode` for where it runs); on
    CPU also `x [R, L, C]`, L tokens per row at slots slot.., -> the last one's output `[R, C]`.
    `weights` come from `decode_weights` (a list is stacked here, per call, where Triton runs).
    The cache's goal segment, if it holds one, is read by every row, on either backend."""
    goal = cache.goal(0, len(x))
    if goal is not None:
        _check_goal((x if x.dim() == 2 else x[:, -1]).reshape(len(x), n_head, 1, -1), goal)
    packed = None
    if isinstance(weights, PackedWeights):
        weights, packed = weights.weights, weights.packed
    if _decode_backend(x.device) == "Triton":
        stacked = weights if isinstance(weights, tuple) else _triton_decode().stack_weights(weights)
        return _triton_decode().decode_layers(x.contiguous(), stacked, n_head, cache.kv, slot, cache.shared,
                                              cache.groups, cache.group_rows, transition_dim, key_start,
                                              prefix_rows=cache.prefix_rows, goal_kv=cache.goal_kv,
                                              goal_group_rows=cache.goal_group_rows,
                                              goal_rows=None if goal is None else goal.rows)
    goal_k, goal_v = (None, None) if goal is None else cache.goal_kv
    return torch.ops.tt.decode_layers(x.contiguous(), weights, cache.k, cache.v, n_head, slot, cache.shared,
                                      cache.groups, cache.group_rows, cache.prefix_rows, transition_dim,
                                      _int64(key_start), goal_k, goal_v, 1 if goal is None else goal.group_rows,
                                      None if goal is None else goal.rows, packed)


def _int64(key_start: torch.Tensor | None) -> torch.Tensor | None:
    """key_start as the C++ ops read it: contiguous int64 (the planner's already is: no copy)."""
    return None if key_start is None else key_start.to(torch.long).contiguous()


def _check_prefix(q: torch.Tensor, prefix: SharedPrefix, transition_dim: int, q_offset: int,
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


def _check_goal(q: torch.Tensor, goal: SharedPrefix) -> None:
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


def _decode_attention(q, k, v, prefix: SharedPrefix | None, transition_dim: int, q_slot: int, key_start,
                      goal: SharedPrefix | None = None):
    """One query per row on the compiled kernel: the goal, the prefix and the row's keys in one pass."""
    out = torch.empty(q.shape[0], q.shape[1], q.shape[3], dtype=q.dtype, device=q.device)
    pk, pv, rows = (prefix.k, prefix.v, prefix.rows) if prefix is not None else (None, None, None)
    gk, gv, grows = (goal.k, goal.v, goal.rows) if goal is not None else (None, None, None)
    torch.ops.tt.decode_attention(q[:, :, 0], k, v, pk, pv, prefix.group_rows if prefix is not None else 1, rows,
                                  q_slot, transition_dim, _int64(key_start), out, gk, gv,
                                  goal.group_rows if goal is not None else 1, grows)
    return out[:, :, None]


def _goal_kwargs(goal: SharedPrefix | None) -> dict:
    """A goal segment as the Triton launchers take it (keyword arguments; none without a goal)."""
    if goal is None:
        return {}
    return dict(goal_k=goal.k, goal_v=goal.v, goal_group_rows=goal.group_rows, goal_rows=goal.rows)


def _attention_lse(q, k, v, transition_dim: int, q_offset: int, key_start,
                   goal: SharedPrefix | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TT-masked attention output `[R, h, Lq, D]` and its log-sum-exp `[R, h, Lq]` (fp32), over the
    `goal` segment's keys too when given."""
    if _attention_backend(q.device) == "triton":
        return _triton_attention().attention_forward(q, k, v, transition_dim, q_offset, key_start,
                                                     **_goal_kwargs(goal))
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


def _attention_after_prefix(q, k, v, prefix: SharedPrefix, transition_dim: int, q_offset: int, key_start,
                            goal: SharedPrefix | None = None):
    """Cascade attention: each group's queries against its shared prefix in one batch (the prefix
    read once), each row against its own keys and its `goal` segment's (if any), merged by their
    log-sum-exps (on Triton, one query per row runs all parts in one kernel, also with a row table
    `prefix.rows`)."""
    R, h, Lq, D = q.shape
    G, S, n = prefix.k.shape[0], prefix.length, prefix.group_rows
    if Lq == 1 and _attention_backend(q.device) == "triton":  # decode: one kernel, no partial outputs
        return _triton_attention().decode_after_prefix(q, k, v, prefix.k, prefix.v, n, transition_dim, q_offset,
                                                       key_start, prefix_rows=prefix.rows, **_goal_kwargs(goal))
    if prefix.rows is not None:
        # A row table, several queries per row (or one where neither tt::decode_attention nor
        # Triton runs): no groups of rows to batch against a prefix, so each row's whole window is
        # gathered (a copy of its prefix, as the reference does) and attended at once. The fused
        # kernels (C++ decode_attention / decode_layers, Triton) read the table in place instead.
        k, v = prefix.expand(R, k, v)
        return _attention_lse(q, k, v, transition_dim, q_offset, key_start, goal)[0]
    blocks = R // (G * n)
    grouped = q.view(blocks, G, n, h, Lq, D).permute(1, 3, 0, 2, 4, 5).reshape(G, h, blocks * n * Lq, D)
    group_start = None if key_start is None else key_start.view(blocks, G, n)[0, :, 0]
    # every query sits after the prefix, so only the value-token and padding masks act there
    out_p, lse_p = _attention_lse(grouped, prefix.k, prefix.v, transition_dim, q_offset, group_start)
    out_r, lse_r = _attention_lse(q, k, v, transition_dim, q_offset - S, None, goal)
    if group_start is not None:  # a group whose prefix is all padding contributes nothing
        lse_p = lse_p.masked_fill((group_start >= S)[:, None, None], float("-inf"))
    out_p = out_p.view(G, h, blocks, n, Lq, D).permute(2, 0, 3, 1, 4, 5).reshape(R, h, Lq, D)
    lse_p = lse_p.view(G, h, blocks, n, Lq).permute(2, 0, 3, 1, 4).reshape(R, h, Lq)
    return reference.merge_attention(out_p, lse_p, out_r, lse_r)


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
    if (logits.dtype not in (torch.float32, torch.float64) or not _compiled("log_probs", logits.device)
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
    if (not _compiled("beam_expand", device) or scores.dtype == torch.float64
            or (device.type == "cuda" and k > CUDA_BEAM_EXPAND_MAX_K)):
        return reference.beam_expand(scores, logp, k)  # the kernels take float32 (float64: models in tests)
    values = torch.empty(B, k, dtype=torch.float32, device=device)
    parents = torch.empty(B, k, dtype=torch.long, device=device)
    tokens = torch.empty(B, k, dtype=torch.long, device=device)
    torch.ops.tt.beam_expand(scores.contiguous(), logp.contiguous(), k, values, parents, tokens)
    return values, parents, tokens
