"""Each compiled op against its chain of PyTorch ops (tt.reference), at planner shapes:
256 rows (beam 128 x expansion 2) of 101 logits, top-128 of 256 candidates per plan, and the CPU
decode attention of a cached plan at beam 32."""

import pytest
import torch
from common import DEVICES, SMALL, record

from tt import ops, reference
from tt.cache import SharedPrefix
from tt.rng import Philox

ROWS = 32 if SMALL else 256


def timed(fn, device):
    if device == "cuda":
        return lambda: (fn(), torch.cuda.synchronize())
    return fn


@pytest.fixture(autouse=True)
def require_compiled():
    if not ops.compiled_library():
        pytest.skip("tt._C is not built")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("filters", ["cdf 0.6", "top-1"])
@pytest.mark.parametrize("impl", ["reference", "compiled"])
def test_sample_next(benchmark, timings, device, filters, impl):
    logits = torch.randn(ROWS, 101, generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = dict(cdf=0.6) if filters == "cdf 0.6" else dict(top_k=1)
    mids = torch.linspace(0, 1, 100, device=device)
    rng = Philox(0, device)
    if impl == "reference":
        fn = lambda: reference.sample_next(logits, midpoints=mids, rng=rng, **kwargs)
    else:
        fn = lambda: ops.sample_next(logits, midpoints=mids, rng=rng, **kwargs)
    benchmark.group = f"sample_next {device} {ROWS}x101 {filters}"
    benchmark(timed(fn, device))
    record(benchmark, timings, benchmark.group, impl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("plans", [1, 8])
@pytest.mark.parametrize("impl", ["reference", "compiled"])
def test_beam_select(benchmark, timings, device, plans, impl):
    W, E = (16, 2) if SMALL else (128, 2)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(plans, E * W, generator=g).to(device)
    terms = torch.randn(plans * E * W, 16, generator=g).to(device)
    tokens = torch.randint(0, 100, (plans * E * W, 5), generator=g).to(device)
    impl_fn = reference.beam_select if impl == "reference" else ops.beam_select
    benchmark.group = f"beam_select {device} {plans}x{E * W} top-{W}"
    benchmark(timed(lambda: impl_fn(scores, W, W, terms, tokens), device))
    record(benchmark, timings, benchmark.group, impl)


@pytest.mark.skipif("cpu" not in DEVICES, reason="a CPU op")
@pytest.mark.parametrize("own", [12, 76])
@pytest.mark.parametrize("impl", ["reference", "compiled whole", "compiled prefix"])
def test_decode_attention(benchmark, timings, own, impl):
    """One query per row against its window, at a cached plan's shapes (64 rows = beam 32 x 2
    copies, 4 heads of 32, an 80-slot context every row shares, `own` slots of its own): SDPA with
    the TT mask over whole windows (the reference), tt::decode_attention over whole windows, and
    tt::decode_attention reading the shared context once per group."""
    rows, S = (8, 16) if SMALL else (64, 80)
    own = min(own, 8) if SMALL else own
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(2, rows, 4, S + own, 32, generator=g)
    cache[:, :, :, :S] = cache[:, :1, :, :S].clone()  # the same context in every row, as in a plan
    q = torch.randn(rows, 4, 1, 32, generator=g)
    k, v, slot = cache[0], cache[1], S + own - 1
    moved = 4 * rows * 4 * 32 * (2 * (S + own) + 2)  # float32 queries, keys, values and outputs read once
    if impl == "reference":
        fn = lambda: reference.attention(q, k, v, transition_dim=16, q_offset=slot)
    elif impl == "compiled whole":
        fn = lambda: ops.attention(q, k, v, transition_dim=16, q_offset=slot)
    else:
        prefix = SharedPrefix(k[:1, :, :S], v[:1, :, :S], rows)
        fn = lambda: ops.attention(q, k[:, :, S:], v[:, :, S:], transition_dim=16, q_offset=slot, prefix=prefix)
        moved = 4 * 4 * 32 * (2 * S + rows * (2 * own + 2))
    benchmark.group = f"decode attention cpu {rows} rows {S}+{own} slots"
    benchmark(fn)
    record(benchmark, timings, benchmark.group, impl, bytes_moved=moved)
