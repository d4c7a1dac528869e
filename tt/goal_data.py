"""Goal data sets read for tt: flat observations, and each episode's goal.

Minari stores a goal task's observations as a dict: `observation`, `achieved_goal` and
`desired_goal` (Gymnasium-Robotics' GoalEnv; Minari's `D4RL/pointmaze/*`, tt's `pointmaze-*`).
tt reads the `observation` part as the observation (`flat_observations`: with `achieved_goal` in
front where the part lacks it, as AntMaze's, whose D4RL observation begins with the ant's x and y)
and each episode's `desired_goal` as its goal.
A goal-conditioned model takes a goal as an observation: each goal dimension in the observation
column that `achieved_goal` copies (PointMaze: x and y), every other column 0 (at rest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np

if TYPE_CHECKING:
    from tt.data import Trajectories

SUCCESS_DISTANCE = 0.45  # PointMaze's goal radius, in metres

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")


def is_goal_space(space: gym.Space) -> bool:
    """A goal task's observation space as Minari stores PointMaze's (and D4RL's pointmaze data):
    a Dict with Box `observation`, `achieved_goal` and `desired_goal`."""
    return isinstance(space, gym.spaces.Dict) and all(
        isinstance(space.spaces.get(k), gym.spaces.Box) for k in GOAL_KEYS)


def prepends_position(observations: dict) -> bool:
    """Whether tt reads a goal task's `achieved_goal` in front of its `observation` part: where the part
    holds no column equal to it (AntMaze's, not PointMaze's). Decided once per data set, from an episode."""
    observation = np.asarray(observations["observation"], dtype=np.float64)
    achieved = np.asarray(observations["achieved_goal"], dtype=np.float64)
    flat_o, flat_a = observation.reshape(-1, observation.shape[-1]), achieved.reshape(-1, achieved.shape[-1])
    return not all(any(np.array_equal(flat_o[:, j], flat_a[:, k]) for j in range(flat_o.shape[1]))
                   for k in range(flat_a.shape[1]))


def flat_observations(observations: dict, prepend: bool | None = None) -> np.ndarray:
    """The observations `[..., O]` tt reads from a goal task's dict: the `observation` part (PointMaze: x,
    y, vx, vy), with `prepend` `achieved_goal` in front of it (AntMaze: x, y, then the ant's other 27
    numbers: D4RL's 29); `prepend` None: as `prepends_position` finds in these observations."""
    observation = np.asarray(observations["observation"], dtype=np.float64)
    if prepend is None:
        prepend = prepends_position(observations)
    return np.concatenate([np.asarray(observations["achieved_goal"], np.float64), observation], -1) if prepend \
        else observation


def goal_columns(observation: np.ndarray, achieved_goal: np.ndarray) -> np.ndarray:
    """The observation column of each goal dimension: the one that equals `achieved_goal` there at
    every step (PointMaze: x and y, columns 0 and 1)."""
    columns = []
    for k in range(achieved_goal.shape[1]):
        same = [j for j in range(observation.shape[1]) if np.allclose(observation[:, j], achieved_goal[:, k])]
        if not same:
            raise ValueError(f"achieved_goal dimension {k} equals no observation column: tt cannot place a goal "
                             "in the observation")
        columns.append(same[0])
    return np.array(columns, dtype=np.int64)


def goal_observations(goals: np.ndarray, columns: np.ndarray, observation_dim: int) -> np.ndarray:
    """Goals [..., G] as observations [..., O], the form a goal-conditioned model takes: each goal
    dimension in its observation column, every other column 0 (PointMaze: (x, y, 0, 0), at rest)."""
    goals = np.asarray(goals, dtype=np.float64)
    if goals.shape[-1] != len(columns):
        raise ValueError(f"goals have {goals.shape[-1]} dimensions, the task's goal {len(columns)}")
    out = np.zeros(goals.shape[:-1] + (observation_dim,))
    out[..., columns] = goals
    return out


@dataclass
class GoalTrajectories:
    """A goal data set read for tt: the flat observations' transitions and each episode's goal.

    trajectories:       the transitions, observations the dict's `observation` part
    goals:              [E, G] each episode's `desired_goal` (at its first step)
    goal_columns:       [G] the observation column of each goal dimension
    final_observations: [E, O] the observation after each episode's last step (where it ended up:
                        the hindsight goal)
    reached:            [E] True where the episode ended within `success_distance` of its goal
    """

    trajectories: Trajectories
    goals: np.ndarray
    goal_columns: np.ndarray
    final_observations: np.ndarray
    reached: np.ndarray

    def goal_observations(self) -> np.ndarray:
        """[E, O] each episode's desired goal as an observation."""
        return goal_observations(self.goals, self.goal_columns, self.trajectories.observation_dim)

    def hindsight_goal_observations(self) -> np.ndarray:
        """[E, O] where each episode ended (its final observation's goal columns) as a goal observation."""
        positions = self.final_observations[:, self.goal_columns]
        return goal_observations(positions, self.goal_columns, self.trajectories.observation_dim)


def goal_trajectories_from_minari(dataset, discount: float = 0.99, termination_penalty: float | None = None,
                                  success_distance: float = SUCCESS_DISTANCE) -> GoalTrajectories:
    """Read a goal data set (`pointmaze-fourrooms`, Minari's `D4RL/pointmaze/*`): observations
    flattened to their `observation` part, goals from `desired_goal`.

    No termination penalty by default: a goal task's episode terminates at its goal."""
    from tt.data import make_trajectories

    if not is_goal_space(dataset.observation_space):
        raise ValueError(f"not a goal data set: tt needs a Dict observation space with Box {', '.join(GOAL_KEYS)}; "
                         f"the data set has {dataset.observation_space}")
    if not isinstance(dataset.action_space, gym.spaces.Box):
        raise ValueError(f"tt needs a Box action space, data set has {dataset.action_space}")
    obs, act, rew, term, goals, finals, reached = [], [], [], [], [], [], []
    columns = None
    for episode in dataset.iterate_episodes():
        n = len(episode.rewards)
        o = {k: np.asarray(episode.observations[k], dtype=np.float64) for k in GOAL_KEYS}
        if columns is None:  # the layout is decided by the first episode
            prepend = prepends_position(o)
        o["observation"] = flat_observations(o, prepend)
        episode_columns = goal_columns(o["observation"], o["achieved_goal"])
        if columns is not None and not np.array_equal(columns, episode_columns):
            raise ValueError(f"episode {episode.id} places its goal in observation columns {episode_columns.tolist()}, "
                             f"earlier episodes in {columns.tolist()}")
        columns = episode_columns
        obs.append(o["observation"][:n])
        act.append(np.asarray(episode.actions))
        rew.append(np.asarray(episode.rewards))
        term.append(bool(np.asarray(episode.terminations)[-1]))
        goals.append(o["desired_goal"][0])
        finals.append(o["observation"][n])
        reached.append(np.linalg.norm(o["achieved_goal"][n] - o["desired_goal"][0]) <= success_distance)
    trajectories = make_trajectories(obs, act, rew, term, discount, termination_penalty)
    return GoalTrajectories(trajectories, np.stack(goals), columns, np.stack(finals), np.array(reached))
