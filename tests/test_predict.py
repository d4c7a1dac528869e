"""Open-loop prediction: the sampler against the full-forward reference sample for sample, forced
action tokens, the metrics, and `tt predict` end to end at tiny sizes."""

import json
import os

import numpy as np
import pytest
import torch
from test_planner import random_discretizer, random_model

from tt import reference
from tt.checkpoint import CheckpointError
from tt.cli import main
from tt.config import PlanConfig
from tt.data import make_trajectories
from tt.predict.experiment import (
    PredictConfig,
    predict,
    predicted_observations,
    prediction_tokens,
    sample_continuations,
    step_metrics,
)
from tt.rng import Philox

TINY_RUN = dict(n_layer=1, n_head=2, n_embd=16, batch_size=32, n_bins=20, save_every=100, log_every=5, device="cpu",
                max_steps=20)
TINY_ENSEMBLE = dict(hidden=32, layers=2, max_steps=60, eval_every=20, device="cpu")


def action_forced(B, H, O, A, N, generator):
    """Forced tokens `[B, H*T]` after a prefix ending with an observation: random actions, -1 elsewhere."""
    T = O + A + 2
    kind = (O + torch.arange(H * T)) % T
    return torch.where((kind >= O) & (kind < O + A), torch.randint(0, N, (B, H * T), generator=generator), -1)


def sampling_config(samples, context, **overrides):
    return PlanConfig(**{"horizon": 1, "beam_width": samples, "n_expand": 1, "max_context_transitions": context,
                         "k_obs": None, "cdf_act": None, **overrides})


@pytest.mark.parametrize("O, A, K, B, c, H, S, C, filters", [
    (3, 2, 4, 2, 2, 5, 3, 3, {}),  # the window slides (H > C)
    (1, 1, 3, 1, 0, 7, 4, 2, {}),  # Markovian window (one previous transition), no context
    (4, 1, 5, 3, 4, 3, 1, 5, {}),  # a whole block of context, one sample
    (2, 3, 4, 2, 1, 6, 5, 4, dict(k_obs=3, cdf_rew=0.7, temperature=0.8)),  # the planner's filters
    (2, 1, 6, 2, 3, 8, 2, None, {}),  # no crop but the block size: the window slides at K
])
def test_samples_equal_the_reference_sample_for_sample(O, A, K, B, c, H, S, C, filters):
    model = random_model(O, A, N=15, K=K, seed=O + 10 * A)
    T = model.transition_dim
    g = torch.Generator().manual_seed(H)
    prefix = torch.randint(0, 15, (B, c * T + O), generator=g)
    forced = action_forced(B, H, O, A, 15, g)
    config = sampling_config(S, C, **filters)
    for seed in range(3):
        fast = sample_continuations(model, prefix, forced, random_discretizer(15, T), config, Philox(seed))
        slow = reference.sample_continuations(model, prefix, forced, S, config, Philox(seed))
        assert fast.shape == (B, S, H * T)
        assert torch.equal(fast, slow), f"seed {seed}"


def test_cached_window_samples_equal_the_uncropped_reference_while_the_block_holds_them():
    model = random_model(2, 1, N=15, K=8)
    g = torch.Generator().manual_seed(0)
    prefix, forced = torch.randint(0, 15, (2, 2 * 5 + 2), generator=g), action_forced(2, 5, 2, 1, 15, g)
    config = sampling_config(3, None, window="cached")
    fast = sample_continuations(model, prefix, forced, random_discretizer(15, 5), config, Philox(1))
    assert torch.equal(fast, reference.sample_continuations(model, prefix, forced, 3, config, Philox(1)))


def test_forced_tokens_are_kept_and_the_rest_is_drawn():
    O, A, H, S = 3, 2, 6, 8
    model = random_model(O, A, N=15, K=4)
    T = model.transition_dim
    g = torch.Generator().manual_seed(3)
    prefix, forced = torch.randint(0, 15, (2, T + O), generator=g), action_forced(2, H, O, A, 15, g)
    tokens = sample_continuations(model, prefix, forced, random_discretizer(15, T), sampling_config(S, 3), Philox(0))
    given = forced >= 0
    assert torch.equal(tokens[:, :, given[0]], forced[:, None, given[0]].expand(-1, S, -1))
    assert (tokens >= 0).all() and (tokens <= 15).all()
    assert len({tuple(row.tolist()) for row in tokens[0]}) > 1  # samples differ where the model draws


def test_bad_sampling_inputs_raise():
    model = random_model(2, 1, N=15, K=4)
    disc, config = random_discretizer(15, 5), sampling_config(2, 3)
    prefix, forced = torch.zeros(2, 7, dtype=torch.long), torch.full((2, 10), -1)
    with pytest.raises(ValueError, match="same positions"):
        sample_continuations(model, prefix, torch.stack([forced[0], forced[1].clone().fill_(1)]), disc, config,
                             Philox(0))
    with pytest.raises(ValueError, match="forced must be"):
        sample_continuations(model, prefix, forced[:1], disc, config, Philox(0))
    padded = prefix.clone()
    padded[0, :5] = -1  # row 0 has no context transition, row 1 has one
    with pytest.raises(ValueError, match="same length"):
        sample_continuations(model, padded, forced, disc, config, Philox(0))


def test_tokens_are_laid_out_as_the_episode():
    """The prefix holds the transitions before `start` and its observation; forced tokens are the real
    actions; with every token taken from the episode, the predicted observations are the true ones' bins."""
    rng = np.random.default_rng(0)
    O, A, start, H, c = 2, 1, 3, 4, 2
    trajectories = make_trajectories([rng.normal(size=(12, O))], [rng.normal(size=(12, A))], [rng.normal(size=12)],
                                     [False])
    joined = trajectories.joined[None, : start + H + 1]
    disc = random_discretizer(15, O + A + 2)
    tokens = torch.from_numpy(disc.discretize(joined))
    prefix, forced = prediction_tokens(disc, joined, c, start, H, O, A)
    T = O + A + 2
    assert torch.equal(prefix[0], torch.cat([tokens[0, start - c : start].reshape(-1), tokens[0, start, :O]]))
    actions = forced[0, (O + torch.arange(H * T)) % T == O]
    assert torch.equal(actions, tokens[0, start : start + H, O])
    every = tokens[0, start:].reshape(-1)[O : O + H * T][None, None]  # as if every token had been forced
    predicted, within = predicted_observations(every, prefix[:, -O:], disc, O)
    true_tokens = tokens[0, start + 1 :, :O].numpy()
    assert np.array_equal(predicted[0, 0], disc.reconstruct(true_tokens, columns=slice(0, O)))
    widths = disc.thresholds[true_tokens + 1, np.arange(O)] - disc.thresholds[true_tokens, np.arange(O)]
    assert np.allclose(within[0, 0], widths**2 / 12)  # a bin's uniform variance


def test_metrics_of_samples_around_the_truth():
    rng = np.random.default_rng(0)
    B, S, H, O = 40, 400, 3, 2
    spread = np.array([1.0, 2.0, 0.5])[:, None]  # per step
    centre = rng.normal(size=(B, H, O))
    truth = centre + rng.normal(size=(B, H, O)) * spread  # a draw from the samples' own distribution ...
    samples = centre[:, None] + rng.normal(size=(B, S, H, O)) * spread
    samples[:, :, 2] += 0.5  # ... but at the last step, off by one standard deviation
    samples[0, :10, 1] = np.nan  # samples that predicted the end
    m = step_metrics(samples, truth, scale=np.ones(O))
    assert np.allclose(m["coverage"]["mean"][:2], [0.9, 0.9], atol=0.06)
    assert m["coverage"]["mean"][2] == pytest.approx(0.74, abs=0.06)
    assert np.allclose(m["nrmse"]["mean"], [np.sqrt(2), 2 * np.sqrt(2), np.sqrt(2 * 0.25 + 0.25)], rtol=0.08)
    expected = [-O * (0.5 * np.log(2 * np.pi * s**2) + 0.5) for s in (1.0, 2.0)]
    assert np.allclose(m["log_likelihood"]["mean"][:2], expected, atol=0.3)
    assert m["ended"][1] == pytest.approx(10 / (B * S)) and m["ended"][0] == 0
    scaled = step_metrics(samples * 10, truth * 10, scale=np.full(O, 10.0))  # raw units: a density per 10x unit
    assert np.allclose(scaled["log_likelihood"]["mean"], np.array(m["log_likelihood"]["mean"]) - O * np.log(10))
    assert np.allclose(scaled["nrmse"]["mean"], m["nrmse"]["mean"])


def test_samples_that_stand_for_bins_add_the_bins_variance():
    """Four equal samples of a bin of width 1 (variance 1/12): the Gaussian is the bin's, not a point."""
    m = step_metrics(np.zeros((1, 4, 1, 1)), np.full((1, 1, 1), 0.5), np.ones(1), within=np.full((1, 4, 1, 1), 1 / 12))
    assert m["log_likelihood"]["mean"][0] == pytest.approx(-0.5 * (0.25 * 12 + np.log(2 * np.pi / 12)))
    point = step_metrics(np.zeros((1, 4, 1, 1)), np.full((1, 1, 1), 0.5), np.ones(1))  # the floor: 0.01
    assert point["log_likelihood"]["mean"][0] == pytest.approx(-0.5 * (0.25 / 1e-4 + np.log(2 * np.pi * 1e-4)))


def test_a_step_where_every_sample_ended_is_not_a_number():
    samples = np.full((2, 3, 2, 1), np.nan)
    samples[:, :, 0] = 0.0
    m = step_metrics(samples, np.zeros((2, 2, 1)), np.ones(1))
    assert m["log_likelihood"]["mean"][1] is None and m["ended"] == [0.0, 1.0]
    assert m["nrmse"]["mean"][0] == 0.0


# ----------------------------------------------------------------------------- tt predict, end to end


@pytest.fixture(scope="module")
def runs(pendulum_medium, tmp_path_factory):
    """A tiny run and ensemble holding out pendulum-medium's last 3 episodes, a run that holds none out,
    and an ensemble that holds out another number."""
    from tt.config import make_config
    from tt.predict.ensemble import DynamicsConfig, train_dynamics
    from tt.train import train

    root = tmp_path_factory.mktemp("predict")
    paths = {name: str(root / name) for name in ("run", "all", "ensemble", "other")}
    train(make_config("small", dataset="pendulum-medium", holdout_episodes=3, **TINY_RUN), paths["run"],
          progress=False)
    train(make_config("small", dataset="pendulum-medium", **{**TINY_RUN, "max_steps": 1}), paths["all"],
          progress=False)
    train_dynamics(DynamicsConfig(dataset="pendulum-medium", holdout_episodes=3, **TINY_ENSEMBLE), paths["ensemble"],
                   progress=False)
    train_dynamics(DynamicsConfig(dataset="pendulum-medium", holdout_episodes=2, **{**TINY_ENSEMBLE, "max_steps": 1}),
                   paths["other"], progress=False)
    return paths


def test_tt_predict_writes_json_and_png_for_both_models(runs, tmp_path, capsys):
    out = str(tmp_path / "p")
    assert main(["predict", "--run", runs["run"], "--dynamics", runs["ensemble"], "--episodes", "2", "--horizon", "6",
                 "--samples", "4", "--context", "3", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "predict.json, predict.png written" in printed and "| ensemble | 6 |" in printed
    results = json.load(open(os.path.join(out, "predict.json")))
    assert set(results["models"]) == {"tt", "ensemble"}
    for model in results["models"].values():
        for metric in ("log_likelihood", "nrmse", "coverage"):
            assert len(model[metric]["mean"]) == 6 and len(model[metric]["se"]) == 6
    assert results["config"]["start"] == 3 and results["data"]["episodes"] == [0, 1]
    assert os.path.getsize(os.path.join(out, "predict.png")) > 10_000
    assert results["frames"] is None  # Pendulum-v1 is no MuJoCo task


def test_predictions_are_reproducible_by_seed(runs, tmp_path):
    config = PredictConfig(episodes=1, horizon=4, samples=3, seed=5)
    a, b = (predict(runs["run"], config=config, out=str(tmp_path / n), progress=False) for n in "ab")
    assert a["models"]["tt"]["nrmse"] == b["models"]["tt"]["nrmse"]


def test_partially_observed_runs_see_their_visible_dimensions(pendulum_medium, tmp_path):
    from tt.checkpoint import load_run
    from tt.config import make_config
    from tt.data import visible_observations
    from tt.predict.ensemble import DynamicsConfig, train_dynamics
    from tt.train import train

    assert [len(visible_observations(O, 0.5)) for O in (1, 3, 11, 17)] == [1, 1, 5, 8]  # half hidden, one kept
    visible = visible_observations(3, 0.5).tolist()
    assert visible == visible_observations(3, 0.5).tolist()  # seeded
    common = dict(holdout_episodes=3, hidden_obs_fraction=0.5)
    train(make_config("small", dataset="pendulum-medium", **common, **TINY_RUN), str(tmp_path / "run"), progress=False)
    model, _, config, _ = load_run(str(tmp_path / "run"))
    assert model.config.observation_dim == len(visible) and config["data"]["visible_observation_dims"] == visible
    train_dynamics(DynamicsConfig(dataset="pendulum-medium", **common, **TINY_ENSEMBLE), str(tmp_path / "ens"),
                   progress=False)
    results = predict(str(tmp_path / "run"), str(tmp_path / "ens"), PredictConfig(episodes=1, horizon=3, samples=2),
                      out=str(tmp_path / "p"), progress=False)
    assert len(results["data"]["scale"]) == len(visible)
    train_dynamics(DynamicsConfig(dataset="pendulum-medium", holdout_episodes=3, **TINY_ENSEMBLE),
                   str(tmp_path / "full"), progress=False)
    with pytest.raises(ValueError, match="visible_observation_dims"):
        predict(str(tmp_path / "run"), str(tmp_path / "full"), PredictConfig(episodes=1, horizon=3, samples=2),
                out=str(tmp_path / "q"), progress=False)


@pytest.mark.parametrize("args, message", [
    (["--run", "{tmp}/nothing"], "no run directory"),
    (["--run", "{run}", "--horizon", "0"], "--horizon: must be >= 1"),
    (["--run", "{run}", "--dynamics", "{other}"], "different data: holdout_episodes 3 against 2"),
    (["--run", "{run}", "--dynamics", "{tmp}/nothing"], "no dynamics ensemble at"),
    (["--run", "{all}"], "trained on every episode"),
    (["--run", "{run}", "--horizon", "300"], "of the 3 held-out episodes have the 310 steps"),
    (["--run", "{run}", "--context", "12"], "the model holds 9 previous transitions"),
])
def test_bad_predict_inputs_are_one_line_errors(runs, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, **runs) for a in args]
    assert main(["predict", *args, "--out", str(tmp_path / "p")]) == 2
    assert message in capsys.readouterr().err


def test_predict_config_refuses_bad_settings():
    for bad in (dict(horizon=0), dict(samples=0), dict(context=0), dict(start=-1), dict(window="wide"),
                dict(cdf_obs=2.0)):
        with pytest.raises(ValueError):
            PredictConfig(**bad)
    with pytest.raises(CheckpointError):
        predict("/nonexistent/run", config=PredictConfig(), progress=False)


def test_mujoco_frames_show_true_and_predicted_states(inverted_pendulum_medium, tmp_path):
    """InvertedPendulum's observation is its whole simulator state: frames.png renders it."""
    from tt.config import make_config
    from tt.train import train
    from tt.video import use_headless_rendering

    use_headless_rendering()
    train(make_config("small", dataset="invertedpendulum-medium", holdout_episodes=4, **TINY_RUN),
          str(tmp_path / "run"), progress=False)
    results = predict(str(tmp_path / "run"), config=PredictConfig(episodes=1, horizon=8, samples=2),
                      out=str(tmp_path / "p"), progress=False)
    if results["frames"] is None:
        pytest.skip("no off-screen OpenGL here (MUJOCO_GL)")
    assert os.path.getsize(results["frames"]) > 10_000
