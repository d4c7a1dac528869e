"""The plan groups' fast paths on two source trees (two commits), alternating, in one sitting.

    python benchmarks/compare_commits.py BEFORE_TREE AFTER_TREE [--rounds 5]

Each tree is a checkout whose `tt/` is imported (its compiled `tt/_C*.so` beside it, or a link to
one built from the same csrc/); every round times one plan per setting in a fresh process per tree,
before then after, so both meet the same machine state. Prints the median seconds per setting
and tree and their ratio (after / before: below 1 is faster). The settings are `benchmarks/test_plan.py`'s
(Hopper shapes, random weights, beam 32 / horizon 5 and beam 128 / horizon 15, exact and cached
windows) and the likelihood search of `benchmarks/test_imitation.py`'s shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = [  # (name, PlanConfig fields)
    ("return exact beam 32 h 5", dict(beam_width=32, horizon=5)),
    ("return cached beam 32 h 5", dict(beam_width=32, horizon=5, window="cached")),
    ("return exact beam 128 h 15", dict(beam_width=128, horizon=15)),
    ("return cached beam 128 h 15", dict(beam_width=128, horizon=15, window="cached")),
    ("likelihood exact beam 32 h 5", dict(beam_width=32, horizon=5, objective="likelihood")),
]

CHILD = r"""
import json, sys, time, torch
import tt
from tt.discretize import Discretizer
from tt.model import GPTConfig, TrajectoryTransformer
from tt.rng import Philox
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
config = GPTConfig(11, 3, n_layer=4, n_embd=128)
model = TrajectoryTransformer(config).eval()
T, N = config.transition_dim, config.n_bins
disc = Discretizer(torch.linspace(-1, 1, N + 1)[:, None].repeat(1, T).numpy())
prefix = torch.randint(0, N, (1, 5 * T + 11), generator=torch.Generator().manual_seed(1))
out = {}
for name, fields in json.loads(sys.argv[1]):
    cfg = tt.PlanConfig(**fields)
    tt.beam_plan(model, prefix, disc, cfg, Philox(0))  # warm-up
    start = time.perf_counter()
    tt.beam_plan(model, prefix, disc, cfg, Philox(0))
    out[name] = time.perf_counter() - start
print(json.dumps(out))
"""


def time_tree(tree: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SETTINGS), str(threads)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for r in range(args.rounds):
        for which in ("before", "after"):
            for name, seconds in time_tree(getattr(args, which), args.threads).items():
                times[which].setdefault(name, []).append(seconds)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'setting':32} {'before s':>10} {'after s':>10} {'after/before':>13}")
    for name, _ in SETTINGS:
        b, a = statistics.median(times["before"][name]), statistics.median(times["after"][name])
        print(f"{name:32} {b:10.4f} {a:10.4f} {a / b:13.3f}")


if __name__ == "__main__":
    main()
