"""Benchmark set-up: Hopper-shaped random models, and a report of ratios per group.

`TT_BENCH_SIZE=small` shrinks every benchmark so `pytest benchmarks/ --benchmark-disable`
checks they all run (CI); the default sizes are the ones of record in RESULTS.md.
"""

import json
import os

import pytest
from common import HERE, SMALL, commit, machine


@pytest.fixture(scope="session")
def timings(request):
    """Collects mean seconds per benchmark; at the end prints and writes ratios against each group's reference."""
    collected: dict[str, dict[str, float]] = {}
    yield collected
    if not collected:
        return
    report = {"machine": machine(), "commit": commit(), "small": SMALL, "groups": {}}
    lines = ["", "ratios against the reference (mean time, one run):"]
    for group, times in collected.items():
        ref = times.get("reference")
        report["groups"][group] = {"seconds": times}
        for name, seconds in times.items():
            ratio = ref / seconds if ref else float("nan")
            report["groups"][group].setdefault("speedup", {})[name] = ratio
            lines.append(f"  {group:28s} {name:12s} {seconds * 1e3:10.2f} ms   {ratio:7.2f}x")
    print("\n".join(lines))
    name = "timings-small.json" if SMALL else "timings.json"
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(report, f, indent=2)
