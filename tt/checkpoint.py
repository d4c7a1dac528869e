"""Run directories: weights and discretizer in safetensors, configs in JSON, crash-safe.

    run/checkpoint.json                    the commit record: step, checkpoint folder, SHA-256s
    run/step-00001000/config.json          model config, data settings, training config
    run/step-00001000/model.safetensors    weights
    run/step-00001000/discretizer.safetensors  thresholds [N+1, T]
    run/step-00001000/trainer.pt           optimizer and RNG state for --resume (tensors only)
    run/metrics.jsonl, run/loss.png        the training log (append-only) and its plot

A critic directory (`tt train-critic`) is checkpointed alike, with critic.safetensors for the weights.

A save writes a new step folder beside the current one, fsyncs it, and then switches
`checkpoint.json` to it with one rename; only then is the previous folder removed. A crash at
any moment leaves a loadable checkpoint: the previous one until the switch, the new one after.
The hashes catch files damaged later. Runs saved before step folders existed (files directly
in `run/`, a record without "folder") still load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from tt.critic import Critic, CriticShape
from tt.discretize import Discretizer
from tt.io import fsync_path, fsync_tree, read_json, write_json
from tt.model import GPTConfig, TrajectoryTransformer


class CheckpointError(ValueError):
    """A run directory that is missing, corrupt or inconsistent."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_folder(step: int) -> str:
    return f"step-{step:08d}"


def save_run(run_dir: str, model: TrajectoryTransformer, discretizer: Discretizer, config: dict,
             step: int = 0, trainer_state: dict | None = None) -> None:
    """Write a complete checkpoint of a run; `config` holds everything but the model config."""

    def write(staging: str) -> None:
        write_json(os.path.join(staging, "config.json"), {**config, "model": model.config.to_dict()})
        save_weights(model, os.path.join(staging, "model.safetensors"), "tt.TrajectoryTransformer/1")
        discretizer.save(os.path.join(staging, "discretizer.safetensors"))

    save_checkpoint(run_dir, write, step, trainer_state)


def save_weights(module: torch.nn.Module, path: str, format: str) -> None:
    """A module's state as float32 safetensors, its `format` in the metadata."""
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in module.state_dict().items()}
    save_file(weights, path, metadata={"format": format})


def save_checkpoint(run_dir: str, write: Callable[[str], None], step: int = 0,
                    trainer_state: dict | None = None) -> None:
    """The checkpoint of any tt directory (a run, a critic): `write(folder)` writes its files into a new
    step folder beside the current one, `trainer_state` (tensors only) goes to trainer.pt, and the
    record switches to the folder once it is complete (see the module's docstring)."""
    os.makedirs(run_dir, exist_ok=True)
    staging = tempfile.mkdtemp(dir=run_dir, prefix=f".{step_folder(step)}-")
    try:
        write(staging)
        if trainer_state is not None:
            torch.save(trainer_state, os.path.join(staging, "trainer.pt"))
        for name in os.listdir(staging):
            os.chmod(os.path.join(staging, name), 0o644)
        os.chmod(staging, 0o755)
        fsync_tree(staging)
        name = _free_folder_name(run_dir, step)
        folder = os.path.join(run_dir, name)
        if os.path.exists(folder):  # left by a crash between its rename and the switch: never committed
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    fsync_path(run_dir)
    record = {"step": step, "folder": name,
              "sha256": {f: _sha256(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}}
    write_json(os.path.join(run_dir, "checkpoint.json"), record)  # the switch
    _remove_stale(run_dir, keep=name)


def _free_folder_name(run_dir: str, step: int) -> str:
    """`step-NNNNNNNN`, or with a suffix when a save repeats the committed step: never the committed folder."""
    record_path = os.path.join(run_dir, "checkpoint.json")
    committed = read_json(record_path).get("folder") if os.path.exists(record_path) else None
    name, n = step_folder(step), 0
    while name == committed:
        n += 1
        name = f"{step_folder(step)}-{n}"
    return name


def _remove_stale(run_dir: str, keep: str) -> None:
    """Earlier step folders and unfinished staging folders."""
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name != keep and (name.startswith("step-") or name.startswith(".step-")) and os.path.isdir(path):
            shutil.rmtree(path)


def checkpoint_folder(run_dir: str) -> str:
    """The folder that holds the current checkpoint's files (verified against checkpoint.json)."""
    return _verified_record(run_dir)[1]


def _verified_record(run_dir: str) -> tuple[dict, str]:
    record_path = os.path.join(run_dir, "checkpoint.json")
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"no run directory at {run_dir}")
    if not os.path.exists(record_path):
        raise CheckpointError(f"{run_dir} holds no checkpoint.json: not a tt run, or its first save never finished")
    record = read_json(record_path)
    if not isinstance(record.get("folder"), str) or not isinstance(record.get("sha256"), dict):
        raise CheckpointError(f"{record_path} names no checkpoint folder and digests: not written by this tt")
    folder = os.path.join(run_dir, record["folder"])
    for name, digest in record["sha256"].items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint file {path} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"checkpoint file {path} does not match checkpoint.json: corrupt, or from "
                                  "another save")
    return record, folder


def load_checkpoint(run_dir: str) -> tuple[str, dict, int]:
    """(the folder of the current checkpoint, its config.json, its step), its files checked against
    their record."""
    record, folder = _verified_record(run_dir)
    return folder, read_json(os.path.join(folder, "config.json")), record["step"]


def load_run(run_dir: str, device: torch.device | str = "cpu"):
    """(model in eval mode, discretizer, config dict, step) of a run directory."""
    folder, config, step = load_checkpoint(run_dir)
    try:
        model_config = GPTConfig(**config["model"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}/config.json has no valid model config: {e}") from e
    model = TrajectoryTransformer(model_config)
    try:
        weights = load_file(os.path.join(folder, "model.safetensors"))
        model.load_state_dict(weights)
    except Exception as e:
        raise CheckpointError(f"weights in {run_dir} do not fit the model config: {e}") from e
    discretizer = Discretizer.load(os.path.join(folder, "discretizer.safetensors"))
    if discretizer.transition_dim != model_config.transition_dim or discretizer.n_bins != model_config.n_bins:
        raise CheckpointError(f"discretizer ({discretizer.n_bins} bins, {discretizer.transition_dim} dims) does not "
                              f"match the model ({model_config.n_bins} bins, {model_config.transition_dim} dims)")
    return model.to(device).eval(), discretizer, config, step


def save_critic(critic_dir: str, critic: Critic, config: dict, step: int = 0,
                trainer_state: dict | None = None) -> None:
    """Write a complete checkpoint of a critic (`tt train-critic`): its networks, sizes and training config."""

    def write(staging: str) -> None:
        write_json(os.path.join(staging, "config.json"), {**config, "critic": critic.shape.to_dict()})
        save_weights(critic, os.path.join(staging, "critic.safetensors"), "tt.Critic/1")

    save_checkpoint(critic_dir, write, step, trainer_state)


def load_critic(critic_dir: str, device: torch.device | str = "cpu") -> tuple[Critic, dict, int]:
    """(critic in eval mode, its config dict, step) of a critic directory; a directory that is missing,
    damaged or holds something else (a run) is a CheckpointError that says so."""
    try:
        folder, config, step = load_checkpoint(critic_dir)
    except CheckpointError as e:
        raise CheckpointError(f"critic {critic_dir}: {e}") from e
    if "critic" not in config:
        raise CheckpointError(f"{critic_dir} holds no critic (a tt run?): give a directory `tt train-critic` wrote")
    try:
        critic = Critic(CriticShape(**config["critic"]))
        critic.load_state_dict(load_file(os.path.join(folder, "critic.safetensors")))
    except Exception as e:
        raise CheckpointError(f"critic {critic_dir}: its weights do not fit its config ({e})") from e
    return critic.to(device).eval(), config, step


@dataclass
class Run:
    """A trained run, loaded once (its files checked against their record, the model built) and passed
    down to whatever uses it: its directory, model (eval mode), discretizer, stored config and step."""

    path: str
    model: TrajectoryTransformer
    discretizer: Discretizer
    config: dict
    step: int

    @property
    def goal_conditioned(self) -> bool:
        return self.model.config.goal_conditioned

    @property
    def data(self) -> dict:
        """What the run records of its data set (`dataset_id`, `env_id`, goal columns, ...)."""
        return self.config.get("data") or {}


def open_run(run: str | Run, device: torch.device | str = "cpu") -> Run:
    """A run directory as a `Run` (a `Run` is returned as it is)."""
    return run if isinstance(run, Run) else Run(run, *load_run(run, device))


def load_trainer_state(run_dir: str) -> dict:
    """Optimizer and RNG state saved beside the weights (tensors only: weights_only=True)."""
    path = os.path.join(checkpoint_folder(run_dir), "trainer.pt")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} has no trainer.pt to resume from")
    return torch.load(path, map_location="cpu", weights_only=True)
