"""One training step (forward, backward, AdamW) of the published model at Hopper shapes: the
reference attention against the Triton kernels (CUDA); tokens per step are in the group's name
and in the benchmark's extra_info, so tokens/s = tokens / mean time."""

import pytest
import torch
from common import DEVICES, SMALL, record

from tt import ops
from tt.config import TrainConfig
from tt.model import GPTConfig, TrajectoryTransformer
from tt.train import configure_optimizer


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


PRESETS = {"cpu": ("cpu", "small"), "cuda": ("published",)}  # the shapes a preset trains each device at


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["published", "cpu", "small"])
@pytest.mark.parametrize("trainer", ["authors", "tt fp32", "tt bf16", "tt bf16 compiled"])
def test_training_step_against_the_authors(benchmark, timings, device, preset, trainer):
    """A training step at a preset's shapes (Hopper: obs 11, act 3), tt's as `tt train` runs it
    (`tt.train.training_step`; "compiled": `--compile`) and the authors' (`authors_gpt.py`: their GPT and
    trainer step) on the same batches from the same weights; tokens/s = tokens per step / mean time.
    The CPU at the `cpu` and `small` presets, CUDA at the published one (batch 256); compiled on CUDA
    only (slower on the CPUs measured, and a minute to compile). TT_BENCH_SIZE=small: one narrow layer,
    batch 4."""
    from authors_gpt import AuthorsGPT
    from authors_gpt import configure_optimizer as authors_optimizer
    from authors_gpt import training_step as authors_step

    from tt.config import make_config
    from tt.train import precision_context, training_step

    if preset not in PRESETS[device]:
        pytest.skip(f"{device} trains at the {' and '.join(PRESETS[device])} presets' shapes")
    if trainer.endswith("compiled") and (device == "cpu" or SMALL):
        pytest.skip("compiled on CUDA only: slower than eager on the CPUs measured (benchmarks/RESULTS.md)")
    cfg = make_config(preset, **(dict(n_layer=1, n_embd=32, n_head=2, batch_size=4) if SMALL else {}))
    config = GPTConfig(11, 3, n_bins=cfg.n_bins, n_transitions=cfg.n_transitions, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd, embd_pdrop=cfg.dropout, resid_pdrop=cfg.dropout,
                       attn_pdrop=cfg.dropout, action_weight=cfg.action_weight)
    torch.manual_seed(0)
    model = TrajectoryTransformer(config).train()
    tokens = torch.randint(0, cfg.n_bins, (cfg.batch_size, config.block_size + 1),
                           generator=torch.Generator().manual_seed(1)).to(device)
    batch = (tokens[:, :-1], tokens[:, 1:], torch.ones(cfg.batch_size, config.block_size, device=device))
    if trainer == "authors":
        gpt = AuthorsGPT.from_tt(model).to(device).train()
        optimizer = authors_optimizer(gpt)
        step = lambda: authors_step(gpt, optimizer, *batch, cfg.grad_clip)  # reads the loss back, as they log it
    else:
        model = model.to(device)
        optimizer = configure_optimizer(model, cfg)
        trained = torch.compile(model) if trainer.endswith("compiled") else model
        precision = precision_context(trainer.split()[1], torch.device(device))
        step = lambda: training_step(trained, model, optimizer, *batch, None, cfg.grad_clip, precision).item()
    benchmark.group = f"training step {device}, {preset} preset: batch {cfg.batch_size} x {config.block_size} tokens"
    benchmark.extra_info["tokens_per_step"] = cfg.batch_size * config.block_size
    benchmark.pedantic(step, rounds=3 if SMALL else 10, iterations=1, warmup_rounds=2 if "compiled" in trainer else 1)
    record(benchmark, timings, benchmark.group, trainer)
