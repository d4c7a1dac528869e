"""The compiled ops (tt._C) against their references, and the references against the authors' semantics."""

import os

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tt import ops, reference
from tt.cache import KVCache, SharedPrefix
from tt.rng import Philox

HAS_C = ops.compiled_library()
needs_c = pytest.mark.skipif(not HAS_C, reason="tt._C is not built")


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


# ----------------------------------------------------------------------------- the generator


def test_python_philox_matches_the_known_answers():
    """Random123's Philox4x32-10 known-answer vectors, through the uniform's two first words."""
    for seed, offset, row, words in [(0, 0, 0, (0x6627E8D5, 0xE169C58D))]:
        u = reference.philox_uniform(seed, offset, row + 1)[row].item()
        assert u == (((words[0] << 32) | words[1]) >> 11) * 2.0**-53


@needs_c
@pytest.mark.parametrize("seed, offset", [(0, 0), (1, 0), (12345678901234, 7), (2**62 - 1, 2**40 + 3)])
def test_header_philox_equals_the_python_reference(seed, offset):
    assert torch.equal(ops.philox_uniform(seed, offset, 1000), reference.philox_uniform(seed, offset, 1000))


# ----------------------------------------------------------------------------- sample_next

CASES = [  # rows, vocab, temperature, top_k, cdf
    (1, 2, 1.0, None, None), (7, 11, 0.7, 5, None), (33, 101, 1.3, None, 0.6), (5, 101, 1.0, 1, None),
    (64, 101, 1.0, None, 0.6), (9, 17, 2.0, 17, 0.3), (300, 51, 0.5, 3, 0.9), (2, 3, 1.0, 3, 0.0),
    # the filters' edges on a power-of-two vocabulary: top-k at V - 1, V and 1, the cdf filter at 0 and near 1
    (16, 64, 1.0, 63, None), (16, 64, 0.8, 64, 0.0), (8, 32, 1.0, 1, 0.98), (8, 2, 1.0, 1, None),
]


def random_logits(rows, vocab, seed, dtype=torch.float32, ties=False, extreme=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g, dtype=torch.float64) * 3
    if ties:  # whole groups of equal logits, and equal rows
        logits = torch.round(logits)
        logits[rows // 2 :] = logits[: rows - rows // 2].clone()
    if extreme:
        logits[:, 0] = float("-inf")
        logits[0, vocab // 2] = 1e4
        logits[-1, 1] = -1e30
    return logits.to(dtype)


@needs_c
@pytest.mark.parametrize("rows, vocab, temperature, top_k, cdf", CASES)
@pytest.mark.parametrize("kind", ["plain", "ties", "extreme"])
def test_compiled_sample_next_equals_the_reference_draw_for_draw(rows, vocab, temperature, top_k, cdf, kind,
                                                                 monkeypatch):
    logits = random_logits(rows, vocab, seed=rows * vocab, ties=kind == "ties", extreme=kind == "extreme")
    mids = torch.linspace(-2, 3, vocab - 1)
    results = {}
    for name in ("compiled", "reference"):
        ops.use(backend="auto" if name == "compiled" else "reference")
        rng = Philox(987654321 + rows)
        results[name] = [ops.sample_next(logits, temperature=temperature, top_k=top_k, cdf=cdf, midpoints=mids,
                                         rng=rng) for _ in range(3)]
        assert rng.current()[1] == 3  # one offset per call
    for (tok_c, exp_c), (tok_r, exp_r) in zip(results["compiled"], results["reference"]):
        assert torch.equal(tok_c, tok_r)
        torch.testing.assert_close(exp_c, exp_r, rtol=1e-5, atol=1e-5)


@needs_c
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_compiled_sample_next_dtypes(dtype, monkeypatch):
    logits = random_logits(40, 101, seed=3, dtype=dtype)
    out = {}
    for name in ("compiled", "reference"):
        ops.use(backend="auto" if name == "compiled" else "reference")
        out[name] = ops.sample_next(logits, top_k=10, cdf=0.5, midpoints=torch.linspace(0, 1, 100), rng=Philox(5))
    assert torch.equal(out["compiled"][0], out["reference"][0])
    torch.testing.assert_close(out["compiled"][1], out["reference"][1].to(out["compiled"][1].dtype),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature, top_k, cdf", [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.2),
                                                      (1.0, 4, 0.1), (2.0, 8, 0.3), (1.0, None, 0.9)])
def test_sample_next_draws_follow_the_filtered_distribution(backend, temperature, top_k, cdf):
    logits = torch.randn(1, 11, generator=torch.Generator().manual_seed(0)) * 2
    n = 20_000
    tokens, _ = ops.sample_next(logits.expand(n, -1), temperature=temperature, top_k=top_k, cdf=cdf, rng=Philox(11))
    counts = np.bincount(tokens.numpy(), minlength=11)
    expected = filtered_probs(logits[0].numpy(), temperature, top_k, cdf)
    assert counts[expected == 0].sum() == 0
    keep = expected > 0
    if keep.sum() > 1:
        assert chisquare(counts[keep], expected[keep] * n).pvalue > 1e-4


def test_reference_multinomial_draws_follow_the_filtered_distribution():
    logits = torch.randn(1, 11, generator=torch.Generator().manual_seed(0)) * 2
    tokens, _ = reference.sample_next(logits.expand(20_000, -1), top_k=6, cdf=0.2,
                                      rng=torch.Generator().manual_seed(1))
    expected = filtered_probs(logits[0].numpy(), 1.0, 6, 0.2)
    keep = expected > 0
    assert chisquare(np.bincount(tokens.numpy(), minlength=11)[keep], expected[keep] * 20_000).pvalue > 1e-4


def test_chi_square_tells_a_swapped_filter_order_apart(backend):
    """The statistical check above has the power to see filters applied in the wrong order."""
    logits = np.array([3.0, 2.9, 1.0, 0.9, 0.8, 0.4, 0.3, 0.2, 0.1, 0.0, -1.0])
    right = filtered_probs(logits, 1.0, 3, 0.2)
    z = np.where(logits < np.sort(logits)[-3], -np.inf, logits)  # top-k first, then cdf
    swapped = filtered_probs(z, 1.0, None, 0.2)
    tokens, _ = ops.sample_next(torch.tensor(logits).expand(20_000, -1), top_k=3, cdf=0.2, rng=Philox(1))
    counts = np.bincount(tokens.numpy(), minlength=11)
    keep = right > 0
    assert chisquare(counts[keep], right[keep] * 20_000).pvalue > 1e-4
    assert not np.allclose(right, swapped)
    assert counts[swapped == 0].sum() > 0 or chisquare(counts[swapped > 0], swapped[swapped > 0] * 20_000).pvalue < 1e-6


def test_sample_next_expectation_drops_the_stop_token(backend):
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
    mids = torch.tensor([10.0, 20.0, 30.0])
    _, expectation = ops.sample_next(logits, midpoints=mids, temperature=2.0)
    p = torch.softmax(logits / 2.0, -1)[0]
    assert expectation.item() == pytest.approx(float(p[:3] @ mids), rel=1e-6)  # not renormalized


def test_greedy_sampling_is_argmax_and_extreme_logits_are_safe(backend):
    logits = torch.tensor([[-1e30, 5.0, 1e4, -float("inf")], [0.0, 0.0, 1.0, 0.5]])
    tokens, _ = ops.sample_next(logits, top_k=1, rng=Philox(3))
    assert tokens.tolist() == [2, 2]


@needs_c
def test_compiled_sample_next_writes_every_output():
    logits = random_logits(37, 23, seed=1)
    tokens = torch.full((37,), -7, dtype=torch.long)
    expectation = torch.full((37,), float("nan"))
    torch.ops.tt.sample_next(logits, 1.0, 4, 0.5, torch.zeros(22), torch.tensor([1, 0]), tokens, expectation)
    assert (tokens >= 0).all() and (tokens < 23).all() and torch.isfinite(expectation).all()


@needs_c
def test_compiled_ops_check_their_arguments():
    logits = torch.zeros(4, 6)
    state, tokens, e = torch.tensor([1, 0]), torch.empty(4, dtype=torch.long), torch.empty(4)
    with pytest.raises(RuntimeError, match="logits must be float32"):
        torch.ops.tt.sample_next(logits.long(), 1.0, 0, -1.0, None, state, tokens, e)
    with pytest.raises(RuntimeError, match="tokens must have shape"):
        torch.ops.tt.sample_next(logits, 1.0, 0, -1.0, None, state, tokens[:3], e)
    with pytest.raises(RuntimeError, match="top_k must be <= 6"):
        torch.ops.tt.sample_next(logits, 1.0, 7, -1.0, None, state, tokens, e)
    with pytest.raises(RuntimeError, match="rng_state must be"):
        torch.ops.tt.sample_next(logits, 1.0, 0, -1.0, None, state.float(), tokens, e)
    with pytest.raises(RuntimeError, match="midpoints must be a contiguous \\[5\\]"):
        torch.ops.tt.sample_next(logits, 1.0, 0, -1.0, torch.zeros(6), state, tokens, e)
    with pytest.raises(RuntimeError, match="logits must be contiguous"):
        torch.ops.tt.sample_next(torch.zeros(6, 4).T, 1.0, 0, -1.0, None, state, tokens, e)
    scores = torch.zeros(2, 8)
    outs = [torch.empty(2, 3), torch.empty(2, 3, dtype=torch.long), torch.empty(6, dtype=torch.long),
            torch.empty(6, 1), torch.empty(6, 2, dtype=torch.long)]
    terms, toks = torch.zeros(16, 1), torch.zeros(16, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="k must be in \\[1, 8\\]"):
        torch.ops.tt.beam_select(scores, 9, 8, terms, toks, *outs)
    with pytest.raises(RuntimeError, match="group 3 must divide"):
        torch.ops.tt.beam_select(scores, 3, 3, terms, toks, *outs)
    with pytest.raises(RuntimeError, match="terms must be contiguous \\[B\\*M=16"):
        torch.ops.tt.beam_select(scores, 3, 8, terms[:8], toks, *outs)
    with pytest.raises(RuntimeError, match="values must have shape"):
        torch.ops.tt.beam_select(scores, 2, 8, terms, toks, *outs)


@needs_c
def test_fake_implementations_trace():
    from torch.library import opcheck

    logits = random_logits(5, 9, seed=2)
    opcheck(torch.ops.tt.sample_next.default, (logits, 1.0, 3, 0.5, torch.zeros(8), torch.tensor([1, 0]),
                                               torch.empty(5, dtype=torch.long), torch.empty(5)),
            test_utils=("test_schema", "test_faketensor"))
    opcheck(torch.ops.tt.beam_select.default,
            (torch.randn(2, 8), 3, 4, torch.randn(16, 2), torch.zeros(16, 3, dtype=torch.long), torch.empty(2, 3),
             torch.empty(2, 3, dtype=torch.long), torch.empty(6, dtype=torch.long), torch.empty(6, 2),
             torch.empty(6, 3, dtype=torch.long)), test_utils=("test_schema", "test_faketensor"))


def test_sample_next_wrapper_checks_arguments():
    with pytest.raises(ValueError, match="top_k must be in"):
        ops.sample_next(torch.zeros(2, 5), top_k=6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ops.sample_next(torch.zeros(2, 5), temperature=0.0)
    with pytest.raises(ValueError, match="logits \\[rows, N\\+1\\]"):
        ops.sample_next(torch.zeros(5))
    with pytest.raises(ValueError, match="midpoints must be \\[4\\]"):
        ops.sample_next(torch.zeros(2, 5), midpoints=torch.zeros(5))


# ----------------------------------------------------------------------------- beam_select

SELECT = [(1, 1, 1, 1), (1, 7, 7, 3), (3, 13, 13, 13), (4, 6, 2, 1), (2, 256, 128, 128), (5, 4096, 1024, 1024),
          (3, 9, 3, 5), (2, 64, 16, 63), (3, 2, 1, 1), (2, 37, 37, 36)]  # B, M, group, k


@pytest.mark.parametrize("B, M, group, k", SELECT)
def test_beam_select_matches_the_reference(backend, B, M, group, k):
    g = torch.Generator().manual_seed(M + k)
    scores = torch.randint(-3, 4, (B, M), generator=g).float()  # many ties
    scores[0, :2] = float("-inf")
    terms = torch.randn(B * M, 6, generator=g)
    tokens = torch.randint(0, 100, (B * M, 5), generator=g)
    got = ops.beam_select(scores, k, group, terms, tokens)
    want = reference.beam_select(scores, k, group, terms, tokens)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_beam_select_descending_with_ties_to_the_lower_index(backend):
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    values, index, rows, _, _ = ops.beam_select(scores, 3)
    assert index.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert values.tolist() == [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]]
    assert rows.tolist() == [1, 2, 4, 5, 6, 7]
    _, index, *_ = ops.beam_select(scores[:1], 5)
    assert index.tolist() == [[1, 2, 4, 3, 0]]


@needs_c
def test_compiled_beam_select_writes_every_output():
    scores = torch.randn(3, 12)
    outs = [torch.full((3, 4), float("nan")), torch.full((3, 4), -7, dtype=torch.long),
            torch.full((12,), -7, dtype=torch.long), torch.full((12, 2), float("nan")),
            torch.full((12, 3), -7, dtype=torch.long)]
    torch.ops.tt.beam_select(scores, 4, 6, torch.randn(36, 2), torch.zeros(36, 3, dtype=torch.long), *outs)
    assert all((o == o).all() and (o != -7).all() for o in outs)


def test_beam_select_wrapper_checks_arguments():
    with pytest.raises(ValueError, match="k=6 must be in"):
        ops.beam_select(torch.zeros(2, 5), 6)
    with pytest.raises(ValueError, match="group 2 does not divide"):
        ops.beam_select(torch.zeros(2, 5), 1, 2)


# ----------------------------------------------------------------------------- attention, dispatch


def test_attention_reference_matches_explicit_softmax():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 13, 8, generator=g, dtype=torch.float64) for _ in range(3))
    T = 4
    out = ops.attention(q, k, v, transition_dim=T)
    i, j = torch.arange(13)[:, None], torch.arange(13)[None]
    allowed = (j <= i) & (j % T != T - 1)
    att = (q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(out, att @ v)
    with pytest.raises(ValueError, match="queries reach slot"):
        ops.attention(torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4), transition_dim=3)


def prefix_problem(G, n, blocks, S, own, D, H=2, T=4, padded=False, dtype=torch.float32, seed=0):
    """One query per row after a shared prefix, laid out as the cache holds them (strided views)."""
    g = torch.Generator().manual_seed(seed)
    R = blocks * G * n
    cache = torch.randn(2, max(R, G), H, S + own + 3, D, generator=g, dtype=dtype)
    q = torch.randn(R, H, 1, D, generator=g, dtype=dtype)
    k, v = cache[0, :R, :, S : S + own], cache[1, :R, :, S : S + own]
    prefix = SharedPrefix(cache[0, :G, :, :S], cache[1, :G, :, :S], n) if S else None
    key_start = None
    if padded:  # per group, whole transitions of padding, up to all of the prefix
        per_group = torch.randint(0, S // T + 1, (G,), generator=g) * T
        per_group[0] = S
        key_start = per_group.repeat_interleave(n).repeat(blocks)
    return q, k, v, prefix, key_start, S + own - 1


PREFIX_SHAPES = [  # G groups x n rows x blocks, S prefix slots, own slots, head dim
    (1, 1, 1, 0, 1, 8), (1, 1, 1, 4, 1, 5), (1, 32, 2, 80, 12, 32), (2, 3, 2, 32, 5, 16),
    (3, 2, 1, 48, 17, 33), (1, 5, 3, 8, 40, 64), (4, 1, 2, 12, 7, 7)]


@pytest.mark.parametrize("G, n, blocks, S, own, D", PREFIX_SHAPES)
@pytest.mark.parametrize("padded", [False, True])
def test_attention_after_a_shared_prefix_matches_whole_windows(G, n, blocks, S, own, D, padded):
    """Every path of ops.attention with a shared prefix (compiled kernel, cascade of two attentions)
    equals attention over each row's whole window."""
    if padded and not S:
        pytest.skip("padding lives in the prefix")
    for dtype in (torch.float32, torch.float64):
        q, k, v, prefix, key_start, slot = prefix_problem(G, n, blocks, S, own, D, padded=padded, dtype=dtype,
                                                          seed=S + own)
        want = reference.attention(q, k, v, transition_dim=4, q_offset=slot, key_start=key_start, prefix=prefix)
        if prefix is not None:  # the reference expands the prefix: check it against explicit windows
            rows = torch.arange(len(q)) // n % G
            whole = [torch.cat([p[rows], t], 2) for p, t in ((prefix.k, k), (prefix.v, v))]
            assert torch.equal(want, reference.attention(q, *whole, transition_dim=4, q_offset=slot,
                                                         key_start=key_start))
            cascade = ops.cascade.attention_after_prefix(q, k, v, prefix, 4, slot, key_start)
            torch.testing.assert_close(cascade, want)
        torch.testing.assert_close(ops.attention(q, k, v, transition_dim=4, q_offset=slot, key_start=key_start,
                                                 prefix=prefix), want)


@needs_c
@pytest.mark.parametrize("G, n, blocks, S, own, D", PREFIX_SHAPES)
def test_compiled_decode_attention_writes_every_output(G, n, blocks, S, own, D):
    q, k, v, prefix, key_start, slot = prefix_problem(G, n, blocks, S, own, D, H=3, T=5, padded=bool(S), seed=D)
    out = torch.full((len(q), 3, D), float("nan"))  # poisoned: an unwritten element fails
    pk, pv = (prefix.k, prefix.v) if prefix is not None else (None, None)
    torch.ops.tt.decode_attention(q[:, :, 0], k, v, pk, pv, n, None, slot, 5, key_start, out)
    want = reference.attention(q, k, v, transition_dim=5, q_offset=slot, key_start=key_start, prefix=prefix)
    torch.testing.assert_close(out, want[:, :, 0], atol=2e-6, rtol=2e-6)


@needs_c
def test_compiled_decode_attention_extreme_scores_and_ties():
    """Huge logits (one key takes all the mass), equal keys (exact ties) and -inf-free underflow."""
    q, k, v, prefix, _, slot = prefix_problem(2, 3, 1, 8, 6, 16, seed=3)
    k[0, 0, 2] = q[0, 0, 0] * 1e3  # one dominant key
    k[1] = k[1, :, :1]  # all of row 1's own keys equal
    prefix.k[1].mul_(50.0)
    out = torch.empty(len(q), 2, 16)
    torch.ops.tt.decode_attention(q[:, :, 0], k, v, prefix.k, prefix.v, 3, None, slot, 4, None, out)
    want = reference.attention(q.double(), k.double(), v.double(), transition_dim=4, q_offset=slot,
                               prefix=SharedPrefix(prefix.k.double(), prefix.v.double(), 3))
    assert out.isfinite().all()
    torch.testing.assert_close(out.double(), want[:, :, 0], atol=1e-5, rtol=1e-5)


@needs_c
def test_compiled_decode_attention_checks_its_arguments():
    q, k, v, prefix, _, slot = prefix_problem(2, 3, 1, 8, 6, 16)
    out = torch.empty(6, 2, 16)
    op = torch.ops.tt.decode_attention
    with pytest.raises(RuntimeError, match="q must be"):
        op(q, k, v, prefix.k, prefix.v, 3, None, slot, 4, None, out)
    with pytest.raises(RuntimeError, match="not whole blocks"):
        op(q[:, :, 0], k, v, prefix.k, prefix.v, 4, None, slot, 4, None, out)
    with pytest.raises(RuntimeError, match="query slot"):
        op(q[:, :, 0], k, v, prefix.k, prefix.v, 3, None, slot + 1, 4, None, out)
    with pytest.raises(RuntimeError, match="dtype of q"):
        op(q[:, :, 0], k.double(), v.double(), prefix.k, prefix.v, 3, None, slot, 4, None, out)
    with pytest.raises(RuntimeError, match="both prefix_k and prefix_v"):
        op(q[:, :, 0], k, v, prefix.k, None, 3, None, slot, 4, None, out)
    with pytest.raises(RuntimeError, match="key_start must be"):
        op(q[:, :, 0], k, v, prefix.k, prefix.v, 3, None, slot, 4, torch.zeros(6, dtype=torch.int32), out)
    with pytest.raises(RuntimeError, match="out must have shape"):
        op(q[:, :, 0], k, v, prefix.k, prefix.v, 3, None, slot, 4, None, out[:5])


def test_attention_refuses_a_bad_prefix():
    q, k, v, prefix, _, slot = prefix_problem(2, 3, 1, 8, 6, 16)
    with pytest.raises(ValueError, match="whole blocks"):
        ops.attention(q[:5], k[:5], v[:5], transition_dim=4, q_offset=slot, prefix=prefix)
    with pytest.raises(ValueError, match="whole transitions"):
        ops.attention(q, k, v, transition_dim=3, q_offset=slot, prefix=prefix)
    with pytest.raises(ValueError, match="no dropout"):
        ops.attention(q, k, v, transition_dim=4, q_offset=slot, prefix=prefix, dropout_p=0.1)


def test_attention_refuses_bad_key_starts():
    q, k, v, _, _, slot = prefix_problem(1, 4, 1, 8, 6, 16)
    for bad in (torch.zeros(3, dtype=torch.long), torch.zeros(4), torch.zeros(4, dtype=torch.bool),
                torch.zeros(4, dtype=torch.long, device="meta")):
        with pytest.raises(ValueError, match="key_start must be integers"):
            ops.attention(q, k, v, transition_dim=4, q_offset=4, key_start=bad)
    with pytest.raises(ValueError, match="one device"):
        ops.attention(q, k.to("meta"), v, transition_dim=4, q_offset=4)


def test_cache_shared_prefix_is_read_not_written():
    cache = KVCache.empty(1, 4, 1, 10, 2)
    cache.share(4, groups=2, group_rows=2)
    with pytest.raises(ValueError, match="shared prefix"):
        cache.write(0, 3, torch.zeros(2, 4, 1, 1, 2))
    k, _ = cache.write(0, 4, torch.ones(2, 4, 1, 2, 2))
    assert k.shape == (4, 1, 2, 2) and cache.prefix(0).k.shape == (2, 1, 4, 2)
    cache.share(0)
    assert cache.prefix(0) is None and cache.write(0, 0, torch.stack([k, k]))[0].shape == (4, 1, 2, 2)


def test_backends_report_and_reference_override(monkeypatch):
    report = ops.backends()
    assert set(report) == {"attention", "sample_next", "beam_select", "beam_expand", "log_probs",
                           "decode_attention", "decode_layers"}
    assert report["decode_attention"]["cpu"] == ("C++" if HAS_C else "reference")
    assert report["sample_next"]["cpu"] == ("C++" if HAS_C else "reference")
    ops.use(backend="reference")
    assert ops.backends()["sample_next"]["cpu"] == "reference"
    assert reference.filter_top_k(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 1).isfinite().sum() == 2  # ties kept


@pytest.mark.skipif(os.environ.get("TT_REQUIRE_CUDA") != "1", reason="only where the CUDA build is required (CI)")
def test_cuda_kernels_are_built_and_registered():
    """CI has no GPU but compiles the CUDA sources: their kernels must be registered."""
    assert HAS_C
    for op in ("sample_next", "beam_select", "beam_expand", "philox_uniform"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tt::{op}", "CUDA"), op


def test_resolve_device_names_what_is_missing():
    from tt.device import resolve_device

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'cuda:99' asked for, but this machine has"):
        resolve_device("cuda:99")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@needs_c
def test_a_library_built_from_other_sources_is_detected():
    """tt._C from older sources (an op missing, or other arguments) is named, so `_compiled_library`
    falls back to the reference ops with a warning instead of failing inside a call."""
    assert ops.stale_ops() == []

    def old_decode_attention(q, k, v, prefix_k, prefix_v, group_rows, q_slot, transition_dim, key_start, out):
        return None

    problems = ops.stale_ops({"decode_attention": old_decode_attention, "not_an_op": old_decode_attention})
    assert len(problems) == 2
    assert problems[0].startswith("tt::decode_attention takes (q, k, v, prefix_k, prefix_v, group_rows, prefix_rows")
    assert problems[1] == "tt::not_an_op is missing"
