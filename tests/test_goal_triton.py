"""The Triton kernels read a goal-conditioned model's goal segment in place (TRITON_INTERPRET=1 on
CPU, set in conftest): the forward attention kernel (prefill, split decode), the one-query decode
after a shared prefix and the one-kernel decode step, each against the reference's goal keys
concatenated in front (float64); goal models' steps and greedy plans on the Triton backend against
the reference backend's."""

import pytest
import torch
from test_goal import SHAPES, goal_model, random_goal
from test_model import assert_step_matches, fused_decode_step
from test_planner import random_discretizer

from tt import ops, reference
from tt.cache import SharedPrefix
from tt.config import PlanConfig
from tt.search import beam_plan, pad_prefixes

kernels = pytest.importorskip("tt.kernels.attention")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the kernels run interpreted
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}  # max abs error of attention outputs, unit-scale inputs


@pytest.fixture
def poisoned_empty(monkeypatch):
    """Floating-point tensors from torch.empty come filled with NaN: an output element the kernel
    does not write fails the comparison."""
    empty = torch.empty

    def poisoned(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)


def goal_segment(R, G, O, H, D, mapping, g, dtype=torch.float32):
    """G goals' keys and values `[G, H, O, D]`, views of one `[2, ...]` tensor as the cache holds
    them, read by rows in groups of 2 or (mapping "table") through a random row table."""
    kv = torch.randn(2, G, H, O, D, generator=g)
    kv[0] *= 2  # sharper goal scores
    rows = torch.randint(0, G, (R,), generator=g).to(DEVICE) if mapping == "table" else None
    kv = kv.to(DEVICE, dtype)
    return SharedPrefix(kv[0], kv[1], 2, rows)


def padding(R, T, upto, g):
    """Left padding by whole transitions, up to slot `upto`, per row."""
    return (torch.randint(0, upto // T + 1, (R,), generator=g) * T).to(DEVICE)


def oracle(q, k, v, T, q_offset, key_start=None, prefix=None, goal=None):
    """`reference.attention` (goal keys concatenated in front, SDPA with the mask) in float64 on CPU."""
    def double(p):
        return None if p is None else SharedPrefix(p.k.cpu().double(), p.v.cpu().double(), p.group_rows,
                                                   None if p.rows is None else p.rows.cpu())

    return reference.attention(*(t.cpu().double() for t in (q, k, v)), transition_dim=T, q_offset=q_offset,
                               key_start=None if key_start is None else key_start.cpu(), prefix=double(prefix),
                               goal=double(goal))


def goal_kwargs(goal):
    return dict(goal_k=goal.k, goal_v=goal.v, goal_group_rows=goal.group_rows, goal_rows=goal.rows)


# ----------------------------------------------------------------------------- the kernels


@pytest.mark.parametrize("R, H, Lq, Lk, D, T, O, G, splits", [
    (1, 1, 1, 1, 16, 3, 1, 1, None),    # batch 1, one window key, one goal key
    (3, 2, 5, 37, 24, 5, 9, 2, None),   # odd sizes, O > A + 2, queries at the end of a window
    (5, 1, 1, 90, 16, 6, 40, 3, 3),     # one query against a long cache, keys split, goal over a tile
    (2, 1, 40, 40, 32, 7, 13, 2, None),  # prefill: a whole window, queries over a tile
])
@pytest.mark.parametrize("mapping", ["groups", "table"])
@pytest.mark.parametrize("padded", [False, True])
def test_forward_kernel_with_a_goal_matches_the_reference(poisoned_empty, R, H, Lq, Lk, D, T, O, G, splits,
                                                          mapping, padded):
    g = torch.Generator().manual_seed(Lk + O)
    cache = torch.randn(2, R, H, Lk + 3, D, generator=g).to(DEVICE)  # the window's keys as strided views
    k, v = cache[0, :, :, :Lk], cache[1, :, :, :Lk]
    q = torch.randn(R, H, Lq, D, generator=g).to(DEVICE)
    goal = goal_segment(R, G, O, H, D, mapping, g)
    key_start = padding(R, T, Lk - 1, g) if padded else None
    out, lse = kernels.attention_forward(q, k, v, T, Lk - Lq, key_start, splits=splits, **goal_kwargs(goal))
    want = oracle(q, k, v, T, Lk - Lq, key_start, goal=goal)
    assert lse.isfinite().all()
    torch.testing.assert_close(out.cpu().double(), want, atol=TOL[torch.float32], rtol=0)


@pytest.mark.parametrize("blocks, Gp, n, S, own, D, O, G", [
    (1, 1, 1, 4, 1, 16, 3, 1),     # batch 1, one own key
    (2, 3, 5, 12, 4, 24, 9, 2),    # odd sizes, O > A + 2
    (1, 2, 17, 8, 3, 64, 7, 3),    # tiles of 16 rows straddle the groups; goal tiles of 4 keys
])
@pytest.mark.parametrize("mapping", ["groups", "goal table", "both tables"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_after_prefix_with_a_goal_matches_the_reference(blocks, Gp, n, S, own, D, O, G, mapping, padded, dtype):
    """One query per row after a shared prefix (by groups [blocks, Gp, n] or a row table), its own
    keys and its goal's (by groups of 2 or a table): cache-shaped strided inputs, a poisoned output."""
    T, H, R = 4, 2, blocks * Gp * n
    g = torch.Generator().manual_seed(R + S + O)
    cache = torch.randn(2, R + Gp, H, S + own + 2, D, generator=g).to(DEVICE, dtype)
    k, v = cache[0, :R, :, S : S + own], cache[1, :R, :, S : S + own]
    table = torch.randint(0, Gp, (R,), generator=g).to(DEVICE) if mapping == "both tables" else None
    prefix = SharedPrefix(cache[0, R:, :, :S], cache[1, R:, :, :S], 1 if table is not None else n, table)
    q = torch.randn(R, H, 1, D, generator=g).to(DEVICE, dtype)
    goal = goal_segment(R, G, O, H, D, "groups" if mapping == "groups" else "table", g, dtype)
    key_start = padding(R, T, S, g) if padded else None
    if padded and table is None:  # the groups' rows share their window's padding
        key_start = key_start.view(blocks, Gp, n)[:, :, :1].expand(blocks, Gp, n).reshape(R)
    out = torch.full((R, H, 1, D), float("nan"), dtype=dtype, device=DEVICE)
    kernels.decode_after_prefix(q, k, v, prefix.k, prefix.v, prefix.group_rows, T, S + own - 1, key_start, out=out,
                                prefix_rows=table, **goal_kwargs(goal))
    want = oracle(q, k, v, T, S + own - 1, key_start, prefix, goal)
    torch.testing.assert_close(out.cpu().double(), want, atol=TOL[dtype], rtol=0)


def test_the_kernels_refuse_a_goal_with_dropout_or_gradients():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 8, 16, generator=g).to(DEVICE) for _ in range(3))
    goal = goal_kwargs(goal_segment(2, 1, 3, 1, 16, "groups", g))
    with pytest.raises(ValueError, match="dropout with a goal"):
        kernels.attention(q, k, v, transition_dim=4, dropout_p=0.1, **goal)
    with pytest.raises(ValueError, match="no goal"):
        kernels.attention(q.requires_grad_(), k, v, transition_dim=4, **goal)


# ----------------------------------------------------------------------------- ops.attention


def no_reference_with_a_goal(monkeypatch):
    """Make the reference's attention fail when it is given a goal: ops must run a kernel."""
    attention = reference.attention

    def refuse(*args, goal=None, **kwargs):
        assert goal is None, "ops.attention took the reference's concatenation"
        return attention(*args, **kwargs)

    monkeypatch.setattr(reference, "attention", refuse)


@pytest.mark.parametrize("Lq, prefix_kind", [(1, None), (5, None), (1, "groups"), (3, "groups"), (1, "table"),
                                             (3, "table")])
def test_ops_attention_with_a_goal_runs_the_triton_kernels(monkeypatch, Lq, prefix_kind):
    """Prefill and decode, with and without a shared prefix (groups or a table): the Triton kernels
    with the goal segment, never the reference's concatenation, and the reference's result."""
    T, H, D, S, own, R = 4, 2, 16, 8, 6, 6
    g = torch.Generator().manual_seed(Lq)
    q = torch.randn(R, H, Lq, D, generator=g).to(DEVICE)
    k, v = (torch.randn(R, H, own, D, generator=g).to(DEVICE) for _ in range(2))
    prefix = None
    if prefix_kind is not None:
        table = torch.tensor([2, 0, 1, 1, 2, 0], device=DEVICE) if prefix_kind == "table" else None
        pk, pv = (torch.randn(3, H, S, D, generator=g).to(DEVICE) for _ in range(2))
        prefix = SharedPrefix(pk, pv, 2 if table is None else 1, table)
    q_offset = (S if prefix is not None else 0) + own - Lq
    key_start = torch.tensor([0, 0, 4, 4, 0, 0], device=DEVICE)
    goal = goal_segment(R, 2, 5, H, D, "table", g)
    want = oracle(q, k, v, T, q_offset, key_start, prefix, goal)
    ops.use(attention="triton")
    no_reference_with_a_goal(monkeypatch)
    out = ops.attention(q, k, v, transition_dim=T, q_offset=q_offset, key_start=key_start, prefix=prefix, goal=goal)
    torch.testing.assert_close(out.cpu().double(), want, atol=TOL[torch.float32], rtol=0)


def test_cascade_with_a_goal_on_the_native_path_matches_the_reference(monkeypatch):
    """`_attention_after_prefix` with a goal where Triton does not run (the goal joins each row's own keys)."""
    ops.use(attention="native")
    g = torch.Generator().manual_seed(3)
    R, H, D, T, S, own, Lq = 6, 2, 8, 4, 8, 5, 3
    q = torch.randn(R, H, Lq, D, generator=g)
    k, v = (torch.randn(R, H, own, D, generator=g) for _ in range(2))
    pk, pv = (torch.randn(3, H, S, D, generator=g) for _ in range(2))
    goal = SharedPrefix(torch.randn(2, H, 4, D, generator=g), torch.randn(2, H, 4, D, generator=g), 3)
    key_start = torch.tensor([0, 0, 4, 4, 8, 8])
    for prefix in (SharedPrefix(pk, pv, 2), SharedPrefix(pk, pv, 1, torch.tensor([1, 1, 0, 2, 2, 0]))):
        out = ops.cascade.attention_after_prefix(q, k, v, prefix, T, S + own - Lq, key_start, goal)
        torch.testing.assert_close(out.double(), oracle(q, k, v, T, S + own - Lq, key_start, prefix, goal),
                                   atol=2e-6, rtol=0)


def test_training_with_a_goal_keeps_the_reference_on_triton(monkeypatch):
    """A gradient (or dropout) through the goal segment: the reference's concatenated form, whose
    autograd SDPA has; the same gradients as on the reference backend."""
    model = goal_model(SHAPES[0], seed=8, dtype=torch.float32).to(DEVICE)  # eval: no dropout, gradients on
    tokens = torch.randint(0, model.config.n_bins, (2, model.config.block_size + 1)).to(DEVICE)
    goal = random_goal(model, 2).to(DEVICE)
    grads = {}
    for backend in ("triton", "reference"):
        ops.use(attention=backend)
        model.zero_grad()
        _, loss = model(tokens[:, :-1], tokens[:, 1:], goal=goal)
        loss.backward()
        grads[backend] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["triton"], grads["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the model's decode step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, goals, mapping, shared, padded", [
    (1, 1, "groups", 0, False),   # batch 1, nothing shared
    (6, 2, "groups", 10, True),   # two padded groups of 3 rows, each reading its group's goal
    (7, 3, "table", 10, False),   # odd rows, goals by a table
])
def test_triton_decode_step_with_a_goal_matches_the_python_blocks(monkeypatch, rows, goals, mapping, shared, padded,
                                                                  dtype):
    """The one-kernel decode step reading the goal segment (O = 7 > A + 2: goal tiles of 8 keys)
    against the Python blocks on the reference's attention: logits and the K/V it writes."""
    model = goal_model(SHAPES[1], seed=rows, dtype=torch.float32, noise=0.1).to(DEVICE)
    out = {}
    for backend in ("triton", "reference"):
        ops.use(attention=backend)
        assert ops.backends()["decode_layers"][DEVICE] == ("Triton" if backend == "triton" else "Python blocks")
        assert ops.fused_decode(torch.zeros(rows, 1, 32, dtype=dtype, device=DEVICE)) == (backend == "triton")
        out[backend] = fused_decode_step(model.to(dtype if backend == "triton" else torch.float32), rows, shared,
                                         padded, own=2, goals=goals, goal_table=mapping == "table")
    assert_step_matches(out["triton"], out["reference"], shared, dtype)


def test_triton_decode_step_checks_the_goal():
    from tt.kernels import decode

    model = goal_model(SHAPES[0], dtype=torch.float32)
    cache = model.setup_cache(4, 20)
    model.encode_goal(random_goal(model, 2), cache)
    weights = decode.stack_weights(list(model.block_weights()))
    x = torch.zeros(4, 32)
    with pytest.raises(ValueError, match="the goal segment must be"):
        decode.decode_layers(x, weights, 2, cache.kv, 3, 0, 1, 1, 5, goal_kv=cache.goal_kv[0])
    with pytest.raises(ValueError, match="goal_rows must be int64"):
        decode.decode_layers(x, weights, 2, cache.kv, 3, 0, 1, 1, 5, goal_kv=cache.goal_kv,
                             goal_rows=torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- goal models and plans


def test_goal_model_on_the_triton_backend_equals_its_full_forward(monkeypatch):
    """Prefill (the forward kernel) and decode (the one-kernel step) read the goal segment."""
    model = goal_model(SHAPES[0], seed=6, dtype=torch.float32).to(DEVICE)
    goal = random_goal(model, 2).to(DEVICE)
    tokens = torch.randint(0, model.config.n_bins, (2, 9)).to(DEVICE)
    ops.use(attention="reference")
    full = model(tokens, goal=goal)
    ops.use(attention="triton")
    no_reference_with_a_goal(monkeypatch)
    cache = model.setup_cache(2)
    model.encode_goal(goal, cache)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, goal=goal), full, rtol=0, atol=2e-5)
        torch.testing.assert_close(model.prefill(tokens[:, :8], cache), full[:, 7], rtol=0, atol=2e-5)
        torch.testing.assert_close(model.decode(tokens[:, 8], cache, 8), full[:, 8], rtol=0, atol=2e-5)


@pytest.mark.parametrize("objective", ["likelihood", "return"])
def test_greedy_goal_plan_on_triton_equals_the_reference_backend(monkeypatch, objective):
    """A goal-conditioned plan (greedy: top-1 filters for the return search) with the Triton kernels
    reading the goal segment, and with the reference's attention: the same tokens."""
    from tt.rng import Philox

    model = goal_model(SHAPES[1], seed=4, dtype=torch.float32, noise=0.2).to(DEVICE)
    T, O, N = model.transition_dim, model.config.observation_dim, model.config.n_bins
    greedy = dict(k_act=1, cdf_act=None) if objective == "return" else {}
    config = PlanConfig(horizon=2, beam_width=3, objective=objective, max_context_transitions=2, **greedy)
    g = torch.Generator().manual_seed(1)
    prefix = pad_prefixes([torch.randint(0, N, (c * T + O,), generator=g) for c in (1, 0)], T).to(DEVICE)
    goal = random_goal(model, 2, g).to(DEVICE)
    results = {}
    for backend in ("triton", "reference"):
        ops.use(attention=backend)
        results[backend] = beam_plan(model, prefix, random_discretizer(N, T), config, Philox(0, DEVICE), goal=goal)
    assert torch.equal(results["triton"].tokens, results["reference"].tokens)
    torch.testing.assert_close(results["triton"].score, results["reference"].score, rtol=1e-4, atol=1e-4)
