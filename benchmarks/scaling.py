"""Plan time against horizon, beam width, context and number of environments, fast planner
(exact and cached) against the reference (the authors' algorithm), at Hopper shapes with random
weights. Writes benchmarks/scaling.json and benchmarks/scaling.png.

    python benchmarks/scaling.py [--device cuda] [--quick]

The reference is measured where it takes seconds, not minutes; the horizon sweep checks that
the fast planner's cost grows linearly with the horizon (least-squares fit and its R^2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HERE, commit, hopper, machine  # noqa: E402

from tt import reference  # noqa: E402
from tt.config import PlanConfig  # noqa: E402
from tt.io import atomic_write, write_json  # noqa: E402
from tt.rng import Philox  # noqa: E402
from tt.search import beam_plan, pad_prefixes  # noqa: E402


def seconds(fn, device: str, repeats: int) -> float:
    """Median wall time of fn over `repeats` runs after one warm-up."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer points and repeats (a check, not a record)")
    parser.add_argument("--out", default=HERE)
    args = parser.parse_args()
    model, disc, prefixes = hopper(args.device, plans=8)
    T = model.transition_dim
    mids = torch.tensor(disc.midpoints, device=args.device)
    repeats = 1 if args.quick else 3
    cache = model.setup_cache(2 * 128 * 8, model.config.block_size)

    def prefix_length(cfg):  # as many context transitions as the planner keeps
        return cfg.get("max_context_transitions", 5) * T + model.config.observation_dim

    def fast(window, rows=1, **cfg):
        config = PlanConfig(window=window, **cfg)
        prefix = pad_prefixes([p[: prefix_length(cfg)] for p in prefixes[:rows]], T)
        return lambda: beam_plan(model, prefix, disc, config, Philox(0, args.device), cache)

    def ref(**cfg):
        config, prefix = PlanConfig(**cfg), prefixes[0][: prefix_length(cfg)]
        return lambda: reference.beam_plan(model, prefix, mids, config, Philox(0, args.device))

    sweeps = {
        "horizon": dict(values=[1, 2, 4, 8, 15] if not args.quick else [1, 4], base=dict(beam_width=32),
                        key="horizon", ref_upto=4),
        "beam_width": dict(values=[8, 16, 32, 64, 128] if not args.quick else [8, 32], base=dict(horizon=5),
                           key="beam_width", ref_upto=32),
        "context": dict(values=[2, 3, 4, 5], base=dict(beam_width=32, horizon=5), key="max_context_transitions",
                        ref_upto=5 if not args.quick else 2),
    }
    results = {"machine": machine(), "commit": commit(), "device": args.device, "sweeps": {}}
    for name, sweep in sweeps.items():
        rows = []
        for value in sweep["values"]:
            cfg = {**sweep["base"], sweep["key"]: value}
            row = {name: value, "exact": seconds(fast("exact", **cfg), args.device, repeats),
                   "cached": seconds(fast("cached", **cfg), args.device, repeats)}
            if value <= sweep["ref_upto"]:
                row["reference"] = seconds(ref(**cfg), args.device, 1)
            rows.append(row)
            print(name, row, flush=True)
        results["sweeps"][name] = rows
    rows = []
    single = fast("exact", rows=1, beam_width=32, horizon=5)
    for n in [1, 2, 4, 8] if not args.quick else [1, 4]:
        batched = seconds(fast("exact", rows=n, beam_width=32, horizon=5), args.device, repeats)
        one_by_one = seconds(lambda n=n: [single() for _ in range(n)], args.device, repeats)
        rows.append({"envs": n, "exact batched": batched, "exact one by one": one_by_one})
        print("envs", rows[-1], flush=True)
    results["sweeps"]["envs"] = rows
    horizon = results["sweeps"]["horizon"]
    for window in ("exact", "cached"):
        x = np.array([r["horizon"] for r in horizon], dtype=float)
        y = np.array([r[window] for r in horizon])
        slope, intercept = np.polyfit(x, y, 1)
        r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30)
        results[f"{window}_linear_in_horizon"] = {"seconds_per_step": slope, "intercept": intercept, "r2": r2}
        print(f"{window}: {slope * 1e3:.1f} ms per planned transition + {intercept * 1e3:.1f} ms, R^2 {r2:.4f}")
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    write_json(os.path.join(args.out, f"scaling{suffix}.json"), results)
    plot(results, os.path.join(args.out, f"scaling{suffix}.png"))


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, name in zip(axes, ("horizon", "beam_width", "context", "envs")):
        rows = results["sweeps"][name]
        x_key = name
        for series in sorted({k for r in rows for k in r} - {x_key}):
            points = [(r[x_key], r[series]) for r in rows if series in r]
            ax.plot(*zip(*points), "o-", label=series)
        ax.set_xlabel({"beam_width": "beam width", "envs": "environments (plans at once)"}.get(name, name))
        ax.set_ylabel("seconds per plan")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"plan time, Hopper shapes, {results['device']} ({results['machine']}, {results['commit']})",
                 fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
