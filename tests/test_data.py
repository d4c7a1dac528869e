import numpy as np
import pytest
import torch

from tt.data import DatasetNotFoundError, TokenWindows, load_dataset, make_trajectories, trajectories_from_minari
from tt.discretize import Discretizer


def two_episodes(terminated=(True, False)):
    """Episode A: 3 steps, rewards 1, 2, 3; episode B: 2 steps, rewards 10, 20. O=1, A=1."""
    obs = [np.array([[0.0], [1.0], [2.0]]), np.array([[5.0], [6.0]])]
    act = [np.array([[0.1], [0.2], [0.3]]), np.array([[0.5], [0.6]])]
    rew = [np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0])]
    return make_trajectories(obs, act, rew, list(terminated), discount=0.5, termination_penalty=-100.0)


def test_values_and_termination_penalty_on_hand_made_episodes():
    traj = two_episodes()
    rewards, values = traj.joined[:, 2], traj.joined[:, 3]
    # episode A terminated: its last reward becomes the penalty; B was truncated: kept
    np.testing.assert_allclose(rewards, [1.0, 2.0, -100.0, 10.0, 20.0])
    # R_t = sum_{k>t} 0.5^(k-t-1) r_k, excluding r_t, zero at the last step
    np.testing.assert_allclose(values, [2.0 + 0.5 * -100.0, -100.0, 0.0, 20.0, 0.0])
    np.testing.assert_array_equal(traj.lengths, [3, 2])
    np.testing.assert_array_equal(traj.terminated, [True, False])
    np.testing.assert_allclose(traj.returns, [6.0, 30.0])  # environment returns, no penalty


def test_no_penalty_when_disabled():
    obs, act = [np.zeros((2, 1))], [np.zeros((2, 1))]
    traj = make_trajectories(obs, act, [np.array([1.0, 1.0])], [True], discount=0.9, termination_penalty=None)
    np.testing.assert_allclose(traj.joined[:, 2], [1.0, 1.0])


def test_nan_in_data_is_rejected_with_its_step():
    obs = [np.array([[0.0], [np.nan]])]
    with pytest.raises(ValueError, match="NaN or infinite value in observations at step 1"):
        make_trajectories(obs, [np.zeros((2, 1))], [np.ones(2)], [False])


def test_windows_stop_tokens_masks_and_layout():
    traj = two_episodes()
    disc = Discretizer.fit(traj.joined, 4, "uniform")
    K, T = 3, 4
    windows = TokenWindows(traj, disc, n_transitions=K)
    # starts: every step but the last: A at 0, 1; B at 0
    assert len(windows) == 3
    tokens = disc.discretize(traj.joined)
    x, y, mask = windows.batch(torch.arange(3))
    assert x.shape == y.shape == mask.shape == (3, K * T - 1)
    full = torch.cat([x, y[:, -1:]], dim=1).view(3, K, T)
    stop = disc.stop_token
    # window 0 of A: its 3 real transitions
    np.testing.assert_array_equal(full[0].numpy(), tokens[0:3])
    # window 1 of A: 2 real transitions then a stop row, trained (A terminated)
    np.testing.assert_array_equal(full[1, :2].numpy(), tokens[1:3])
    assert (full[1, 2] == stop).all() and (mask[1] == 1).all()
    # window of B: 2 real transitions, then a stop row masked out (B was truncated)
    np.testing.assert_array_equal(full[2, :2].numpy(), tokens[3:5])
    assert (full[2, 2] == stop).all()
    target_row = (torch.arange(1, K * T) // T)  # transition of each target
    np.testing.assert_array_equal(mask[2].numpy(), (target_row < 2).float().numpy())
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_windows_reject_mismatched_discretizer():
    traj = two_episodes()
    with pytest.raises(ValueError, match="discretizer has 3 dimensions, data 4"):
        TokenWindows(traj, Discretizer(np.zeros((5, 3)) + np.arange(5)[:, None]), 2)


def test_unknown_dataset_lists_local_ids(pendulum_medium):
    with pytest.raises(DatasetNotFoundError, match=r"unknown data set 'nope/none-v0'.*tt/pendulum/medium-v0"):
        load_dataset("nope/none-v0")


def test_minari_dataset_to_trajectories(pendulum_medium, inverted_pendulum_medium):
    pend = trajectories_from_minari(load_dataset("pendulum-medium"))
    assert pend.observation_dim == 3 and pend.action_dim == 1 and pend.transition_dim == 6
    assert (pend.lengths == 200).all() and not pend.terminated.any()
    inv = trajectories_from_minari(inverted_pendulum_medium)
    assert inv.terminated.any(), "noisy InvertedPendulum episodes should fall over"
    ends = np.cumsum(inv.lengths) - 1
    np.testing.assert_allclose(inv.joined[ends[inv.terminated], -2], -100.0)
    np.testing.assert_allclose(inv.joined[ends, -1], 0.0)


def test_builtin_generation_is_deterministic():
    from tt.tasks import make_dataset

    a = trajectories_from_minari(make_dataset("invertedpendulum-mixed", episodes=3, seed=7, progress=False))
    b = trajectories_from_minari(make_dataset("invertedpendulum-mixed", episodes=3, seed=7, progress=False))
    np.testing.assert_array_equal(a.joined, b.joined)


def test_normalized_score_available(pendulum_medium):
    import minari

    ref_min = pendulum_medium.storage.metadata["ref_min_score"]
    ref_max = pendulum_medium.storage.metadata["ref_max_score"]
    assert ref_min < -800 and ref_max > -300
    np.testing.assert_allclose(minari.get_normalized_score(pendulum_medium, np.array([ref_max])), [1.0])
