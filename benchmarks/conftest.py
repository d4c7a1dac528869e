"""Benchmark set-up: collects each benchmark's mean time and reports ratios per group.

`TT_BENCH_SIZE=small` shrinks every benchmark so `pytest benchmarks/ --benchmark-disable`
checks they all run (CI); the default sizes are the ones of record in RESULTS.md.
`TT_BENCH_DEVICES=cuda` (or `cpu`) benchmarks one kind of device only (benchmarks/gpu.sh runs the
CUDA groups first, so a GPU's minutes go to them).
"""

import pytest
from common import SMALL, Timings, commit, machine, timings_path

from tt.io import write_json

TIMINGS = pytest.StashKey[Timings]()


@pytest.fixture(scope="session")
def timings(request):
    """Mean seconds per benchmark, by group; written to `timings_path()` at the end of the session."""
    collected = request.config.stash.setdefault(TIMINGS, Timings())
    yield collected
    if collected.seconds:
        write_json(timings_path(), {"machine": machine(), "commit": commit(), "small": SMALL,
                                    "groups": ratios(collected)})


def ratios(collected: Timings) -> dict:
    out = {}
    for group, times in collected.seconds.items():
        ref = times.get("reference")
        out[group] = {"seconds": times, "speedup": {k: (ref / v if ref else None) for k, v in times.items()}}
        for unit, amounts, scale in (("GB/s", collected.bytes_moved, 1e9), ("TFLOP/s", collected.flops, 1e12)):
            if amounts.get(group):
                out[group][unit] = {k: n / times[k] / scale for k, n in amounts[group].items()}
    return out


def pytest_terminal_summary(terminalreporter, config):
    collected = config.stash.get(TIMINGS, None)
    if collected is None or not collected.seconds:
        return
    terminalreporter.section("speed-ups against the reference (mean time, this run)")
    for group, entry in ratios(collected).items():
        for name, seconds in entry["seconds"].items():
            ratio = entry["speedup"][name]
            rates = "".join(f"   {entry[unit][name]:8.1f} {unit}" for unit in ("GB/s", "TFLOP/s")
                            if name in entry.get(unit, {}))
            terminalreporter.write_line(f"{group:28s} {name:12s} {seconds * 1e3:10.2f} ms   "
                                        + (f"{ratio:7.2f}x" if ratio else "   (no reference)") + rates)
