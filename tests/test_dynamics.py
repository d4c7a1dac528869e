"""The single-step Gaussian ensemble (PETS): training, early stopping, saving, trajectory sampling."""

import json
import os

import numpy as np
import pytest
import torch

from tt.cli import main
from tt.data import load_dataset, make_trajectories, training_split, trajectories_from_minari
from tt.io import read_jsonl
from tt.predict.ensemble import (
    DynamicsConfig,
    GaussianEnsemble,
    load_dynamics,
    one_step_errors,
    rollout,
    train_dynamics,
    transitions,
)

SMALL = dict(dataset="pendulum-medium", hidden=64, layers=2, max_steps=300, eval_every=50, holdout_episodes=3,
             device="cpu")


@pytest.fixture(scope="module")
def trained(pendulum_medium, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dynamics") / "ens")
    return train_dynamics(DynamicsConfig(**SMALL), out, progress=False), out


def test_transitions_pair_each_step_with_the_next_within_an_episode():
    obs = [np.arange(8.0).reshape(4, 2), 10 + np.arange(6.0).reshape(3, 2)]
    data = make_trajectories(obs, [np.ones((4, 1)), 2 * np.ones((3, 1))], [np.arange(4.0), np.arange(3.0)],
                             [False, False])
    inputs, targets = transitions(data)
    assert len(inputs) == 3 + 2  # every step but each episode's last
    assert np.array_equal(inputs[:, :2], np.concatenate([obs[0][:3], obs[1][:2]]))
    assert np.array_equal(targets[:, :2], np.full((5, 2), 2.0))  # the state change
    assert np.array_equal(targets[:, 2], [0, 1, 2, 0, 1])  # the step's reward


def test_heldout_nll_falls_in_training(trained):
    _, out = trained
    records = read_jsonl(os.path.join(out, "metrics.jsonl"))
    nll = [r["heldout_nll"] for r in records]
    assert records[0]["step"] == 0 and len(records) > 3
    assert min(nll[1:]) < nll[0] - 1.0
    assert all(len(r["members_heldout_nll"]) == 5 for r in records)


def test_one_step_predictions_beat_no_change_on_heldout_episodes(trained):
    ensemble, out = trained
    summary = json.load(open(os.path.join(out, "config.json")))["summary"]
    assert summary["one_step_nrmse"] < 0.5 * summary["no_change_nrmse"]  # on the validation transitions
    _, heldout, _ = training_split(trajectories_from_minari(load_dataset("pendulum-medium")), holdout_episodes=3)
    errors = one_step_errors(ensemble, *transitions(heldout))  # episodes the ensemble never saw
    assert errors["one_step_nrmse"] < 0.5 * errors["no_change_nrmse"]


def test_saved_ensemble_reloads_identically(trained):
    ensemble, out = trained
    loaded, config = load_dynamics(out)
    assert config["data"]["holdout_episodes"] == 3 and config["model"]["members"] == 5
    obs, act = torch.randn(7, 3), torch.randn(7, 1)
    for a, b in zip(ensemble.predict(obs, act), loaded.predict(obs, act)):
        assert torch.equal(a, b)


def test_bad_ensemble_directories_are_clear_errors(trained, tmp_path):
    with pytest.raises(ValueError, match="no dynamics ensemble at"):
        load_dynamics(str(tmp_path / "nothing"))
    damaged = tmp_path / "damaged"
    os.makedirs(damaged)
    for name in ("config.json", "model.safetensors"):
        open(damaged / name, "wb").write(open(os.path.join(trained[1], name), "rb").read())
    open(damaged / "model.safetensors", "wb").write(b"not safetensors")
    with pytest.raises(ValueError, match="does not load"):
        load_dynamics(str(damaged))


def test_each_particle_keeps_one_member():
    """Trajectory sampling (TS-inf): particle w of every state follows member w mod E at every step."""
    torch.manual_seed(0)
    ensemble = GaussianEnsemble(2, 1, members=3, hidden=8, layers=1).eval()
    start, actions = np.random.default_rng(0).normal(size=(2, 2)), np.random.default_rng(1).normal(size=(2, 4, 1))
    states, rewards = rollout(ensemble, start, actions, samples=4, generator=torch.Generator().manual_seed(3))
    assert states.shape == (2, 4, 4, 2) and rewards.shape == (2, 4, 4)
    noise_source = torch.Generator().manual_seed(3)
    state = torch.as_tensor(start, dtype=torch.float32).repeat_interleave(4, 0)
    member = torch.arange(8) % 4 % 3
    for h in range(4):
        mean, std = ensemble.predict(state, torch.as_tensor(actions[:, h], dtype=torch.float32).repeat_interleave(4, 0))
        noise = torch.randn(8, 3, generator=noise_source)
        step = mean[member, torch.arange(8)] + std[member, torch.arange(8)] * noise
        state = state + step[:, :2]
        np.testing.assert_allclose(states[:, :, h].reshape(8, 2), state.numpy(), rtol=1e-6)
        np.testing.assert_allclose(rewards[:, :, h].reshape(8), step[:, 2].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="predicts 2 observation"):
        rollout(ensemble, start[:, :1], actions, samples=2)


def test_training_stops_when_no_member_improves(pendulum_medium, tmp_path):
    cfg = DynamicsConfig(**{**SMALL, "max_steps": 1000, "eval_every": 10, "patience": 2, "min_delta": 1e9})
    train_dynamics(cfg, str(tmp_path / "ens"), progress=False)
    assert [r["step"] for r in read_jsonl(str(tmp_path / "ens" / "metrics.jsonl"))] == [0, 10, 20]


def test_config_refuses_bad_settings():
    for bad in (dict(members=0), dict(validation_fraction=1.0), dict(holdout_episodes=-1),
                dict(hidden_obs_fraction=1.0)):
        with pytest.raises(ValueError):
            DynamicsConfig(**bad)


def test_cli_train_dynamics(pendulum_medium, tmp_path, capsys):
    out = str(tmp_path / "ens")
    assert main(["train-dynamics", "--dataset", "pendulum-medium", "--out", out, "--holdout-episodes", "2",
                 "--hidden", "16", "--layers", "1", "--steps", "20", "--eval-every", "10", "--device", "cpu"]) == 0
    assert "ensemble written to" in capsys.readouterr().out
    _, config = load_dynamics(out)
    assert config["train"]["max_steps"] == 20 and config["data"]["dataset_id"] == "tt/pendulum/medium-v0"
    assert main(["train-dynamics", "--dataset", "pendulum-medium", "--out", out + "-2", "--holdout-episodes",
                 "12"]) == 2
    assert "cannot hold out 12" in capsys.readouterr().err
    again = ["train-dynamics", "--dataset", "pendulum-medium", "--out", out, "--holdout-episodes", "2", "--hidden",
             "16", "--layers", "1", "--steps", "10", "--eval-every", "10", "--device", "cpu"]
    assert main(again) == 2 and "already holds a dynamics ensemble" in capsys.readouterr().err
    assert load_dynamics(out)[1]["train"]["max_steps"] == 20  # kept
    assert main([*again, "--overwrite"]) == 0  # replaced, whole
    assert load_dynamics(out)[1]["train"]["max_steps"] == 10 and sorted(os.listdir(tmp_path)) == ["ens"]
