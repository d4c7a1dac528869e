"""Run directories: weights and discretizer in safetensors, configs in JSON, written atomically.

    run/config.json              model config, data settings, training config
    run/model.safetensors        weights
    run/discretizer.safetensors  thresholds [N+1, T]
    run/trainer.pt               optimizer and RNG state for --resume (tensors only)
    run/checkpoint.json          step and SHA-256 of each file above, written last

`checkpoint.json` is the commit record: a crash mid-save leaves the previous record, whose
hashes then no longer match, and loading says so instead of mixing two checkpoints.
"""

from __future__ import annotations

import hashlib
import os

import torch
from safetensors.torch import load_file, save_file

from tt.discretize import Discretizer
from tt.io import atomic_write, read_json, write_json
from tt.model import GPTConfig, TrajectoryTransformer

FILES = ("config.json", "model.safetensors", "discretizer.safetensors")


class CheckpointError(ValueError):
    """A run directory that is missing, corrupt or inconsistent."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_run(run_dir: str, model: TrajectoryTransformer, discretizer: Discretizer, config: dict,
             step: int = 0, trainer_state: dict | None = None) -> None:
    """Write a complete checkpoint of a run; `config` holds everything but the model config."""
    os.makedirs(run_dir, exist_ok=True)
    write_json(os.path.join(run_dir, "config.json"), {**config, "model": model.config.to_dict()})
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_write(os.path.join(run_dir, "model.safetensors")) as tmp:
        save_file(weights, tmp, metadata={"format": "tt.TrajectoryTransformer/1"})
    discretizer.save(os.path.join(run_dir, "discretizer.safetensors"))
    files = list(FILES)
    if trainer_state is not None:
        with atomic_write(os.path.join(run_dir, "trainer.pt")) as tmp:
            torch.save(trainer_state, tmp)
        files.append("trainer.pt")
    record = {"step": step, "sha256": {f: _sha256(os.path.join(run_dir, f)) for f in files}}
    write_json(os.path.join(run_dir, "checkpoint.json"), record)


def _verified_record(run_dir: str) -> dict:
    record_path = os.path.join(run_dir, "checkpoint.json")
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"no run directory at {run_dir}")
    if not os.path.exists(record_path):
        raise CheckpointError(f"{run_dir} holds no checkpoint.json: not a tt run, or its first save never finished")
    record = read_json(record_path)
    for name, digest in record.get("sha256", {}).items():
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint file {path} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(f"checkpoint file {path} does not match checkpoint.json: corrupt, or from "
                                  "another save")
    return record


def load_run(run_dir: str, device: torch.device | str = "cpu"):
    """(model in eval mode, discretizer, config dict, step) of a run directory."""
    record = _verified_record(run_dir)
    config = read_json(os.path.join(run_dir, "config.json"))
    try:
        model_config = GPTConfig(**config["model"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{run_dir}/config.json has no valid model config: {e}") from e
    model = TrajectoryTransformer(model_config)
    try:
        weights = load_file(os.path.join(run_dir, "model.safetensors"))
        model.load_state_dict(weights)
    except Exception as e:
        raise CheckpointError(f"weights in {run_dir} do not fit the model config: {e}") from e
    discretizer = Discretizer.load(os.path.join(run_dir, "discretizer.safetensors"))
    if discretizer.transition_dim != model_config.transition_dim or discretizer.n_bins != model_config.n_bins:
        raise CheckpointError(f"discretizer ({discretizer.n_bins} bins, {discretizer.transition_dim} dims) does not "
                              f"match the model ({model_config.n_bins} bins, {model_config.transition_dim} dims)")
    return model.to(device).eval(), discretizer, config, record["step"]


def load_trainer_state(run_dir: str) -> dict:
    """Optimizer and RNG state saved beside the weights (tensors only: weights_only=True)."""
    _verified_record(run_dir)
    path = os.path.join(run_dir, "trainer.pt")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} has no trainer.pt to resume from")
    return torch.load(path, map_location="cpu", weights_only=True)
