"""Training's CPU ops (tt/ops/training.py): dropout from Philox masks and the TT-masked attention with
dropout, against torch's dropout semantics and the reference attention."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, chisquare

from tt import ops, reference
from tt.ops import training

pytestmark = pytest.mark.skipif(not ops.compiled_library(), reason="tt._C is not built")


def test_dropout_keeps_each_element_with_probability_1_minus_p():
    """Over 1.2M elements (odd: the last Philox word in part) the kept share is 1 - p by a binomial test,
    the same in each of a word's four lanes and along the tensor (chi-square), kept elements scaled by
    1 / (1 - p) and the others exactly 0."""
    torch.manual_seed(0)
    x = torch.rand(1_200_003) + 0.5
    for p in (0.1, 0.5, 0.9):
        y = ops.dropout(x, p)
        kept = y != 0
        assert binomtest(int(kept.sum()), len(x), 1 - p).pvalue > 1e-4, p
        torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)
        counts = kept[: len(x) // 4 * 4].view(-1, 4).sum(0).numpy()  # per lane of a Philox word
        assert chisquare(counts).pvalue > 1e-4, (p, counts)
        blocks = kept[: len(x) // 100 * 100].view(100, -1).sum(1).numpy()  # along the tensor
        assert chisquare(blocks).pvalue > 1e-4, p


def test_dropout_masks_are_reproducible_from_torchs_seed_and_independent_of_threads():
    x = torch.randn(3, 5, 7)
    masks = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(7)
            masks.append((ops.dropout(x, 0.3) != 0, ops.dropout(x, 0.3) != 0))
        finally:
            torch.set_num_threads(before)
    assert torch.equal(masks[0][0], masks[1][0]) and torch.equal(masks[0][1], masks[1][1])
    assert not torch.equal(masks[0][0], masks[0][1])  # two calls: two masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (3,), (4, 5), (2, 3, 7, 9)])
def test_dropouts_gradient_is_its_mask_scaled(dtype, shape):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=dtype).mul_(3).add_(5).requires_grad_()
    y = ops.dropout(x.transpose(0, -1) if x.dim() > 1 else x, 0.25)  # a strided view: made contiguous
    y.sum().backward()
    kept = (y != 0).transpose(0, -1) if x.dim() > 1 else y != 0
    want = torch.where(kept, torch.tensor(1 / 0.75, dtype=dtype), torch.tensor(0.0, dtype=dtype))
    torch.testing.assert_close(x.grad, want)


def test_dropout_off_or_out_of_range():
    x = torch.randn(10)
    assert ops.dropout(x, 0.0) is x and ops.dropout(x, 0.5, training=False) is x
    assert (ops.dropout(x, 1.0) == 0).all()  # torch's semantics at p = 1
    nan = torch.full((9,), float("nan"))
    assert ops.dropout(nan, 0.5).isnan().all() and torch.nn.functional.dropout(nan, 0.5).isnan().all()
    with pytest.raises(ValueError):
        ops.dropout(x, -0.1)
    with pytest.raises(RuntimeError, match="drop rate p must be in"):
        torch.ops.tt.dropout_mask(0, 0, 1.0, torch.empty(4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="mask must be a contiguous bool tensor of x's shape"):
        torch.ops.tt.dropout_apply(x, torch.ones(9, dtype=torch.bool), 1.0, torch.empty_like(x))


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("Lq, Lk, offset", [(23, 23, 0), (5, 12, 7), (1, 9, 8)])
def test_training_attention_without_dropout_equals_the_reference(padded, Lq, Lk, offset):
    """The same function, forward and backward, as `reference.attention` (SDPA's)."""
    g = torch.Generator().manual_seed(Lq + Lk)
    T, R = 4, 3
    q, k, v = (torch.randn(R, 2, n, 8, generator=g, dtype=torch.float64, requires_grad=True) for n in (Lq, Lk, Lk))
    key_start = torch.tensor([0, 4, 8]) if padded else None
    out = training.attention(q, k, v, T, offset, key_start, 0.0)
    want = reference.attention(q, k, v, transition_dim=T, q_offset=offset, key_start=key_start)
    torch.testing.assert_close(out, want)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b)


def test_training_attention_drops_attention_weights_as_dropout_does():
    """With dropout, the output is the reference's with the dropped weights' values removed: with v the
    identity over keys, the output is the kept weights scaled by 1 / (1 - p)."""
    L, T, p = 16, 4, 0.4
    q = torch.randn(2, 1, L, 8, dtype=torch.float64)
    k = torch.randn(2, 1, L, 8, dtype=torch.float64)
    v = torch.eye(L, dtype=torch.float64)[None, None].expand(2, 1, L, L)
    torch.manual_seed(3)
    out = training.attention(q, k, v, T, 0, None, p)
    weights = reference.attention(q, k, v, transition_dim=T)  # the weights themselves (v = I)
    kept = out != 0
    torch.testing.assert_close(out[kept], weights[kept] / (1 - p))
    share = kept[weights > 0].double().mean().item()
    assert abs(share - (1 - p)) < 0.15 and np.isfinite(out.numpy()).all()
