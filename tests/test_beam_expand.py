"""tt::beam_expand, the likelihood search's batched top-k, against tt/reference.py: the C++ op exactly
(values bit for bit, parents and tokens), the reference against a plain Python sort, the argument
checks of the wrapper and of the op, the fake implementation, and the CUDA kernel where there is a
GPU (its body also runs under the SIMT emulator: tests/test_simt.py).
"""

import math

import numpy as np
import pytest
import torch

from tt import ops, reference

HAS_C = ops.compiled_library()
needs_c = pytest.mark.skipif(not HAS_C, reason="tt._C is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not HAS_C, reason="needs a CUDA device and tt._C")

nan, inf = float("nan"), float("inf")


def inputs(B: int, W: int, V: int, kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, W] and logp [B*W, V] (float32) of one kind:
    plain: cumulative log-probs and log-softmax rows, as the search makes them;
    ties: both quantized, so many candidates tie, at the k-th score too;
    dead: -inf beams (plan 0 keeps one beam, the last plan none when B > 1) and -inf tokens;
    nonfinite: NaN scores and log-probs, +inf and -inf entries, a row all -inf;
    zeros: -0 and +0 in both (equal: ties by index), with a few negative values."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, W, generator=g) * 3 - 5
    logp = torch.log_softmax(torch.randn(B * W, V, generator=g) * 2, -1)
    if kind == "ties":
        scores, logp = torch.round(scores), torch.round(logp * 2) / 2
    elif kind == "dead":
        scores[0, 1:] = -inf
        if B > 1:
            scores[-1] = -inf
        logp[torch.rand(B * W, V, generator=g) < 0.2] = -inf
    elif kind == "nonfinite":
        scores[torch.rand(B, W, generator=g) < 0.2] = nan
        logp[torch.rand(B * W, V, generator=g) < 0.1] = nan
        logp[torch.rand(B * W, V, generator=g) < 0.1] = -inf
        logp[torch.rand(B * W, V, generator=g) < 0.02] = inf
        logp[0] = -inf
    elif kind == "zeros":
        pick = torch.tensor([0.0, -0.0, -1.0])
        scores = pick[torch.randint(0, 3, (B, W), generator=g)]
        logp = pick[torch.randint(0, 3, (B * W, V), generator=g)] / 2
    return scores.float().contiguous(), logp.float().contiguous()


def assert_same(got, want):
    """values bit for bit (-0 is not +0), NaN where the other has NaN; parents and tokens equal."""
    (values, parents, tokens), (want_values, want_parents, want_tokens) = got, want
    assert values.dtype == torch.float32 and parents.dtype == tokens.dtype == torch.int64
    got_nan, want_nan = values.isnan(), want_values.isnan()
    assert torch.equal(got_nan, want_nan)
    assert torch.equal(values[~got_nan].view(torch.int32), want_values[~want_nan].view(torch.int32))
    assert torch.equal(parents, want_parents)
    assert torch.equal(tokens, want_tokens)


SHAPES = [  # B, W, V, k
    (1, 1, 2, 1), (1, 1, 7, 7), (3, 5, 37, 7), (2, 8, 33, 20), (5, 3, 11, 1), (2, 7, 13, 91),
    (4, 64, 101, 64),  # W*V = 6464 > 4096
    (1, 512, 101, 512),  # the largest search: 51712 candidates
    (1, 41, 101, 4141),  # k = W*V > 4096
    (2, 3, 64, 191), (3, 2, 32, 64), (2, 1, 2, 1),  # powers of two: k = W*V - 1, k = W*V, V = 2
]
KINDS = ["plain", "ties", "dead", "nonfinite", "zeros"]


@needs_c
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, W, V, k", SHAPES)
def test_compiled_beam_expand_equals_the_reference(B, W, V, k, kind, monkeypatch):
    ops.use(backend="auto")
    scores, logp = inputs(B, W, V, kind, seed=B * 1000 + W * V + k)
    assert_same(ops.beam_expand(scores, logp, k), reference.beam_expand(scores, logp, k))


def python_order(scores: torch.Tensor, logp: torch.Tensor, k: int) -> list[list[int]]:
    """The rules written out per candidate: larger score first, -0 as +0, NaN last, ties to the lower c."""
    B, W = scores.shape
    V = logp.shape[1]
    orders = []
    for b in range(B):
        s = (scores[b, :, None] + logp[b * W : (b + 1) * W]).flatten().tolist()  # float32 sums
        rank = lambda c: (math.isnan(s[c]), 0.0 if math.isnan(s[c]) else -s[c], c)  # noqa: B023
        orders.append(sorted(range(W * V), key=rank)[:k])
    return orders


@pytest.mark.parametrize("kind", KINDS)
def test_reference_ranks_as_a_python_sort(kind):
    scores, logp = inputs(3, 6, 9, kind, seed=7)
    for k in (1, 17, 54):
        values, parents, tokens = reference.beam_expand(scores, logp, k)
        assert (parents * 9 + tokens).tolist() == python_order(scores, logp, k)
        want = (scores.gather(1, parents) + logp.view(3, 6, 9)[torch.arange(3)[:, None], parents, tokens])
        assert_same((values, parents, tokens), (want, parents, tokens))


def test_beam_expand_ranks_dead_beams_ties_and_nan_as_the_search_needs(backend):
    """Plan 0: beam 1 dead, 3 finite candidates for k = 6, so -inf candidates fill the rest, in index
    order, and the NaN one comes last; ties (0.5 twice, -0 against +0) go to the lower candidate index."""
    scores = torch.tensor([[0.0, -inf, -1.0], [-0.0, 0.0, 0.0]])
    logp = torch.tensor([[-1.0, 0.5, nan], [0.0, -1.0, -2.0], [-inf, 1.5, -inf],
                         [-0.0, -1.0, -1.0], [0.0, -0.0, -1.0], [-3.0, -0.0, -1.0]])
    values, parents, tokens = ops.beam_expand(scores, logp, 6)
    assert (parents * 3 + tokens).tolist() == [[1, 7, 0, 3, 4, 5], [0, 3, 4, 7, 1, 2]]
    assert values[0].tolist()[:3] == [0.5, 0.5, -1.0] and values[0, 3:].isneginf().all()
    assert values[1].tolist()[:4] == [0.0, 0.0, 0.0, 0.0] and [math.copysign(1, v) for v in values[1, :2]] == [-1, 1]
    values, parents, tokens = ops.beam_expand(scores, logp, 9)
    assert parents[0].tolist()[-3:] == [2, 2, 0] and tokens[0].tolist()[-3:] == [0, 2, 2]  # -inf, then NaN
    assert values[0, -1].isnan() and values[0, -3:-1].isneginf().all()


@pytest.mark.parametrize("B", [0, 1])
def test_beam_expand_edge_sizes(backend, B):
    scores, logp = inputs(max(B, 1), 1, 1, "plain", seed=3)
    scores, logp = scores[:B], logp[:B]
    values, parents, tokens = ops.beam_expand(scores, logp, 1)
    assert values.shape == parents.shape == tokens.shape == (B, 1)
    if B:
        assert values.item() == (scores[0, 0] + logp[0, 0]).item() and parents.item() == tokens.item() == 0


@needs_c
@pytest.mark.parametrize("kind", ["plain", "nonfinite"])
def test_compiled_op_writes_every_output(kind):
    """Outputs poisoned before the raw op runs: every element must be overwritten, as the reference."""
    B, W, V, k = 3, 9, 23, 40
    scores, logp = inputs(B, W, V, kind, seed=11)
    values = torch.full((B, k), 7.5e37)
    parents, tokens = torch.full((B, k), -7, dtype=torch.long), torch.full((B, k), -7, dtype=torch.long)
    torch.ops.tt.beam_expand(scores, logp, k, values, parents, tokens)
    assert_same((values, parents, tokens), reference.beam_expand(scores, logp, k))


def test_wrapper_refuses_bad_arguments():
    scores, logp = torch.zeros(2, 3), torch.zeros(6, 5)
    bad = [
        ((scores.double(), logp, 2), "must both be float32"),
        ((scores, logp.half(), 2), "must both be float32"),
        ((scores[0], logp, 2), "scores \\[B, W\\] and logp \\[B\\*W, V\\]"),
        ((scores, logp[:5], 2), "one row per beam, B\\*W=6, got 5"),
        ((scores, logp, 0), "k=0 must be an integer in \\[1, W\\*V=15\\]"),
        ((scores, logp, 16), "k=16 must be an integer in \\[1, W\\*V=15\\]"),
        ((scores, logp, 2.0), "k=2.0 must be an integer"),
        ((scores, logp.to("meta"), 2), "scores are on cpu, logp on meta"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            ops.beam_expand(*args)
    assert ops.beam_expand(scores, logp, np.int64(2))[0].shape == (2, 2)


@needs_c
def test_compiled_op_checks_its_arguments():
    scores, logp = torch.zeros(2, 3), torch.zeros(6, 5)
    outs = [torch.empty(2, 4), torch.empty(2, 4, dtype=torch.long), torch.empty(2, 4, dtype=torch.long)]
    op = torch.ops.tt.beam_expand
    bad = [
        ((scores.double(), logp, 4, *outs), "scores must be float32, got Double"),
        ((scores, logp[:, :4].double(), 4, *outs), "logp must be float32"),
        ((scores, torch.zeros(5, 6).T, 4, *outs), "logp must be contiguous"),
        ((scores, logp[:4], 4, *outs), "logp must have B\\*W=6 rows"),
        ((scores, logp, 0, *outs), "k must be in \\[1, W\\*V=15\\], got 0"),
        ((scores, logp, 16, *outs), "k must be in \\[1, W\\*V=15\\], got 16"),
        ((scores, logp, 3, *outs), "values must have shape \\[2, 3\\]"),
        ((scores, logp, 4, outs[0].double(), *outs[1:]), "values must be float32"),
        ((scores, logp, 4, outs[0], outs[1].int(), outs[2]), "parents and tokens must be int64"),
        ((scores, logp, 4, outs[0], outs[1], torch.empty(4, 2, dtype=torch.long).T), "tokens must be contiguous"),
    ]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


@needs_c
def test_fake_implementation_traces():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.library import opcheck

    scores, logp = inputs(2, 4, 9, "plain", seed=1)
    outs = (torch.empty(2, 5), torch.empty(2, 5, dtype=torch.long), torch.empty(2, 5, dtype=torch.long))
    opcheck(torch.ops.tt.beam_expand.default, (scores, logp, 5, *outs), test_utils=("test_schema", "test_faketensor"))
    with FakeTensorMode() as mode:
        values, parents, tokens = ops.beam_expand(mode.from_tensor(scores), mode.from_tensor(logp), 5)
    assert values.shape == parents.shape == tokens.shape == (2, 5)
    assert values.dtype == torch.float32 and parents.dtype == tokens.dtype == torch.int64


@needs_cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B, W, V, k", SHAPES)
def test_cuda_beam_expand_equals_the_reference(B, W, V, k, kind):
    """On the GPU; k above the kernel's limit (4096) falls back to the reference in the wrapper and is
    refused by the raw op."""
    scores, logp = inputs(B, W, V, kind, seed=B * 1000 + W * V + k)
    got = ops.beam_expand(scores.cuda(), logp.cuda(), k)
    assert_same([t.cpu() for t in got], reference.beam_expand(scores, logp, k))
    if k > ops.CUDA_BEAM_EXPAND_MAX_K:
        outs = [torch.empty(B, k, device="cuda")] + [torch.empty(B, k, dtype=torch.long, device="cuda") for _ in "pt"]
        with pytest.raises(RuntimeError, match="at most 4096 survivors per plan on CUDA"):
            torch.ops.tt.beam_expand(scores.cuda(), logp.cuda(), k, *outs)
