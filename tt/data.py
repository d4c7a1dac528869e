"""Offline data: Minari data sets to transitions, rewards-to-go, tokens and training windows.

A transition is `x_t = [s_t, a_t, r_t, R_t]` (T = O + A + 2 numbers) with
`R_t = sum_{k>t} gamma^(k-t-1) r_k`. On a real termination the last reward is replaced by the
termination penalty; a time-limit truncation keeps its reward and the steps after it are
masked out of the loss instead of being trained as stop tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from tt.config import GOAL_MODES
from tt.discretize import Discretizer


class DatasetNotFoundError(LookupError):
    """Raised for a data set id that is neither local nor (when asked) downloadable."""


class DatasetDamagedError(ValueError):
    """Raised for a local data set whose files cannot be read (truncated, corrupt)."""


REMAKE = "make it again (`tt data make NAME` for a built-in one) or download it again (--download)"


def check_readable(dataset) -> None:
    """Open every HDF5 file of a Minari data set and walk its groups: a truncated file or a damaged
    header fails here, with the file's name, not in the middle of reading episodes."""
    import h5py

    root = dataset.spec.data_path
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.endswith((".hdf5", ".h5")):
            path = os.path.join(root, name)
            try:
                with h5py.File(path, "r") as file:
                    file.visit(lambda _: None)
            except (OSError, RuntimeError, KeyError) as e:
                raise DatasetDamagedError(f"data set file {path} is damaged ({e}): {REMAKE}") from e


def load_dataset(dataset_id: str, download: bool = False):
    """Load a Minari data set by id; remote ids need `download=True`.

    Built-in short names (`pendulum-medium`, see `tt data list`) resolve to their Minari ids.
    """
    import minari

    from tt.tasks import resolve_dataset_id

    dataset_id = resolve_dataset_id(dataset_id)
    local = minari.list_local_datasets()
    if dataset_id in local or download:
        try:
            dataset = minari.load_dataset(dataset_id, download=download and dataset_id not in local)
            check_readable(dataset)
        except (OSError, ValueError, KeyError) as e:  # a damaged metadata file or HDF5 file
            if isinstance(e, DatasetDamagedError):
                raise
            raise DatasetDamagedError(f"data set {dataset_id}: cannot be read ({type(e).__name__}: {e}); "
                                      f"{REMAKE}") from e
        return dataset
    root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
    listing = ", ".join(sorted(local)) or "none"
    raise DatasetNotFoundError(
        f"unknown data set {dataset_id!r}: not found under {root} (local data sets: {listing}). "
        "Make a built-in one with `tt data make NAME` or pass download=True / --download for a remote id."
    )


def environment_id(dataset) -> str | None:
    """The id of the environment a Minari data set was recorded in (None where it names none)."""
    spec = dataset.spec.env_spec
    return None if spec is None else spec.id


def check_environment(dataset, run_config: dict, run_dir: str) -> None:
    """Refuse a data set recorded in another environment than the one the run was trained on (runs
    record it since tt 0.1's data checks; older runs are not checked)."""
    trained = (run_config.get("data") or {}).get("env_id")
    now = environment_id(dataset)
    if trained is not None and now is not None and trained != now:
        raise ValueError(f"data set {dataset.spec.dataset_id} now holds {now} data, run {run_dir} was trained on "
                         f"{trained}: make the data set again as the run was trained, or give a run trained on it")


@dataclass
class Trajectories:
    """All real transitions of a data set, episodes laid end to end.

    joined:      [n, T] float64, columns [obs, act, reward (penalized), value]
    lengths:     [E] steps per episode
    terminated:  [E] True when the episode ended by a real termination
    returns:     [E] undiscounted episode returns of the environment rewards (no penalty)
    """

    joined: np.ndarray
    lengths: np.ndarray
    terminated: np.ndarray
    returns: np.ndarray
    observation_dim: int
    action_dim: int

    @property
    def transition_dim(self) -> int:
        return self.joined.shape[1]


def discounted_values(rewards: np.ndarray, lengths: np.ndarray, discount: float) -> np.ndarray:
    """R_t = sum_{k>t} discount^(k-t-1) r_k within each episode (0 at the last step)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    step = np.arange(lengths.max())
    inside = step[None, :] < lengths[:, None]  # [E, Lmax] padded episodes, one column per step
    padded = np.zeros(inside.shape)
    padded[inside] = rewards
    values = np.zeros(inside.shape)
    for t in range(inside.shape[1] - 2, -1, -1):
        values[:, t] = padded[:, t + 1] + discount * values[:, t + 1]
    return values[inside]


def make_trajectories(
    observations: list[np.ndarray],
    actions: list[np.ndarray],
    rewards: list[np.ndarray],
    terminated: list[bool],
    discount: float = 0.99,
    termination_penalty: float | None = -100.0,
) -> Trajectories:
    """Episodes (per-step arrays, final observation excluded) to `Trajectories`."""
    if not observations:
        raise ValueError("no episodes")
    lengths = np.array([len(r) for r in rewards], dtype=np.int64)
    if (lengths == 0).any():
        raise ValueError("empty episode in data")
    obs = np.concatenate([np.asarray(o, dtype=np.float64).reshape(len(o), -1) for o in observations])
    act = np.concatenate([np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in actions])
    rew = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in rewards])
    if not (len(obs) == len(act) == len(rew)):
        raise ValueError(f"episode arrays disagree in length: obs {len(obs)}, act {len(act)}, rew {len(rew)}")
    for name, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
        if not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0, 0])
            raise ValueError(f"NaN or infinite value in {name} at step {bad} of the data set")
    term = np.asarray(terminated, dtype=bool)
    ends = np.cumsum(lengths) - 1
    returns = np.add.reduceat(rew, ends - lengths + 1)
    if termination_penalty is not None:
        rew = rew.copy()
        rew[ends[term]] = termination_penalty
    values = discounted_values(rew, lengths, discount)
    joined = np.concatenate([obs, act, rew[:, None], values[:, None]], axis=1)
    return Trajectories(joined, lengths, term, returns, obs.shape[1], act.shape[1])


def trajectories_from_minari(dataset, discount: float = 0.99, termination_penalty: float | None = -100.0):
    """Read every episode of a Minari data set (Box observation and action spaces)."""
    import gymnasium as gym

    for name, space in (("observation", dataset.observation_space), ("action", dataset.action_space)):
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"tt needs a Box {name} space, data set has {space}")
    obs, act, rew, term = [], [], [], []
    try:
        for episode in dataset.iterate_episodes():
            n = len(episode.rewards)
            obs.append(np.asarray(episode.observations)[:n])
            act.append(np.asarray(episode.actions))
            rew.append(np.asarray(episode.rewards))
            term.append(bool(np.asarray(episode.terminations)[-1]))
    except (OSError, RuntimeError, KeyError) as e:  # h5py's errors for a file damaged after its headers
        raise DatasetDamagedError(f"data set {dataset.spec.dataset_id}: an episode cannot be read from "
                                  f"{dataset.spec.data_path} ({e}): {REMAKE}") from e
    return make_trajectories(obs, act, rew, term, discount, termination_penalty)


def episode_returns(dataset) -> np.ndarray:
    """Each episode's undiscounted return, for any observation space (a goal data set's dict ones too)."""
    try:
        return np.array([float(np.sum(episode.rewards)) for episode in dataset.iterate_episodes()])
    except (OSError, RuntimeError, KeyError) as e:
        raise DatasetDamagedError(f"data set {dataset.spec.dataset_id}: an episode cannot be read from "
                                  f"{dataset.spec.data_path} ({e}): {REMAKE}") from e


@dataclass
class HindsightGoals:
    """The goals a goal-conditioned model trains on, as observations (what the planner is given).

    final: [E, O] where each episode ended up (the authors' hindsight goal)
    steps: [n, O] each step's observation as a goal (rows as `Trajectories.joined`), the `future` draws
    """

    final: np.ndarray
    steps: np.ndarray

    @classmethod
    def of(cls, trajectories: Trajectories) -> HindsightGoals:
        """Goals from the observations alone: each episode's last observation, every step's observation."""
        obs = trajectories.joined[:, : trajectories.observation_dim]
        return cls(obs[np.cumsum(trajectories.lengths) - 1], obs)




class TokenWindows:
    """Training windows of K transitions over one precomputed token array.

    Every episode's tokens are followed by K-1 rows of stop tokens, so a window starting at any
    step but the last is one contiguous slice. Rows after a termination are trained (the model
    learns that episodes end); rows after a truncation carry loss mask 0.
    Inputs are the flattened window minus its last token, targets minus its first.

    With `goals` each window also has a goal (`goals_of`), discretized with the observation bins:
    its episode's final goal (`goal="final"`), or (`"future"`) an observation drawn uniformly from
    its episode's steps at or after the window's last transition, from `goal_draws(seed, epoch)`.
    """

    def __init__(self, trajectories: Trajectories, discretizer: Discretizer, n_transitions: int = 10,
                 goals: HindsightGoals | None = None, goal: str = "final"):
        if discretizer.transition_dim != trajectories.transition_dim:
            raise ValueError(
                f"discretizer has {discretizer.transition_dim} dimensions, data {trajectories.transition_dim}"
            )
        if n_transitions < 1:
            raise ValueError(f"n_transitions must be >= 1, got {n_transitions}")
        if goal not in GOAL_MODES:
            raise ValueError(f"goal must be one of {', '.join(GOAL_MODES)}, got {goal!r}")
        self.K = n_transitions
        self.T = trajectories.transition_dim
        self.goal_mode = goal
        stop = discretizer.stop_token
        real_tokens = discretizer.discretize(trajectories.joined)
        rows, valid, starts, episode, future = [], [], [], [], []
        offset, cursor = 0, 0
        for e, (length, terminated) in enumerate(zip(trajectories.lengths, trajectories.terminated)):
            rows.append(real_tokens[cursor : cursor + length])
            rows.append(np.full((self.K - 1, self.T), stop, dtype=np.int64))
            valid.append(np.ones(length, dtype=bool))
            valid.append(np.full(self.K - 1, bool(terminated)))
            starts.append(offset + np.arange(length - 1))
            episode.append(np.full(length - 1, e))
            future.append(np.stack([cursor + np.minimum(np.arange(length - 1) + self.K - 1, length - 1),
                                    np.full(length - 1, cursor + length)], 1).reshape(-1, 2))
            offset += length + self.K - 1
            cursor += length
        self.tokens = torch.from_numpy(np.concatenate(rows))
        self.row_valid = torch.from_numpy(np.concatenate(valid))
        self.starts = torch.from_numpy(np.concatenate(starts).astype(np.int64))
        if len(self.starts) == 0:
            raise ValueError(f"no training windows: all {len(trajectories.lengths)} episodes of the data set have "
                             "length 1 (a window starts at every step but the last of an episode)")
        self._offsets = torch.arange(self.K)
        self.goals = None
        if goals is not None:  # tokens of each episode's final goal and of each step's observation
            O = trajectories.observation_dim
            self.goals = {"final": torch.from_numpy(discretizer.discretize(goals.final, columns=slice(0, O))),
                          "steps": torch.from_numpy(discretizer.discretize(goals.steps, columns=slice(0, O))),
                          "episode": torch.from_numpy(np.concatenate(episode).astype(np.int64)),
                          "future": torch.from_numpy(np.concatenate(future).astype(np.int64))}

    def goal_draws(self, seed: int, epoch: int) -> torch.Tensor | None:
        """Uniforms [windows] that pick each window's `future` goal in `epoch` (None for `final` goals):
        a function of (seed, epoch), as the data order is."""
        if self.goals is None or self.goal_mode != "future":
            return None
        return torch.from_numpy(np.random.default_rng([seed, epoch, 15]).random(len(self)))

    def goals_of(self, index: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor | None:
        """The goal tokens [B, O] of windows `index` (None without goals); `future` goals need `goal_draws`."""
        if self.goals is None:
            return None
        if self.goal_mode == "final":
            return self.goals["final"][self.goals["episode"][index]]
        if draws is None:
            raise ValueError("future goals are drawn: pass goal_draws(seed, epoch)")
        lo, hi = self.goals["future"][index].unbind(1)
        step = lo + (draws[index] * (hi - lo)).long().clamp_max(hi - lo - 1)
        return self.goals["steps"][step]

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def block_size(self) -> int:
        return self.K * self.T - 1

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows `index [B]` as (inputs [B, K*T-1], targets [B, K*T-1], loss mask [B, K*T-1])."""
        rows = self.starts[index][:, None] + self._offsets
        window = self.tokens[rows].reshape(len(index), -1)
        mask = self.row_valid[rows][:, :, None].expand(-1, -1, self.T).reshape(len(index), -1)
        return window[:, :-1], window[:, 1:], mask[:, 1:].float()


# ----------------------------------------------------------------------------- views for prediction

HIDDEN_OBSERVATIONS_SEED = 0  # the partially observed variant's mask is a function of the data's shape alone


def episode_starts(lengths: np.ndarray) -> np.ndarray:
    """Row of `Trajectories.joined` at which each episode begins."""
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def hold_out(trajectories: Trajectories, episodes: int) -> tuple[Trajectories, Trajectories | None]:
    """(training part, held-out part): the last `episodes` episodes are held out (None when 0)."""
    n = len(trajectories.lengths)
    if not 0 <= episodes < n:
        raise ValueError(f"cannot hold out {episodes} of the data set's {n} episodes (at least one must be left "
                         "to train on)")
    if episodes == 0:
        return trajectories, None
    cut = int(trajectories.lengths[: n - episodes].sum())

    def part(rows: slice, eps: slice) -> Trajectories:
        t = trajectories
        return Trajectories(t.joined[rows], t.lengths[eps], t.terminated[eps], t.returns[eps], t.observation_dim,
                            t.action_dim)

    return part(slice(0, cut), slice(0, n - episodes)), part(slice(cut, None), slice(n - episodes, None))


def visible_observations(observation_dim: int, hidden_fraction: float) -> np.ndarray:
    """The observation dimensions a partially observed variant keeps, ascending: a random subset of
    `hidden_fraction` of them (rounded half up, one kept at least) is hidden, drawn from a fixed seed,
    so each dimension is hidden with probability about `hidden_fraction` and every run and ensemble
    of a task hides the same ones."""
    if not 0.0 <= hidden_fraction < 1.0:
        raise ValueError(f"the hidden fraction of observation dimensions must be in [0, 1), got {hidden_fraction}")
    n_hidden = min(observation_dim - 1, int(hidden_fraction * observation_dim + 0.5))
    hidden = np.random.default_rng(HIDDEN_OBSERVATIONS_SEED).permutation(observation_dim)[:n_hidden]
    return np.setdiff1d(np.arange(observation_dim), hidden)


def select_observations(trajectories: Trajectories, visible: np.ndarray) -> Trajectories:
    """The trajectories with only the observation dimensions `visible` (the actions, rewards and values unchanged)."""
    t = trajectories
    if np.array_equal(visible, np.arange(t.observation_dim)):
        return t
    columns = np.concatenate([np.asarray(visible, dtype=np.int64), np.arange(t.observation_dim, t.transition_dim)])
    return Trajectories(np.ascontiguousarray(t.joined[:, columns]), t.lengths, t.terminated, t.returns, len(visible),
                        t.action_dim)


def training_split(trajectories: Trajectories, holdout_episodes: int = 0, hidden_obs_fraction: float = 0.0
                   ) -> tuple[Trajectories, Trajectories | None, np.ndarray]:
    """(training episodes, held-out episodes or None, visible observation dimensions): the data as a run
    with these settings sees them, both parts with the visible observation dimensions only."""
    train, heldout = hold_out(trajectories, holdout_episodes)
    visible = visible_observations(trajectories.observation_dim, hidden_obs_fraction)
    return (select_observations(train, visible), None if heldout is None else select_observations(heldout, visible),
            visible)
