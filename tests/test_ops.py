import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tt import ops, reference


def filtered_probs(logits, temperature, top_k, cdf):
    """Independent numpy statement of the sampling distribution: temperature, cdf, top-k, softmax."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if cdf is not None:
        order = np.sort(p)
        below = np.flatnonzero(np.cumsum(order) < cdf)
        cutoff = order[below[-1]] if len(below) else order[0]
        z = np.where(p <= cutoff, -1000.0, z)
    if top_k is not None:
        kth = np.sort(z)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    q = np.exp(z - z.max())
    return q / q.sum()


@pytest.mark.parametrize("temperature, top_k, cdf", [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.2),
                                                      (1.0, 4, 0.1), (2.0, 8, 0.3), (1.0, None, 0.9)])
def test_sample_next_draws_follow_the_filtered_distribution(temperature, top_k, cdf):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 11, generator=g) * 2
    n = 20_000
    tokens, _ = ops.sample_next(logits.expand(n, -1), temperature=temperature, top_k=top_k, cdf=cdf, generator=g)
    counts = np.bincount(tokens.numpy(), minlength=11)
    expected = filtered_probs(logits[0].numpy(), temperature, top_k, cdf)
    assert counts[expected == 0].sum() == 0
    keep = expected > 0
    if keep.sum() > 1:
        assert chisquare(counts[keep], expected[keep] * n).pvalue > 1e-4


def test_chi_square_tells_a_swapped_filter_order_apart():
    """The statistical check above has the power to see filters applied in the wrong order."""
    logits = np.array([3.0, 2.9, 1.0, 0.9, 0.8, 0.4, 0.3, 0.2, 0.1, 0.0, -1.0])
    right = filtered_probs(logits, 1.0, 3, 0.2)
    z = np.where(logits < np.sort(logits)[-3], -np.inf, logits)  # top-k first, then cdf
    swapped = filtered_probs(z, 1.0, None, 0.2)
    tokens, _ = ops.sample_next(torch.tensor(logits).expand(20_000, -1), top_k=3, cdf=0.2,
                                generator=torch.Generator().manual_seed(1))
    counts = np.bincount(tokens.numpy(), minlength=11)
    keep = right > 0
    assert chisquare(counts[keep], right[keep] * 20_000).pvalue > 1e-4
    assert not np.allclose(right, swapped)
    assert counts[swapped == 0].sum() > 0 or chisquare(counts[swapped > 0], swapped[swapped > 0] * 20_000).pvalue < 1e-6


def test_sample_next_expectation_drops_the_stop_token():
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    mids = torch.tensor([10.0, 20.0, 30.0])
    _, expectation = ops.sample_next(logits, midpoints=mids, temperature=2.0)
    p = torch.softmax(logits / 2.0, -1)[0]
    assert expectation.item() == pytest.approx(float(p[:3] @ mids))  # not renormalized


def test_greedy_sampling_is_argmax_and_extreme_logits_are_safe():
    logits = torch.tensor([[-1e30, 5.0, 1e4, -float("inf")], [0.0, 0.0, 1.0, 0.5]])
    tokens, _ = ops.sample_next(logits, top_k=1)
    assert tokens.tolist() == [2, 2]


def test_beam_select_descending_with_ties_to_the_lower_index():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    values, index = ops.beam_select(scores, 3)
    assert index.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert values.tolist() == [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]
    values, index = ops.beam_select(scores[:1], 5)
    assert index.tolist() == [[1, 2, 4, 3, 0]]


def test_attention_reference_matches_explicit_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 13, 8, generator=g, dtype=torch.float64) for _ in range(3))
    T = 4
    out = ops.attention(q, k, v, transition_dim=T)
    i, j = torch.arange(13)[:, None], torch.arange(13)[None]
    allowed = (j <= i) & (j % T != T - 1)
    att = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(out, att @ v)


def test_op_arguments_are_checked():
    with pytest.raises(ValueError, match="top_k must be in"):
        ops.sample_next(torch.zeros(2, 5), top_k=6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ops.sample_next(torch.zeros(2, 5), temperature=0.0)
    with pytest.raises(ValueError, match="logits \\[rows, N\\+1\\]"):
        ops.sample_next(torch.zeros(5))
    with pytest.raises(ValueError, match="midpoints must be \\[4\\]"):
        ops.sample_next(torch.zeros(2, 5), midpoints=torch.zeros(5))
    with pytest.raises(ValueError, match="k=6 must be in"):
        ops.beam_select(torch.zeros(2, 5), 6)
    with pytest.raises(ValueError, match="queries reach slot"):
        ops.attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), transition_dim=3)
    assert set(ops.backends()) == {"attention", "sample_next", "beam_select"}
    assert reference.filter_top_k(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 1).isfinite().sum() == 2  # ties kept
