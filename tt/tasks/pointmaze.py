"""A goal task: Gymnasium-Robotics' PointMaze (MuJoCo) on a four-rooms map, D4RL maze2d's recipe.

The map is 11 x 11 cells (1 m each) with its border: four rooms of 4 x 4 free cells, joined by four
one-cell doorways (68 free cells). The data come from a scripted goal-conditioned controller: a
shortest path over the maze's cells (breadth-first search) to the goal cell, followed by a PD
controller on position and velocity towards the next cell's centre (the goal itself inside the
goal cell), clipped to the action bounds, with Gaussian action noise. Each episode starts in a
random free cell and drives to a random other one; it ends at the goal (PointMaze with
`continuing_task=False` terminates within 0.45 m of it) or at the time limit (a truncation).

Observations are stored as Minari's `D4RL/pointmaze/*` store them: a dict of `observation`
(x, y, vx, vy), `achieved_goal` (x, y) and `desired_goal` (x, y). tt reads them flat: the
4-dim `observation` per step, and each episode's goal from `desired_goal`
(`tt.goal_data.goal_trajectories_from_minari`, which reads Minari's own pointmaze data sets the
same way). A goal-conditioned model takes a goal as an observation: the goal position in the
observation's position columns, zero velocity (`tt.goal_data.goal_observations`).

The reward is sparse (1 within 0.45 m of the goal) and the episode ends there, so an episode's
return is 1 on success and 0 otherwise: the reference scores are 0 and 1 and a normalized score
is the success rate in percent.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from tt.progress import progress as progress_bar

Cell = tuple[int, int]
Policy = Callable[[dict, np.random.Generator], np.ndarray]

# 1 wall, 0 free; rows run from the top (+y) down, columns from the left (-x), as in PointMaze.
FOUR_ROOMS: list[list[int]] = [
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    [1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
]
MAX_EPISODE_STEPS = 500  # 5 s at PointMaze's 0.01 s per step; the data's controller needs ~150, at most ~310
DEFAULT_EPISODES = 1000
ACTION_NOISE = 0.5  # std of the data's Gaussian action noise (actions lie in [-1, 1])
P_GAIN, D_GAIN = 10.0, 1.0  # D4RL maze2d's waypoint controller
ENTRY_POINT = "gymnasium_robotics.envs.maze.point_maze:PointMazeEnv"
NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


# ----------------------------------------------------------------------------- the map

class Maze:
    """A PointMaze map: cells, their centres in metres (PointMaze's frame), rooms and shortest paths."""

    def __init__(self, maze_map: Sequence[Sequence[int | str]], scale: float = 1.0):
        if not maze_map or len({len(row) for row in maze_map}) != 1 or not maze_map[0]:
            raise ValueError("a maze map must be a rectangular, non-empty list of rows")
        grid = np.array([[c == 1 for c in row] for row in maze_map], dtype=bool)
        self.maze_map = [list(row) for row in maze_map]
        self.wall = grid
        self.scale = scale
        self.rows, self.cols = grid.shape
        self.free_cells: list[Cell] = [(int(i), int(j)) for i, j in zip(*np.nonzero(~grid))]
        self._fields: dict[Cell, np.ndarray] = {}

    def check_cell(self, cell: Sequence[int], what: str = "cell") -> Cell:
        """The cell as a tuple, or a ValueError saying why it is not a free cell of the map."""
        i, j = (int(c) for c in cell)
        if not (0 <= i < self.rows and 0 <= j < self.cols):
            raise ValueError(f"{what} {(i, j)} lies outside the {self.rows} x {self.cols} maze")
        if self.wall[i, j]:
            raise ValueError(f"{what} {(i, j)} is a wall")
        return i, j

    def is_wall(self, i: int, j: int) -> bool:
        """A wall cell, or one outside the map."""
        return not (0 <= i < self.rows and 0 <= j < self.cols) or bool(self.wall[i, j])

    def neighbours(self, cell: Cell) -> list[Cell]:
        """The free cells next to `cell` (up, down, left, right)."""
        return [(cell[0] + di, cell[1] + dj) for di, dj in NEIGHBOURS if not self.is_wall(cell[0] + di, cell[1] + dj)]

    def cell_center(self, cell: Sequence[int]) -> np.ndarray:
        i, j = cell
        return np.array([(j + 0.5) * self.scale - self.cols * self.scale / 2,
                         self.rows * self.scale / 2 - (i + 0.5) * self.scale])

    def cell_of(self, xy: Sequence[float]) -> Cell:
        """The cell holding the point `xy` (clamped into the map)."""
        i = int(np.floor(self.rows / 2 - xy[1] / self.scale))
        j = int(np.floor(xy[0] / self.scale + self.cols / 2))
        return min(max(i, 0), self.rows - 1), min(max(j, 0), self.cols - 1)

    def distances_to(self, goal: Sequence[int]) -> np.ndarray:
        """Steps from every cell to `goal` over free 4-neighbours (breadth-first); -1 where unreachable."""
        goal = self.check_cell(goal, "goal cell")
        if goal not in self._fields:
            dist = np.full(self.wall.shape, -1, dtype=np.int64)
            dist[goal] = 0
            queue = deque([goal])
            while queue:
                cell = queue.popleft()
                for n in self.neighbours(cell):
                    if dist[n] < 0:
                        dist[n] = dist[cell] + 1
                        queue.append(n)
            self._fields[goal] = dist
        return self._fields[goal]

    def next_cell(self, cell: Cell, goal: Cell) -> Cell:
        """The first cell after `cell` on a shortest path to `goal` (`goal` itself when there)."""
        dist = self.distances_to(goal)
        if dist[cell] < 0:
            raise ValueError(f"no path from cell {cell} to goal cell {goal}")
        if cell == goal:
            return cell
        return next(n for n in self.neighbours(cell) if dist[n] == dist[cell] - 1)

    def doorways(self) -> list[Cell]:
        """Free cells between two walls on one axis: the openings between rooms."""
        wall = self.is_wall
        return [(i, j) for i, j in self.free_cells
                if (wall(i - 1, j) and wall(i + 1, j)) or (wall(i, j - 1) and wall(i, j + 1))]

    @functools.cached_property
    def rooms(self) -> dict[Cell, int]:
        """Room index of every free cell but the doorways: the connected parts left without them,
        numbered in reading order of their first cell."""
        doors = set(self.doorways())
        room: dict[Cell, int] = {}
        for cell in self.free_cells:
            if cell in doors or cell in room:
                continue
            index, queue = len(set(room.values())), deque([cell])
            room[cell] = index
            while queue:
                for n in self.neighbours(queue.popleft()):
                    if n not in room and n not in doors:
                        room[n] = index
                        queue.append(n)
        return room

    def evaluation_pairs(self, n: int, seed: int) -> list[tuple[Cell, Cell]]:
        """`n` (start, goal) cells drawn from `seed`: a uniform room cell, then a uniform cell of
        another room (doorways are neither)."""
        if n < 1:
            raise ValueError(f"the number of (start, goal) pairs must be positive, got {n}")
        rooms = self.rooms
        if len(set(rooms.values())) < 2:
            raise ValueError("the maze has fewer than two rooms: no goal lies in another room")
        cells = sorted(rooms)
        rng = np.random.default_rng(seed)
        pairs = []
        for _ in range(n):
            start = cells[rng.integers(len(cells))]
            others = [c for c in cells if rooms[c] != rooms[start]]
            pairs.append((start, others[rng.integers(len(others))]))
        return pairs


# ----------------------------------------------------------------------------- the environment and its controller

@dataclass(frozen=True)
class MazeTask:
    """A built-in maze: `fourrooms` is a goal task (episodes from a start to a goal); the others follow
    D4RL's maze2d (`eval_goal` set): one controller wandering between random goals, a sparse reward,
    evaluated towards a fixed goal for `episode_steps` with D4RL's reference scores."""

    env_name: str  # the Gymnasium id's name, in tt's namespace: tt/<env_name>-v3 (PointMaze's version)
    maze_map: list[list[int]]
    episodes: int = DEFAULT_EPISODES  # default data set size
    eval_goal: Cell | None = None  # maze2d: D4RL's evaluation goal cell
    episode_steps: int = MAX_EPISODE_STEPS  # maze2d: the data's episodes and the evaluation's
    ref_scores: tuple[float, float] = (0.0, 1.0)  # (random, expert) returns


# D4RL's maze2d maps are Gymnasium-Robotics' U_MAZE, MEDIUM_MAZE and LARGE_MAZE (the same layouts);
# sizes as D4RL's (1M, 2M and 4M steps), evaluation goals and lengths and reference scores as its
# maze2d-{umaze,medium,large}-v1.
U_MAZE = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
MEDIUM_MAZE = [[1, 1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0, 0, 1], [1, 1, 0, 0, 0, 1, 1, 1],
               [1, 0, 0, 1, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1]]
LARGE_MAZE = [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
              [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1], [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
              [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
              [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]
MAZE2D_RADIUS = 0.5  # D4RL's sparse reward: 1 within this distance of the goal

TASKS: dict[str, MazeTask] = {
    "fourrooms": MazeTask("PointMaze_FourRooms", FOUR_ROOMS),
    "umaze": MazeTask("PointMaze_UMaze", U_MAZE, 3334, (1, 1), 300, (23.85, 161.86)),
    "medium": MazeTask("PointMaze_Medium", MEDIUM_MAZE, 3334, (6, 6), 600, (13.13, 277.39)),
    "large": MazeTask("PointMaze_Large", LARGE_MAZE, 5000, (7, 9), 800, (6.7, 273.99)),
}


def _import_point_maze() -> None:
    """Import gymnasium_robotics without the notice it prints at import about its Adroit hand
    environments (nothing to do with PointMaze); anything else it prints is passed on."""
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        import gymnasium_robotics  # noqa: F401
    sys.stderr.write("".join(line for line in captured.getvalue().splitlines(keepends=True)
                             if "AdroitHand" not in line))


def env_spec(name: str, max_episode_steps: int = MAX_EPISODE_STEPS,
             evaluation: bool = False) -> gym.envs.registration.EnvSpec:
    """PointMaze with the task's map, sparse reward, ending at the goal; Gymnasium's registry is left alone.
    A maze2d task's spec is `maze2d_env`'s: its data environment (random goals, new ones as they are
    reached), or with `evaluation` its evaluation environment (D4RL's fixed goal)."""
    if name not in TASKS:
        raise ValueError(f"unknown maze {name!r}; choose from {', '.join(TASKS)}")
    task = TASKS[name]
    if task.eval_goal is not None:
        return gym.envs.registration.EnvSpec(
            f"tt/{task.env_name}{'-eval' if evaluation else ''}-v3", entry_point="tt.tasks.pointmaze:maze2d_env",
            max_episode_steps=task.episode_steps, kwargs={"name": name, "evaluation": evaluation})
    return gym.envs.registration.EnvSpec(
        f"tt/{task.env_name}-v3", entry_point=ENTRY_POINT, max_episode_steps=max_episode_steps,
        kwargs={"maze_map": task.maze_map, "continuing_task": False, "reset_target": False, "reward_type": "sparse"})


@contextlib.contextmanager
def private_tempdir() -> Iterator[None]:
    """Point Python's temporary directory at a private one, removed afterwards: PointMaze writes its
    maze's MJCF file there at every `gym.make` and never removes it (MuJoCo has read it by then)."""
    before = tempfile.tempdir
    tempfile.tempdir = tempfile.mkdtemp(prefix="tt-pointmaze-")
    try:
        yield
    finally:
        shutil.rmtree(tempfile.tempdir, ignore_errors=True)
        tempfile.tempdir = before


def make_env(env: str | gym.envs.registration.EnvSpec = "fourrooms", **kwargs) -> gym.Env:
    """A PointMaze environment from a tt maze name, a Gymnasium id (D4RL's `PointMaze_UMaze-v3`, ...)
    or a spec (a Minari data set's); `kwargs` go to `gym.make` (e.g. `continuing_task=False`)."""
    _import_point_maze()
    with private_tempdir():
        return gym.make(env_spec(env) if isinstance(env, str) and env in TASKS else env, **kwargs)


class Maze2dReward(gym.Wrapper):
    """D4RL maze2d's environment reward: 1 where the ball ends a step within MAZE2D_RADIUS of the goal it
    was heading for (the previous observation's `desired_goal`: in evaluation, the fixed goal), else 0;
    never terminating (PointMaze's continuing task). The data's rewards are relabelled (`maze2d_rewards`)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._goal = np.array(obs["desired_goal"])
        return obs, info

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        reward = float(np.linalg.norm(obs["achieved_goal"] - self._goal) <= MAZE2D_RADIUS)
        self._goal = np.array(obs["desired_goal"])
        return obs, reward, terminated, truncated, info


def maze2d_env(name: str, evaluation: bool = False, **kwargs) -> gym.Env:
    """A maze2d task's PointMaze: the data's (random goals, a new one as each is reached) or, with
    `evaluation`, D4RL's evaluation (the goal fixed at the task's `eval_goal`, random start cells)."""
    from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

    _import_point_maze()
    task = TASKS[name]
    maze_map = [list(row) for row in task.maze_map]
    if evaluation:
        i, j = task.eval_goal
        maze_map[i][j] = "g"
    with private_tempdir():
        env = PointMazeEnv(maze_map=maze_map, continuing_task=True, reset_target=not evaluation,
                           reward_type="sparse", **kwargs)
    return Maze2dReward(env)


def maze_of(env: gym.Env) -> Maze:
    """The map of a PointMaze environment."""
    maze = env.unwrapped.maze
    return Maze(maze.maze_map, maze.maze_size_scaling)


class WaypointController:
    """D4RL maze2d's scripted policy, Markovian: from the ball's cell, the target is the centre of
    the next cell on a shortest path to the goal's cell (the goal itself inside that cell);
    action = clip(P (target - position) - D velocity) to [-1, 1]. A function of the observation
    and the desired goal only, as a goal-conditioned model is."""

    def __init__(self, maze: Maze, p_gain: float = P_GAIN, d_gain: float = D_GAIN):
        self.maze, self.p_gain, self.d_gain = maze, p_gain, d_gain

    def target(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        cell, goal_cell = self.maze.cell_of(position), self.maze.cell_of(goal)
        if cell == goal_cell:
            return np.asarray(goal, dtype=np.float64)
        if self.maze.wall[cell]:  # pressed into a wall's edge: head back to the nearest free cell
            cell = min(self.maze.free_cells, key=lambda c: np.linalg.norm(self.maze.cell_center(c) - position))
            return self.maze.cell_center(cell)
        return self.maze.cell_center(self.maze.next_cell(cell, goal_cell))

    def __call__(self, obs: dict) -> np.ndarray:
        o = np.asarray(obs["observation"], dtype=np.float64)
        action = self.p_gain * (self.target(o[:2], obs["desired_goal"]) - o[:2]) - self.d_gain * o[2:4]
        return np.clip(action, -1.0, 1.0)


def policies(maze: Maze, noise: float = ACTION_NOISE) -> dict[str, Policy]:
    """`controller` (noiseless), `data` (with the data's action noise) and `random` (uniform actions)."""
    controller = WaypointController(maze)
    return {
        "controller": lambda obs, rng: controller(obs),
        "data": lambda obs, rng: np.clip(controller(obs) + rng.normal(0.0, noise, size=2), -1.0, 1.0),
        "random": lambda obs, rng: rng.uniform(-1.0, 1.0, size=2),
    }


class EpisodeRecorder:
    """One episode from the `start` cell to the `goal` cell (PointMaze adds +-0.25 m of position
    noise to both), stepped by the caller: `obs` is the observation to act on, `step(action)` says
    whether the episode has ended, `episode()` gives it as Minari buffer fields: dict observations
    (the final one included) and infos with PointMaze's `success` per observation."""

    def __init__(self, env: gym.Env, start: Cell, goal: Cell, seed: int):
        maze = maze_of(env)
        start, goal = maze.check_cell(start, "start cell"), maze.check_cell(goal, "goal cell")
        if start == goal:
            raise ValueError(f"start and goal are the same cell {start}")
        self.env = env
        obs, info = env.reset(seed=seed, options={"reset_cell": np.array(start), "goal_cell": np.array(goal)})
        self.observations, self.actions, self.rewards = [obs], [], []
        self.terminations, self.truncations, self.success = [], [], [info["success"]]

    @property
    def obs(self) -> dict:
        return self.observations[-1]

    def step(self, action: np.ndarray) -> bool:
        action = np.asarray(action).astype(self.env.action_space.dtype)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.observations.append(obs)
        self.actions.append(action)
        self.rewards.append(float(reward))
        self.terminations.append(bool(terminated))
        self.truncations.append(bool(truncated))
        self.success.append(info["success"])
        return bool(terminated or truncated)

    def episode(self) -> dict:
        return dict(observations={k: np.stack([o[k] for o in self.observations]) for k in self.observations[0]},
                    actions=np.stack(self.actions), rewards=self.rewards, terminations=self.terminations,
                    truncations=self.truncations, infos={"success": np.array(self.success)})


def rollout(env: gym.Env, policy: Policy, start: Cell, goal: Cell, seed: int, rng: np.random.Generator) -> dict:
    """One episode of `policy` from `start` to `goal` (see `EpisodeRecorder`)."""
    episode = EpisodeRecorder(env, start, goal, seed)
    while not episode.step(policy(episode.obs, rng)):
        pass
    return episode.episode()


def maze2d_rewards(positions: np.ndarray, maze: Maze, task: MazeTask) -> list[float]:
    """D4RL's maze2d rewards of a data episode (its `relabel_maze2d_rewards`, sparse): 1 where the position
    a step is taken from lies within MAZE2D_RADIUS of the evaluation goal's cell centre, else 0. The
    data's observations hold no goal, so only the evaluation's goal gives the rewards a meaning."""
    goal = maze.cell_center(task.eval_goal)
    return (np.linalg.norm(np.asarray(positions) - goal, axis=1) <= MAZE2D_RADIUS).astype(float).tolist()


def generate(name: str, episodes: int | None, seed: int, progress: bool) -> tuple[list, dict]:
    """Episodes (Minari buffer fields) of the noisy controller from a random free cell towards another,
    and the task's reference scores. Four rooms: each episode ends at its goal (returns 0 or 1:
    success). A maze2d task (D4RL's recipe): episodes of `episode_steps` in its data environment, a new
    goal each time one is reached (PointMaze's continuing task), the sparse rewards relabelled as in
    D4RL's released data (`maze2d_rewards`: towards the evaluation goal, not the goals headed for)."""
    from minari.data_collector import EpisodeBuffer

    if episodes is not None and episodes < 1:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    task = TASKS[name]
    maze2d = task.eval_goal is not None
    episodes = episodes or task.episodes
    env = gym.wrappers.TimeLimit(maze2d_env(name), task.episode_steps) if maze2d else make_env(name)
    maze = maze_of(env)
    act = policies(maze)["data"]
    rng = np.random.default_rng(seed)
    buffers = []
    bar = progress_bar(episodes, f"generating pointmaze-{name}", progress)
    for _ in range(episodes):
        start, goal = (maze.free_cells[i] for i in rng.choice(len(maze.free_cells), size=2, replace=False))
        episode = rollout(env, act, start, goal, seed=int(rng.integers(2**31)), rng=rng)
        if maze2d:
            episode["rewards"] = maze2d_rewards(episode["observations"]["achieved_goal"][:-1], maze, task)
        buffers.append(EpisodeBuffer(id=len(buffers), **episode))
        bar.update()
    bar.close()
    env.close()
    return buffers, {"ref_min_score": task.ref_scores[0], "ref_max_score": task.ref_scores[1],
                     "algorithm_name": "scripted-waypoint-pd" + ("-maze2d" if maze2d else "")}
