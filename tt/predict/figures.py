"""The figures of `tt predict`: the metrics against the horizon (the paper's Figure 3) and true and
predicted states rendered in the simulator (its Figure 2). Bare matplotlib Figures: pyplot and the
caller's backend are left alone."""

from __future__ import annotations

import warnings

import numpy as np

from tt.io import save_figure

LABELS = {"tt": "Trajectory Transformer", "ensemble": "Gaussian ensemble (single step)"}
PANELS = (("log_likelihood", "log-likelihood of the true state"), ("nrmse", "normalized RMSE"),
          ("coverage", "true value inside the 90 % interval"))


def _save(fig, path: str) -> str:
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_metrics(results: dict, path: str) -> str:
    """Each model's metrics (mean and standard error over episodes) against the prediction step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(PANELS), 3.6))
    axes = fig.subplots(1, len(PANELS))
    for ax, (metric, title) in zip(axes, PANELS):
        for name, model in results["models"].items():
            mean = np.array(model[metric]["mean"], dtype=float)  # None (no sample left) reads as NaN
            se = np.array(model[metric]["se"], dtype=float)
            steps = np.arange(1, len(mean) + 1)
            ax.plot(steps, mean, label=LABELS.get(name, name))
            ax.fill_between(steps, mean - se, mean + se, alpha=0.25)
        ax.set_xlabel("prediction step h")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    config, data = results["config"], results["data"]
    fig.suptitle(f"{data['dataset_id']}: {len(data['episodes'])} held-out episodes, {config['samples']} samples, "
                 f"context {config['context']}", fontsize=10)
    return _save(fig, path)


def simulator_states(observations: np.ndarray, nq: int, nv: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(qpos, qvel) `[n, nq]`, `[n, nv]` of MuJoCo observations `[n, O]` that hold qpos then qvel, whole
    (O = nq + nv) or without the root's x position (O = nq - 1 + nv, Gymnasium's default for
    locomotion: the body is then drawn at x = 0, so the fixed camera keeps it in view); None for other
    observations."""
    O = observations.shape[1]
    if O == nq + nv:
        return observations[:, :nq], observations[:, nq:]
    if O != nq - 1 + nv:
        return None
    return np.concatenate([np.zeros((len(observations), 1)), observations[:, : nq - 1]], 1), observations[:, nq - 1 :]


def render_frames(data, episode_rows: np.ndarray, start: int, predictions: dict[str, np.ndarray], path: str,
                  columns: int = 5) -> str | None:
    """A strip of frames at `columns` steps from the start: the true states and each model's prediction
    (one sampled future: `predictions[name] [H, O]`) set in the data set's simulator. Only for fully observed
    MuJoCo tasks; returns the PNG's path, or None (with a warning) where it cannot be drawn."""
    from tt.video import rendering_env

    if not data.fully_observed:
        return None  # hidden dimensions: a prediction is no simulator state
    try:
        env = rendering_env(data.dataset)
    except Exception as e:  # noqa: BLE001 (no renderer here: the metrics stand without the picture)
        warnings.warn(f"frames.png skipped: {e}", stacklevel=2)
        return None
    try:
        sim = env.unwrapped
        if not (hasattr(sim, "set_state") and hasattr(sim, "model")):
            return None  # not a MuJoCo task
        env.reset(seed=0)
        truth = data.trajectories.joined[episode_rows[start:], : data.observation_dim]
        rows = {"true": truth, **{name: np.concatenate([truth[:1], p]) for name, p in predictions.items()}}
        steps = np.unique(np.linspace(0, len(truth) - 1, columns).round().astype(int))
        images = {}
        for name, observations in rows.items():
            states = simulator_states(observations, sim.model.nq, sim.model.nv)
            if states is None:
                return None
            images[name] = [_draw(env, states[0][h], states[1][h]) for h in steps]
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"frames.png skipped: {e}", stacklevel=2)
        return None
    finally:
        env.close()
    return _strip(images, steps, path)


def _draw(env, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray | None:
    """The frame of one state; None where the state is unknown (the model predicted the episode's end)."""
    if not (np.isfinite(qpos).all() and np.isfinite(qvel).all()):
        return None
    env.unwrapped.set_state(qpos, qvel)
    return env.render()


def _strip(images: dict[str, list], steps: np.ndarray, path: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.2 * len(steps), 2.3 * len(images)))
    axes = fig.subplots(len(images), len(steps), squeeze=False)
    for r, (name, frames) in enumerate(images.items()):
        for c, frame in enumerate(frames):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if frame is None:
                ax.text(0.5, 0.5, "episode end\npredicted", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(frame)
            if r == 0:
                ax.set_title(f"h = {steps[c]}", fontsize=10)
            if c == 0:
                ax.set_ylabel(LABELS.get(name, name), fontsize=8)
    return _save(fig, path)
