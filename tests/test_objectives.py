"""Objectives are objects: new ones plug into the search's loops without editing them."""

import pytest
import torch
from test_planner import GREEDY, random_discretizer, random_model, random_prefixes

from tt import reference
from tt.config import PlanConfig
from tt.rng import Philox
from tt.search import Likelihood, Planner, Return, TokenObjective, TransitionObjective, beam_plan, pad_prefixes

pytestmark = pytest.mark.filterwarnings("ignore:the plan's action holds a stop token")


class FewestActionTokens(TransitionObjective):
    """A test-only transition objective: each transition is worth minus the sum of its action tokens."""

    meaning = "minus the discounted sum of the plan's action tokens"

    def estimate(self, candidates):
        return -candidates.actions.sum(-1).to(candidates.reward), torch.zeros_like(candidates.value)


class Greedy(TokenObjective):
    """A test-only token objective: every beam takes its most likely token; nothing re-ranks."""

    meaning = "none (0)"
    reranks = False

    def extend(self, scores, logits, i, token_filter, temperature, rng):
        return scores, None, logits.argmax(-1)


@pytest.mark.parametrize("window", ["exact", "cached"])
def test_a_transition_objective_defined_here_is_planned_with(window):
    """The return search's loop with a score of this file's own: the best plan's score is what its
    tokens are worth, and it is worth at least the return objective's plan by that score."""
    model = random_model(3, 2, K=6)
    disc = random_discretizer(15, 7)
    config = PlanConfig(horizon=4, beam_width=6, n_expand=3, max_context_transitions=4, window=window, k_act=None,
                        cdf_act=None)
    prefixes = random_prefixes(model, [2, 1], torch.Generator().manual_seed(3))
    prefix = pad_prefixes(prefixes, 7)
    objective = FewestActionTokens()
    plan = beam_plan(model, prefix, disc, config, Philox(0), objective=objective)
    actions = plan.tokens.view(2, 4, 7)[:, :, 3:5].sum(-1).double()
    worth = -(actions * config.discount ** torch.arange(4.0, dtype=torch.float64)).sum(-1)
    torch.testing.assert_close(plan.score.double(), worth)
    other = beam_plan(model, prefix, disc, config, Philox(0)).tokens.view(2, 4, 7)[:, :, 3:5].sum(-1).double()
    assert (worth >= -(other * config.discount ** torch.arange(4.0, dtype=torch.float64)).sum(-1)).all()


@pytest.mark.parametrize("window", ["exact", "cached"])
def test_a_token_objective_defined_here_is_planned_with(window):
    """The token loop with this file's greedy objective equals greedy decoding with a full forward of
    the window per token (the reference's crop), for a batch of plans of different contexts."""
    model = random_model(2, 2, K=4)
    disc = random_discretizer(15, 6)
    config = PlanConfig(horizon=5, beam_width=1, max_context_transitions=3, window=window)
    prefixes = random_prefixes(model, [3, 0, 1], torch.Generator().manual_seed(5))
    plan = beam_plan(model, pad_prefixes(prefixes, 6), disc, config, Philox(0), objective=Greedy())
    n_ctx = 3
    for b, prefix in enumerate(prefixes):
        crop = reference.window_crop(model, config, n_ctx, pad=n_ctx - (len(prefix) - 2) // 6)
        x = prefix[None]
        while x.shape[1] < len(prefix) - 2 + 5 * 6:
            x = torch.cat([x, model(crop(x))[:, -1].argmax(-1, keepdim=True)], 1)
        assert torch.equal(plan.tokens[b], x[0, len(prefix) - 2 :])


def test_return_with_its_default_value_fn_spelled_out_plans_the_same():
    """`Return(value_fn=...)` is where a critic plugs in: the default estimates, given as a function,
    plan token for token as the default objective."""
    model = random_model(3, 1, K=6)
    disc = random_discretizer(15, 6)
    config = PlanConfig(horizon=3, beam_width=4, n_expand=2, **GREEDY)
    prefix = pad_prefixes(random_prefixes(model, [2], torch.Generator().manual_seed(1)), 6)
    seen = []

    def value_fn(candidates):
        seen.append(candidates.observations.shape)
        return candidates.reward, candidates.value

    a = beam_plan(model, prefix, disc, config, Philox(0), objective=Return(value_fn))
    b = beam_plan(model, prefix, disc, config, Philox(0))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.score, b.score)
    assert seen == [(8, 3)] * 3  # E*B*W candidates, O observation tokens, once per transition


def test_the_planner_takes_an_objective_and_says_what_its_score_means():
    model = random_model(2, 1, K=4, dtype=torch.float32)
    disc = random_discretizer(15, 5)
    config = PlanConfig(horizon=2, beam_width=3, **GREEDY)
    planner = Planner(model, disc, config, seed=0, objective=Likelihood())
    assert "log-likelihood" in planner.objective.meaning
    plan = planner.plan(torch.zeros(2).numpy())
    assert plan.score <= 0
    assert "return" in Planner(model, disc, config, seed=0).objective.meaning
