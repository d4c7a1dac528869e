"""Each compiled op against its chain of PyTorch ops (tt.reference), at planner shapes:
256 rows (beam 128 x expansion 2) of 101 logits, and top-128 of 256 candidates per plan."""

import pytest
import torch
from common import SMALL, record

from tt import ops, reference
from tt.rng import Philox

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROWS = 32 if SMALL else 256


def timed(fn, device):
    if device == "cuda":
        return lambda: (fn(), torch.cuda.synchronize())
    return fn


@pytest.fixture(autouse=True)
def require_compiled():
    if not ops._compiled_library():
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
