"""One policy for NaN and infinite logits and scores, and one cdf boundary, in the reference and
the C++ op (the CUDA kernel's side runs under the emulator: tests/test_simt.py).

sample_next: a NaN logit counts as -inf; +inf tokens share the mass; a row with no finite logit
is uniform; a cdf of 1 or more filters nothing. beam_select: NaN sorts last, after -inf.
"""

import numpy as np
import pytest
import torch

from tt import ops, reference
from tt.rng import Philox

HAS_C = ops.compiled_library()

nan, inf = float("nan"), float("inf")


def draws(row: list[float], n: int = 64, dtype=torch.float32, **filters) -> set[int]:
    """The set of tokens drawn from `row` repeated n times (one uniform per row)."""
    logits = torch.tensor([row] * n, dtype=dtype)
    tokens, _ = ops.sample_next(logits, rng=Philox(123), **filters)
    return set(tokens.tolist())


@pytest.mark.parametrize("row, filters, expected", [
    ([0.5, nan, 1.0, nan, 0.0], {}, {0, 2, 4}),  # NaN: never drawn
    ([0.5, inf, 1.0, inf, nan], {}, {1, 3}),  # +inf tokens share the mass
    ([-inf, -inf, -inf, -inf], {}, {0, 1, 2, 3}),  # no finite logit: uniform
    ([nan, nan, nan], {}, {0, 1, 2}),  # all NaN: as all -inf
    ([-inf, 0.0, -inf, 1.0], {}, {1, 3}),  # -inf: never drawn
    ([nan, -inf, -inf, nan, -inf], {"top_k": 2}, {0, 1, 2, 3, 4}),
    ([inf, 2.0, nan, inf, 1.0], {"cdf": 0.4}, {0, 3}),
    ([0.3, 0.1, 0.0, 0.2, -0.1], {"cdf": 1.0}, {0, 1, 2, 3, 4}),  # cdf 1: no filter
], ids=["nan", "plus-inf", "all-minus-inf", "all-nan", "minus-inf", "all-nonfinite-top-k", "inf-cdf", "cdf-1"])
def test_sample_next_nonfinite_logits_follow_one_policy(backend, row, filters, expected):
    assert draws(row, **filters) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_next_nonfinite_rows_draw_for_draw_and_expectations(dtype):
    """The compiled op and the reference give the same tokens and expectations on rows with NaN, +-inf
    and no finite logit, and nothing is NaN."""
    if not HAS_C:
        pytest.skip("tt._C is not built")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 13, generator=g, dtype=dtype)
    logits[0, [1, 5]] = nan
    logits[1, [2, 9]] = inf
    logits[2] = -inf
    logits[3] = nan
    logits[4, ::2] = -inf
    logits[5] = inf
    logits[6, 3] = nan
    logits[6, 4] = inf
    mids = torch.linspace(-1, 1, 12, dtype=dtype)
    results = {}
    for name in ("compiled", "reference"):
        with ops.using():
            ops.use(backend="auto" if name == "compiled" else "reference")
            results[name] = [ops.sample_next(logits, temperature=0.8, top_k=k, cdf=c, midpoints=mids, rng=Philox(7))
                             for k, c in ((None, None), (3, 0.5), (None, 1.0))]
    for (tok_c, exp_c), (tok_r, exp_r) in zip(results["compiled"], results["reference"]):
        assert torch.equal(tok_c, tok_r)
        assert not exp_r.isnan().any()
        torch.testing.assert_close(exp_c, exp_r.to(exp_c.dtype))


def test_reference_softmax_is_torchs_on_finite_rows_and_defined_elsewhere():
    x = torch.randn(5, 17, dtype=torch.float64)
    assert torch.equal(reference.softmax(x), x.softmax(-1))
    y = torch.tensor([[inf, 0.0, inf], [-inf, -inf, -inf]])
    assert torch.equal(reference.softmax(y), torch.tensor([[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3]]))


@pytest.mark.parametrize("threshold", [1.0, 1.5])
def test_cdf_of_one_or_more_filters_nothing(threshold):
    """At cdf 1 the authors' filter depends on whether the float sum of the sorted probabilities
    rounds below 1 (keep only the top token) or not (filter every token): tt filters nothing."""
    logits = torch.randn(64, 101, generator=torch.Generator().manual_seed(3))
    assert torch.equal(reference.filter_cdf(logits, threshold), logits)


def test_cdf_one_equals_no_cdf_on_every_backend(backend):
    logits = torch.randn(32, 41, generator=torch.Generator().manual_seed(4))
    with_one, _ = ops.sample_next(logits, cdf=1.0, top_k=7, rng=Philox(9))
    without, _ = ops.sample_next(logits, cdf=None, top_k=7, rng=Philox(9))
    assert torch.equal(with_one, without)


def test_beam_select_puts_nan_last_as_the_issue_example(backend):
    """Scores [[1, nan, 3]], k = 3: [2, 0, 1] on every backend (the reference used to put NaN first)."""
    values, indices, *_ = ops.beam_select(torch.tensor([[1.0, nan, 3.0]]), 3)
    assert indices.tolist() == [[2, 0, 1]]
    assert values[0, :2].tolist() == [3.0, 1.0] and values[0, 2].isnan()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beam_select_nonfinite_scores_match_the_reference_exactly(dtype):
    if not HAS_C:
        pytest.skip("tt._C is not built")
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.standard_normal((6, 20))).to(dtype)
    scores[0, [1, 6, 7]], scores[0, [2, 9]] = nan, -inf
    scores[1, [0, 3]], scores[1, 8] = inf, nan
    scores[2], scores[3] = -inf, nan
    scores[4, ::2], scores[4, 1::2] = -inf, nan
    scores[5, [3, 4]] = nan
    terms = torch.randn(6 * 20, 3, dtype=torch.float32)
    tokens = torch.randint(0, 100, (6 * 20, 2))
    for k, group in ((20, 20), (7, 4)):
        with ops.using():
            ops.use(backend="auto")
            compiled = ops.beam_select(scores, k, group, terms, tokens)
        expected = reference.beam_select(scores, k, group, terms, tokens)
        for got, want in zip(compiled, expected):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    # NaN after -inf, each group by index
    _, indices, *_ = reference.beam_select(scores[4:5], 20)
    assert indices[0].tolist() == list(range(0, 20, 2)) + list(range(1, 20, 2))
