"""Where a training step's time goes: tt's step (`tt.train.training_step`, as `tt train` runs it) and the
authors' (`benchmarks/authors_gpt.py`) on the same batches, at a preset's shapes (Hopper: obs 11, act 3).

    python benchmarks/profile_train.py [--preset cpu] [--steps 10] [--threads 2] [--precision fp32]

Prints tokens/s of both in one run (alternating steps, the median of `--steps`), then each one's
profiler table grouped by what the time is spent on: attention, the MLP and projection GEMMs,
embeddings and the head, the loss, the optimizer (AdamW and the gradient clipping), the rest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from authors_gpt import AuthorsGPT  # noqa: E402
from authors_gpt import configure_optimizer as authors_optimizer  # noqa: E402
from authors_gpt import training_step as authors_step

from tt.config import make_config  # noqa: E402
from tt.model import GPTConfig, TrajectoryTransformer  # noqa: E402
from tt.train import configure_optimizer, precision_context, training_step  # noqa: E402

PARTS = {  # profiler op names (lower case, substring) -> what they are spent on
    "attention": ("softmax", "masked_fill", "scaled_dot_product", "attention", "bmm", "baddbmm"),
    "GEMMs (projections, MLP)": ("addmm", "mm", "linear", "matmul"),
    "embedding and head": ("embedding", "einsum", "index", "pad", "cat", "gather"),
    "loss": ("cross_entropy", "nll_loss", "log_softmax"),
    "optimizer and clipping": ("adam", "foreach", "norm", "clip", "_fused"),
    "norms and activations": ("layer_norm", "gelu", "dropout", "native_dropout"),
}


def models(preset: str, seed: int = 0):
    cfg = make_config(preset)
    config = GPTConfig(11, 3, n_bins=cfg.n_bins, n_transitions=cfg.n_transitions, n_layer=cfg.n_layer,
                       n_head=cfg.n_head, n_embd=cfg.n_embd, embd_pdrop=cfg.dropout, resid_pdrop=cfg.dropout,
                       attn_pdrop=cfg.dropout, action_weight=cfg.action_weight)
    torch.manual_seed(seed)
    tt_model = TrajectoryTransformer(config).train()
    authors = AuthorsGPT.from_tt(tt_model).train()
    return cfg, tt_model, authors


def batches(cfg, config: GPTConfig, n: int, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    L = config.block_size
    tokens = [torch.randint(0, config.n_bins, (cfg.batch_size, L + 1), generator=g) for _ in range(n)]
    return [(t[:, :-1], t[:, 1:], torch.ones(cfg.batch_size, L)) for t in tokens]


def categorize(table) -> dict[str, float]:
    """Self CPU time (ms) of the profiled ops by PARTS (first match wins), the rest under "other"."""
    totals = {name: 0.0 for name in PARTS} | {"other": 0.0}
    for event in table:
        name = event.key.lower()
        part = next((p for p, keys in PARTS.items() if any(k in name for k in keys)), "other")
        totals[part] += event.self_cpu_time_total / 1000
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, tt_model, authors = models(args.preset)
    data = batches(cfg, tt_model.config, args.steps + 1)
    tokens = cfg.batch_size * tt_model.config.block_size
    tt_optimizer, their_optimizer = configure_optimizer(tt_model, cfg), authors_optimizer(authors)
    precision = precision_context(args.precision, torch.device("cpu"))
    runs = {
        "tt": lambda b: training_step(tt_model, tt_model, tt_optimizer, *b, None, cfg.grad_clip, precision).item(),
        "authors": lambda b: authors_step(authors, their_optimizer, *b, cfg.grad_clip),
    }
    for run in runs.values():
        run(data[-1])  # warm-up
    seconds = {name: [] for name in runs}
    for batch in data[:-1]:
        for name, run in runs.items():
            start = time.perf_counter()
            run(batch)
            seconds[name].append(time.perf_counter() - start)
    print(f"preset {args.preset}: batch {cfg.batch_size} x {tt_model.config.block_size} tokens, "
          f"{args.threads} threads, {args.precision}")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"  {name:8} {1000 * median:8.1f} ms/step  {tokens / median:10.0f} tokens/s")
    print(f"  tt / authors tokens/s: {statistics.median(seconds['authors']) / statistics.median(seconds['tt']):.2f}x")
    for name, run in runs.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for batch in data[:3]:
                run(batch)
        parts = categorize(prof.key_averages())
        total = sum(parts.values())
        print(f"\n{name}: self CPU time over 3 steps, {total:.0f} ms")
        for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {part:28} {ms:8.1f} ms  {100 * ms / total:5.1f} %")
        print("  the ops taking most of it:")
        for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
            print(f"    {event.key[:60]:60} {event.self_cpu_time_total / 1000:8.1f} ms  x{event.count}")


if __name__ == "__main__":
    main()
