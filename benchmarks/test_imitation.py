"""One likelihood plan (imitation) at Hopper shapes (obs 11, act 3, the published model with random
weights): the authors' `beam_search` (tt.reference.likelihood_plan, a full forward of the cropped
window per token and beam) against the fast search, exact and cached windows, and on CUDA also
replayed as a CUDA graph. Beam 64, horizon 5, context 5 (TT_BENCH_SIZE=small: beam 8, horizon 2)."""

import pytest
import torch
from common import DEVICES, SMALL, hopper, record, time_graph_plans

from tt import reference
from tt.config import PlanConfig
from tt.search import beam_plan

BEAM, HORIZON = (8, 2) if SMALL else (64, 5)


@pytest.fixture(scope="module", params=DEVICES)
def hopper_plan(request):
    model, discretizer, prefixes = hopper(request.param)
    return model, discretizer, prefixes[0]


@pytest.mark.parametrize("planner", ["reference", "exact", "cached", "exact graph", "cached graph"])
def test_likelihood_plan(benchmark, timings, hopper_plan, planner):
    model, discretizer, prefix = hopper_plan
    device = prefix.device
    if "graph" in planner and device.type != "cuda":
        pytest.skip("CUDA graphs are for CUDA devices")
    config = PlanConfig(horizon=HORIZON, beam_width=BEAM, max_context_transitions=5, objective="likelihood",
                        window="cached" if "cached" in planner else "exact")
    benchmark.group = f"likelihood plan {device.type} beam {BEAM} horizon {HORIZON}"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if planner == "reference":
        run = lambda: (reference.likelihood_plan(model, prefix, config), sync())
        benchmark.pedantic(run, rounds=1 if device.type == "cpu" and not SMALL else 3, iterations=1,
                           warmup_rounds=1 if device.type == "cuda" else 0)
    elif "graph" in planner:
        time_graph_plans(benchmark, model, discretizer, config, prefix)
    else:
        cache = model.setup_cache(BEAM, model.config.block_size)
        run = lambda: (beam_plan(model, prefix[None], discretizer, config, cache=cache), sync())
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    record(benchmark, timings, benchmark.group, planner)
