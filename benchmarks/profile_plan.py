"""Where a plan's time goes: one plan at Hopper shapes (random weights, as the suite) under the
torch profiler, operators (and on CUDA their kernels) by total time, and how many kernels one
plan launches: on a GPU the decode loop is bound by launches, so that count is the number to cut.

    python benchmarks/profile_plan.py [--device cuda] [--window cached] [--beam 128] [--horizon 15]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import commit, hopper, machine  # noqa: E402
from scaling import seconds  # noqa: E402

from tt.config import PlanConfig  # noqa: E402
from tt.rng import Philox  # noqa: E402
from tt.search import beam_plan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--window", default="exact", choices=["exact", "cached"])
    parser.add_argument("--beam", type=int, default=128)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    args = parser.parse_args()

    model, discretizer, prefixes = hopper(args.device)
    config = PlanConfig(horizon=args.horizon, beam_width=args.beam, window=args.window)
    cache = model.setup_cache(config.n_expand * args.beam, model.config.block_size)
    plan = lambda: beam_plan(model, prefixes[0][None], discretizer, config, Philox(0, args.device), cache)
    wall = seconds(plan, args.device, repeats=3)
    cuda = args.device == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        plan()
        if cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time_total for e in kernels) / 1e3
        count = f"{len(kernels)} kernels, {busy:.1f} ms of GPU time"
    else:
        count = f"{sum(e.count for e in averages if e.key.startswith('aten::'))} aten operator calls"
    print(f"# plan {args.device} {args.window} beam {args.beam} horizon {args.horizon}: {wall * 1e3:.1f} ms "
          f"(median of 3, unprofiled); one profiled plan: {count}")
    print(f"# {machine()}, commit {commit()}")
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
