"""A shared prefix read through a row table (`KVCache.share(..., rows=)`, `SharedPrefix.rows`): row r
reads prefix slots [0, S) from prefix row `rows[r]`, on every backend that reads a prefix, against
an explicit gather of the prefix rows followed by plain attention (the likelihood search's
per-token re-ranking moves only a table, never the windows)."""

import pytest
import torch

from tt import ops, reference
from tt.cache import KVCache, SharedPrefix
from tt.model import GPTConfig, TrajectoryTransformer

HAS_C = ops.compiled_library()
needs_c = pytest.mark.skipif(not HAS_C, reason="tt._C is not built")
needs_triton = pytest.mark.skipif(ops.dispatch.triton_attention() is None, reason="Triton is not importable")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on CPU the Triton kernels run interpreted
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}  # max abs error of attention outputs, unit-scale inputs

# (rows R, prefix rows G, kind of table): repeats (several rows read one prefix, some none),
# a permutation of R prefixes, one row, every row one prefix
TABLES = [(7, 4, "repeats"), (5, 5, "permutation"), (1, 3, "repeats"), (6, 2, "same")]


def table(R: int, G: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "permutation":
        return torch.randperm(G, generator=generator)[:R]
    if kind == "same":
        return torch.full((R,), G - 1, dtype=torch.long)
    rows = torch.randint(0, G, (R,), generator=generator)
    rows[0] = rows[-1]  # at least one repeat where R > 1
    return rows


def problem(R, G, kind, S, own, D, H=2, T=4, Lq=1, padded=False, dtype=torch.float32, device="cpu", seed=0):
    """Queries `[R, H, Lq, D]` at the last Lq of slots [0, S + own), the prefixes and the rows' own
    keys as strided views of one cache-shaped tensor, a row table and (padded) left padding per row
    by whole transitions, up to all of the prefix."""
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, max(R, G) + 1, H, S + own + 3, D, generator=g)
    q = torch.randn(R, H, Lq, D, generator=g)
    rows = table(R, G, kind, g)
    key_start = (torch.randint(0, S // T + 1, (R,), generator=g) * T) if padded else None
    cache, q = cache.to(device, dtype), q.to(device, dtype)
    k, v = cache[0, :R, :, S : S + own], cache[1, :R, :, S : S + own]
    prefix = SharedPrefix(cache[0, :G, :, :S], cache[1, :G, :, :S], 1, rows.to(device))
    return q, k, v, prefix, None if key_start is None else key_start.to(device), S + own - Lq


def explicit(q, k, v, prefix, key_start, q_offset, T):
    """The oracle: each row's prefix gathered by hand from the table, then plain attention (float64)."""
    rows = prefix.rows.cpu()
    whole = [torch.cat([p.cpu().double()[rows], t.cpu().double()], 2) for p, t in ((prefix.k, k), (prefix.v, v))]
    start = None if key_start is None else key_start.cpu()
    return reference.attention(q.cpu().double(), *whole, transition_dim=T, q_offset=q_offset, key_start=start)


# ----------------------------------------------------------------------------- the cache and the reference


def test_share_keeps_the_table_and_prefix_passes_it():
    cache = KVCache.empty(2, 6, 1, 10, 4)
    rows = torch.tensor([2, 0, 2, 1])
    cache.share(4, groups=3, rows=rows)
    prefix = cache.prefix(1)
    assert prefix.rows is rows and prefix.k.shape == (3, 1, 4, 4)
    assert torch.equal(prefix.groups_of(4), rows)
    cache.share(4, groups=3, group_rows=2)
    assert cache.prefix(0).rows is None and cache.prefix(0).groups_of(6).tolist() == [0, 0, 1, 1, 2, 2]
    cache.share(4, groups=3, rows=rows)
    cache.share(0)
    assert cache.prefix_rows is None and cache.prefix(0) is None


@pytest.mark.parametrize("bad, why", [(torch.tensor([0, 1], dtype=torch.int32), "int32"),
                                      (torch.zeros(2, 2, dtype=torch.long), "2-D"),
                                      (torch.zeros(2, dtype=torch.long, device="meta"), "another device"),
                                      (torch.zeros(7, dtype=torch.long), "more rows than the cache"),
                                      ([0, 1], "a list")])
def test_share_refuses_a_bad_table(bad, why):
    with pytest.raises(ValueError, match="rows must be an int64"):
        KVCache.empty(1, 6, 1, 10, 4).share(4, groups=2, rows=bad)


@pytest.mark.parametrize("R, G, kind", TABLES)
@pytest.mark.parametrize("Lq", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_reference_attention_reads_the_table_rows(R, G, kind, Lq, padded):
    """`SharedPrefix.expand` (the reference path) is the explicit gather, bit for bit."""
    q, k, v, prefix, key_start, q_offset = problem(R, G, kind, 8, 5, 16, Lq=Lq, padded=padded, seed=R + Lq)
    got = reference.attention(q.double(), k.double(), v.double(), transition_dim=4, q_offset=q_offset,
                              key_start=key_start,
                              prefix=SharedPrefix(prefix.k.double(), prefix.v.double(), 1, prefix.rows))
    assert torch.equal(got, explicit(q, k, v, prefix, key_start, q_offset, 4))


def test_groups_of_checks_the_table_length():
    prefix = SharedPrefix(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), 1, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="row table is"):
        prefix.groups_of(4)


def test_attention_checks_the_table():
    q, k, v, prefix, _, q_offset = problem(5, 3, "repeats", 8, 5, 16)
    for bad in (prefix.rows[:4], prefix.rows.int(), prefix.rows.to("meta"), prefix.rows[None]):
        bad_prefix = SharedPrefix(prefix.k, prefix.v, 1, bad)
        with pytest.raises(ValueError, match="shared prefix's rows must be int64"):
            ops.attention(q, k, v, transition_dim=4, q_offset=q_offset, prefix=bad_prefix)
    # with a table the rows need not be whole blocks of the groups (5 rows, 3 prefixes)
    assert ops.attention(q, k, v, transition_dim=4, q_offset=q_offset, prefix=prefix).shape == q.shape


# ----------------------------------------------------------------------------- materialize and gather


@pytest.mark.parametrize("with_table", [True, False])
def test_materialize_prefix_copies_each_rows_prefix_into_its_own_slots(with_table):
    g = torch.Generator().manual_seed(3)
    cache = KVCache(torch.randn(2, 2, 6, 2, 9, 3, generator=g))
    before = cache.kv.clone()
    rows = torch.tensor([2, 0, 1, 2, 2])  # prefix rows 0..2 read each other's prefixes: a cycle
    if with_table:
        cache.share(4, groups=3, rows=rows)
    else:
        cache.share(4, groups=2, group_rows=2)
        rows = torch.tensor([0, 0, 1, 1, 0])
    cache.materialize_prefix(5)
    assert cache.shared == 0 and cache.prefix_rows is None and cache.prefix(0) is None
    assert torch.equal(cache.kv[:, :, :5, :, :4], before[:, :, rows, :, :4])
    assert torch.equal(cache.kv[:, :, :, :, 4:], before[:, :, :, :, 4:])  # own slots untouched
    assert torch.equal(cache.kv[:, :, 5:], before[:, :, 5:])  # rows past the ones asked for untouched


def test_materialize_prefix_without_a_prefix_does_nothing():
    cache = KVCache(torch.randn(2, 1, 3, 1, 4, 2))
    before = cache.kv.clone()
    cache.materialize_prefix(3)
    assert torch.equal(cache.kv, before) and cache.shared == 0


def test_gather_rows_moves_only_the_own_slots_under_a_table():
    """The planner's token step: survivors' own slots [S, filled) move, the windows stay; then
    the table names each survivor's window."""
    g = torch.Generator().manual_seed(4)
    cache = KVCache(torch.randn(2, 1, 4, 1, 8, 2, generator=g))
    before = cache.kv.clone()
    cache.share(4, groups=4, rows=torch.arange(4))
    src = torch.tensor([3, 3, 0, 1])
    cache.gather_rows(src, 7)
    cache.share(4, groups=4, rows=src)
    assert torch.equal(cache.kv[..., :4, :], before[..., :4, :])
    assert torch.equal(cache.kv[:, :, :, :, 4:7], before[:, :, src, :, 4:7])
    assert torch.equal(cache.kv[..., 7:, :], before[..., 7:, :])
    whole = cache.prefix(0).expand(4, cache.k[0, :, :, 4:7], cache.v[0, :, :, 4:7])[0]
    assert torch.equal(whole, before[0, 0, src, :, :7])  # each survivor's whole history


# ----------------------------------------------------------------------------- the compiled op


@needs_c
@pytest.mark.parametrize("R, G, kind", TABLES)
@pytest.mark.parametrize("S, own, D", [(8, 5, 16), (12, 1, 33), (40, 7, 32), (4, 3, 64)])
@pytest.mark.parametrize("padded", [False, True])
def test_compiled_decode_attention_reads_the_table_rows(R, G, kind, S, own, D, padded):
    q, k, v, prefix, key_start, slot = problem(R, G, kind, S, own, D, H=3, padded=padded, seed=D + R)
    out = torch.full((R, 3, D), float("nan"))  # poisoned: an unwritten element fails
    torch.ops.tt.decode_attention(q[:, :, 0], k, v, prefix.k, prefix.v, 1, prefix.rows, slot, 4, key_start, out)
    want = explicit(q, k, v, prefix, key_start, slot, 4)[:, :, 0]
    torch.testing.assert_close(out.double(), want, atol=2e-6, rtol=2e-6)


@needs_c
def test_compiled_decode_attention_checks_the_table():
    q, k, v, prefix, _, slot = problem(5, 3, "repeats", 8, 5, 16)
    out = torch.empty(5, 2, 16)
    op = torch.ops.tt.decode_attention
    for bad in (prefix.rows.int(), prefix.rows[:4], torch.stack([prefix.rows, prefix.rows], 1)[:, 0]):
        with pytest.raises(RuntimeError, match="prefix_rows must be a contiguous int64"):
            op(q[:, :, 0], k, v, prefix.k, prefix.v, 1, bad, slot, 4, None, out)
    with pytest.raises(RuntimeError, match="prefix_rows given without a prefix"):
        op(q[:, :, 0], k[:, :, :1], v[:, :, :1], None, None, 1, prefix.rows, 0, 4, None, out)
    with pytest.raises(RuntimeError, match="not whole blocks"):  # without the table: 5 rows, 3 groups
        op(q[:, :, 0], k, v, prefix.k, prefix.v, 1, None, slot, 4, None, out)


@needs_c
def test_compiled_decode_layers_checks_the_table():
    model = TrajectoryTransformer(GPTConfig(2, 1, n_bins=7, n_transitions=5, n_layer=2, n_head=2, n_embd=16)).eval()
    cache = model.setup_cache(4, 20)
    x, weights, rows = torch.zeros(4, 16), model.block_weights(), torch.tensor([1, 0, 1, 1])
    op = torch.ops.tt.decode_layers
    with pytest.raises(RuntimeError, match="prefix_rows must be a contiguous int64"):
        op(x, weights, cache.k, cache.v, 2, 6, 5, 2, 1, rows.int(), 5, None)
    with pytest.raises(RuntimeError, match="prefix_rows must be a contiguous int64"):
        op(x, weights, cache.k, cache.v, 2, 6, 5, 2, 1, rows[:3], 5, None)
    with pytest.raises(RuntimeError, match="without a shared prefix"):
        op(x, weights, cache.k, cache.v, 2, 6, 0, 2, 1, rows, 5, None)


# ----------------------------------------------------------------------------- ops.attention on every backend

ATTENTION_BACKENDS = {  # the choices (ops.use) of each path of ops.attention with a prefix
    "native": {},  # on CPU: the C++ op for one query per row, else the cascade's fallback (expand)
    "triton": {"attention": "triton"},  # one query per row: the fused kernel; several: expand
    "reference": {"backend": "reference"},
}


@pytest.mark.parametrize("backend", list(ATTENTION_BACKENDS))
@pytest.mark.parametrize("R, G, kind", TABLES)
@pytest.mark.parametrize("Lq", [1, 3, ops.LOOPED_QUERIES + 1])  # the compiled kernel runs a query at a time up to 16
@pytest.mark.parametrize("S", [12, 10])  # read through a table, a prefix may end inside a transition (T=4)
@pytest.mark.parametrize("padded", [False, True])
def test_attention_with_a_table_matches_the_explicit_gather(monkeypatch, backend, R, G, kind, Lq, S, padded):
    if backend == "triton" and ops.dispatch.triton_attention() is None:
        pytest.skip("Triton is not importable")
    ops.use(**ATTENTION_BACKENDS[backend])
    device = DEVICE if backend == "triton" else "cpu"
    q, k, v, prefix, key_start, q_offset = problem(R, G, kind, S, max(6, Lq), 16, T=4, Lq=Lq, padded=padded,
                                                   device=device, seed=R * 10 + Lq + S)
    out = ops.attention(q, k, v, transition_dim=4, q_offset=q_offset, key_start=key_start, prefix=prefix)
    torch.testing.assert_close(out.cpu().double(), explicit(q, k, v, prefix, key_start, q_offset, 4),
                               atol=TOL[torch.float32], rtol=0)


@pytest.mark.parametrize("R, G, kind", TABLES)
@pytest.mark.parametrize("Lq", [1, 4])
def test_cascade_with_a_table_matches_the_explicit_gather(R, G, kind, Lq):
    """`_attention_after_prefix` with a table (several queries per row: whole windows gathered)."""
    q, k, v, prefix, key_start, q_offset = problem(R, G, kind, 8, 6, 8, T=4, Lq=Lq, padded=True, seed=R + 5 * Lq)
    out = ops.cascade.attention_after_prefix(q, k, v, prefix, 4, q_offset, key_start)
    torch.testing.assert_close(out.double(), explicit(q, k, v, prefix, key_start, q_offset, 4), atol=2e-6, rtol=0)


@needs_triton
@pytest.mark.parametrize("R, G, kind", TABLES + [(37, 21, "repeats")])  # 37 rows: tiles of 16 and a rest
@pytest.mark.parametrize("S, own, D", [(8, 3, 16), (12, 1, 24), (40, 5, 64)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_decode_after_prefix_reads_the_table_rows(R, G, kind, S, own, D, padded, dtype):
    """The fused one-query kernel with a table: cache-shaped strided inputs, a poisoned output."""
    from tt.kernels import attention as kernels

    q, k, v, prefix, key_start, slot = problem(R, G, kind, S, own, D, padded=padded, dtype=dtype, device=DEVICE,
                                               seed=S + D)
    out = torch.full((R, 2, 1, D), float("nan"), dtype=dtype, device=DEVICE)
    kernels.decode_after_prefix(q, k, v, prefix.k, prefix.v, 1, 4, slot, key_start, out=out, prefix_rows=prefix.rows)
    want = explicit(q, k, v, prefix, key_start, slot, 4)
    torch.testing.assert_close(out.cpu().double(), want, atol=TOL[dtype], rtol=0)


# ----------------------------------------------------------------------------- the model's decode step

DECODE_BACKENDS = {  # the choices (ops.use) of each way a decode step runs its blocks
    "C++ fused": {},
    "C++ blocks": {"decode": "blocks"},
    "Triton fused": {"attention": "triton"},
    "Triton blocks": {"attention": "triton", "decode": "blocks"},
}
MODEL = dict(observation_dim=2, action_dim=1, n_bins=7, n_transitions=5, n_layer=2, n_head=2, n_embd=16)  # T = 5


def decode_after_windows(model, R, G, rows, key_start, S, own, gather: bool):
    """Prefill G windows of S tokens (rows 0..G-1), run each row's `own` tokens and one decode step
    after the window that `rows` names: through the table, or (gather) with the windows gathered
    into each row by hand and nothing shared. The cache is poisoned with NaN first: whatever is read
    must have been written. Returns the step's logits and the K/V of every row's own slots."""
    device = model.tok_emb.weight.device
    g = torch.Generator().manual_seed(R + G)
    windows = torch.randint(0, 7, (G, S), generator=g).to(device)
    own_tokens = torch.randint(0, 7, (R, own), generator=g).to(device)
    token = torch.randint(0, 7, (R,), generator=g).to(device)
    cache = model.setup_cache(max(R, G) + 1, S + own + 1)
    cache.kv.fill_(float("nan"))
    with torch.no_grad():
        model.prefill(windows, cache)
        if gather:
            cache.kv[:, :, :R, :, :S] = cache.kv[:, :, rows.cpu(), :, :S].clone()
        else:
            cache.share(S, groups=G, rows=rows)
        model.step(own_tokens, cache, S, key_start)  # several queries per row: the cascade's paths
        logits = model.decode(token, cache, S + own, key_start)
    return logits, cache.kv[:, :, :R, :, S : S + own + 1].clone()


@pytest.mark.parametrize("backend", list(DECODE_BACKENDS))
@pytest.mark.parametrize("R, G, kind", TABLES)
@pytest.mark.parametrize("padded", [False, True])
def test_model_decode_through_a_table_matches_gathered_windows(monkeypatch, backend, R, G, kind, padded):
    """`model.decode` after `cache.share(S, groups=G, rows=table)` on each decode backend against
    the reference path on windows gathered by hand, logits and K/V."""
    if backend.startswith("C++") and (not HAS_C or DEVICE != "cpu"):
        pytest.skip("the C++ decode ops run on CPU tensors (tt._C built)")
    if backend.startswith("Triton") and ops.dispatch.triton_attention() is None:
        pytest.skip("Triton is not importable")
    torch.manual_seed(R + G)
    model = TrajectoryTransformer(GPTConfig(**MODEL)).eval().to(DEVICE)
    with torch.no_grad():  # larger than init so that attention patterns and LayerNorms matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    S, own, T = 10, 3, model.transition_dim
    g = torch.Generator().manual_seed(7)
    rows = table(R, G, kind, g).to(DEVICE)
    key_start = (torch.randint(0, S // T + 1, (R,), generator=g) * T).to(DEVICE) if padded else None
    ops.use(backend="reference")
    want_logits, want_kv = decode_after_windows(model, R, G, rows, key_start, S, own, gather=True)
    ops.use(backend="auto")
    ops.use(**DECODE_BACKENDS[backend])
    expected = {"C++ fused": "C++", "Triton fused": "Triton"}.get(backend, "Python blocks")
    assert ops.backends()["decode_layers"][DEVICE] == expected
    logits, kv = decode_after_windows(model, R, G, rows, key_start, S, own, gather=False)
    assert logits.isfinite().all() and kv.isfinite().all()
    torch.testing.assert_close(logits, want_logits, atol=2e-4, rtol=0)
    torch.testing.assert_close(kv, want_kv, atol=2e-5, rtol=0)


@needs_c
@pytest.mark.skipif(DEVICE != "cpu", reason="the C++ decode ops run on CPU tensors")
def test_fused_decode_through_a_table_matches_the_python_blocks(monkeypatch):
    """tt::decode_layers with a table runs the Python blocks' attention kernel and GEMMs (its own
    layer norm and GELU): their logits and K/V to float rounding."""
    torch.manual_seed(0)
    model = TrajectoryTransformer(GPTConfig(**MODEL)).eval()
    rows = torch.tensor([3, 0, 3, 3, 1, 2, 0])
    key_start = torch.tensor([5, 0, 0, 10, 5, 0, 5])
    out = {}
    for fused in (True, False):
        ops.use(decode="fused" if fused else "blocks")
        out[fused] = decode_after_windows(model, 7, 4, rows, key_start, 10, 3, gather=False)
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_C and ops.dispatch.triton_attention() is None, reason="no fused decode backend")
def test_materialized_windows_decode_as_the_table_does():
    """`materialize_prefix` then a step with nothing shared equals the step through the table."""
    torch.manual_seed(1)
    model = TrajectoryTransformer(GPTConfig(**MODEL)).eval().to(DEVICE)
    rows = torch.tensor([2, 2, 0, 1, 2], device=DEVICE)
    token = torch.tensor([1, 4, 6, 0, 3], device=DEVICE)
    out = []
    for materialize in (False, True):
        cache = model.setup_cache(6, 16)
        cache.kv.fill_(float("nan"))
        with torch.no_grad():
            model.prefill(torch.randint(0, 7, (3, 10), generator=torch.Generator().manual_seed(2)).to(DEVICE), cache)
            cache.share(10, groups=3, rows=rows)
            model.step(torch.full((5, 2), 3, device=DEVICE), cache, 10)
            if materialize:
                cache.materialize_prefix(5)
            out.append(model.decode(token, cache, 12))
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=0)
