"""Training throughput under torchrun: tokens per second of `tt.train` in 1 and 2 CPU processes (DDP
over gloo, one thread each, the same global batch), by benchmarks/train_throughput.py; benchmarks/gpu.sh
runs the same script with one process per GPU. The group's "reference" is 1 process, so its speed-up
column reads as the scaling."""

import json
import os
import subprocess
import sys

import pytest
from common import DEVICES, HERE, SMALL

pytestmark = pytest.mark.skipif("cpu" not in DEVICES, reason="CPU processes (gpu.sh times the GPUs itself)")


def throughput(processes: int, out: str) -> dict:
    """train_throughput.py under torchrun in `processes` processes of one thread each: its JSON line."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               os.path.join(HERE, "train_throughput.py"), "--device", "cpu", "--out", out]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("processes", [1, 2])
def test_training_throughput(benchmark, timings, tmp_path, processes):
    result: dict = {}
    benchmark.pedantic(lambda: result.update(throughput(processes, str(tmp_path / "run"))), rounds=1, iterations=1)
    assert result["processes"] == processes and result["tokens_per_s"] > 0
    benchmark.group = f"ddp training cpu batch {result['batch']} ({'small' if SMALL else 'published'} model)"
    benchmark.extra_info.update(result)
    if not benchmark.disabled:  # the step time measured inside the run, not the launch's wall time
        timings.seconds.setdefault(benchmark.group, {})["reference" if processes == 1 else f"{processes} procs"] = \
            result["step_seconds"]
    print(f"{processes} process(es): {result['tokens_per_s']:.0f} tokens/s, {1e3 * result['step_seconds']:.1f} ms "
          "per step")
