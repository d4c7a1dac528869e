"""One training step (forward, backward, AdamW) of the published model at Hopper shapes: the
reference attention against the Triton kernels (CUDA); tokens per step are in the group's name
and in the benchmark's extra_info, so tokens/s = tokens / mean time."""

import pytest
import torch
from common import DEVICES, SMALL, record

from tt import ops
from tt.model import GPTConfig, TrajectoryTransformer
from tt.train import TrainConfig, configure_optimizer


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attention", ["reference", "triton"])
def test_training_step(benchmark, timings, device, attention, monkeypatch):
    if attention == "triton" and device == "cpu":
        pytest.skip("Triton runs on GPUs (on CPU only interpreted, for tests)")
    ops.use(attention=attention)
    batch = 8 if SMALL else (32 if device == "cpu" else 256)
    config = GPTConfig(11, 3, n_layer=1 if SMALL else 4, n_embd=32 if SMALL else 128)
    torch.manual_seed(0)
    model = TrajectoryTransformer(config).to(device).train()
    optimizer = configure_optimizer(model, TrainConfig())
    tokens = torch.randint(0, 101, (batch, config.block_size + 1), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with autocast:
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"training step {device} batch {batch} x {config.block_size} tokens"
    benchmark.extra_info["tokens_per_step"] = batch * config.block_size
    benchmark.pedantic(step, rounds=5 if device == "cpu" else 20, iterations=1, warmup_rounds=1)
    record(benchmark, timings, benchmark.group, attention)
