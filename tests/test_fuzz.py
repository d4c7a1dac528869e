"""Differential fuzzing: every search against its oracle in `tt.reference`, on random models and settings.

Hypothesis draws the model (observation, action, bins, block, layers, heads, width, float64 or
float32 weights), the plan (horizon, beam, expansions, context, window mode, objective), every
filter setting including none, batches of plans with different context lengths, and goals, and
each check compares token for token and score for score:

- the return search against `reference.beam_plan` (greedy when several plans share a batch; with
  one plan any filters, drawn from the same Philox stream as the reference's),
- TT+Q (the return search guided by a random critic) against `reference.beam_plan` with that critic,
- the likelihood search (imitation) against `reference.likelihood_plan`,
- goal plans, both objectives, against the reference conditioned on the goal,
- prediction continuations against `reference.sample_continuations`, sample for sample,
- `tt.Planner`'s act/observe loop against a loop over the reference,
- the compiled CPU ops (`tt._C`) against the Python ops,

and after every plan, the invariant: the score a search reports is the score its tokens have
(`reference.plan_score`). `cached` windows are checked against tt's own rule
(`reference.cached_crop`), `exact` ones against the authors' crop.

Profiles: `fast` (the default: a few dozen examples per search, in the default suite) and `deep`
(`pytest tests/test_fuzz.py --hypothesis-profile=deep`: hundreds per search, run by `.ci/run`).
A failing example is printed as a command that reproduces it:
`python tests/test_fuzz.py CHECK "Case(...)"`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from test_planner import random_discretizer  # noqa: E402

from tt import ops, reference  # noqa: E402
from tt.cache import SharedPrefix  # noqa: E402
from tt.config import PlanConfig  # noqa: E402
from tt.critic import Critic, CriticShape  # noqa: E402
from tt.model import GPTConfig, TrajectoryTransformer  # noqa: E402
from tt.predict import experiment as prediction  # noqa: E402
from tt.rng import Philox  # noqa: E402
from tt.search import CriticReturn, Planner, beam_plan, pad_prefixes  # noqa: E402

pytestmark = [pytest.mark.fuzz,
              pytest.mark.filterwarnings("ignore:the plan's action holds a stop token")]


@dataclass(frozen=True)
class Case:
    """One drawn configuration; its repr is the Python that rebuilds it."""

    O: int
    A: int
    N: int
    K: int  # transitions per block
    n_layer: int
    n_head: int
    head_dim: int
    dtype: str  # "float64" or "float32" (sharpened)
    seed: int
    contexts: tuple[int, ...]  # context transitions of each plan of the batch
    horizon: int
    beam_width: int
    n_expand: int
    max_context: int | None
    window: str
    filters: tuple  # (k_obs, k_act, k_rew, cdf_obs, cdf_act, cdf_rew)
    temperature: float
    goal: bool = False
    objective: str = "return"
    critic: bool = False  # TT+Q: a random critic in place of the value token (the return objective)

    @property
    def T(self) -> int:
        return self.O + self.A + 2

    def model(self) -> TrajectoryTransformer:
        """Random weights, perturbed so that plans depend on the tokens; float32 models are sharpened
        (larger logits) so that no near-tie decides a greedy path at float32 rounding."""
        torch.manual_seed(self.seed)
        config = GPTConfig(self.O, self.A, n_bins=self.N, n_transitions=self.K, n_layer=self.n_layer,
                           n_head=self.n_head, n_embd=self.n_head * self.head_dim, goal_conditioned=self.goal)
        model = TrajectoryTransformer(config)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
            if self.dtype == "float32":
                model.head.mul_(4.0)
        return model.eval().to(getattr(torch, self.dtype))

    def config(self, **overrides) -> PlanConfig:
        k_obs, k_act, k_rew, cdf_obs, cdf_act, cdf_rew = self.filters
        fields = dict(horizon=self.horizon, beam_width=self.beam_width, n_expand=self.n_expand,
                      max_context_transitions=self.max_context, k_obs=k_obs, k_act=k_act, k_rew=k_rew,
                      cdf_obs=cdf_obs, cdf_act=cdf_act, cdf_rew=cdf_rew, temperature=self.temperature,
                      window=self.window, objective=self.objective, cuda_graphs=False)
        return PlanConfig(**{**fields, **overrides})

    def prefixes(self) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + 1)
        return [torch.randint(0, self.N, (c * self.T + self.O,), generator=g) for c in self.contexts]

    def q_fn(self):
        """A random float64 critic's `value` (`tt.critic.Critic`, sharpened so that it decides between
        candidates), or None."""
        if not self.critic:
            return None
        torch.manual_seed(self.seed + 3)
        critic = Critic(CriticShape(self.O, self.A, hidden=16, layers=2)).double()
        with torch.no_grad():
            for w in critic.target_q.weights:
                w.mul_(3.0)
        return critic.value

    def goals(self) -> torch.Tensor | None:
        if not self.goal:
            return None
        g = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, self.N, (len(self.contexts), self.O), generator=g)


# ----------------------------------------------------------------------------- what Hypothesis draws

FILTER_CDF = st.one_of(st.none(), st.sampled_from([0.3, 0.6, 0.9, 1.0]))


@st.composite
def cases(draw, objective: str = "return", goal: bool | None = None, greedy_batches: bool = True,
          max_plans: int = 3) -> Case:
    """A random search configuration. With `greedy_batches`, the return search plans greedily (top-1
    for every token kind) when several plans share a batch (only a single plan draws from the Philox
    stream as the reference does) and for float32 models: drawn candidates that tie in score (the
    score never depends on the value token drawn) would be told apart by float32 rounding."""
    O, A = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    K = draw(st.integers(2, 7))
    window = draw(st.sampled_from(["exact", "cached"]))
    max_context = draw(st.one_of(st.none(), st.integers(2, K + 1)))
    horizon = draw(st.integers(1, 6))
    contexts = tuple(draw(st.lists(st.integers(0, K + 1), min_size=1, max_size=max_plans)))
    N = draw(st.one_of(st.integers(3, 24), st.integers(25, 64)))
    top_k = st.one_of(st.none(), st.just(1), st.integers(2, min(6, N + 1)))  # at most the N+1 tokens
    filters = (draw(top_k), draw(top_k), draw(top_k), draw(FILTER_CDF), draw(FILTER_CDF), draw(FILTER_CDF))
    dtype = draw(st.sampled_from(["float64", "float64", "float32"]))
    if greedy_batches and objective == "return" and (len(contexts) > 1 or dtype == "float32"):
        filters = (1, 1, 1) + filters[3:]
    return Case(
        O=O, A=A, N=N, K=K, n_layer=draw(st.integers(1, 3)), n_head=draw(st.integers(1, 2)),
        head_dim=draw(st.sampled_from([4, 8, 12])), dtype=dtype, seed=draw(st.integers(0, 2**16)),
        contexts=contexts, horizon=horizon,
        beam_width=draw(st.one_of(st.integers(1, 12), st.integers(13, 40))), n_expand=draw(st.integers(1, 3)),
        max_context=max_context,
        window=window, filters=filters, temperature=draw(st.sampled_from([1.0, 1.0, 0.7, 1.5])),
        goal=draw(st.booleans()) if goal is None else goal, objective=objective)


# ----------------------------------------------------------------------------- the checks


def reproduce(check: str, case: Case) -> str:
    return f"reproduce: python tests/test_fuzz.py {check} {repr(case)!r}"


def crop_of(model, config: PlanConfig, contexts: tuple[int, ...], b: int):
    """The window plan b of a batch sees: the authors' crop, or the cached rule in the batch's coordinates."""
    return reference.window_crop(model, config, max(contexts), max(contexts) - contexts[b])


def score_tolerance(model, score: torch.Tensor) -> dict:
    """float32 models carry the fast attention's other summation order into the score; the return
    objective sums its score terms in float32 whatever the model's dtype."""
    if model.tok_emb.weight.dtype == torch.float32:
        return dict(rel=1e-4, abs=1e-4)
    return dict(rel=1e-6, abs=1e-6) if score.dtype == torch.float32 else dict(rel=1e-9, abs=1e-9)


def check_search(case: Case) -> None:
    """A batch of plans (return or likelihood objective, with or without goals) equals the reference
    plan by plan; each reported score is what its tokens score."""
    model, config = case.model(), case.config()
    disc = random_discretizer(case.N, case.T, seed=case.seed)
    mids = torch.tensor(disc.midpoints)
    prefixes, goals = case.prefixes(), case.goals()
    q_fn = case.q_fn()
    objective = None if q_fn is None else CriticReturn(q_fn, mids.to(torch.float32))
    result = beam_plan(model, pad_prefixes(prefixes, case.T), disc, config, Philox(case.seed), goal=goals,
                       objective=objective)
    tol = score_tolerance(model, result.score)
    for b, prefix in enumerate(prefixes):
        crop = crop_of(model, config, case.contexts, b)
        goal = None if goals is None else goals[b]
        if config.objective == "likelihood":
            tokens, score = reference.likelihood_plan(model, prefix, config, goal=goal, crop=crop)
        else:
            tokens, score = reference.beam_plan(model, prefix, mids, config, Philox(case.seed), goal=goal, crop=crop,
                                                q_fn=q_fn)
        where = f"plan {b} of {len(prefixes)}; {reproduce('search', case)}"
        assert result.tokens[b].tolist() == tokens.tolist(), f"tokens differ from the reference: {where}"
        assert result.score[b].item() == pytest.approx(score.item(), **tol), f"score differs: {where}"
        own = reference.plan_score(model, prefix, result.tokens[b], mids, config, goal=goal, crop=crop, q_fn=q_fn)
        assert result.score[b].item() == pytest.approx(own.item(), **tol), \
            f"the reported score {result.score[b].item()} is not its tokens' ({own.item()}): {where}"


def check_prediction(case: Case) -> None:
    """Continuations with the actions forced equal the reference's, sample for sample (one Philox)."""
    model = case.model()
    context = min(case.contexts)
    prefixes = torch.stack([p[-(context * case.T + case.O):] for p in case.prefixes()])
    g = torch.Generator().manual_seed(case.seed + 2)
    n = case.horizon * case.T - case.O
    forced = torch.full((len(prefixes), n), -1, dtype=torch.long)
    offsets = (prefixes.shape[1] + torch.arange(n)) % case.T
    actions = (offsets >= case.O) & (offsets < case.O + case.A)
    forced[:, actions] = torch.randint(0, case.N, (len(prefixes), int(actions.sum())), generator=g)
    config = case.config(n_expand=1)
    disc = random_discretizer(case.N, case.T, seed=case.seed)
    tokens = prediction.sample_continuations(model, prefixes, forced, disc, config, Philox(case.seed))
    crop = reference.window_crop(model, replace(config, horizon=case.horizon + 1), context)
    expected = reference.sample_continuations(model, prefixes, forced, case.beam_width, config, Philox(case.seed),
                                              crop=crop)
    assert tokens.tolist() == expected.tolist(), f"continuations differ: {reproduce('prediction', case)}"


def check_planner_loop(case: Case) -> None:
    """`tt.Planner` over a few environment steps (random observations, rewards and episode ends)
    equals a loop that keeps each environment's context and plans with the reference."""
    model, config = case.model(), case.config(plan_freq=1 + case.seed % 3)
    disc = random_discretizer(case.N, case.T, seed=case.seed)
    mids = torch.tensor(disc.midpoints)
    n_envs = len(case.contexts)
    goals = case.goals()
    planner = Planner(model, disc, config, seed=case.seed,
                      goal=None if goals is None else disc.reconstruct(goals.numpy(), columns=slice(0, case.O)))
    rng = Philox(case.seed)  # the reference's draws: the planner's stream, plan after plan
    C = config.max_context_transitions or case.K
    contexts: list[list[np.ndarray]] = [[] for _ in range(n_envs)]
    plans: list[np.ndarray | None] = [None] * n_envs
    age = [0] * n_envs
    steps = np.random.default_rng(case.seed)
    for step in range(4):
        obs = steps.normal(size=(n_envs, case.O))
        actions = planner.act(obs)
        need = [i for i in range(n_envs) if plans[i] is None or age[i] % config.plan_freq == 0
                or age[i] >= config.horizon]
        obs_tokens = disc.discretize(obs, columns=slice(0, case.O))
        lengths = [len(contexts[i]) for i in need]
        for k, i in enumerate(need):
            prefix = torch.from_numpy(np.concatenate(contexts[i] + [obs_tokens[i]]))
            crop = crop_of(model, config, tuple(lengths), k)
            goal = None if goals is None else goals[i]
            if config.objective == "likelihood":
                tokens, _ = reference.likelihood_plan(model, prefix, config, goal=goal, crop=crop)
            else:
                tokens, _ = reference.beam_plan(model, prefix, mids, config, rng, goal=goal, crop=crop)
            plans[i], age[i] = tokens.view(config.horizon, case.T).numpy(), 0
        where = f"step {step}; {reproduce('planner', case)}"
        for i in range(n_envs):
            assert planner.current_plans[i].tokens.tolist() == plans[i].tolist(), f"env {i}'s plan differs: {where}"
            action = plans[i][age[i], case.O : case.O + case.A]
            action = np.where(action == case.N, case.N - 1, action)  # a stop token reads as the last bin
            expected = disc.reconstruct(action, columns=slice(case.O, case.O + case.A))
            assert np.array_equal(actions[i], expected), f"env {i}'s action differs: {where}"
        reward, done = steps.normal(size=n_envs), steps.random(n_envs) < 0.2
        planner.observe(reward, done)
        for i in range(n_envs):
            if done[i]:
                contexts[i], plans[i], age[i] = [], None, 0
                continue
            tokens = disc.discretize(np.concatenate([obs[i], actions[i], [reward[i], 0.0]]))
            tokens[-1] = case.N - 1
            contexts[i] = (contexts[i] + [tokens])[-C:]
            age[i] += 1


CHECKS = {"search": check_search, "prediction": check_prediction, "planner": check_planner_loop}


def run(check: str, case: Case) -> None:
    note(reproduce(check, case))
    CHECKS[check](case)


# ----------------------------------------------------------------------------- the properties


@given(cases(objective="return", goal=False))
def test_return_search(case):
    run("search", case)


@given(cases(objective="return", goal=False).map(lambda case: replace(case, critic=True)))
def test_critic_search(case):
    """TT+Q (`CriticReturn`) against `reference.beam_plan` with the same critic."""
    run("search", case)


@given(cases(objective="likelihood", goal=False))
def test_likelihood_search(case):
    run("search", case)


@given(st.sampled_from(["return", "likelihood"]).flatmap(lambda objective: cases(objective=objective, goal=True)))
def test_goal_search(case):
    run("search", case)


@given(cases(goal=False, greedy_batches=False))
def test_prediction(case):
    run("prediction", case)


@given(st.sampled_from(["return", "likelihood"]).flatmap(lambda objective: cases(objective=objective)))
def test_planner_loop(case):
    run("planner", case)


# ----------------------------------------------------------------------------- compiled ops


HAS_C = ops.compiled_library()


@st.composite
def logits_cases(draw):
    rows, vocab = draw(st.integers(1, 40)), draw(st.integers(2, 130))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.5, 3.0, 30.0]))
    kind = draw(st.sampled_from(["plain", "ties", "extreme"]))
    if kind == "ties":
        logits = logits.round()
    elif kind == "extreme":
        logits[:, draw(st.integers(0, vocab - 1))] = draw(st.sampled_from([float("-inf"), 1e4, -1e30, float("inf")]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    top_k = draw(st.one_of(st.none(), st.integers(1, vocab)))
    cdf = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    temperature = draw(st.sampled_from([1.0, 0.5, 2.0]))
    return logits.to(dtype), top_k, cdf, temperature, seed


def both_backends(monkeypatch, fn):
    """fn() on the compiled ops and on the reference (`ops.use(backend="reference")`)."""
    ops.use(backend="auto")
    compiled = fn()
    ops.use(backend="reference")
    return compiled, fn()


@pytest.mark.skipif(not HAS_C, reason="tt._C is not built")
@given(logits_cases())
def test_compiled_sampling_and_log_probs(logits_case):
    logits, top_k, cdf, temperature, seed = logits_case
    mids = torch.linspace(-1, 2, logits.shape[1] - 1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        (tokens, expectation), (ref_tokens, ref_expectation) = both_backends(
            monkeypatch, lambda: ops.sample_next(logits, temperature=temperature, top_k=top_k, cdf=cdf,
                                                 midpoints=mids, rng=Philox(seed)))
        logp, ref_logp = both_backends(monkeypatch, lambda: ops.log_probs(logits, temperature, top_k, cdf))
    assert tokens.tolist() == ref_tokens.tolist()
    torch.testing.assert_close(expectation, ref_expectation.to(expectation.dtype), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp, ref_logp, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAS_C, reason="tt._C is not built")
@given(st.integers(1, 4), st.integers(1, 9), st.integers(2, 40), st.integers(0, 2**16), st.booleans())
def test_compiled_beam_ops(B, W, V, seed, ties):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, W, generator=g)
    logp = torch.randn(B * W, V, generator=g).log_softmax(-1)
    if ties:
        scores, logp = scores.round(), logp.round()
    scores[:, W // 2 :] = float("-inf") if seed % 2 else scores[:, W // 2 :]  # dead beams
    k = 1 + seed % (W * V)
    with pytest.MonkeyPatch.context() as monkeypatch:
        expanded, ref_expanded = both_backends(monkeypatch, lambda: ops.beam_expand(scores, logp, min(k, 64)))
        flat = torch.randn(B, W * V, generator=g).round() if ties else torch.randn(B, W * V, generator=g)
        selected, ref_selected = both_backends(monkeypatch, lambda: ops.beam_select(flat, min(k, W * V), W)[:3])
    for a, b in zip(expanded + selected, ref_expanded + ref_selected):
        assert a.tolist() == b.tolist()


@pytest.mark.skipif(not HAS_C, reason="tt._C is not built")
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.integers(0, 4), st.integers(1, 9),
       st.sampled_from([1, 4, 7, 8, 16, 33]), st.integers(1, 3), st.integers(2, 7), st.booleans(), st.booleans(),
       st.integers(0, 5), st.integers(0, 2**16))
def test_compiled_decode_attention(G, n, blocks, prefix_transitions, own, D, H, T, padded, table, n_goal, seed):
    """`tt::decode_attention` (float32: one query per row after a shared prefix, read by group or through a
    row table, a goal segment, left padding) against the reference attention over whole windows."""
    g, dtype = torch.Generator().manual_seed(seed), torch.float32
    S, R = prefix_transitions * T, blocks * G * n
    cache = torch.randn(2, max(R, G), H, S + own, D, generator=g, dtype=dtype)
    q = torch.randn(R, H, 1, D, generator=g, dtype=dtype)
    k, v = cache[0, :R, :, S:], cache[1, :R, :, S:]
    rows = torch.randint(0, G, (R,), generator=g) if table else None
    prefix = SharedPrefix(cache[0, :G, :, :S], cache[1, :G, :, :S], n, rows) if S else None
    group = rows if rows is not None else torch.arange(R) // n % G
    key_start = None
    if padded and S:  # per group, whole transitions of padding, up to all of the prefix
        key_start = (torch.randint(0, prefix_transitions + 1, (G,), generator=g) * T)[group]
    goal_segment = None
    if n_goal:
        goals = torch.randn(2, G, H, n_goal, D, generator=g, dtype=dtype)
        goal_segment = SharedPrefix(goals[0], goals[1], n, rows)
    out = torch.full((R, H, D), float("nan"), dtype=dtype)  # poisoned: an unwritten element fails
    torch.ops.tt.decode_attention(
        q[:, :, 0], k, v, None if prefix is None else prefix.k, None if prefix is None else prefix.v, n,
        rows if S else None, S + own - 1, T, key_start, out,
        *(() if goal_segment is None else (goal_segment.k, goal_segment.v, n, rows)))
    want = reference.attention(q, k, v, transition_dim=T, q_offset=S + own - 1, key_start=key_start, prefix=prefix,
                               goal=goal_segment)[:, :, 0]
    torch.testing.assert_close(out, want, atol=2e-6, rtol=2e-6)


if __name__ == "__main__":  # python tests/test_fuzz.py CHECK "Case(...)": one example, outside Hypothesis
    CHECKS[sys.argv[1]](eval(sys.argv[2], {"Case": Case}))
    print("passed")
