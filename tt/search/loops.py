"""The two search loops, as the authors wrote them: `transition_search` samples a few expansions of
every beam a transition at a time and keeps the best by their objective's score (their
`beam_plan`); `token_search` extends every beam a token at a time as its objective says (their
`beam_search`: every beam by every token, the likeliest kept) and also serves sampling with forced
tokens. Objectives (`tt.search.objectives`) plug in; the beams' cache is `Beams`' business."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from tt import ops
from tt.rng import Philox
from tt.search.beams import Beams

if TYPE_CHECKING:
    from tt.search.objectives import TokenObjective, TransitionObjective


class Candidates:
    """A transition's candidates, as a transition objective scores them: row i (of `copies * B * W`)
    extends beam `i % (B * W)`; its reward's and value's expectations under the model, and its tokens."""

    def __init__(self, beams: Beams, t: int, reward: torch.Tensor, value: torch.Tensor, actions: torch.Tensor):
        self.beams, self.t, self.reward, self.value, self.actions = beams, t, reward, value, actions

    @property
    def observations(self) -> torch.Tensor:
        """The observation tokens `[rows, O]` each candidate acts on."""
        u, T, O = self.beams.n_ctx + self.t, self.beams.T, self.beams.O
        return self.beams.tokens[:, u * T : u * T + O].repeat(self.beams.copies, 1)


def transition_search(beams: Beams, objective: TransitionObjective, rng: Philox, mids: torch.Tensor,
                      on_transition: Callable[[], None] | None = None) -> torch.Tensor:
    """Sample `copies` expansions of every beam a transition at a time (its observation, then each copy
    its action, reward and value), score them (`objective.score`), keep the W best of each plan.
    `mids [2, N]`: the reward's and the value's bin midpoints; `on_transition` is called as each new
    transition begins. Returns each plan's best score `[B]`."""
    config = beams.config
    O, T, B, W, H = beams.O, beams.T, beams.B, beams.W, config.horizon
    A = T - O - 2
    rows, device = beams.copies * B * W, beams.prefix.device
    filters = config.filters(O, A)
    terms = torch.zeros(rows, H + 1, device=device)  # each candidate's scored terms by transition
    step_tokens = torch.empty(rows, A + 2, dtype=torch.long, device=device)
    discounts = config.discount ** torch.arange(H + 1, device=device, dtype=torch.float32)

    def draw(logits, kind, midpoints=None):
        top_k, cdf = filters[kind]
        return ops.sample_next(logits, temperature=config.temperature, top_k=top_k, cdf=cdf, midpoints=midpoints,
                               rng=rng)

    logits = beams.open(H * T - O)
    for t in range(H):
        u = beams.n_ctx + t  # the transition being planned, in prefix coordinates
        if t > 0:  # all W beams of a plan are equal until their first action
            if on_transition is not None:
                on_transition()
            logits = beams.next_transition(u)
            for i in range(O):
                token, _ = draw(logits, i)
                beams.tokens[:, u * T + i] = token
                logits = beams.step(token)
            beams.expand()  # the beams' rows to every copy
            logits = logits.repeat(beams.copies, 1)
        for i in range(A):
            token, _ = draw(logits, O + i)
            step_tokens[:, i] = token
            logits = beams.step(token, beams.copies)
        step_tokens[:, A], reward = draw(logits, O + A, mids[0])
        logits = beams.step(step_tokens[:, A], beams.copies)
        step_tokens[:, A + 1], value = draw(logits, O + A + 1, mids[1])
        terms[:, t], terms[:, t + 1] = objective.estimate(Candidates(beams, t, reward, value, step_tokens[:, :A]))
        # top-k per plan over its candidates e*W + w
        scores = objective.score(terms, discounts, t).view(-1, B, W).permute(1, 0, 2).reshape(B, -1)
        values, _, src, kept_terms, kept_tokens = ops.beam_select(scores, W, W, terms, step_tokens)
        beams.select(src, u * T + O, kept_tokens)
        terms = kept_terms.repeat(beams.copies, 1)
    return values[:, 0]


def token_search(beams: Beams, objective: TokenObjective, rng: Philox, mids: torch.Tensor,
                 on_transition: Callable[[], None] | None = None) -> torch.Tensor:
    """Extend every beam a token at a time, `objective.length` tokens after the prefixes' observations:
    the objective chooses each beam's next token and the beam it continues (`objective.extend`), each
    token filtered by its kind's top-k and cdf (`mids`: unused, as `transition_search` takes them).
    Returns each plan's best score `[B]`; `on_transition` is called as each new transition begins."""
    config, T = beams.config, beams.T
    filters = config.filters(beams.O, T - beams.O - 2)
    L, W = beams.prefix.shape[1], beams.W
    logits = beams.open(objective.length(config, beams.T, beams.O), reranking=objective.reranks)
    scores = objective.initial_scores(beams.B, W, logits)
    plan_rows = torch.arange(beams.B, device=logits.device)[:, None] * W
    for position in range(L, beams.end):
        scores, parents, tokens = objective.extend(scores, logits, position - L, filters[position % T],
                                                   config.temperature, rng)
        beams.fork(None if parents is None else (plan_rows + parents).view(-1), position)
        beams.tokens[:, position] = tokens.reshape(-1)
        if position + 1 == beams.end:
            break
        if (position + 1) % T == 0 and on_transition is not None:
            on_transition()
        logits = beams.advance(position)
    return scores[:, 0]
