"""The baseline of long-horizon prediction: a single-step probabilistic ensemble, the dynamics model
of PETS (Chua et al., 2018) and MBPO (Janner et al., 2019).

E members (default 5), each an MLP (4 hidden layers of 200, SiLU) from the normalized state and
action to a Gaussian over the normalized state change and reward: a mean and a log-variance that
learned bounds keep in range softly (PETS's `max_logvar` and `min_logvar`, with their small
penalty). Each member trains on its own bootstrap of the training transitions by Gaussian negative
log-likelihood; a held-out split of the transitions decides when to stop: every member keeps its
weights of its best held-out NLL, and training ends when none has improved for `patience`
evaluations. Rollouts use trajectory sampling (TS-inf): each particle keeps one member for its whole
future and draws every next state from that member's Gaussian.

    ENS_DIR/config.json          the DynamicsConfig, the data settings, the training summary
    ENS_DIR/model.safetensors    weights and normalizers
    ENS_DIR/metrics.jsonl        held-out NLL and MSE during training

The directory is written beside its target and swapped in whole (`tt.io.swap_directory`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tt.config import DynamicsConfig
from tt.data import Trajectories, episode_starts, load_dataset, training_split, trajectories_from_minari
from tt.device import resolve_device
from tt.io import read_json, swap_directory, write_json, write_jsonl
from tt.progress import progress as progress_bar

FORMAT = "tt.GaussianEnsemble/1"


class GaussianEnsemble(nn.Module):
    """E MLPs evaluated as one batched network: inputs `[E, R, in]` -> mean and log-variance `[E, R, out]`
    in normalized units; `predict` works in the data's units."""

    def __init__(self, observation_dim: int, action_dim: int, members: int = 5, hidden: int = 200, layers: int = 4):
        super().__init__()
        self.observation_dim, self.action_dim = observation_dim, action_dim
        inputs, outputs = observation_dim + action_dim, observation_dim + 1  # (state change, reward)
        sizes = [inputs] + [hidden] * layers + [2 * outputs]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(members, a, b)) for a, b in zip(sizes, sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(members, 1, b)) for b in sizes[1:])
        for w in self.weights:  # PETS: truncated normal, std 1 / (2 sqrt(fan_in))
            nn.init.trunc_normal_(w, std=1 / (2 * math.sqrt(w.shape[1])), a=-2 / math.sqrt(w.shape[1]),
                                  b=2 / math.sqrt(w.shape[1]))
        self.max_logvar = nn.Parameter(torch.full((outputs,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((outputs,), -10.0))
        for name, size in (("input_mean", inputs), ("input_std", inputs), ("target_mean", outputs),
                           ("target_std", outputs)):
            self.register_buffer(name, torch.zeros(size) if name.endswith("mean") else torch.ones(size))

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = F.silu(x)
        mean, logvar = x.chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        return mean, self.min_logvar + F.softplus(logvar - self.min_logvar)

    def normalize(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (torch.cat([observations, actions], -1) - self.input_mean) / self.input_std

    @torch.no_grad()
    def predict(self, observations: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's Gaussian over (state change, reward) `[E, R, O + 1]`: mean and standard deviation."""
        x = self.normalize(observations, actions)[None].expand(self.members, -1, -1)
        mean, logvar = self(x)
        return mean * self.target_std + self.target_mean, (0.5 * logvar).exp() * self.target_std

    def gaussian_nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's Gaussian negative log-likelihood of normalized targets `y [E|1, R, out]`, nats per
        dimension `[E]`."""
        mean, logvar = self(x)
        return 0.5 * (((mean - y) ** 2) * (-logvar).exp() + logvar + math.log(2 * math.pi)).mean((1, 2))


def transitions(trajectories: Trajectories) -> tuple[np.ndarray, np.ndarray]:
    """Inputs `[n, O + A]` (state, action) and targets `[n, O + 1]` (state change, reward) of every step
    whose next state the data hold (all but each episode's last)."""
    O, A = trajectories.observation_dim, trajectories.action_dim
    joined = trajectories.joined
    has_next = np.ones(len(joined), dtype=bool)
    has_next[episode_starts(trajectories.lengths) + trajectories.lengths - 1] = False
    now = np.flatnonzero(has_next)
    inputs = joined[now, : O + A]
    targets = np.concatenate([joined[now + 1, :O] - joined[now, :O], joined[now, O + A : O + A + 1]], 1)
    return inputs.astype(np.float32), targets.astype(np.float32)


def training_data(cfg: DynamicsConfig) -> tuple[Trajectories, dict]:
    """The data set's training episodes as the run with the same settings sees them, and a summary."""
    dataset = load_dataset(cfg.dataset)
    trajectories, _, visible = training_split(trajectories_from_minari(dataset), cfg.holdout_episodes,
                                              cfg.hidden_obs_fraction)
    info = {"dataset_id": dataset.spec.dataset_id, "observation_dim": len(visible),
            "action_dim": trajectories.action_dim, "episodes": len(trajectories.lengths),
            "steps": int(trajectories.lengths.sum()), "holdout_episodes": cfg.holdout_episodes,
            "visible_observation_dims": visible.tolist()}
    return trajectories, info


def train_dynamics(cfg: DynamicsConfig, out: str, progress: bool = True) -> GaussianEnsemble:
    """Train an ensemble on `cfg.dataset` and write it to `out` (replacing what is there); returns it (eval mode).
    Torch's global random state is left as it was."""
    device = resolve_device(cfg.device)
    trajectories, info = training_data(cfg)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        ensemble, records, summary = _fit(cfg, trajectories, device, progress)
    save_dynamics(out, ensemble, {"train": dataclasses.asdict(cfg), "data": info, "summary": summary}, records)
    return ensemble


def _fit(cfg: DynamicsConfig, trajectories: Trajectories, device: torch.device, progress: bool):
    inputs, targets = transitions(trajectories)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(inputs))
    n_val = min(cfg.max_validation, max(1, int(cfg.validation_fraction * len(inputs))))
    if len(inputs) - n_val < 1:
        raise ValueError(f"{len(inputs)} transitions are too few to train an ensemble and validate it")
    val, train = order[:n_val], order[n_val:]
    ensemble = GaussianEnsemble(trajectories.observation_dim, trajectories.action_dim, cfg.members, cfg.hidden,
                                cfg.layers).to(device)
    with torch.no_grad():
        for name, data in (("input", inputs[train]), ("target", targets[train])):
            std = data.std(0)
            getattr(ensemble, f"{name}_mean").copy_(torch.from_numpy(data.mean(0)))
            getattr(ensemble, f"{name}_std").copy_(torch.from_numpy(np.where(std > 1e-8, std, 1.0)))
    x = ((torch.from_numpy(inputs) - ensemble.input_mean.cpu()) / ensemble.input_std.cpu()).to(device)
    y = ((torch.from_numpy(targets) - ensemble.target_mean.cpu()) / ensemble.target_std.cpu()).to(device)
    x_val, y_val = x[val][None], y[val][None]
    bootstrap = torch.from_numpy(train[rng.integers(0, len(train), (cfg.members, len(train)))]).to(device)
    optimizer = torch.optim.Adam([{"params": list(ensemble.weights), "weight_decay": cfg.weight_decay},
                                  {"params": [*ensemble.biases, ensemble.max_logvar, ensemble.min_logvar],
                                   "weight_decay": 0.0}], lr=cfg.learning_rate)

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mean, _ = ensemble(x_val.expand(cfg.members, -1, -1))
            return ensemble.gaussian_nll(x_val.expand(cfg.members, -1, -1), y_val), ((mean - y_val) ** 2).mean((1, 2))

    best_nll, mse = evaluate()
    best = [p.detach().clone() for p in ensemble.parameters()]
    records = [{"step": 0, "heldout_nll": best_nll.mean().item(), "heldout_mse": mse.mean().item(),
                "members_heldout_nll": best_nll.tolist()}]
    losses, waited = [], 0
    bar = progress_bar(cfg.max_steps, "ensemble", progress)
    for step in range(1, cfg.max_steps + 1):
        pick = bootstrap.gather(1, torch.randint(0, len(train), (cfg.members, cfg.batch_size), device=device))
        nll = ensemble.gaussian_nll(x[pick], y[pick]).sum()
        loss = nll + 0.01 * (ensemble.max_logvar.sum() - ensemble.min_logvar.sum())  # PETS's bound penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(nll.item())
        bar.update()
        if step % cfg.eval_every and step != cfg.max_steps:
            continue
        nll, mse = evaluate()
        improved = nll < best_nll - cfg.min_delta
        with torch.no_grad():  # each member keeps its weights of its best held-out NLL
            for saved, p in zip(best, ensemble.parameters()):
                if p.dim() == 3:
                    saved[improved] = p.detach()[improved]
                elif improved.any():
                    saved.copy_(p.detach())
        best_nll = torch.where(improved, nll, best_nll)
        waited = 0 if improved.any() else waited + 1
        records.append({"step": step, "train_nll": float(np.mean(losses)) / cfg.members,
                        "heldout_nll": nll.mean().item(), "heldout_mse": mse.mean().item(),
                        "members_heldout_nll": nll.tolist()})
        bar.set_postfix(heldout_nll=f"{records[-1]['heldout_nll']:.3f}", refresh=False)
        losses = []
        if waited >= cfg.patience:
            break
    bar.close()
    with torch.no_grad():
        for saved, p in zip(best, ensemble.parameters()):
            p.copy_(saved)
    ensemble.eval()
    summary = {"steps": records[-1]["step"], "heldout_nll": evaluate()[0].tolist(),
               "transitions": len(train), "validation_transitions": n_val,
               **one_step_errors(ensemble, inputs[val], targets[val])}
    return ensemble, records, summary


def one_step_errors(ensemble: GaussianEnsemble, inputs: np.ndarray, targets: np.ndarray) -> dict:
    """Normalized RMSE of the next state predicted by the members' mean against predicting no change,
    on transitions `inputs [n, O + A]`, `targets [n, O + 1]` (each dimension divided by the training
    state change's standard deviation)."""
    O = ensemble.observation_dim
    device = ensemble.input_mean.device
    x = torch.from_numpy(inputs).to(device)
    mean, _ = ensemble.predict(x[:, :O], x[:, O:])
    change = torch.from_numpy(targets[:, :O]).to(device)
    scale = ensemble.target_std[:O]
    model_error = (((mean.mean(0)[:, :O] - change) / scale) ** 2).mean().sqrt().item()
    return {"one_step_nrmse": model_error, "no_change_nrmse": ((change / scale) ** 2).mean().sqrt().item()}


def save_dynamics(out: str, ensemble: GaussianEnsemble, config: dict, records: list[dict]) -> None:
    """Write the ensemble's directory beside `out` and swap it in whole."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-dynamics-")
    try:
        model = {"observation_dim": ensemble.observation_dim, "action_dim": ensemble.action_dim,
                 "members": ensemble.members, "hidden": ensemble.weights[0].shape[2],
                 "layers": len(ensemble.weights) - 1}
        write_json(os.path.join(staging, "config.json"), {**config, "model": model})
        weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in ensemble.state_dict().items()}
        save_file(weights, os.path.join(staging, "model.safetensors"), metadata={"format": FORMAT})
        write_jsonl(os.path.join(staging, "metrics.jsonl"), records)
        os.chmod(staging, 0o755)
        swap_directory(staging, out)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)


def load_dynamics(path: str, device: torch.device | str = "cpu") -> tuple[GaussianEnsemble, dict]:
    """(ensemble in eval mode, its config) from a directory `save_dynamics` wrote."""
    files = [os.path.join(path, name) for name in ("config.json", "model.safetensors")]
    if not os.path.isdir(path) or not all(os.path.exists(f) for f in files):
        raise ValueError(f"no dynamics ensemble at {path} (config.json and model.safetensors): make one with "
                         "`tt train-dynamics`")
    config = read_json(files[0])
    try:
        ensemble = GaussianEnsemble(**config["model"])
        ensemble.load_state_dict(load_file(files[1]))
    except Exception as e:  # a damaged file or weights of another shape
        raise ValueError(f"the ensemble in {path} does not load: {e}") from e
    return ensemble.to(device).eval(), config


@torch.no_grad()
def rollout(ensemble: GaussianEnsemble, start: np.ndarray, actions: np.ndarray, samples: int,
            generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Trajectory sampling from states `start [B, O]` on `actions [B, H, A]`: `samples` particles per
    state, particle w following member w mod E throughout. Returns states `[B, S, H, O]` (steps 1..H)
    and rewards `[B, S, H]`."""
    device = ensemble.input_mean.device
    B, H, A = actions.shape
    O = ensemble.observation_dim
    if start.shape != (B, O) or A != ensemble.action_dim:
        raise ValueError(f"the ensemble predicts {O} observation and {ensemble.action_dim} action dimensions; got "
                         f"states {start.shape} and actions {actions.shape}")
    rows = torch.arange(B * samples, device=device)
    member = rows % samples % ensemble.members
    state = torch.as_tensor(start, dtype=torch.float32, device=device).repeat_interleave(samples, 0)
    act = torch.as_tensor(actions, dtype=torch.float32, device=device).repeat_interleave(samples, 0)
    states, rewards = [], []
    for h in range(H):
        mean, std = ensemble.predict(state, act[:, h])
        noise = torch.randn(len(rows), O + 1, generator=generator, device=device)
        draw = mean[member, rows] + std[member, rows] * noise
        state = state + draw[:, :O]
        states.append(state)
        rewards.append(draw[:, O])
    return (torch.stack(states, 1).view(B, samples, H, O).cpu().numpy().astype(np.float64),
            torch.stack(rewards, 1).view(B, samples, H).cpu().numpy().astype(np.float64))
