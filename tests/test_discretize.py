import math

import numpy as np
import pytest

from tt.discretize import Discretizer


def authors_thresholds(data, N):
    """Direct reimplementation of the authors' quantile rule (QuantileDiscretizer.__init__)."""
    step = int(np.ceil(len(data) / N))
    thresholds = np.sort(data, axis=0)[::step, :]
    return np.concatenate([thresholds, data.max(axis=0, keepdims=True)], axis=0)


def authors_discretize(thresholds, x, N):
    """Their discretize: largest index with x >= threshold via argmax over (x >= thr) * (i+1)."""
    gt = x[None] >= thresholds[:, None]
    arange = (np.arange(len(thresholds)) + 1)[:, None, None]
    inds = np.argmax(gt * arange, axis=0)
    inds[(~gt).all(axis=0)] = 0
    inds[gt.all(axis=0)] = len(thresholds)
    return np.clip(inds, 0, N - 1)


@pytest.mark.parametrize("n, N, dims", [(1000, 100, 5), (500, 50, 3), (300, 100, 1), (4000, 40, 7)])
def test_quantile_matches_authors_rule_with_ties(n, N, dims):
    rng = np.random.default_rng(n + N)
    data = rng.integers(-20, 20, size=(n, dims)).astype(np.float64)  # many ties
    data[:, 0] = rng.normal(size=n)  # and one continuous column
    disc = Discretizer.fit(data, N, "quantile")
    np.testing.assert_array_equal(disc.thresholds, authors_thresholds(data, N))
    queries = np.concatenate([data[:200], rng.normal(scale=30, size=(200, dims))])
    np.testing.assert_array_equal(disc.discretize(queries), authors_discretize(disc.thresholds, queries, N))


@pytest.mark.parametrize("n, N", [(250, 100), (1001, 100), (33, 10), (5, 8)])
def test_quantile_keeps_n_bins_when_authors_rule_falls_short(n, N):
    rng = np.random.default_rng(n)
    data = rng.normal(size=(n, 3))
    assert len(authors_thresholds(data, N)) < N + 1  # the case the fallback exists for
    disc = Discretizer.fit(data, N, "quantile")
    assert disc.thresholds.shape == (N + 1, 3)
    sorted_data = np.sort(data, axis=0)
    np.testing.assert_array_equal(disc.thresholds[0], sorted_data[0])
    np.testing.assert_array_equal(disc.thresholds[-1], sorted_data[-1])
    np.testing.assert_array_equal(disc.thresholds, sorted_data[np.linspace(0, n - 1, N + 1).astype(int)])
    tokens = disc.discretize(data)
    assert tokens.min() >= 0 and tokens.max() <= N - 1


def test_uniform_thresholds():
    data = np.array([[0.0, -1.0], [10.0, 1.0]])
    disc = Discretizer.fit(data, 5, "uniform")
    np.testing.assert_allclose(disc.thresholds[:, 0], [0, 2, 4, 6, 8, 10])
    np.testing.assert_allclose(disc.thresholds[:, 1], [-1, -0.6, -0.2, 0.2, 0.6, 1.0])
    np.testing.assert_array_equal(disc.discretize(np.array([[10.0, -5.0], [3.9, 0.0]])), [[4, 0], [1, 2]])


def test_reconstruct_midpoints_and_round_trip():
    rng = np.random.default_rng(0)
    disc = Discretizer.fit(rng.normal(size=(1000, 4)), 20)
    tokens = rng.integers(0, 20, size=(64, 4))
    values = disc.reconstruct(tokens)
    expected = (np.take_along_axis(disc.thresholds, tokens, 0) + np.take_along_axis(disc.thresholds, tokens + 1, 0)) / 2
    np.testing.assert_allclose(values, expected)
    np.testing.assert_array_equal(disc.discretize(values), tokens)


def test_stop_tokens_reconstruct_to_nan_and_out_of_range_raises():
    disc = Discretizer(np.linspace(0, 1, 11)[:, None].repeat(3, 1))
    values = disc.reconstruct(np.array([[0, 10, 9]]))
    assert math.isnan(values[0, 1]) and not np.isnan(values[0, [0, 2]]).any()
    assert disc.is_stop(np.array([10, 3])).tolist() == [True, False]
    with pytest.raises(ValueError, match="out of range"):
        disc.reconstruct(np.array([[0, 11, 0]]))
    with pytest.raises(ValueError, match="out of range"):
        disc.reconstruct(np.array([[-1, 0, 0]]))


def test_bad_inputs_raise_clear_errors(tmp_path):
    disc = Discretizer(np.linspace(0, 1, 11)[:, None].repeat(3, 1))
    with pytest.raises(ValueError, match="expected 3 dimensions, got 2"):
        disc.discretize(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        disc.discretize(np.array([0.1, np.nan, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        Discretizer.fit(np.array([[0.0], [np.nan]]), 2)
    with pytest.raises(ValueError, match="non-decreasing"):
        Discretizer(np.array([[1.0], [0.0]]))
    with pytest.raises(ValueError, match="unknown discretizer kind"):
        Discretizer.fit(np.zeros((4, 1)), 2, "kmeans")
    bad = tmp_path / "d.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt discretizer"):
        Discretizer.load(str(bad))


def test_save_load_round_trip(tmp_path):
    disc = Discretizer.fit(np.random.default_rng(1).normal(size=(300, 6)), 30)
    disc.save(str(tmp_path / "d.safetensors"))
    np.testing.assert_array_equal(Discretizer.load(str(tmp_path / "d.safetensors")).thresholds, disc.thresholds)


def test_actions_can_take_their_own_bins():
    """Saturated actions (a point mass at -2): quantile bins merge it with its neighbours, so its
    token stands for a midpoint far inside the range; uniform action bins keep it near -2, while the
    other dimensions keep their quantile bins."""
    from types import SimpleNamespace

    from tt.config import TrainConfig
    from tt.train import fit_discretizer

    rng = np.random.default_rng(0)
    n = 5000
    obs = rng.normal(size=(n, 2))
    action = np.where(rng.random(n) < 0.3, -2.0, rng.uniform(-0.5, 2.0, n))
    joined = np.column_stack([obs, action, rng.normal(size=(n, 2))])
    data = SimpleNamespace(joined=joined, observation_dim=2, action_dim=1)
    quantile = fit_discretizer(data, TrainConfig(n_bins=20))
    mixed = fit_discretizer(data, TrainConfig(n_bins=20, action_discretizer="uniform"))
    minus_two = np.array([[0.0, 0.0, -2.0, 0.0, 0.0]])
    assert quantile.reconstruct(quantile.discretize(minus_two))[0, 2] > -1.5
    assert mixed.reconstruct(mixed.discretize(minus_two))[0, 2] == pytest.approx(-2.0 + 4.0 / 40, abs=1e-3)
    np.testing.assert_array_equal(mixed.thresholds[:, [0, 1, 3, 4]], quantile.thresholds[:, [0, 1, 3, 4]])
