"""Helpers shared by the benchmark suites."""

import os
import platform
import subprocess
from dataclasses import dataclass, field

import torch

SMALL = os.environ.get("TT_BENCH_SIZE", "").lower() == "small"
HERE = os.path.dirname(os.path.abspath(__file__))


def devices() -> list[str]:
    """The devices benchmarked: `TT_BENCH_DEVICES` (e.g. "cuda", "cpu,cuda"), else CPU and any GPU."""
    asked = [d.strip() for d in os.environ.get("TT_BENCH_DEVICES", "").split(",") if d.strip()]
    found = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in asked:
        if device not in found:
            raise RuntimeError(f"TT_BENCH_DEVICES asks for {device!r}, but this machine has {found}")
    return asked or found


DEVICES = devices()


def timings_path() -> str:
    """Where a session's mean times go: timings.json for the suite of record, else a name that says
    what was left out (small sizes, some devices only)."""
    suffix = ("-small" if SMALL else "") + ("" if "TT_BENCH_DEVICES" not in os.environ else "-" + "-".join(DEVICES))
    return os.path.join(HERE, f"timings{suffix}.json")


def hopper(device: str, plans: int = 1):
    """The published model at Hopper shapes (obs 11, act 3; 1 layer of width 32 with
    TT_BENCH_SIZE=small) with random weights, a uniform discretizer, and `plans` random prefixes
    of 5 context transitions and an observation."""
    from tt.discretize import Discretizer
    from tt.model import GPTConfig, TrajectoryTransformer

    torch.manual_seed(0)
    config = GPTConfig(11, 3, n_layer=1 if SMALL else 4, n_embd=32 if SMALL else 128)
    model = TrajectoryTransformer(config).eval().to(device)
    T, N = config.transition_dim, config.n_bins
    discretizer = Discretizer(torch.linspace(-1, 1, N + 1)[:, None].repeat(1, T).numpy())
    g = torch.Generator().manual_seed(1)
    prefixes = [torch.randint(0, N, (5 * T + 11,), generator=g).to(device) for _ in range(plans)]
    return model, discretizer, prefixes


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip()
    except OSError:
        return "unknown"


@dataclass
class Timings:
    """Mean seconds per benchmark by group and name, and for a kernel the bytes it must move and
    the floating-point operations it must do (so the summary can set it against the device)."""

    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes_moved: dict[str, dict[str, int]] = field(default_factory=dict)
    flops: dict[str, dict[str, int]] = field(default_factory=dict)


def record(benchmark, timings: Timings, group: str, name: str, bytes_moved: int | None = None,
           flops: int | None = None) -> None:
    """Keep a benchmark's mean time (and, for a kernel, the bytes it must at least read and write
    and the operations it must do: the summary prints GB/s and TFLOP/s to read against the
    device's bandwidth and peak)."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        timings.seconds.setdefault(group, {})[name] = stats.stats.mean
        if bytes_moved is not None:
            timings.bytes_moved.setdefault(group, {})[name] = bytes_moved
        if flops is not None:
            timings.flops.setdefault(group, {})[name] = flops


def time_graph_plans(benchmark, model, discretizer, config, prefix) -> None:
    """Benchmark `PlanGraphs` replaying one plan from `prefix` (captured first; CUDA only)."""
    from tt.rng import Philox
    from tt.search import PlanGraphs

    device = prefix.device
    graphs = PlanGraphs(model, discretizer, config, Philox(0, device))
    graphs.plan(prefix[None].cpu())  # captures (this first plan runs eagerly)
    assert graphs.failed is None and graphs.layouts == 1
    benchmark.pedantic(lambda: (graphs.plan(prefix[None].cpu()), torch.cuda.synchronize()), rounds=10,
                       iterations=1, warmup_rounds=1)
