"""Helpers shared by the benchmark suites."""

import os
import platform
import subprocess

import torch

SMALL = os.environ.get("TT_BENCH_SIZE", "").lower() == "small"
HERE = os.path.dirname(os.path.abspath(__file__))


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


def record(benchmark, timings, group: str, name: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        timings.setdefault(group, {})[name] = stats.stats.mean
