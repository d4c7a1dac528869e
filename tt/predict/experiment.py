"""Long-horizon dynamics prediction (the paper's section 4.1): open-loop futures of held-out episodes.

From each held-out episode's state at step `start` (and the `context` transitions before it), S
futures of H steps are sampled on the episode's real actions: by the Trajectory Transformer
(`sample_continuations`: observation, reward and value tokens drawn, action tokens forced; the
planner's KV cache and window rule) and, when given, by a single-step Gaussian ensemble
(`tt.predict.ensemble`, trajectory sampling). Per step h, `step_metrics` compares the S predicted states
with the true one. `predict` writes predict.json, predict.png (the paper's Figure 3) and, for
MuJoCo tasks, frames.png (its Figure 2: true and predicted states rendered in the simulator).

Held-out episodes are the last `holdout_episodes` of the run's data set, which training left out;
a partially observed run (`hidden_obs_fraction`) sees only its visible observation dimensions,
here as in training, and so does an ensemble trained with the same fraction.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from tt.checkpoint import load_run
from tt.config import PlanConfig, PredictConfig
from tt.data import Trajectories, episode_starts, load_dataset, training_split, trajectories_from_minari
from tt.device import resolve_device
from tt.discretize import Discretizer
from tt.io import write_json
from tt.model import TrajectoryTransformer
from tt.predict.figures import PANELS, plot_metrics, render_frames
from tt.progress import progress as progress_bar
from tt.rng import Philox
from tt.search import ForcedActions, Search, check_prefix

MIN_STD = 0.01  # the fitted Gaussian's standard deviation is at least this fraction of the data's, per dimension


# ----------------------------------------------------------------------------- sampling with forced tokens


@torch.no_grad()
def sample_continuations(model: TrajectoryTransformer, prefix: torch.Tensor, forced: torch.Tensor,
                         discretizer: Discretizer, config: PlanConfig, rng: Philox, progress: bool = False
                         ) -> torch.Tensor:
    """`config.beam_width` sampled continuations of every prefix `[B, L]` (one length: context
    transitions, then an observation): `forced [B, n]` holds the n tokens that follow, -1 where the
    model draws (at the same positions in every row; the kind's filters of `config` apply), the
    token to keep elsewhere. Each token conditions on the window `config` sets, as the planner's.
    Sample for sample the same as `tt.reference.sample_continuations` with the same `Philox` state.
    Returns tokens `[B, W, n]`."""
    device = model.tok_emb.weight.device
    if check_prefix(model, prefix) != [0] * len(prefix):
        raise ValueError("sample_continuations: every prefix must have the same length (no padding)")
    if forced.dim() != 2 or len(forced) != len(prefix):
        raise ValueError(f"forced must be [B={len(prefix)}, n], got {tuple(forced.shape)}")
    drawn = (forced < 0).cpu().numpy()
    if (drawn != drawn[:1]).any():
        raise ValueError("forced tokens must sit at the same positions in every row")
    if forced.numel() and int(forced.max()) > model.stop_token:
        raise ValueError(f"forced tokens exceed the stop token {model.stop_token}")
    config = replace(config, n_expand=1)
    search = Search(model, prefix.to(device), [0] * len(prefix), discretizer, config, None,
                    objective=ForcedActions(forced.to(device)))
    bar = progress_bar((forced.shape[1] + model.config.observation_dim) // model.transition_dim, "sampling",
                       progress)
    search.run(rng, on_transition=bar.update)
    bar.close()
    return search.beams.tokens[:, prefix.shape[1] :].view(len(prefix), config.beam_width, -1)


# ----------------------------------------------------------------------------- held-out data


@dataclass
class HeldOut:
    """The held-out episodes as the model sees them (the visible observation dimensions of the data
    set's `observation_dim`), and the training data's standard deviation per visible dimension."""

    trajectories: Trajectories
    scale: np.ndarray
    visible: np.ndarray
    observation_dim: int
    dataset: object

    @property
    def fully_observed(self) -> bool:
        return len(self.visible) == self.observation_dim


def data_settings(config: dict, what: str) -> dict:
    """The data settings a run or an ensemble was trained with (its saved config): the data set, the
    held-out episodes, the visible observation dimensions and the value's discount."""
    data, train = config.get("data") or {}, config.get("train") or {}
    if data.get("dataset_id") is None:
        raise ValueError(f"{what} names no data set (imported with --thresholds): prediction needs its data set")
    return {"dataset_id": data["dataset_id"], "holdout_episodes": int(train.get("holdout_episodes", 0)),
            "visible_observation_dims": data.get("visible_observation_dims"),
            "hidden_obs_fraction": float(train.get("hidden_obs_fraction", 0.0)),
            "discount": train.get("discount", 0.99), "termination_penalty": train.get("termination_penalty", -100.0)}


def load_heldout(settings: dict, what: str) -> HeldOut:
    """The held-out episodes of `data_settings`; a run that holds none out is refused."""
    if settings["holdout_episodes"] < 1:
        raise ValueError(f"{what} was trained on every episode of {settings['dataset_id']}: prediction is measured "
                         "on held-out episodes; train with holdout_episodes > 0")
    dataset = load_dataset(settings["dataset_id"])
    everything = trajectories_from_minari(dataset, settings["discount"], settings["termination_penalty"])
    train, heldout, visible = training_split(everything, settings["holdout_episodes"], settings["hidden_obs_fraction"])
    if settings["visible_observation_dims"] is not None and visible.tolist() != settings["visible_observation_dims"]:
        raise ValueError(f"{what} saw observation dimensions {settings['visible_observation_dims']}, the mask gives "
                         f"{visible.tolist()} now")
    scale = train.joined[:, : len(visible)].std(axis=0)
    return HeldOut(heldout, np.where(scale > 0, scale, 1.0), visible, everything.observation_dim, dataset)


def check_same_data(run: dict, ensemble: dict) -> None:
    """A run and an ensemble are compared on the same data: data set, held-out episodes, visible dimensions."""
    for key in ("dataset_id", "holdout_episodes", "visible_observation_dims"):
        if run[key] != ensemble[key]:
            raise ValueError(f"the run and the ensemble were trained on different data: {key} {run[key]!r} "
                             f"against {ensemble[key]!r}; train the ensemble with the run's data set, "
                             "holdout_episodes and hidden_obs_fraction")


def episode_windows(heldout: Trajectories, episodes: int, start: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `episodes` held-out episodes long enough to hold the start state and `horizon` steps after
    it: their indices among the held-out ones `[episodes]` and rows of `heldout.joined`
    `[episodes, start + horizon + 1]`."""
    long_enough = np.flatnonzero(heldout.lengths >= start + horizon + 1)
    if len(long_enough) < episodes:
        raise ValueError(f"{len(long_enough)} of the {len(heldout.lengths)} held-out episodes have the "
                         f"{start + horizon + 1} steps that start {start} and horizon {horizon} need, {episodes} "
                         "asked for: ask for fewer episodes, a shorter horizon or an earlier start, or hold out more")
    first = episode_starts(heldout.lengths)[long_enough[:episodes]]
    return long_enough[:episodes], first[:, None] + np.arange(start + horizon + 1)


# ----------------------------------------------------------------------------- the Trajectory Transformer's futures


def prediction_tokens(discretizer: Discretizer, joined: np.ndarray, context: int, start: int, horizon: int,
                      observation_dim: int, action_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefixes `[B, c*T + O]` (the `context` transitions before `start`, then its observation) and the
    forced tokens `[B, H*T]` after them (the real actions; -1 where the model draws) of episodes `joined
    [B, start + H + 1, T]`."""
    O, A = observation_dim, action_dim
    B, _, T = joined.shape
    tokens = torch.from_numpy(discretizer.discretize(joined))
    first = max(0, start - context)
    prefix = torch.cat([tokens[:, first:start].reshape(B, -1), tokens[:, start, :O]], 1)
    after = tokens[:, start:].reshape(B, -1)[:, O : O + horizon * T]
    kind = (O + torch.arange(horizon * T)) % T
    forced = torch.where((kind >= O) & (kind < O + A), after, -1)
    return prefix, forced


def predicted_observations(tokens: torch.Tensor, start_observation: torch.Tensor, discretizer: Discretizer,
                           observation_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Observations `[B, S, H, O]` of steps start+1..start+H from sampled tokens `[B, S, H*T]` (after the
    start observation's tokens `[B, O]`): the bins' midpoints, and the variance of a value drawn
    uniformly inside each bin (its width squared / 12: a token stands for its whole bin); NaN where
    the model drew a stop token."""
    B, S, n = tokens.shape
    O, T = observation_dim, discretizer.transition_dim
    H = n // T
    full = torch.cat([start_observation[:, None].expand(B, S, O).to(tokens), tokens], -1)
    transitions = full[..., : H * T].reshape(B, S, H, T)
    following = torch.cat([transitions[:, :, 1:, :O], full[..., H * T :][:, :, None]], 2).cpu().numpy()
    widths = np.diff(discretizer.thresholds[:, :O], axis=0)[np.minimum(following, discretizer.n_bins - 1),
                                                            np.arange(O)]
    values = discretizer.reconstruct(following, columns=slice(0, O))
    return values, np.where(np.isnan(values), np.nan, widths**2 / 12)


# ----------------------------------------------------------------------------- metrics


def step_metrics(predicted: np.ndarray, truth: np.ndarray, scale: np.ndarray, within: np.ndarray | None = None,
                 min_std: float = MIN_STD) -> dict:
    """Per step h, over episodes (mean and standard error), of predicted states `[B, S, H, O]` (NaN: a
    sample that ended) against the true ones `[B, H, O]`:

    - log_likelihood: of the true state under a Gaussian fitted to the samples (per dimension their mean
      and variance, plus the mean of `within [B, S, H, O]` when the samples stand for intervals (the
      Trajectory Transformer's bins: the moments of the mixture), the standard deviation at least
      `min_std` times the data's `scale`), summed over dimensions
    - nrmse: root mean square error of the samples, each dimension divided by `scale`
    - coverage: the fraction of dimensions whose true value lies in the samples' 5-95 % interval
    - ended: the fraction of samples that predicted the episode's end (left out of the above)
    """
    z, t = predicted / scale, truth[:, None] / scale
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # steps where every sample ended: NaN, said by `ended`
        var = np.nanvar(z, 1) + (0.0 if within is None else np.nanmean(within, 1) / scale**2)
        mean, std = np.nanmean(z, 1), np.maximum(np.sqrt(var), min_std)
        log_density = -0.5 * (((t[:, 0] - mean) / std) ** 2 + np.log(2 * np.pi * std**2)) - np.log(scale)
        low, high = np.nanquantile(z, [0.05, 0.95], axis=1)
        per_episode = {"log_likelihood": log_density.sum(-1),
                       "nrmse": np.sqrt(np.nanmean((z - t) ** 2, axis=(1, 3))),
                       "coverage": ((t[:, 0] >= low) & (t[:, 0] <= high)).mean(-1)}
    ended = np.isnan(predicted).any(-1)
    out = {name: _mean_and_se(values) for name, values in per_episode.items()}
    out["ended"] = ended.mean(axis=(0, 1)).tolist()
    return out


def _mean_and_se(values: np.ndarray) -> dict:
    """Mean and standard error over episodes `[B, H]` per step, ignoring NaN (steps where all samples ended)."""
    finite = np.isfinite(values)
    n = finite.sum(0)
    safe = np.where(finite, values, 0.0)
    mean = safe.sum(0) / np.maximum(n, 1)
    var = ((safe - mean) ** 2 * finite).sum(0) / np.maximum(n - 1, 1)
    se = np.sqrt(var / np.maximum(n, 1))
    return {"mean": [float(m) if k else None for m, k in zip(mean, n)], "se": np.where(n > 1, se, 0.0).tolist()}


def format_table(results: dict, steps: tuple[int, ...] = (1, 10, 25, 50, 100)) -> str:
    """A markdown table of each model's metrics (mean +- standard error over episodes) at `steps` (those
    within the horizon), from `predict`'s results or a predict.json read back."""
    horizon = results["config"]["horizon"]
    steps = [h for h in steps if h <= horizon] + ([horizon] if horizon not in steps else [])
    data = results["data"]
    lines = [f"{data['dataset_id']}, {len(data['episodes'])} held-out episodes, {results['config']['samples']} "
             f"samples, context {results['config']['context']}, start {results['config']['start']}", "",
             "| model | h | log-likelihood | normalized RMSE | 90 % coverage | ended |", "|---|---|---|---|---|---|"]
    for name, model in results["models"].items():
        for h in steps:
            cells = []
            for metric, _ in PANELS:
                mean, se = model[metric]["mean"][h - 1], model[metric]["se"][h - 1]
                cells.append("n/a" if mean is None else f"{mean:.3g} ± {se:.2g}")
            lines.append(f"| {name} | {h} | {' | '.join(cells)} | {model['ended'][h - 1]:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the experiment


def predict(run_dir: str, dynamics_dir: str | None = None, config: PredictConfig = PredictConfig(),
            out: str | None = None, device: str | None = None, frames: bool = True, progress: bool = True) -> dict:
    """Sample `config.samples` futures of `config.horizon` steps from held-out episodes with the run's
    Trajectory Transformer and (`dynamics_dir`) a Gaussian ensemble, on the real actions; score them
    per step. Writes predict.json and predict.png, and frames.png for a fully observed MuJoCo task
    (`frames`), to `out` (default RUN/predict); returns what predict.json holds."""
    from tt.predict.ensemble import load_dynamics, rollout

    device = resolve_device(device or "auto")
    out = out or os.path.join(run_dir, "predict")
    model, discretizer, run_config, _ = load_run(run_dir, device)
    settings = data_settings(run_config, f"run {run_dir}")
    ensemble = None
    if dynamics_dir is not None:
        ensemble, ensemble_config = load_dynamics(dynamics_dir, device)
        check_same_data(settings, data_settings(ensemble_config, f"ensemble {dynamics_dir}"))
    most = model.config.n_transitions - 1
    context = most if config.context is None else config.context
    if context > most:
        raise ValueError(f"context {context}: the model holds {most} previous transitions (trained with "
                         f"{most + 1}-transition windows)")
    start = context if config.start is None else config.start
    data = load_heldout(settings, f"run {run_dir}")
    O, A = model.config.observation_dim, model.config.action_dim
    episodes, rows = episode_windows(data.trajectories, config.episodes, start, config.horizon)
    joined = data.trajectories.joined[rows]  # [B, start + H + 1, T]
    truth = joined[:, start + 1 :, :O]

    results = {"run": run_dir, "dynamics": dynamics_dir, "config": {**dataclasses.asdict(config), "context": context,
                                                                     "start": start},
               "data": {**settings, "episodes": episodes.tolist(), "scale": data.scale.tolist()}, "models": {}}
    started = time.perf_counter()
    prefix, forced = prediction_tokens(discretizer, joined, context, start, config.horizon, O, A)
    tokens = sample_continuations(model, prefix, forced, discretizer, config.plan_config(context),
                                  Philox(config.seed, device), progress)
    tt_states, within = predicted_observations(tokens, prefix[:, -O:], discretizer, O)
    results["models"]["tt"] = {**step_metrics(tt_states, truth, data.scale, within),
                               "seconds": time.perf_counter() - started}
    predictions = {"tt": tt_states}
    if ensemble is not None:
        started = time.perf_counter()
        generator = torch.Generator(device).manual_seed(config.seed)
        states, _ = rollout(ensemble, joined[:, start, :O], joined[:, start : start + config.horizon, O : O + A],
                            config.samples, generator)
        predictions["ensemble"] = states
        results["models"]["ensemble"] = {**step_metrics(states, truth, data.scale),
                                         "seconds": time.perf_counter() - started}
    results["png"] = plot_metrics(results, os.path.join(out, "predict.png"))
    results["frames"] = None
    if frames:
        # episode 0's first sample that never predicts the episode's end (its first if none)
        shown = {name: p[0, np.argmax(~np.isnan(p[0]).any((1, 2)))] for name, p in predictions.items()}
        results["frames"] = render_frames(data, rows[0], start, shown, os.path.join(out, "frames.png"))
    write_json(os.path.join(out, "predict.json"), results)
    return results
