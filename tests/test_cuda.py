"""CUDA ops against the CPU ops and the references (skipped without a GPU; the greedy plan
comparison also runs on CPU, with the CPU's ops).

Needs only torch and numpy, so `benchmarks/gpu.sh` runs it on GPU machines without the RL packages.
"""

import pytest
import torch

from tt import ops, reference
from tt.rng import Philox

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not ops.compiled_library(),
                                reason="needs a CUDA device and tt._C")


@needs_cuda
def test_cuda_philox_equals_cpu_and_python():
    for seed, offset in [(0, 0), (12345678901234, 7), (2**62 - 1, 2**40 + 3)]:
        cuda = ops.philox_uniform(seed, offset, 4096, "cuda").cpu()
        assert torch.equal(cuda, ops.philox_uniform(seed, offset, 4096, "cpu"))
        assert torch.equal(cuda, reference.philox_uniform(seed, offset, 4096))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows, vocab, top_k, cdf, temperature", [
    (1, 2, None, None, 1.0), (7, 11, 5, None, 0.7), (256, 101, None, 0.6, 1.0), (33, 101, 1, None, 1.0),
    (300, 51, 3, 0.9, 0.5), (64, 1024, 10, 0.3, 1.3)])
def test_cuda_sample_next_draws_as_the_cpu(dtype, rows, vocab, top_k, cdf, temperature):
    g = torch.Generator().manual_seed(rows + vocab)
    logits = (torch.randn(rows, vocab, generator=g) * 3).to(dtype)
    logits[0, 0] = float("-inf")
    mids = torch.linspace(-1, 2, vocab - 1)
    out = {}
    for device in ("cpu", "cuda"):
        rng = Philox(424242, device)
        out[device] = [ops.sample_next(logits.to(device), temperature=temperature, top_k=top_k, cdf=cdf,
                                       midpoints=mids.to(device), rng=rng) for _ in range(3)]
    for (tc, ec), (tg, eg) in zip(out["cpu"], out["cuda"]):
        assert torch.equal(tc, tg.cpu())
        torch.testing.assert_close(ec, eg.cpu(), rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("B, M, group, k", [(1, 1, 1, 1), (3, 13, 13, 13), (4, 6, 2, 1), (8, 256, 128, 128),
                                            (2, 4096, 1024, 1024), (3, 9, 3, 5)])
def test_cuda_beam_select_equals_the_reference(B, M, group, k):
    g = torch.Generator().manual_seed(M)
    scores = torch.randint(-3, 4, (B, M), generator=g).float()
    terms, tokens = torch.randn(B * M, 16, generator=g), torch.randint(0, 100, (B * M, 5), generator=g)
    want = reference.beam_select(scores, k, group, terms, tokens)
    got = ops.beam_select(scores.cuda(), k, group, terms.cuda(), tokens.cuda())
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)


def sharpened_model(config, seed: int = 0, noise: float = 0.3):
    """A random model in eval mode, its weights sharpened as tests/test_planner.py's `random_model`
    does: the init's logits are nearly flat, so greedy plans there hang on rounding and ties."""
    from tt.model import TrajectoryTransformer

    torch.manual_seed(seed)
    model = TrajectoryTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval()


@pytest.mark.parametrize("window, C", [("exact", 5), ("cached", None)])  # cached: the block holds the plan
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda), "cpu"])
def test_greedy_plans_equal_the_authors_planner_on_sdpa_attention(monkeypatch, device, window, C):
    """Hopper shapes, sharpened random weights: the fast greedy plans on `device` (on CUDA the
    Triton attention and decode kernels and the CUDA ops; on CPU the C++ ops) equal, token for
    token, the authors' planner whose attention is the PyTorch reference (SDPA, whole windows)."""
    from tt.config import PlanConfig
    from tt.discretize import Discretizer
    from tt.model import GPTConfig
    from tt.search import beam_plan, pad_prefixes

    ops.use(backend="auto")
    ops.use(attention="auto")  # the fast plan: the device's own attention
    model = sharpened_model(GPTConfig(11, 3, n_bins=100, n_transitions=10)).to(device)
    disc = Discretizer(torch.linspace(-1, 1, 101)[:, None].repeat(1, 16).numpy())
    g = torch.Generator().manual_seed(1)
    prefixes = [torch.randint(0, 100, (c * 16 + 11,), generator=g).to(device) for c in (5, 2)]
    cfg = PlanConfig(horizon=5, beam_width=8, max_context_transitions=C, window=window, k_act=1, cdf_act=None)
    assert cfg.k_obs == cfg.k_rew == 1 and cfg.cdf_obs is None and cfg.cdf_rew is None  # greedy
    fast = beam_plan(model, pad_prefixes(prefixes, 16), disc, cfg, Philox(0, device))
    ops.use(attention="reference")  # F.scaled_dot_product_attention, masked
    mids = torch.tensor(disc.midpoints, device=device)
    for b, prefix in enumerate(prefixes):
        tokens, score = reference.beam_plan(model, prefix, mids, cfg, Philox(0, device))
        assert torch.equal(fast.tokens[b], tokens), f"plan {b} differs from the reference"
        assert fast.score[b].item() == pytest.approx(score.item(), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("window, C", [("exact", 5), ("cached", None)])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda), "cpu"])
def test_likelihood_plans_equal_the_authors_search_on_sdpa_attention(monkeypatch, device, window, C):
    """Hopper shapes, sharpened random weights, float32: the fast likelihood search on `device` (on
    CUDA the beam_expand kernel, Triton attention and decode) keeps the same beams as the authors'
    `beam_search` with SDPA attention, token for token."""
    from tt.config import PlanConfig
    from tt.discretize import Discretizer
    from tt.model import GPTConfig
    from tt.search import beam_plan, pad_prefixes

    ops.use(backend="auto")
    ops.use(attention="auto")
    model = sharpened_model(GPTConfig(11, 3, n_bins=100, n_transitions=10), seed=2).to(device)
    disc = Discretizer(torch.linspace(-1, 1, 101)[:, None].repeat(1, 16).numpy())
    g = torch.Generator().manual_seed(3)
    prefixes = [torch.randint(0, 100, (c * 16 + 11,), generator=g).to(device) for c in (4, 1)]
    cfg = PlanConfig(horizon=3, beam_width=16, max_context_transitions=C, window=window, objective="likelihood")
    fast = beam_plan(model, pad_prefixes(prefixes, 16), disc, cfg)
    ops.use(attention="reference")
    for b, prefix in enumerate(prefixes):
        tokens, logp = reference.likelihood_plan(model, prefix, cfg)
        assert torch.equal(fast.tokens[b], tokens), f"plan {b} differs from the reference"
        assert fast.score[b].item() == pytest.approx(logp.item(), rel=1e-4, abs=1e-3)


def _graph_planners(window: str, max_graphs: int = 16, **config):
    from tt.config import PlanConfig
    from tt.discretize import Discretizer
    from tt.model import GPTConfig, TrajectoryTransformer
    from tt.search import Planner

    torch.manual_seed(0)
    model = TrajectoryTransformer(GPTConfig(4, 2, n_bins=20, n_transitions=6, n_layer=2, n_embd=32)).eval()
    disc = Discretizer(torch.linspace(-1, 1, 21)[:, None].repeat(1, 8).numpy())
    cfg = dict(horizon=4, beam_width=6, n_expand=2, max_context_transitions=3, window=window, **config)  # stochastic
    graphed = Planner(model, disc, PlanConfig(**cfg), device="cuda", seed=11)
    graphed._graphs.max_graphs = max_graphs
    eager = Planner(model, disc, PlanConfig(**cfg, cuda_graphs=False), device="cuda", seed=11)
    assert eager._graphs is None
    return graphed, eager


@needs_cuda
@pytest.mark.parametrize("window, max_graphs, objective", [("exact", 16, "return"), ("cached", 16, "return"),
                                                           ("cached", 1, "return"), ("exact", 16, "likelihood"),
                                                           ("cached", 2, "likelihood")])
def test_cuda_graph_plans_equal_eager_plans(window, max_graphs, objective):
    """Same seed, same observations: the replayed graphs plan token for token as the eager search,
    across layouts (contexts of different lengths, a reset, eviction of captured layouts)."""
    graphed, eager = _graph_planners(window, max_graphs, objective=objective)
    g = torch.Generator().manual_seed(0)
    for step in range(9):
        obs = (torch.rand(3, 4, generator=g) * 2 - 1).numpy()
        for planner in (graphed, eager):
            planner.act(obs)
        for a, b in zip(graphed.current_plans, eager.current_plans):
            assert (a.tokens == b.tokens).all() and a.score == pytest.approx(b.score)
        done = [step == 4, False, step == 6]
        for planner in (graphed, eager):
            planner.observe([0.5, -0.25, 1.0], done)
    assert graphed._graphs.failed is None and 1 <= graphed._graphs.layouts <= max_graphs
