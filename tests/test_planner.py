import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from tt import ops, reference
from tt.config import PlanConfig
from tt.discretize import Discretizer
from tt.model import GPTConfig, TrajectoryTransformer
from tt.rng import Philox
from tt.search import PlanGraphs, Planner, Search, beam_plan, check_prefix, pad_prefixes

# random models often plan the episode's end; the planner warns about it once per planner
pytestmark = pytest.mark.filterwarnings("ignore:the plan's action holds a stop token")

GREEDY = dict(k_act=1, cdf_act=None, k_obs=1, k_rew=1)
STOCHASTIC = dict(k_obs=None, cdf_obs=0.5, k_act=None, cdf_act=0.6)  # observations and actions drawn


def random_model(O, A, N=15, K=6, seed=0, dtype=torch.float64, n_layer=2, noise=0.3):
    torch.manual_seed(seed)
    model = TrajectoryTransformer(GPTConfig(O, A, n_bins=N, n_transitions=K, n_layer=n_layer, n_head=2, n_embd=32))
    with torch.no_grad():  # sharper than the init, so that plans depend on the tokens
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval().to(dtype)


def random_discretizer(N, T, seed=0):
    return Discretizer(np.sort(np.random.default_rng(seed).normal(size=(N + 1, T)), axis=0))


def random_prefixes(model, contexts, generator):
    T, O, N = model.transition_dim, model.config.observation_dim, model.config.n_bins
    return [torch.randint(0, N, (c * T + O,), generator=generator) for c in contexts]


def assert_matches_reference(model, disc, cfg, prefixes, philox_seed=0):
    """The fast plans equal the reference's; with one prefix also draw for draw (same Philox seed)."""
    result = beam_plan(model, pad_prefixes(prefixes, model.transition_dim), disc, cfg, Philox(philox_seed))
    mids = torch.tensor(disc.midpoints)
    for b, prefix in enumerate(prefixes):
        tokens, score = reference.beam_plan(model, prefix, mids, cfg, Philox(philox_seed))
        assert torch.equal(result.tokens[b], tokens), f"plan {b} differs from the reference"
        # float32 models: the fast attention sums in another order, which the model carries into the score
        tol = dict(rel=1e-5) if model.tok_emb.weight.dtype == torch.float32 else dict(abs=1e-6)
        assert result.score[b].item() == pytest.approx(score.item(), **tol)
        own = reference.plan_score(model, prefix, result.tokens[b], mids, cfg)  # what its tokens score
        assert result.score[b].item() == pytest.approx(own.item(), **tol)


@pytest.mark.parametrize("O, A, C, H, W, E", [
    (3, 1, 5, 4, 4, 2),
    (1, 1, 2, 15, 3, 2),
    (11, 3, 5, 3, 2, 2),
    (4, 2, 3, 6, 5, 3),
    (2, 3, 4, 10, 1, 1),
    (5, 1, 1, 1, 6, 2),
    (2, 2, 6, 5, 3, 1),  # C beyond the model's window (K=6) is cropped by the block size
])
def test_greedy_exact_plans_equal_the_reference(O, A, C, H, W, E):
    model = random_model(O, A, seed=O * 10 + A)
    disc = random_discretizer(model.config.n_bins, model.transition_dim)
    g = torch.Generator().manual_seed(H)
    cfg = PlanConfig(horizon=H, beam_width=W, n_expand=E, max_context_transitions=C, **GREEDY)
    # rows with full, shorter and empty contexts in one batch
    assert_matches_reference(model, disc, cfg, random_prefixes(model, [C, max(C - 2, 0), 0], g))


def test_greedy_exact_single_plan_float32():
    model = random_model(3, 2, dtype=torch.float32)
    disc = random_discretizer(15, 7)
    cfg = PlanConfig(horizon=5, beam_width=4, n_expand=2, max_context_transitions=3, **GREEDY)
    assert_matches_reference(model, disc, cfg, random_prefixes(model, [3], torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("O, A, C, H, W, E", [(2, 1, 3, 8, 4, 2), (3, 1, 0, 11, 2, 3), (1, 2, 5, 6, 3, 2)])
def test_greedy_cached_plans_equal_the_uncropped_reference(O, A, C, H, W, E):
    model = random_model(O, A, K=12, seed=C)
    disc = random_discretizer(model.config.n_bins, model.transition_dim)
    cfg = PlanConfig(horizon=H, beam_width=W, n_expand=E, max_context_transitions=None, window="cached", **GREEDY)
    assert (C + H) <= 12  # the block size holds the whole plan
    assert_matches_reference(model, disc, cfg, random_prefixes(model, [C, max(C - 1, 0)],
                                                               torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("window", ["exact", "cached"])
def test_beams_share_the_context_prefix_and_plan_as_with_whole_windows(monkeypatch, window):
    """The context is encoded once per plan and read by every beam (the cache's shared prefix):
    float32 plans equal the reference planner's and the reference ops' (whole windows per row)."""
    model = random_model(3, 2, K=8, dtype=torch.float32)
    disc = random_discretizer(15, 7)
    cfg = PlanConfig(horizon=3, beam_width=5, n_expand=2, max_context_transitions=None, window=window, **GREEDY)
    prefixes = random_prefixes(model, [4, 2], torch.Generator().manual_seed(5))
    cache = model.setup_cache(2 * 2 * 5)
    fast = beam_plan(model, pad_prefixes(prefixes, 7), disc, cfg, Philox(0), cache)
    assert cache.shared == (4 * 7 if window == "cached" else 0)  # exact re-encodes every transition
    assert_matches_reference(model, disc, cfg, prefixes)
    ops.use(backend="reference")
    slow = beam_plan(model, pad_prefixes(prefixes, 7), disc, cfg, Philox(0))
    assert torch.equal(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.score, slow.score)


@pytest.mark.parametrize("window", ["exact", "cached"])
def test_a_prepared_search_reruns_on_new_inputs_as_a_fresh_plan(window):
    """What a CUDA graph replay relies on: a search run again after `load` puts new prefixes into its
    tensors plans exactly as a fresh `beam_plan` (no state carried over from the last run)."""
    model = random_model(3, 1, K=6, dtype=torch.float32)
    disc = random_discretizer(15, 6)
    cfg = PlanConfig(horizon=4, beam_width=4, n_expand=2, max_context_transitions=4, window=window)
    g = torch.Generator().manual_seed(9)
    first, second = (pad_prefixes(random_prefixes(model, contexts, g), 6) for contexts in ([3, 1], [2, 3]))
    search = Search(model, first.clone(), check_prefix(model, first), disc, cfg, None)
    with torch.no_grad():  # as beam_plan runs it
        runs = [search.run(Philox(7))]
        search.load(second, check_prefix(model, second))
        runs.append(search.run(Philox(8)))
    for prefix, seed, run in zip((first, second), (7, 8), runs):
        fresh = beam_plan(model, prefix, disc, cfg, Philox(seed))
        assert torch.equal(run.tokens, fresh.tokens) and torch.equal(run.score, fresh.score)
    with pytest.raises(ValueError, match="padded"):
        search.load(first[:, :] * 0 + 1, [0, 0])


@pytest.mark.skipif(not ops.compiled_library(), reason="the reference sampling reads its Philox state on the host")
@pytest.mark.parametrize("window", ["exact", "cached"])
def test_the_search_never_waits_for_the_device(monkeypatch, window):
    """CUDA graph capture forbids host synchronization, data-dependent shapes and copies from
    host memory. Under FakeTensorMode (tensors without data) the first two raise; the third is
    checked by refusing `torch.tensor` / `torch.as_tensor` while the search runs."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    model = random_model(3, 1, K=6, dtype=torch.float32)
    disc = random_discretizer(15, 6)
    cfg = PlanConfig(horizon=7, beam_width=4, n_expand=2, max_context_transitions=4, window=window)  # slides
    prefix = pad_prefixes(random_prefixes(model, [3, 1], torch.Generator().manual_seed(4)), 6)  # padded
    search = Search(model, prefix.clone(), check_prefix(model, prefix), disc, cfg, None)

    def from_host(*args, **kwargs):
        raise AssertionError("a tensor built from host data inside the search")

    def run_without_data(search):
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True), monkeypatch.context() as patch:
            rng = Philox(0)  # its state on the "device", as a graph captures it
            patch.setattr(torch, "tensor", from_host)
            patch.setattr(torch, "as_tensor", from_host)
            return search.run(rng)

    assert run_without_data(search).tokens.shape == (2, 42)
    ops.use(backend="reference")  # the reference draw reads its state on the host: the check can fail
    with pytest.raises(DataDependentOutputException):
        run_without_data(search)


def test_cuda_graphs_are_a_cuda_option():
    model = random_model(2, 1)
    assert Planner(model, random_discretizer(15, 5), PlanConfig(cuda_graphs=True))._graphs is None  # CPU: eager


class ReplayingRecorder:
    """A CUDA graph's contract on CPU, for PlanGraphs' host logic: recording leaves no trace (the
    Philox state is put back), a replay reruns the recorded search on whatever its input tensors
    hold now and rewrites the recorded outputs in place."""

    def __init__(self, rng: Philox, fail: bool = False):
        self.rng, self.fail, self.replays = rng, fail, 0

    def warm_up(self, run):
        return run()

    def record(self, run):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        saved = self.rng.state.clone()
        result = run()
        self.rng.state.copy_(saved)

        def replay():
            self.replays += 1
            fresh = run()
            result.tokens.copy_(fresh.tokens)
            result.score.copy_(fresh.score)

        return replay, result


@pytest.mark.parametrize("window, max_graphs", [("exact", 16), ("cached", 1)])
def test_plan_graphs_plan_as_eager_plans_across_layouts(window, max_graphs):
    """PlanGraphs' host side (one graph per layout, inputs loaded into the recorded search, least
    recently used layouts dropped): a stochastic sequence of plans equals the eager sequence."""
    model = random_model(3, 1, dtype=torch.float32)
    disc = random_discretizer(15, 6)
    cfg = PlanConfig(horizon=3, beam_width=3, n_expand=2, max_context_transitions=3, window=window)
    rng, eager_rng = Philox(5), Philox(5)
    recorder = ReplayingRecorder(rng)
    graphs = PlanGraphs(model, disc, cfg, rng, max_graphs=max_graphs, recorder=recorder)
    g = torch.Generator().manual_seed(0)
    # layouts: padded, unpadded, the first one's shape unpadded, repeats
    for contexts in ([3, 1], [2], [3, 1], [3, 1], [2], [0, 0], [3, 3], [3, 1]):
        prefix = pad_prefixes(random_prefixes(model, contexts, g), model.transition_dim)
        graphed = graphs.plan(prefix)
        eager = beam_plan(model, prefix, disc, cfg, eager_rng)
        assert torch.equal(graphed.tokens, eager.tokens) and torch.equal(graphed.score, eager.score)
    assert graphs.failed is None and graphs.layouts == min(4, max_graphs)
    assert recorder.replays == (4 if max_graphs > 1 else 1)  # with one graph held, only the repeat in a row replays


@pytest.mark.parametrize("attention", ["native", "triton"])
def test_plan_graphs_follow_weights_changed_in_place(monkeypatch, attention):
    """A graph may replay a copy of the weights (the Triton decode step reads them stacked): after
    an in-place change of the model, graph plans are the eager plans of the changed model."""
    device = "cpu"
    if attention == "triton":
        pytest.importorskip("tt.kernels.attention")
        ops.use(attention="triton")
        device = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the kernels run interpreted
    model = random_model(3, 1, dtype=torch.float32).to(device)
    disc = random_discretizer(15, 6)
    cfg = PlanConfig(horizon=2, beam_width=3, n_expand=2, max_context_transitions=3, **GREEDY)
    rng = Philox(3, device)
    graphs = PlanGraphs(model, disc, cfg, rng, recorder=ReplayingRecorder(rng))
    prefix = pad_prefixes(random_prefixes(model, [2], torch.Generator().manual_seed(2)), model.transition_dim)
    for change in (False, False, True, False):
        if change:
            with torch.no_grad():
                for p in model.blocks.parameters():
                    p.mul_(-1.5)
        assert torch.equal(graphs.plan(prefix).tokens, beam_plan(model, prefix, disc, cfg, Philox(3, device)).tokens)
    assert graphs.layouts == 1


def test_plan_graphs_fall_back_to_eager_plans_when_capture_fails():
    model = random_model(3, 1, dtype=torch.float32)
    disc = random_discretizer(15, 6)
    cfg = PlanConfig(horizon=2, beam_width=3, n_expand=2, max_context_transitions=3)
    rng, eager_rng = Philox(7), Philox(7)
    graphs = PlanGraphs(model, disc, cfg, rng, recorder=ReplayingRecorder(rng, fail=True))
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        prefix = pad_prefixes(random_prefixes(model, [2], g), model.transition_dim)
        if step == 0:
            with pytest.warns(UserWarning, match="planning eagerly"):
                graphed = graphs.plan(prefix)
        else:
            graphed = graphs.plan(prefix)
        assert torch.equal(graphed.tokens, beam_plan(model, prefix, disc, cfg, eager_rng).tokens)
    assert "capturing" in graphs.failed and graphs.layouts == 0


@pytest.mark.parametrize("sampling", ["greedy", "stochastic"])
@pytest.mark.parametrize("O, A, K, contexts, H, W, E, dtype", [
    (2, 1, 4, [3, 1], 1, 3, 2, torch.float64),
    (3, 1, 6, [2, 0], 4, 4, 2, torch.float64),
    (1, 2, 8, [5, 3, 1], 3, 3, 2, torch.float64),
    (2, 2, 5, [0], 5, 2, 3, torch.float64),  # no context: the whole block is the plan
    (3, 2, 6, [3, 2], 3, 4, 2, torch.float32),
])
def test_cached_and_exact_plans_agree_while_the_block_holds_the_plan(O, A, K, contexts, H, W, E, dtype, sampling):
    """Where the block size holds the context and the whole plan, nothing is cropped or slid: the
    cached search (one growing cache) and the exact one (a prefill per transition) condition every
    token on the same window, so their plans are equal token for token, greedy or drawn with the
    same Philox seed (greedy beams are all alike; drawn ones differ, so the survivors' cache rows
    must follow their beams)."""
    model = random_model(O, A, K=K, seed=K + H, dtype=dtype)
    disc = random_discretizer(model.config.n_bins, model.transition_dim)
    assert max(contexts) + H <= K  # the block holds the whole plan
    prefix = pad_prefixes(random_prefixes(model, contexts, torch.Generator().manual_seed(H)), model.transition_dim)
    cfg = dict(horizon=H, beam_width=W, n_expand=E, **(GREEDY if sampling == "greedy" else STOCHASTIC))
    plans = {window: beam_plan(model, prefix, disc, PlanConfig(**cfg, window=window, max_context_transitions=None),
                               Philox(H))
             for window in ("exact", "cached")}
    assert torch.equal(plans["cached"].tokens, plans["exact"].tokens)
    torch.testing.assert_close(plans["cached"].score, plans["exact"].score)
    # the comparison tells windows apart: an exact plan cropped to two transitions plans otherwise
    cropped = beam_plan(model, prefix, disc, PlanConfig(**cfg, max_context_transitions=2), Philox(H))
    assert not torch.equal(cropped.tokens, plans["cached"].tokens)


@pytest.mark.parametrize("contexts, C, sampling", [
    ([3, 1], 3, "greedy"), ([2], None, "greedy"), ([3, 0], 2, "greedy"),
    ([3], 3, "stochastic"), ([1], None, "stochastic"),  # one plan: drawn as the reference, draw for draw
])
def test_cached_mode_slides_when_the_block_is_full(contexts, C, sampling):
    """Past the block size the cached plan slides its window (re-encodes the last C-1 transitions,
    then grows again): its plans equal the authors' planner with each token's window starting
    where the cached mode's does, rows of shorter contexts included."""
    model = random_model(2, 1, K=4)
    T, K, H, W = model.transition_dim, 4, 9, 3
    disc = random_discretizer(15, T)
    cfg = PlanConfig(horizon=H, beam_width=W, n_expand=2, max_context_transitions=C, window="cached",
                     **(GREEDY if sampling == "greedy" else STOCHASTIC))
    prefixes = random_prefixes(model, contexts, torch.Generator().manual_seed(3))
    result = beam_plan(model, pad_prefixes(prefixes, T), disc, cfg, Philox(1))
    assert result.tokens.shape == (len(contexts), H * T)
    n_ctx = max(contexts)
    starts = reference.cached_window_starts(n_ctx, K, min(C or K, K), H)
    assert len(set(starts.values())) >= 3  # it slides at least twice
    mids = torch.tensor(disc.midpoints)
    for b, prefix in enumerate(prefixes):
        # the rule counts in the batch's padded coordinates: the row's padding transitions
        crop = reference.cached_crop(model, cfg, n_ctx, pad=n_ctx - contexts[b])
        tokens, score = reference.beam_plan(model, prefix, mids, cfg, Philox(1), crop=crop)
        assert torch.equal(result.tokens[b], tokens), f"plan {b} differs from the cached window rule"
        assert result.score[b].item() == pytest.approx(score.item(), abs=1e-6)


def test_stochastic_exact_plans_equal_the_reference_draw_for_draw():
    """With one plan, the fast planner draws in the reference's order: same seed, same plan."""
    model = random_model(2, 2)
    disc = random_discretizer(15, 6)
    cfg = PlanConfig(horizon=4, beam_width=6, n_expand=2, max_context_transitions=3, k_obs=None, cdf_obs=0.5)
    prefix = random_prefixes(model, [2], torch.Generator().manual_seed(4))
    for seed in range(5):
        assert_matches_reference(model, disc, cfg, prefix, philox_seed=seed)


def first_action_counts(plan_fn, n_plans, N):
    counts = np.zeros(N + 1)
    for seed in range(n_plans):
        counts[plan_fn(torch.Generator().manual_seed(10_000 + seed))] += 1
    return counts


@pytest.mark.slow
def test_first_action_distribution_agrees_with_the_reference():
    """Chi-square over many seeded plans; a planner with another temperature is told apart."""
    model = random_model(1, 1, N=6, K=4, n_layer=1, dtype=torch.float32, noise=0.1)
    disc = random_discretizer(6, 4)
    O = 1
    prefix = random_prefixes(model, [2], torch.Generator().manual_seed(5))[0]
    cfg = PlanConfig(horizon=2, beam_width=2, n_expand=1, max_context_transitions=3, k_act=None, cdf_act=0.3,
                     temperature=1.5)
    mids = torch.tensor(disc.midpoints)

    def fast(c):
        return lambda g: int(beam_plan(model, prefix[None], disc, c, g).tokens[0, O])

    ref = first_action_counts(lambda g: int(reference.beam_plan(model, prefix, mids, cfg, g)[0][O]), 600, 6)
    ours = first_action_counts(fast(cfg), 600, 6)
    wrong = first_action_counts(fast(PlanConfig(**{**cfg.to_dict(), "temperature": 0.5})), 600, 6)
    keep = (ref + ours + wrong) > 0
    assert chi2_contingency(np.stack([ref, ours])[:, keep]).pvalue > 1e-3
    assert chi2_contingency(np.stack([ref, wrong])[:, keep]).pvalue < 1e-6


def test_bad_prefixes_and_configs_raise():
    model = random_model(2, 1)
    disc = random_discretizer(15, 5)
    with pytest.raises(ValueError, match="not c\\*T \\+ O"):
        beam_plan(model, torch.zeros(1, 4, dtype=torch.long), disc)
    with pytest.raises(ValueError, match="whole transitions"):
        beam_plan(model, torch.tensor([[-1, 0, 0, 0, 0, 0, 0]]), disc)
    with pytest.raises(ValueError, match="exceed the stop token"):
        beam_plan(model, torch.tensor([[16, 0]]), disc)
    with pytest.raises(ValueError, match="max_context_transitions=1"):
        PlanConfig(max_context_transitions=1, horizon=2)
    with pytest.raises(ValueError, match="window must be"):
        PlanConfig(window="sliding")
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        beam_plan(model, torch.zeros(1, 2, dtype=torch.long), disc)


# ----------------------------------------------------------------------------- tt.Planner


def small_planner(O=3, A=1, seed=0, **overrides):
    model = random_model(O, A, dtype=torch.float32)
    disc = random_discretizer(15, O + A + 2)
    cfg = PlanConfig(**{**dict(horizon=3, beam_width=4, n_expand=2, max_context_transitions=3), **overrides})
    return Planner(model, disc, cfg, seed=seed)


def test_planner_context_is_the_authors_prefix():
    planner = small_planner(**GREEDY)
    rng = np.random.default_rng(0)
    obs = [rng.normal(size=3) for _ in range(5)]
    manual = []
    for t in range(4):
        action = planner.act(obs[t])
        reward = float(rng.normal())
        planner.observe(reward, False)
        row = planner.discretizer.discretize(np.concatenate([obs[t], action, [reward, 1e6]]))
        manual = (manual + [row])[-3:]
    plan = planner.plan(obs[4])
    prefix = torch.from_numpy(np.concatenate(manual + [planner.discretizer.discretize(obs[4], slice(0, 3))]))
    expected = beam_plan(planner.model, prefix[None], planner.discretizer, planner.config)
    np.testing.assert_array_equal(plan.tokens.reshape(-1), expected.tokens[0].numpy())
    assert plan.transitions.shape == (3, 6)


def test_planner_is_reproducible_by_seed():
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(2, 3))
    a = small_planner(seed=3).act(obs)
    b = small_planner(seed=3).act(obs)
    np.testing.assert_array_equal(a, b)


def test_planner_replans_every_plan_freq_steps():
    planner = small_planner(plan_freq=2, horizon=3)
    obs = np.zeros(3)
    for _ in range(5):
        planner.act(obs)
        planner.observe(0.0, False)
    assert planner.stats["plans"] == 3  # steps 0, 2, 4


def test_planner_misuse_and_bad_observations():
    planner = small_planner()
    with pytest.raises(ValueError, match=r"observations must be \[3\] or \[n, 3\]"):
        planner.act(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        planner.act(np.array([0.0, np.nan, 0.0]))
    with pytest.raises(RuntimeError, match="without a preceding act"):
        planner.observe(0.0, False)
    planner.act(np.zeros(3))
    with pytest.raises(RuntimeError, match="act\\(\\) called twice"):
        planner.act(np.zeros(3))
    planner.observe(1.0, False)
    with pytest.raises(ValueError, match="tracks 1 environments"):
        planner.act(np.zeros((2, 3)))


def test_stop_token_in_an_action_reads_as_the_last_bin():
    planner = small_planner()
    tokens = np.array([0, 0, 0, 15, 3, 3])
    with pytest.warns(UserWarning, match="stop token"):
        action = planner._action(tokens)
    np.testing.assert_allclose(action, planner.discretizer.midpoints[14, 3:4])
    assert planner.stats["stop_tokens_in_actions"] == 1


def test_planner_drives_a_vector_env_with_autoreset():
    gym = pytest.importorskip("gymnasium")  # imported here: the GPU machines' tests import this module without it
    n_envs = 2
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=25)] * n_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    planner = small_planner(horizon=2, beam_width=2, n_expand=2, max_context_transitions=2)
    obs, _ = envs.reset(seed=0)
    finished, returns, steps = [], np.zeros(n_envs), 0
    while len(finished) < 2 * n_envs:
        actions = planner.act(obs)
        assert actions.shape == (n_envs, 1) and np.isfinite(actions).all()
        obs, reward, terminated, truncated, _ = envs.step(actions.astype(np.float32))
        done = terminated | truncated
        planner.observe(reward, done)
        returns += reward
        for i in np.flatnonzero(done):
            finished.append(returns[i])
            returns[i] = 0.0
            assert planner._context[i] == []
        steps += 1
    assert steps == 50 and len(finished) == 4
    envs.close()


@pytest.mark.parametrize("window", ["exact", "cached"])
def test_unbounded_context_keeps_what_the_model_holds(window):
    planner = small_planner(max_context_transitions=None, window=window, horizon=2, beam_width=2)
    for _ in range(9):  # K = 6 transitions fit the model
        planner.act(np.zeros(3))
        planner.observe(0.0, False)
    assert len(planner._context[0]) == 6
    assert planner.plan(np.zeros(3)).tokens.shape == (2, 6)


def test_a_top_k_over_the_tokens_is_refused_before_planning():
    """A top-k larger than a position's N+1 tokens is refused up front by every search, naming the
    filter (not by the sampling op in the middle of a plan)."""
    from tt.predict.experiment import sample_continuations

    model = random_model(2, 1, N=9)
    disc = random_discretizer(9, model.transition_dim)
    prefix = torch.zeros(1, 2, dtype=torch.long)
    for objective in ("return", "likelihood"):
        config = PlanConfig(horizon=2, beam_width=2, k_rew=11, objective=objective)
        with pytest.raises(ValueError, match="k_rew=11: the model has 10 tokens per position"):
            beam_plan(model, prefix, disc, config)
        with pytest.raises(ValueError, match="k_rew=11"):
            Planner(model, disc, config)
    with pytest.raises(ValueError, match="k_obs=12"):
        sample_continuations(model, prefix, torch.full((1, 4), -1), disc,
                             PlanConfig(horizon=1, beam_width=2, n_expand=1, k_obs=12), Philox(0))
    beam_plan(model, prefix, disc, PlanConfig(horizon=2, beam_width=2, k_rew=10))  # all 10 tokens: allowed
