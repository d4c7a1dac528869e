"""Training tokens per second of `tt.train` in one process or several (torchrun: DDP, gloo on CPU,
NCCL on GPUs, one GPU a process), the published model on synthetic Hopper-shaped data (obs 11,
act 3; no Minari needed, so it runs on the GPU image too). Rank 0 prints one JSON line.

    python -m torch.distributed.run --standalone --nproc-per-node N benchmarks/train_throughput.py \\
        --device cuda --out /tmp/tt-throughput

The global batch is the same at every N (each process takes 1/N of it), so tokens/s at N over
tokens/s at 1 is the speed-up. Timed from the first logged step to the last (start-up, the first
steps and the final checkpoint left out). TT_BENCH_SIZE=small: a 1-layer width-32 model, a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SMALL, commit, machine  # noqa: E402

from tt import distributed  # noqa: E402
from tt.config import make_config  # noqa: E402
from tt.data import Trajectories, make_trajectories  # noqa: E402
from tt.io import read_jsonl  # noqa: E402
from tt.train import train  # noqa: E402


def synthetic_hopper(episodes: int = 20, length: int = 500, seed: int = 0) -> Trajectories:
    """Random-walk observations and uniform actions at Hopper's shapes: what a step costs does not depend
    on the numbers."""
    rng = np.random.default_rng(seed)
    observations = [np.cumsum(rng.normal(0.0, 0.1, (length, 11)), axis=0) for _ in range(episodes)]
    actions = [rng.uniform(-1.0, 1.0, (length, 3)) for _ in range(episodes)]
    rewards = [rng.normal(1.0, 0.5, length) for _ in range(episodes)]
    return make_trajectories(observations, actions, rewards, [False] * episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (one GPU a process)")
    parser.add_argument("--batch-size", type=int, help="the global batch (default 256 on GPUs, 32 on CPU)")
    parser.add_argument("--steps", type=int, help="log records timed, 2 steps each (default 50 on GPUs, 10 on CPU)")
    parser.add_argument("--out", required=True, help="run directory (rank 0 writes it)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    batch = args.batch_size or (8 if SMALL else 256 if gpu else 32)
    timed = args.steps or (4 if SMALL else 50 if gpu else 10)
    log_every = 2
    model = dict(n_layer=1, n_embd=32) if SMALL else {}
    cfg = make_config("published", dataset="synthetic-hopper", batch_size=batch, device=args.device, seed=0,
                      max_steps=(timed + 1) * log_every, log_every=log_every, save_every=10**9, **model)
    with distributed.process_group(args.device):
        train(cfg, args.out, progress=False, trajectories=synthetic_hopper())
        world = distributed.world_size()
        if not distributed.is_main():
            return
    records = read_jsonl(os.path.join(args.out, "metrics.jsonl"))
    first, last = records[0], records[-1]  # after the first log_every steps, and the end
    seconds, tokens = last["elapsed_s"] - first["elapsed_s"], last["tokens"] - first["tokens"]
    steps = last["step"] - first["step"]
    print(json.dumps({"processes": world, "device": args.device, "batch": batch,
                      "tokens_per_step": tokens // steps, "steps": steps, "step_seconds": seconds / steps,
                      "tokens_per_s": tokens / seconds, "threads_per_process": torch.get_num_threads(),
                      "machine": machine(), "commit": commit()}))


if __name__ == "__main__":
    main()
