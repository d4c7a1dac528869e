"""The goal-dependence measurement of a goal-conditioned model (`tt.eval.goal_dependence`): the exact joint of
the first action's tokens, the data policy's, and the command on a trained run."""

import json
import math

import numpy as np
import pytest
import torch
from test_goal import pointmaze_tiny  # noqa: F401  (the fixture)
from test_planner import random_discretizer

from tt.discretize import Discretizer
from tt.eval.goal_dependence import (
    bound_mass,
    data_action_distribution,
    expected_action,
    first_action_distribution,
    first_action_policy,
    main,
    total_variation,
)
from tt.model import GPTConfig, TrajectoryTransformer

O, N = 4, 7


def goal_model(seed: int = 0) -> TrajectoryTransformer:
    torch.manual_seed(seed)
    model = TrajectoryTransformer(GPTConfig(O, 2, n_bins=N, n_transitions=3, n_layer=2, n_head=2, n_embd=16,
                                            goal_conditioned=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.eval().double()


def test_the_joint_first_action_is_the_product_of_single_forwards():
    model, discretizer = goal_model(), random_discretizer(N, O + 4, seed=1)
    rng = np.random.default_rng(0)
    observation, goal = rng.normal(size=O), rng.normal(size=O)
    joint = first_action_distribution(model, discretizer, observation, goal)
    assert joint.shape == (N, N) and math.isclose(joint.sum(), 1.0, rel_tol=1e-12)
    obs = torch.as_tensor(discretizer.discretize(observation, columns=slice(0, O)))
    g = torch.as_tensor(discretizer.discretize(goal, columns=slice(0, O)))[None]
    with torch.no_grad():
        first = model(obs[None], goal=g)[0, O - 1, :N].softmax(-1)
        for j, k in [(0, 0), (3, 5), (N - 1, 2), (6, 6)]:
            second = model(torch.cat([obs, torch.tensor([j])])[None], goal=g)[0, O, :N].softmax(-1)
            assert math.isclose(joint[j, k], float(first[j] * second[k]), rel_tol=1e-10)


def test_a_model_blind_to_its_goal_measures_zero():
    model, discretizer = goal_model(), random_discretizer(N, O + 4, seed=1)
    rng = np.random.default_rng(1)
    observation, g1, g2 = rng.normal(size=(3, O))
    assert total_variation(first_action_distribution(model, discretizer, observation, g1),
                           first_action_distribution(model, discretizer, observation, g2)) > 0.01
    with torch.no_grad():
        model.goal_emb.weight.zero_()  # every goal embeds alike: the goal cannot move the action
    assert total_variation(first_action_distribution(model, discretizer, observation, g1),
                           first_action_distribution(model, discretizer, observation, g2)) < 1e-12


def test_the_data_policy_distribution_is_the_clipped_noise_binned():
    from scipy.stats import norm

    thresholds = np.zeros((N + 1, O + 4))
    thresholds[:, O : O + 2] = np.linspace(-1.0, 1.0, N + 1)[:, None]
    discretizer = Discretizer(thresholds)
    action = np.array([0.3, -0.8])
    exact = data_action_distribution(discretizer, O, action, 0.0)
    token = discretizer.discretize(action, columns=slice(O, O + 2))
    assert exact.sum() == 1.0 and exact[token[0], token[1]] == 1.0
    noisy = data_action_distribution(discretizer, O, action, 0.5)
    for d, marginal in enumerate((noisy.sum(1), noisy.sum(0))):  # bins of clip(a + e): the last holds +1 and above
        cdf = norm.cdf(thresholds[1:-1, O + d], loc=action[d], scale=0.5)
        np.testing.assert_allclose(marginal, np.diff(np.concatenate([[0.0], cdf, [1.0]])), atol=1e-12)
    clipped_mean = np.clip(action + np.random.default_rng(1).normal(0.0, 0.5, (100_000, 2)), -1, 1).mean(0)
    np.testing.assert_allclose(expected_action(noisy, discretizer, O), clipped_mean, atol=1 / N)  # half a bin


def test_quantile_bins_of_clipped_actions_hold_the_bounds_where_they_repeat():
    """The run's bins are quantiles of the data's clipped noisy actions: thresholds repeat at -1 and +1. The
    data policy's exact distribution and its mass at the bounds agree with draws binned by `discretize`."""
    rng = np.random.default_rng(0)
    data_actions = np.clip(rng.uniform(-1, 1, (20_000, 2)) + rng.normal(0, 0.5, (20_000, 2)), -1, 1)
    transitions = np.concatenate([rng.normal(size=(20_000, O)), data_actions, rng.normal(size=(20_000, 2))], 1)
    discretizer = Discretizer.fit(transitions, n_bins=40)
    assert (discretizer.thresholds[:, O] == -1.0).sum() > 2  # repeated: -1 is not in bin 0
    action = np.array([-0.7, 0.9])
    exact = data_action_distribution(discretizer, O, action, 0.5)
    draws = np.clip(action + rng.normal(0.0, 0.5, (400_000, 2)), -1, 1)
    tokens = discretizer.discretize(draws, columns=slice(O, O + 2))
    sampled = np.zeros_like(exact)
    np.add.at(sampled, (tokens[:, 0], tokens[:, 1]), 1.0 / len(draws))
    assert math.isclose(exact.sum(), 1.0, rel_tol=1e-12) and total_variation(exact, sampled) < 0.02
    at_bound = (np.abs(draws) == 1.0).any(1).mean()
    assert bound_mass(exact, discretizer, O) == pytest.approx(at_bound, abs=0.005) and at_bound > 0.3


def test_the_played_policies_act_on_the_first_action_distribution():
    from types import SimpleNamespace

    model, discretizer = goal_model(3), random_discretizer(N, O + 4, seed=4)
    run, columns = SimpleNamespace(model=model, discretizer=discretizer), np.array([0, 1])
    rng = np.random.default_rng(5)
    for _ in range(3):
        obs = {"observation": rng.normal(size=O), "desired_goal": rng.normal(size=2)}
        goal = np.zeros(O)
        goal[columns] = obs["desired_goal"]
        joint = first_action_distribution(model, discretizer, obs["observation"], goal)
        mean = first_action_policy(run, columns, "mean")(obs, rng)
        np.testing.assert_allclose(mean, expected_action(joint, discretizer, O))
        first, second = np.unravel_index(np.argmax(joint), joint.shape)
        mids = discretizer.midpoints
        np.testing.assert_array_equal(first_action_policy(run, columns, "mode")(obs, rng),
                                      [mids[first, O], mids[second, O + 1]])
    with pytest.raises(ValueError, match="unknown policy 'median'"):
        first_action_policy(run, columns, "median")


@pytest.mark.slow
def test_the_measurement_on_a_trained_run(tmp_path, pointmaze_tiny, capsys):  # noqa: F811
    from tt.cli import main as tt_main

    run = str(tmp_path / "run")
    assert tt_main(["train", "--dataset", "pointmaze-fourrooms", "--out", run, "--preset", "small", "--steps", "2",
                    "--batch-size", "4", "--n-transitions", "2", "--goal-conditioned",
                    "--device", "cpu"]) == 0
    out = tmp_path / "dependence"
    main(["--run", run, "--states", "3", "--play", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "mean total variation between two goals' first actions" in printed
    assert "the mode first action as a policy: success" in printed
    result = json.loads((out / "goal_dependence.json").read_text())
    assert len(result["records"]) == 3 and (out / "goal_dependence.png").stat().st_size > 0
    assert sorted(result["play"]) == ["mean first action", "mode first action"]
    for played in result["play"].values():  # the same two pairs, the paths drawn, not written
        assert played["n"] == 2 and [e["goal"] for e in played["episodes"]] == [r["goals"][0] for r in
                                                                                 result["records"][:2]]
        assert all("path" not in e for e in played["episodes"])
    assert (out / "play_paths.png").stat().st_size > 0
    for record in result["records"]:
        assert 0.0 <= record["model_tv"] <= 1.0 and 0.0 <= record["data_tv"] <= 1.0
        assert len(record["goals"]) == 2 and record["goals"][0] != record["goals"][1]
    assert result["data_cosine"] > 0.8  # the noisy controller's expected action points as the controller's
