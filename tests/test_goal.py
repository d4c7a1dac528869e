"""Goal conditioning (the authors' ConditionalGPT): the goal's O observation tokens before every
sequence, against a direct reimplementation (one concatenated sequence, an explicit mask); the
goal's K/V as a segment of the cache that every row reads, on the reference and the C++ kernels
(the Triton kernels: test_goal_triton.py); goal-conditioned plans against the reference's; the
Planner's goals."""

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_model import authors_state_dict
from test_planner import random_discretizer

from tt import ops, reference
from tt.cache import SharedPrefix
from tt.config import PlanConfig
from tt.model import GPTConfig, TrajectoryTransformer
from tt.search import Planner, beam_plan, pad_prefixes

HAS_C = ops.compiled_library()
needs_c = pytest.mark.skipif(not HAS_C, reason="tt._C is not built")

SHAPES = [  # (observation_dim, action_dim, n_bins, n_transitions, n_layer, n_head, n_embd)
    (3, 1, 20, 4, 2, 2, 32),
    (7, 1, 11, 3, 2, 4, 32),  # O > A + 2
    (1, 1, 7, 5, 1, 1, 8),
    (9, 2, 13, 2, 3, 3, 24),  # O > A + 2, odd head count
]


def goal_model(shape, seed=0, dtype=torch.float64, noise=0.3):
    torch.manual_seed(seed)
    O, A, N, K, L, H, d = shape
    model = TrajectoryTransformer(GPTConfig(O, A, n_bins=N, n_transitions=K, n_layer=L, n_head=H, n_embd=d,
                                            goal_conditioned=True))
    with torch.no_grad():  # larger than init so that attention patterns matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval().to(dtype)


def direct_forward(model, tokens, goal):
    """Part 1 of the issue written out: goal embeddings (row j*N + i, no position) then the
    trajectory's (positions from its first token), one sequence through the blocks with an explicit
    [O+L, O+L] mask: goal tokens causal among themselves, trajectory tokens see every goal token and
    the trajectory's non-value tokens causally; logits of the trajectory tokens by head slot mod T."""
    c = model.config
    O, N, T, H = c.observation_dim, c.n_bins, c.transition_dim, c.n_head
    sd = model.state_dict()
    B, L = tokens.shape
    slot = torch.arange(L)
    goal_x = sd["goal_emb.weight"][goal + torch.arange(O) * N]
    traj_x = sd["tok_emb.weight"][torch.where(tokens == N, N * T, tokens + (slot % T) * N)] + sd["pos_emb"][:, :L]
    x = torch.cat([goal_x, traj_x], 1)
    mask = torch.zeros(O + L, O + L, dtype=torch.bool)
    mask[:O, :O] = torch.ones(O, O).tril().bool()
    mask[O:, :O] = True
    mask[O:, O:] = (slot[None] <= slot[:, None]) & (slot[None] % T != T - 1)
    C = x.shape[-1]
    for i in range(c.n_layer):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (C,), sd[p + "ln1.weight"], sd[p + "ln1.bias"])
        q, k, v = (F.linear(h, w, b).view(B, O + L, H, C // H).transpose(1, 2) for w, b in
                   zip(sd[p + "attn.qkv.weight"].chunk(3), sd[p + "attn.qkv.bias"].chunk(3)))
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(C // H)).masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + F.linear((att @ v).transpose(1, 2).reshape(B, O + L, C), sd[p + "attn.proj.weight"],
                         sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (C,), sd[p + "ln2.weight"], sd[p + "ln2.bias"])
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc.weight"], sd[p + "mlp.fc.bias"])),
                         sd[p + "mlp.proj.weight"], sd[p + "mlp.proj.bias"])
    x = F.layer_norm(x[:, O:], (C,), sd["ln_f.weight"], sd["ln_f.bias"])
    return torch.einsum("blc,lvc->blv", x, sd["head"][slot % T])


def random_goal(model, B, generator=None):
    return torch.randint(0, model.config.n_bins, (B, model.config.observation_dim), generator=generator)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("shape", SHAPES)
def test_goal_logits_equal_a_direct_reimplementation(shape):
    model = goal_model(shape)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, model.config.n_bins + 1, (3, model.config.block_size), generator=g)
    goal = random_goal(model, 3, g)
    for L in (1, model.transition_dim + 1, model.config.block_size):
        torch.testing.assert_close(model(tokens[:, :L], goal=goal), direct_forward(model, tokens[:, :L], goal),
                                   rtol=0, atol=1e-10)


def test_the_goal_changes_the_logits_and_value_tokens_stay_unseen():
    model = goal_model(SHAPES[0])
    T, L = model.transition_dim, model.config.block_size
    tokens = torch.randint(0, model.config.n_bins, (2, L))
    goal = random_goal(model, 2)
    base = model(tokens, goal=goal)
    other = goal.clone()
    other[:, -1] = (other[:, -1] + 1) % model.config.n_bins
    assert (model(tokens, goal=other) - base).abs().amax(-1).min() > 0  # every position sees the whole goal
    changed = tokens.clone()
    changed[:, T - 1] = (changed[:, T - 1] + 1) % model.config.n_bins  # a value token
    diff = (model(changed, goal=goal) - base).abs().amax(dim=(0, 2))
    assert diff[torch.arange(L) != T - 1].max() == 0


def test_a_goal_is_required_exactly_when_the_model_is_goal_conditioned():
    model = goal_model(SHAPES[0])
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="goal-conditioned: give the goal"):
        model(tokens)
    with pytest.raises(ValueError, match=r"integer tokens \[2, 3\]"):
        model(tokens, goal=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="no stop token"):
        model(tokens, goal=torch.full((2, 3), 20))
    plain = TrajectoryTransformer(GPTConfig(3, 1, n_bins=20, n_transitions=4, n_layer=1, n_head=2, n_embd=16))
    with pytest.raises(ValueError, match="not goal-conditioned"):
        plain(tokens, goal=torch.zeros(2, 3, dtype=torch.long))
    cache = model.setup_cache(2)
    with pytest.raises(ValueError, match="encode_goal first"):
        model.prefill(tokens, cache)


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prefill_and_decode_with_the_goal_equal_the_full_forward(backend, shape, dtype):
    """The goal's K/V encoded once into the cache's goal segment; rows read theirs by group
    (two goals, rows [goal, 2]) and by a table. float32 on the compiled backend runs tt::decode_layers."""
    model = goal_model(shape, seed=2, dtype=dtype)
    L, tol = model.config.block_size, (1e-10 if dtype == torch.float64 else 2e-5)
    goal = random_goal(model, 2)
    tokens = torch.randint(0, model.config.n_bins + 1, (4, L))
    full = model(tokens, goal=goal.repeat_interleave(2, 0))
    for mapping in ("groups", "table"):
        cache = model.setup_cache(max_rows=6)
        cache.kv.fill_(float("nan"))
        if mapping == "groups":
            model.encode_goal(goal, cache, group_rows=2)
        else:  # goals stored the other way round, read through a table
            model.encode_goal(goal.flip(0), cache, rows=torch.tensor([1, 1, 0, 0]))
        with torch.no_grad():
            for split in sorted({1, model.transition_dim - 1, L // 2}):
                torch.testing.assert_close(model.prefill(tokens[:, :split], cache), full[:, split - 1],
                                           rtol=0, atol=tol)
                for slot in range(split, L):
                    torch.testing.assert_close(model.decode(tokens[:, slot], cache, slot), full[:, slot],
                                               rtol=0, atol=tol)


def test_goal_keys_with_a_shared_prefix_equal_the_full_forward(backend):
    """Rows [2 plans, 3 beams]: each plan's window shared, each plan's goal read by its beams."""
    model = goal_model(SHAPES[1], seed=3, dtype=torch.float32)
    T = model.transition_dim
    goal = random_goal(model, 2)
    windows = torch.randint(0, model.config.n_bins, (2, 2 * T + 2))
    own = torch.randint(0, model.config.n_bins, (6, 3))
    full = model(torch.cat([windows.repeat_interleave(3, 0), own], 1), goal=goal.repeat_interleave(3, 0))
    cache = model.setup_cache(6)
    model.encode_goal(goal, cache, group_rows=1)
    with torch.no_grad():
        model.prefill(windows[:, : 2 * T], cache)
        cache.share(2 * T, groups=2, group_rows=3)
        cache.read_goals(group_rows=3)
        rest = torch.cat([windows[:, 2 * T :].repeat_interleave(3, 0), own], 1)
        logits = model.step(rest[:, :3], cache, 2 * T)
        torch.testing.assert_close(logits, full[:, 2 * T : 2 * T + 3], rtol=0, atol=2e-5)
        for i in range(3, rest.shape[1]):
            torch.testing.assert_close(model.decode(rest[:, i], cache, 2 * T + i), full[:, 2 * T + i],
                                       rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------- the compiled kernels


def goal_problem(R, G, S, own, O, D, H=2, T=4, padded=False, prefix_table=False, goal_table=False, seed=0):
    """One query per row after a shared prefix (G groups or a table) and its own keys, a goal segment
    of O keys (G goals read by group rows or by a table), poisoned-free random inputs."""
    g = torch.Generator().manual_seed(seed)
    n = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    group_rows = R // G if not prefix_table else 1
    prefix = None
    if S:
        rows = torch.randint(0, G, (R,), generator=g) if prefix_table else None
        prefix = SharedPrefix(n(G, H, S, D), n(G, H, S, D), group_rows, rows)
    goal_rows = torch.randint(0, G, (R,), generator=g) if goal_table else None
    goal = SharedPrefix(n(G, H, O, D) * 2, n(G, H, O, D), max(R // G, 1), goal_rows)
    cache = n(2, R, H, own + 2, D)  # the rows' own keys as strided views
    k, v = cache[0, :, :, :own], cache[1, :, :, :own]
    key_start = (torch.randint(0, (S + own - 1) // T + 1, (R,), generator=g) * T) if padded else None
    return n(R, H, 1, D), k, v, prefix, goal, key_start, S + own - 1


@needs_c
@pytest.mark.parametrize("R, G, S, own, O, D", [(1, 1, 0, 1, 1, 8), (1, 1, 8, 3, 3, 16), (6, 2, 8, 5, 7, 33),
                                               (12, 3, 12, 1, 2, 32), (9, 3, 0, 9, 5, 64)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("tables", [False, True])
def test_compiled_decode_attention_with_a_goal_matches_the_reference(R, G, S, own, O, D, padded, tables):
    q, k, v, prefix, goal, key_start, slot = goal_problem(R, G, S, own, O, D, padded=padded, prefix_table=tables,
                                                          goal_table=tables, seed=R + S + O + D)
    out = torch.full((R, 2, D), float("nan"))  # poisoned: an unwritten element fails
    pk, pv, prows = (prefix.k, prefix.v, prefix.rows) if prefix is not None else (None, None, None)
    torch.ops.tt.decode_attention(q[:, :, 0], k, v, pk, pv, prefix.group_rows if prefix else 1, prows, slot, 4,
                                  key_start, out, goal.k, goal.v, goal.group_rows, goal.rows)
    double = lambda p: None if p is None else SharedPrefix(p.k.double(), p.v.double(), p.group_rows, p.rows)  # noqa: E731
    want = reference.attention(q.double(), k.double(), v.double(), transition_dim=4, q_offset=slot,
                               key_start=key_start, prefix=double(prefix), goal=double(goal))[:, :, 0]
    torch.testing.assert_close(out.double(), want, atol=2e-6, rtol=2e-6)


@needs_c
def test_compiled_decode_attention_checks_the_goal():
    q, k, v, _, goal, _, slot = goal_problem(4, 2, 0, 5, 3, 16)
    out = torch.empty(4, 2, 16)
    op = torch.ops.tt.decode_attention
    with pytest.raises(RuntimeError, match="give both goal_k and goal_v"):
        op(q[:, :, 0], k, v, None, None, 1, None, slot, 4, None, out, goal.k, None)
    with pytest.raises(RuntimeError, match="goal_rows must be a contiguous int64"):
        op(q[:, :, 0], k, v, None, None, 1, None, slot, 4, None, out, goal.k, goal.v, 1, torch.zeros(3).long())
    with pytest.raises(RuntimeError, match="goal_rows given without a goal"):
        op(q[:, :, 0], k, v, None, None, 1, None, slot, 4, None, out, None, None, 1, torch.zeros(4).long())
    with pytest.raises(RuntimeError, match="goal_k must be"):
        op(q[:, :, 0], k, v, None, None, 1, None, slot, 4, None, out, goal.k[:, :, :0], goal.v[:, :, :0])
    with pytest.raises(RuntimeError, match="goal_group_rows must be >= 1"):
        op(q[:, :, 0], k, v, None, None, 1, None, slot, 4, None, out, goal.k, goal.v, 0)


@needs_c
@pytest.mark.parametrize("rows, goals", [(1, 1), (6, 2), (9, 3)])
def test_fused_decode_step_with_a_goal_matches_the_python_blocks(monkeypatch, rows, goals):
    """Prefill and step through tt::decode_layers, goal segment read in place: the Python blocks'
    logits and K/V to float rounding (its layer norm and GELU round otherwise than ATen's)."""
    model = goal_model(SHAPES[1], seed=rows, dtype=torch.float32)
    goal = random_goal(model, goals)
    tokens = torch.randint(0, model.config.n_bins, (rows, 6))
    out = {}
    for fused in (True, False):
        ops.use(decode="fused" if fused else "blocks")
        cache = model.setup_cache(rows)
        model.encode_goal(goal, cache, group_rows=rows // goals)
        with torch.no_grad():
            model.prefill(tokens[:, :5], cache)
            out[fused] = (model.decode(tokens[:, 5], cache, 5), cache.kv[:, :, :rows, :, :6].clone())
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the authors' ConditionalGPT


def conditional_state_dict(O, A, N, K, n_layer, n_embd, seed=0):
    """A state dict with the authors' ConditionalGPT names and shapes: their block size counts the
    goal (pos_emb and the masks K*T-1+O), goal_emb has N*O rows."""
    sd = authors_state_dict(O, A, N, K, n_layer, n_embd, seed)
    g = torch.Generator().manual_seed(seed + 1)
    size = K * (O + A + 2) - 1 + O
    sd["pos_emb"] = torch.randn(1, size, n_embd, generator=g, dtype=torch.float64) * 0.3
    sd["goal_emb.weight"] = torch.randn(N * O, n_embd, generator=g, dtype=torch.float64) * 0.3
    for i in range(n_layer):
        sd[f"blocks.{i}.attn.mask"] = torch.ones(1, 1, size, size)
    return sd


@pytest.mark.parametrize("O, A, N, K, n_layer, n_head, n_embd", [(3, 1, 20, 4, 2, 2, 32), (7, 1, 11, 2, 1, 4, 16)])
def test_import_of_the_authors_conditional_gpt(O, A, N, K, n_layer, n_head, n_embd):
    sd = conditional_state_dict(O, A, N, K, n_layer, n_embd)
    model = TrajectoryTransformer.from_reference(sd, O, A, n_head=n_head).double().eval()
    c = model.config
    assert c.goal_conditioned and c.n_transitions == K and c.n_bins == N
    assert torch.equal(model.goal_emb.weight, sd["goal_emb.weight"])
    assert torch.equal(model.pos_emb, sd["pos_emb"][:, : K * c.transition_dim - 1])
    tokens = torch.randint(0, N + 1, (2, c.block_size))
    goal = torch.randint(0, N, (2, O))
    torch.testing.assert_close(model(tokens, goal=goal), direct_forward(model, tokens, goal), rtol=0, atol=1e-10)
    bad = dict(sd, **{"goal_emb.weight": sd["goal_emb.weight"][:-1]})
    with pytest.raises(ValueError, match="goal_emb has"):
        TrajectoryTransformer.from_reference(bad, O, A, n_head=n_head)


# ----------------------------------------------------------------------------- planning towards a goal


PLANS = [  # shape, contexts, config
    (SHAPES[0], [0, 2], dict(horizon=3, beam_width=6, max_context_transitions=3)),
    (SHAPES[1], [1], dict(horizon=2, beam_width=4, max_context_transitions=2)),
    (SHAPES[0], [2, 0, 1], dict(horizon=2, beam_width=1, k_obs=None, cdf_act=None, max_context_transitions=None)),
]


# `cached` is the reference's search where the block holds the whole plan (case 2: no crop)
@pytest.mark.parametrize("case, window", [(0, "exact"), (1, "exact"), (2, "exact"), (2, "cached")])
def test_goal_conditioned_likelihood_plan_matches_the_reference(backend, case, window):
    shape, contexts, config = PLANS[case]
    model = goal_model(shape, seed=case, noise=0.2)
    T, O, N = model.transition_dim, model.config.observation_dim, model.config.n_bins
    config = PlanConfig(**config, objective="likelihood", window=window)
    g = torch.Generator().manual_seed(case)
    prefixes = [torch.randint(0, N, (c * T + O,), generator=g) for c in contexts]
    goal = random_goal(model, len(prefixes), g)
    result = beam_plan(model, pad_prefixes(prefixes, T), random_discretizer(N, T), config, goal=goal)
    for b, prefix in enumerate(prefixes):
        tokens, logp = reference.likelihood_plan(model, prefix, config, goal=goal[b])
        assert torch.equal(result.tokens[b], tokens), (b, result.tokens[b].tolist(), tokens.tolist())
        assert result.score[b].item() == pytest.approx(logp.item(), rel=1e-9, abs=1e-9)
    other = beam_plan(model, pad_prefixes(prefixes, T), random_discretizer(N, T), config, goal=(goal + 1) % N)
    assert not torch.equal(other.score, result.score)  # the plans depend on their goals


def test_goal_conditioned_return_plan_matches_the_reference():
    from tt.rng import Philox

    model = goal_model(SHAPES[0], seed=5, noise=0.2)
    T, O, N = model.transition_dim, model.config.observation_dim, model.config.n_bins
    config = PlanConfig(horizon=2, beam_width=4, n_expand=2, max_context_transitions=3)
    discretizer = random_discretizer(N, T)
    prefix = torch.randint(0, N, (T + O,))
    goal = random_goal(model, 1)
    result = beam_plan(model, prefix[None], discretizer, config, Philox(7), goal=goal)
    mids = torch.as_tensor(discretizer.midpoints)
    tokens, value = reference.beam_plan(model, prefix, mids, config, Philox(7), goal=goal[0])
    assert torch.equal(result.tokens[0], tokens)
    assert result.score[0].item() == pytest.approx(value.item(), rel=1e-9)


def test_planner_plans_towards_each_environments_goal():
    model = goal_model(SHAPES[0], seed=1, dtype=torch.float32)
    O, A, N, T = 3, 1, 20, model.transition_dim
    discretizer = random_discretizer(N, T)
    config = PlanConfig(horizon=2, beam_width=4, objective="likelihood", max_context_transitions=3)
    obs = np.zeros((2, O))
    planner = Planner(model, discretizer, config, seed=0)
    with pytest.raises(ValueError, match="have no goal"):
        planner.act(obs)
    goals = np.random.default_rng(0).normal(size=(2, O)) * 3
    planner.set_goal(goals)
    both = planner.plan(obs)
    planner.set_goal(goals[1], env=0)  # environment 0 now plans towards environment 1's goal
    swapped = planner.plan(obs)
    np.testing.assert_array_equal(swapped[0].tokens, both[1].tokens)
    np.testing.assert_array_equal(swapped[1].tokens, both[1].tokens)
    single = Planner(model, discretizer, config, seed=0, goal=goals[0])  # one goal for every environment
    np.testing.assert_array_equal(single.plan(obs[0]).tokens, both[0].tokens)
    actions = planner.act(obs)
    assert actions.shape == (2, A) and np.isfinite(actions).all()


@pytest.mark.parametrize("goal, why", [(np.zeros(4), r"observation \[3\]"), (np.zeros((2, 2, 3)), "shape"),
                                       (np.array([0.0, np.nan, 1.0]), "NaN"), (np.array([np.inf, 0, 0]), "NaN")])
def test_bad_goals_are_refused(goal, why):
    model = goal_model(SHAPES[0], dtype=torch.float32)
    planner = Planner(model, random_discretizer(20, model.transition_dim), PlanConfig(horizon=1, beam_width=2))
    with pytest.raises(ValueError, match=why):
        planner.set_goal(goal)
    with pytest.raises(ValueError, match=why):
        Planner(model, random_discretizer(20, model.transition_dim), PlanConfig(horizon=1), goal=goal)


def test_a_goal_for_a_model_without_goals_is_refused():
    plain = TrajectoryTransformer(GPTConfig(3, 1, n_bins=20, n_transitions=4, n_layer=1, n_head=2, n_embd=16))
    planner = Planner(plain, random_discretizer(20, plain.transition_dim), PlanConfig(horizon=1, beam_width=2))
    with pytest.raises(ValueError, match="not goal-conditioned"):
        planner.set_goal(np.zeros(3))


@needs_c
def test_float32_goal_plan_on_the_compiled_kernels_matches_the_reference_backend(monkeypatch):
    """The same goal-conditioned likelihood search with tt::decode_layers / decode_attention reading
    the goal segment, and with the reference's attention: the same plan."""
    model = goal_model(SHAPES[1], seed=4, dtype=torch.float32, noise=0.2)
    T, O, N = model.transition_dim, model.config.observation_dim, model.config.n_bins
    config = PlanConfig(horizon=3, beam_width=5, objective="likelihood", max_context_transitions=2)
    prefixes = [torch.randint(0, N, (c * T + O,)) for c in (1, 0, 2)]
    goal = random_goal(model, 3)
    results = {}
    for backend in ("", "reference"):
        ops.use(backend=backend)
        results[backend] = beam_plan(model, pad_prefixes(prefixes, T), random_discretizer(N, T), config, goal=goal)
    assert torch.equal(results[""].tokens, results["reference"].tokens)
    torch.testing.assert_close(results[""].score, results["reference"].score, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- training with hindsight goals


def test_windows_carry_their_episodes_hindsight_goals():
    from tt.data import HindsightGoals, TokenWindows, make_trajectories

    rng = np.random.default_rng(0)
    lengths = [5, 8, 3]
    obs = [rng.normal(size=(n, 2)) + 10 * e for e, n in enumerate(lengths)]  # episode e's observations near 10e
    traj = make_trajectories(obs, [rng.normal(size=(n, 1)) for n in lengths], [rng.normal(size=n) for n in lengths],
                             [False] * 3)
    discretizer = random_discretizer(40, 5)
    goals = HindsightGoals.of(traj)
    np.testing.assert_array_equal(goals.final, np.stack([o[-1] for o in obs]))
    K = 3
    final = TokenWindows(traj, discretizer, K, goals, "final")
    index = torch.arange(len(final))
    episode = np.repeat(np.arange(3), [n - 1 for n in lengths])
    want = torch.from_numpy(discretizer.discretize(goals.final, columns=slice(0, 2)))[episode]
    assert torch.equal(final.goals_of(index), want)
    future = TokenWindows(traj, discretizer, K, goals, "future")
    assert final.goal_draws(0, 0) is None and torch.equal(future.goal_draws(3, 1), future.goal_draws(3, 1))
    step_tokens = torch.from_numpy(discretizer.discretize(goals.steps, columns=slice(0, 2)))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for draws in (torch.zeros(len(future)), torch.full((len(future),), 1 - 1e-12), future.goal_draws(0, 2)):
        got = future.goals_of(index, draws)
        local = np.concatenate([np.arange(n - 1) for n in lengths])
        lo = starts[episode] + np.minimum(local + K - 1, np.array(lengths)[episode] - 1)
        hi = starts[episode] + np.array(lengths)[episode]
        step = lo + np.minimum((draws.numpy() * (hi - lo)).astype(int), hi - lo - 1)
        assert torch.equal(got, step_tokens[step])
    with pytest.raises(ValueError, match="goal_draws"):
        future.goals_of(index)


@pytest.fixture(scope="module")
def pointmaze_tiny():
    from tt.tasks import make_dataset

    return make_dataset("pointmaze-fourrooms", episodes=3, seed=0, progress=False)


@pytest.mark.parametrize("goal", ["final", "future"])
def test_goal_conditioned_training_on_pointmaze_runs_and_plans(tmp_path, pointmaze_tiny, goal):
    from tt.checkpoint import load_run
    from tt.config import make_config
    from tt.train import train

    cfg = make_config("small", dataset="pointmaze-fourrooms", goal_conditioned=True, goal=goal, max_steps=3,
                      batch_size=8, n_bins=20, n_layer=1, n_embd=16, n_head=2, n_transitions=3, save_every=3,
                      log_every=1, device="cpu")
    train(cfg, str(tmp_path), progress=False)
    model, discretizer, config, _ = load_run(str(tmp_path))
    assert model.config.goal_conditioned and config["train"]["goal"] == goal
    assert config["data"]["goal_columns"] == [0, 1]
    planner = Planner(model, discretizer, PlanConfig(horizon=2, beam_width=3, objective="likelihood"), seed=0,
                      goal=np.array([1.0, 1.0, 0.0, 0.0]))
    assert planner.act(np.zeros(4)).shape == (2,)
    if goal == "final":  # tt eval on a goal task: success, steps to the goal, the paths drawn
        from tt.eval.goal import evaluate_goals

        result = evaluate_goals(str(tmp_path), n_goals=1, seed=0, out=str(tmp_path / "eval"), progress=False,
                                horizon=1, beam_width=2)
        episode = result["episodes"][0]
        assert result["n"] == 1 and result["success_rate"] == float(episode["success"])
        assert episode["planned"].shape == (1, 2) and np.isfinite(episode["path"]).all()
        assert (tmp_path / "eval" / "goal_paths.png").stat().st_size > 0 and (tmp_path / "eval" / "goals.json").exists()


def test_goal_options_are_checked():
    from tt.config import make_config

    with pytest.raises(ValueError, match="goal must be one of"):
        make_config(goal="random")
    with pytest.raises(ValueError, match="no --holdout-episodes"):
        make_config(goal_conditioned=True, holdout_episodes=2)


def test_goal_conditioned_train_and_eval_from_the_command_line(tmp_path, pointmaze_tiny, capsys):
    from tt.checkpoint import load_run
    from tt.cli import main

    run = str(tmp_path / "run")
    main(["train", "--dataset", "pointmaze-fourrooms", "--out", run, "--preset", "small", "--steps", "1",
          "--batch-size", "4", "--n-transitions", "2", "--goal-conditioned", "--goal", "future", "--device", "cpu"])
    _, _, config, _ = load_run(run)
    assert config["train"]["goal_conditioned"] and config["train"]["goal"] == "future"
    main(["eval", "--run", run, "--episodes", "1", "--horizon", "1", "--beam-width", "2", "--device", "cpu"])
    assert "goals in another room" in capsys.readouterr().out
    assert (tmp_path / "run" / "eval" / "goal_paths.png").exists()


class ControllerPlanner:
    """A stand-in for a goal-conditioned `tt.Planner` in goal evaluation: the data's waypoint
    controller steering each environment to the goal `set_goal` gave it (`ignore_goals`: a broken
    planner that always steers to the first goal it was given)."""

    def __init__(self, maze, ignore_goals: bool = False):
        from tt.tasks.pointmaze import WaypointController

        self.controller, self.ignore_goals, self.O = WaypointController(maze), ignore_goals, 4
        self.goals: dict[int, np.ndarray] = {}

    def reset(self, n_envs):
        self.goals = {}

    def set_goal(self, goal, env):
        if not (self.ignore_goals and self.goals):
            self.goals[env] = np.asarray(goal)
        else:
            self.goals[env] = next(iter(self.goals.values()))

    def act(self, obs):
        actions = np.stack([self.controller({"observation": o, "desired_goal": self.goals.get(i, o)[:2]})
                            for i, o in enumerate(obs)])
        self.current_plans = [types.SimpleNamespace(transitions=np.zeros((1, 4)))] * len(obs)
        return actions

    def observe(self, reward, done):
        pass


@pytest.mark.parametrize("broken", [False, True])
def test_goal_evaluation_scores_a_planner_that_heads_for_its_goals(broken):
    """Goal evaluation gives each environment its own goal and measures success: a planner that heads
    for the goal it is given reaches most goals in other rooms; one that ignores its goals does not."""
    from tt.eval.goal import evaluate_planner
    from tt.tasks.pointmaze import make_env, maze_of

    env = make_env("fourrooms")
    maze = maze_of(env)
    env.close()
    pairs = maze.evaluation_pairs(6, seed=0)
    result = evaluate_planner(ControllerPlanner(maze, ignore_goals=broken), [0, 1], pairs, seed=0, n_envs=3,
                              progress=False)
    if broken:
        assert result["success_rate"] <= 0.5, result["success_rate"]
    else:
        assert result["success_rate"] >= 0.8, result["success_rate"]
