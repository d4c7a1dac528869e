"""The likelihood search (imitation): the fast search against the authors' `beam_search` with a
full forward per token (`tt.reference.likelihood_plan`), tokens exactly, log-likelihoods to
float64 rounding."""

import numpy as np
import pytest
import torch
from test_planner import random_discretizer, random_model

from tt import reference
from tt.config import PlanConfig
from tt.search import Planner, beam_plan, beams, pad_prefixes


def compare(model, prefixes, config, window="exact"):
    T = model.transition_dim
    config = PlanConfig(**{**config, "objective": "likelihood", "window": window})
    N = model.config.n_bins
    result = beam_plan(model, pad_prefixes(prefixes, T), random_discretizer(N, T), config)
    for b, prefix in enumerate(prefixes):
        tokens, logp = reference.likelihood_plan(model, prefix, config)
        assert torch.equal(result.tokens[b], tokens), (b, result.tokens[b].tolist(), tokens.tolist())
        assert result.score[b].item() == pytest.approx(logp.item(), rel=1e-9, abs=1e-9), b
        own = reference.plan_score(model, prefix, result.tokens[b], None, config)  # what its tokens score
        assert result.score[b].item() == pytest.approx(own.item(), rel=1e-9, abs=1e-9), b


CASES = [  # O, A, N, K (block transitions), n_ctx per plan, config
    (1, 1, 15, 4, [0], dict(horizon=3, beam_width=8, max_context_transitions=3)),
    (3, 2, 15, 6, [2, 0, 4], dict(horizon=3, beam_width=16, max_context_transitions=4)),
    (2, 1, 9, 3, [1, 1], dict(horizon=4, beam_width=40, max_context_transitions=3)),  # W > N+1: grows from one
    (4, 3, 20, 5, [3, 1], dict(horizon=2, beam_width=5, k_obs=None, k_rew=None, cdf_act=None)),  # no filters
    (2, 2, 12, 5, [0, 2], dict(horizon=3, beam_width=7, k_obs=2, k_act=3, k_rew=1, cdf_obs=0.5, cdf_rew=0.9)),
    (1, 1, 80, 3, [1], dict(horizon=2, beam_width=64, max_context_transitions=2)),  # W*(N+1) = 5184 > 4096
    (2, 1, 10, 4, [2], dict(horizon=3, beam_width=1, max_context_transitions=None, temperature=0.7)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_likelihood_search_matches_the_reference(case):
    O, A, N, K, contexts, config = CASES[case]
    model = random_model(O, A, N=N, K=K, seed=case)  # not too sharp: beams re-rank at every token
    rng = np.random.default_rng(case)
    prefixes = [torch.from_numpy(rng.integers(0, N, size=c * (O + A + 2) + O)) for c in contexts]
    compare(model, prefixes, config)


@pytest.mark.parametrize("lineages", [True, False])
def test_cached_window_matches_when_the_block_holds_the_plan(monkeypatch, lineages):
    """`cached` keeps the whole history where the block holds it: then it is the reference's search,
    whether each transition's windows are anchored once per lineage (on CPU) or once per row."""
    if not lineages:
        monkeypatch.setattr(beams, "lineages", lambda lineage: None)
    O, A, N, K = 2, 2, 12, 5
    model = random_model(O, A, N=N, K=K, seed=7)
    rng = np.random.default_rng(7)
    prefixes = [torch.from_numpy(rng.integers(0, N, size=c * (O + A + 2) + O)) for c in (0, 2, 1)]
    compare(model, prefixes, dict(horizon=3, beam_width=12, max_context_transitions=None), window="cached")


def test_ties_and_dead_beams_are_deterministic():
    """A model that predicts uniform logits ties every candidate: the search keeps the lowest
    beam-major indices, as the reference does, and never revives a dead beam."""
    O, A, N, K = 1, 1, 6, 3
    model = random_model(O, A, N=N, K=K, seed=0)
    with torch.no_grad():
        model.head.zero_()
    prefixes = [torch.tensor([3]), torch.tensor([5])]
    compare(model, prefixes, dict(horizon=2, beam_width=10, k_obs=None, k_rew=None, cdf_act=None))


def test_planner_acts_with_the_likelihood_objective():
    O, A, N, K = 3, 2, 15, 4
    model = random_model(O, A, N=N, K=K, seed=1, dtype=torch.float32)
    discretizer = random_discretizer(N, O + A + 2)
    config = PlanConfig(horizon=3, beam_width=8, objective="likelihood", max_context_transitions=3)
    planner = Planner(model, discretizer, config, seed=0)
    obs = np.zeros((2, O))
    actions = planner.act(obs)
    assert actions.shape == (2, A) and np.isfinite(actions).all()
    plans = planner.current_plans
    assert all(p.score <= 0 for p in plans)  # a log-likelihood
    planner.observe([0.0, 0.0], [False, False])
    assert planner.act(obs).shape == (2, A)


def test_objective_is_checked():
    with pytest.raises(ValueError, match="objective must be 'return' or 'likelihood'"):
        PlanConfig(objective="reward")


def test_lineages_encode_each_history_once():
    """`beams.lineages` (CPU): one representative per distinct lineage, each row mapped to its own."""
    lineage = torch.tensor([5, 3, 5, 9, 3, 3, 0, 9])
    representatives, table = beams.lineages(lineage)
    assert len(representatives) == 4 and table.shape == lineage.shape
    assert torch.equal(lineage[representatives][table], lineage)
    assert len(set(lineage[representatives].tolist())) == 4


def test_in_place_knows_the_identity_on_cpu_only():
    assert beams.in_place(torch.arange(7)) and beams.in_place(torch.arange(0))
    assert not beams.in_place(torch.tensor([0, 2, 1])) and not beams.in_place(torch.tensor([0, 0, 2]))
    assert not beams.in_place(torch.arange(7, device="meta"))  # elsewhere it would wait for the device


@pytest.mark.parametrize("case", [0, 1])
def test_search_that_always_moves_rows_plans_the_same(monkeypatch, case):
    """Skipping the cache moves of survivors that stay in place (`beams.in_place`) changes nothing:
    with every move made, the same tokens as the reference."""
    monkeypatch.setattr(beams, "in_place", lambda rows: False)
    O, A, N, K, contexts, config = CASES[case]
    model = random_model(O, A, N=N, K=K, seed=case)
    rng = np.random.default_rng(case)
    compare(model, [torch.from_numpy(rng.integers(0, N, size=c * (O + A + 2) + O)) for c in contexts], config)


def test_search_without_lineages_shares_by_plan(monkeypatch):
    """Where `beams.lineages` cannot group rows (off the CPU), re-encoding shares each plan's context
    instead: the same tokens as the reference."""
    monkeypatch.setattr(beams, "lineages", lambda lineage: None)
    O, A, N, K, contexts, config = CASES[1]
    model = random_model(O, A, N=N, K=K, seed=1)
    rng = np.random.default_rng(1)
    compare(model, [torch.from_numpy(rng.integers(0, N, size=c * (O + A + 2) + O)) for c in contexts], config)


def test_survivors_reranked_at_a_window_move_read_their_own_lineage():
    """Regression (issue 25): without filters, beams re-rank at the last token of a transition, just
    before the window moves; the re-encoding groups rows by lineage, so the lineages must have
    followed the survivors. Before the fix 15 of these 20 random cases planned other tokens than the
    reference, with scores their tokens do not have (obs 3, act 1, horizon 4, beam 16, context 3,
    20 bins, 2 layers, weights perturbed, float64)."""
    O, A, N, K = 3, 1, 20, 4
    T = O + A + 2
    config = dict(horizon=4, beam_width=16, max_context_transitions=3, k_obs=None, cdf_act=None, k_rew=None)
    for seed in range(20):
        model = random_model(O, A, N=N, K=K, seed=seed)
        prefix = torch.from_numpy(np.random.default_rng(seed).integers(0, N, size=2 * T + O))
        compare(model, [prefix], config)
