"""Training: the authors' recipe (AdamW, warmup + cosine on tokens, grad clip) as one loop.

Data order is a function of (seed, epoch) and the RNG state is checkpointed, so `--resume`
continues at the same step with the same batches as an uninterrupted run.

Under torchrun (`tt.distributed`) every rank takes its contiguous part of each global batch and
DistributedDataParallel averages the gradients; each rank's loss is scaled so that the average is
the gradient of the single-process loss (the weighted cross-entropy averaged over the whole
batch), and tokens, the schedule and the logged loss count the whole batch. The step is the
single-process step, so a run resumes at any world size that divides the batch size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable

import torch

from tt import distributed
from tt.checkpoint import load_run, load_trainer_state, save_run
from tt.config import TrainConfig, flag_of
from tt.data import (
    HindsightGoals,
    TokenWindows,
    Trajectories,
    environment_id,
    load_dataset,
    training_split,
    trajectories_from_minari,
)
from tt.device import cpu_has_bf16_math
from tt.discretize import Discretizer
from tt.io import append_line, plot_losses, read_jsonl, write_jsonl
from tt.model import GPTConfig, TrajectoryTransformer
from tt.progress import progress as progress_bar


def configure_optimizer(model: TrajectoryTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on linear and head weights only (not biases, LayerNorms, embeddings)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_matrix = name == "head" or (name.endswith(".weight") and param.dim() == 2 and "emb" not in name)
        (decay if is_matrix else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.betas))


def lr_multiplier(tokens_seen: int, warmup_tokens: int, final_tokens: int) -> float:
    """Linear warmup, then cosine decay to 10% at `final_tokens`, held there.

    The authors' (minGPT's) formula lets the cosine rise again past `final_tokens`; we hold
    the floor, as the published description says.
    """
    if tokens_seen < warmup_tokens:
        return tokens_seen / max(1, warmup_tokens)
    progress = min(1.0, (tokens_seen - warmup_tokens) / max(1, final_tokens - warmup_tokens))
    return max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def fit_discretizer(trajectories: Trajectories, cfg: TrainConfig) -> Discretizer:
    """`cfg.discretizer`'s bins for every dimension, the actions' from `cfg.action_discretizer` if set.

    Quantile bins merge a point mass at a bound (actions saturated at their limit) with the values
    next to it: -2 and everything up to -0.35 in one bin whose midpoint, -1.2, is what the planner
    then acts with. Uniform bins keep the bound's own bin."""
    joined = trajectories.joined
    discretizer = Discretizer.fit(joined, cfg.n_bins, cfg.discretizer)
    if cfg.action_discretizer in (None, cfg.discretizer):
        return discretizer
    actions = slice(trajectories.observation_dim, trajectories.observation_dim + trajectories.action_dim)
    thresholds = discretizer.thresholds.copy()
    thresholds[:, actions] = Discretizer.fit(joined[:, actions], cfg.n_bins, cfg.action_discretizer).thresholds
    return Discretizer(thresholds)


def prepare_data(cfg: TrainConfig, discretizer: Discretizer | None = None,
                 trajectories: Trajectories | None = None) -> tuple[Trajectories, Discretizer, dict]:
    """The data set's trajectories, the discretizer (fitted on them unless one is given) and a summary.

    `trajectories`: these instead of `cfg.dataset`'s (synthetic data; `cfg.dataset` names them)."""
    return prepare_goal_data(cfg, discretizer, trajectories)[:3]


def prepare_goal_data(cfg: TrainConfig, discretizer: Discretizer | None = None,
                      trajectories: Trajectories | None = None
                      ) -> tuple[Trajectories, Discretizer, dict, HindsightGoals]:
    """`prepare_data`, and the hindsight goals of the episodes. A goal data set (`pointmaze-*`, Minari's
    `D4RL/pointmaze`) is read with `tt.goal_data` (observations: the dict's `observation` part; goals:
    the goal columns, the rest 0; no termination penalty: its episodes end at their goal); for any
    other the goals are whole observations."""
    from tt.goal_data import goal_observations, goal_trajectories_from_minari, is_goal_space

    goals, goal_columns, penalty = None, None, cfg.termination_penalty
    if trajectories is None:
        dataset = load_dataset(cfg.dataset)
        if is_goal_space(dataset.observation_space):
            read, penalty = goal_trajectories_from_minari(dataset, cfg.discount), None
            trajectories, goal_columns = read.trajectories, read.goal_columns
            obs = trajectories.joined[:, : trajectories.observation_dim]
            goals = HindsightGoals(read.hindsight_goal_observations(),
                                   goal_observations(obs[:, goal_columns], goal_columns, trajectories.observation_dim))
        else:
            trajectories = trajectories_from_minari(dataset, cfg.discount, cfg.termination_penalty)
        dataset_id, env_id = dataset.spec.dataset_id, environment_id(dataset)
    else:
        dataset_id, env_id = cfg.dataset, None
    if goals is None:
        goals = HindsightGoals.of(trajectories)
    trajectories, _, visible = training_split(trajectories, cfg.holdout_episodes, cfg.hidden_obs_fraction)
    if discretizer is None:
        discretizer = fit_discretizer(trajectories, cfg)
    info = {"dataset_id": dataset_id, "env_id": env_id, "observation_dim": trajectories.observation_dim,
            "action_dim": trajectories.action_dim, "episodes": len(trajectories.lengths),
            "steps": int(trajectories.lengths.sum()), "mean_return": float(trajectories.returns.mean()),
            "discount": cfg.discount, "termination_penalty": penalty,
            "holdout_episodes": cfg.holdout_episodes, "visible_observation_dims": visible.tolist(),
            "goal_columns": None if goal_columns is None else goal_columns.tolist()}
    return trajectories, discretizer, info, goals


# Options a resumed run may change: they decide where training stops, where it runs and how often
# it reports, not what a step computes.
RESUMABLE_CHANGES = {"max_steps", "device", "save_every", "log_every", "precision", "compile"}


def check_resume(out: str, cfg: TrainConfig) -> Discretizer:
    """The stored discretizer of the run in `out`, after checking that `cfg` is the configuration it
    was trained with (but for RESUMABLE_CHANGES): a mismatch is a ValueError naming the option."""
    from tt.tasks import resolve_dataset_id

    _, discretizer, stored, _ = load_run(out)
    given = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for name, was in (stored.get("train") or {}).items():
        if name in RESUMABLE_CHANGES or name not in given:
            continue
        now = given[name]
        if name == "dataset":
            was, now = resolve_dataset_id(was), resolve_dataset_id(now)
        if was != now:
            given_by = "--dataset" if name == "dataset" else flag_of(TrainConfig, name)
            flag = f"{given_by} or --preset" if given_by else "--preset"
            raise ValueError(f"--resume: the run in {out} was trained with {name}={was!r}, the options give "
                             f"{name}={now!r} (set by {flag}): give the options it was trained with, or a new --out")
    return discretizer


def train(cfg: TrainConfig, out: str, resume: bool = False, progress: bool = True,
          trajectories: Trajectories | None = None, between_steps: Callable[[], None] | None = None
          ) -> TrajectoryTransformer:
    """Train on `cfg.dataset` into run directory `out`; returns the trained model (eval mode).

    `resume`: continue the run in `out` (same options, see `check_resume`; its stored discretizer).
    `trajectories`: train on these instead of loading `cfg.dataset` (see `prepare_data`).
    `between_steps`: called after every optimizer step (the CLI's `tt.threads.CoreShare.refresh`).
    Torch's global random state is the caller's: training draws from it (initialization, dropout)
    inside `torch.random.fork_rng`, so the caller's generator is as it was when this returns.
    In a process group (`tt.distributed.process_group`: torchrun) every rank calls this alike and
    trains its part of every batch; rank 0 alone reads the run to resume and writes `out`."""
    device = distributed.local_device(cfg.device)
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise ValueError(f"the batch size ({cfg.batch_size}) must be a multiple of the number of processes "
                         f"({world}): each takes an equal part of every batch")
    stored_discretizer = distributed.from_main(lambda: check_resume(out, cfg)) if resume else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train(cfg, out, resume, progress, device, stored_discretizer, trajectories,
                      between_steps or (lambda: None))


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The dropout seed of a rank > 0 that starts (or resumes without its own checkpointed state) at `step`."""
    return ((seed * 1_000_003 + rank) * 1_000_003 + step) % 2**63


def local_part(index: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's contiguous part of a global batch's windows and its share of the batch. A rank left
    without windows (a last batch smaller than the world) takes the batch's first at share 0: it still
    joins the gradient reduction, adding nothing."""
    part = distributed.shard(len(index))
    if not part:
        return index[:1], 0.0
    return index[part.start : part.stop], len(part) / len(index)


def _read_checkpoint(out: str) -> dict:
    """Weights, step and trainer state of the run in `out`, on the CPU (sent to every rank)."""
    model, _, _, step = load_run(out)
    return {"weights": model.state_dict(), "step": step, "trainer": load_trainer_state(out)}


def _restore_rng(state: dict, seed: int, step: int, device: torch.device) -> None:
    """This rank's generators as checkpointed: its own when the run had as many ranks, rank 0's for
    rank 0 (the single-process state); another rank draws from `rank_seed` instead."""
    rank = distributed.rank()
    saved = state.get("rng_ranks", state["rng"][None])
    if rank and len(saved) != distributed.world_size():
        torch.manual_seed(rank_seed(seed, rank, step))
        return
    torch.set_rng_state(saved[rank].clone())  # a copy: set_rng_state misreads a row of a stacked tensor
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state.get("cuda_rng_ranks", state["cuda_rng"][None])[rank].clone(), device)


def precision_context(precision: str, device: torch.device) -> torch.autocast:
    """The autocast a training step runs under: "bf16" (bfloat16 matrix products, float32 weights and
    optimizer), "fp32" (none), "auto" (bf16 on CUDA and on CPUs with bfloat16 math, AVX512-BF16 or AMX;
    fp32 on other CPUs, where bf16 is emulated and slower)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" or cpu_has_bf16_math() else "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def training_step(trained: torch.nn.Module, model: TrajectoryTransformer, optimizer: torch.optim.Optimizer,
                  x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, goal: torch.Tensor | None, grad_clip: float,
                  precision: torch.autocast, scale: float = 1.0) -> torch.Tensor:
    """One optimizer step on a batch: the weighted cross-entropy (`trained`: the model, or its DDP
    wrapper), its gradient times `scale` (DDP's average over ranks made the whole batch's mean),
    clipped to `grad_clip`, and AdamW. Returns the loss, detached and not read back (reading it
    waits for the device)."""
    with precision:
        _, loss = trained(x, y, mask, goal=goal)
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


class Step:
    """`training_step` as the loop takes it: on the model wrapped for the ranks (DDP), under `cfg.precision`,
    and with `cfg.compile` through `torch.compile` (Inductor: fused C++ on the CPU, Triton on CUDA; the
    model's ops run as plain torch while compiled). Where compiling fails (no compiler, an unsupported
    op, a recompilation for a new batch shape), that step says so in a warning and it and every later
    step run eagerly, from the random state the failed step began with."""

    def __init__(self, model: TrajectoryTransformer, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                 device: torch.device):
        self.model, self.optimizer, self.grad_clip, self.device = model, optimizer, cfg.grad_clip, device
        self.eager = distributed.wrap(model, device)  # DDP over several ranks; the raw model is what is saved
        self.trained = torch.compile(self.eager) if cfg.compile else self.eager
        self.precision = precision_context(cfg.precision, device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, goal: torch.Tensor | None,
                 scale: float) -> torch.Tensor:
        step = lambda: training_step(self.trained, self.model, self.optimizer, x, y, mask, goal, self.grad_clip,
                                     self.precision, scale)
        if self.trained is self.eager:
            return step()
        cuda = self.device.type == "cuda"
        rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None
        try:
            return step()
        except Exception as e:  # torch.compile's errors have no common base class
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            warnings.warn(f"--compile: torch.compile failed ({type(e).__name__}: {reason}); training without it",
                          stacklevel=2)
            torch.set_rng_state(rng)
            if cuda:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            self.trained = self.eager
            return step()


def _train(cfg: TrainConfig, out: str, resume: bool, progress: bool, device: torch.device,
           stored_discretizer: Discretizer | None, trajectories: Trajectories | None,
           between_steps: Callable[[], None]) -> TrajectoryTransformer:
    trajectories, discretizer, data_info, goals = prepare_goal_data(cfg, stored_discretizer, trajectories)
    windows = TokenWindows(trajectories, discretizer, cfg.n_transitions, goals if cfg.goal_conditioned else None,
                           cfg.goal)
    model_config = GPTConfig(
        trajectories.observation_dim, trajectories.action_dim, n_bins=cfg.n_bins, n_transitions=cfg.n_transitions,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, embd_pdrop=cfg.dropout,
        resid_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, action_weight=cfg.action_weight,
        goal_conditioned=cfg.goal_conditioned,
    )
    torch.manual_seed(cfg.seed)
    model = TrajectoryTransformer(model_config).to(device)
    optimizer = configure_optimizer(model, cfg)
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    if rank:  # dropout masks of its own; rank 0 draws as a single process does
        torch.manual_seed(rank_seed(cfg.seed, rank, 0))

    steps_per_epoch = math.ceil(len(windows) / cfg.batch_size)
    if cfg.budget_steps is not None:
        schedule_steps = cfg.budget_steps
        step_tokens = cfg.batch_size * windows.block_size
        warmup_tokens = int(cfg.warmup_fraction * schedule_steps * step_tokens)
        final_tokens = schedule_steps * step_tokens
    else:
        epochs = cfg.epochs if cfg.epochs is not None else 50 * 1e6 / len(windows)
        schedule_steps = max(1, int(epochs * steps_per_epoch))
        tokens_per_epoch = len(windows) * windows.block_size
        warmup_tokens, final_tokens = tokens_per_epoch, int(cfg.decay_epochs * tokens_per_epoch)
    total_steps = cfg.max_steps or schedule_steps

    run_config = {"train": dataclasses.asdict(cfg), "data": data_info, "total_steps": total_steps}
    step, tokens_seen = 0, 0
    window_losses: list[torch.Tensor] = []  # losses since the last metrics record, on the device (read back
    # when they are logged or checkpointed, not every step: reading waits for the device)
    elapsed_before = 0.0  # training seconds before a resume
    metrics_path = os.path.join(out, "metrics.jsonl")
    if resume:
        loaded = distributed.from_main(lambda: _read_checkpoint(out))
        model.load_state_dict(loaded["weights"])
        step, state = loaded["step"], loaded["trainer"]
        optimizer.load_state_dict(state["optimizer"])
        tokens_seen = int(state["tokens_seen"])
        window_losses = list(state.get("window_losses", torch.zeros(0, dtype=torch.float64)).to(device))
        elapsed_before = float(state.get("elapsed_s", 0.0))
        _restore_rng(state, cfg.seed, step, device)
        if main:
            write_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r["step"] <= step])  # cut to it
    elif main:
        write_jsonl(metrics_path, [])

    def checkpoint():  # every rank calls it; rank 0 writes
        state = {"optimizer": optimizer.state_dict(), "tokens_seen": torch.tensor(tokens_seen),
                 "window_losses": (torch.stack(window_losses).cpu() if window_losses
                                   else torch.zeros(0, dtype=torch.float64)),
                 "elapsed_s": torch.tensor(time.time() - started, dtype=torch.float64),
                 "rng": torch.get_rng_state()}
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        if world > 1:  # every rank's generators, for a resume at the same world size
            for key in [k for k in ("rng", "cuda_rng") if k in state]:
                state[f"{key}_ranks"] = torch.stack(distributed.all_gather(state[key]))
        if main:
            save_run(out, model, discretizer, run_config, step, state)
            plot_losses(metrics_path, os.path.join(out, "loss.png"))

    model.train()
    step_on = Step(model, optimizer, cfg, device)
    bar = progress_bar(total_steps, "training", progress and main, initial=step)
    started = time.time() - elapsed_before
    order, order_epoch, draws = None, -1, None
    while step < total_steps:
        epoch, within = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(windows), cfg.seed, epoch), epoch
            draws = windows.goal_draws(cfg.seed, epoch)  # `future` goals: drawn per (seed, epoch)
        index = order[within * cfg.batch_size : (within + 1) * cfg.batch_size]
        part, share = local_part(index)
        x, y, mask = (t.to(device, non_blocking=True) for t in windows.batch(part))
        goal = windows.goals_of(part, draws)
        # the mean over this rank's part; DDP averages the ranks' gradients: scaled by world * share, the
        # average is the gradient of the mean over the whole batch (one process: the loss as it is)
        loss = step_on(x, y, mask, None if goal is None else goal.to(device, non_blocking=True),
                       share * world if world > 1 else 1.0)
        tokens_seen += len(index) * windows.block_size
        lr = cfg.learning_rate * lr_multiplier(tokens_seen, warmup_tokens, final_tokens)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step += 1
        window_losses.append((distributed.all_reduce_sum(loss * share) if world > 1 else loss).double())
        bar.update()
        between_steps()
        if step % cfg.log_every == 0 or step == total_steps:
            record = {"step": step, "epoch": step / steps_per_epoch, "loss": torch.stack(window_losses).mean().item(),
                      "lr": lr, "tokens": tokens_seen, "elapsed_s": time.time() - started}
            if main:
                append_line(metrics_path, json.dumps(record))
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            window_losses = []
        if step % cfg.save_every == 0 or step == total_steps:
            checkpoint()
    bar.close()
    distributed.barrier()  # the run directory is complete when any rank returns
    return model.eval()
