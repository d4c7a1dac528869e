"""The goal task pointmaze-fourrooms: its map, shortest paths, controller, data and plots, and the
reader of goal data sets (Minari's D4RL/pointmaze layout)."""

import warnings

import gymnasium as gym
import numpy as np
import pytest

from tt.eval.goal import draw_paths, evaluate, evaluate_controller
from tt.goal_data import goal_columns, goal_observations, goal_trajectories_from_minari
from tt.tasks import make_dataset
from tt.tasks.pointmaze import (
    FOUR_ROOMS,
    Maze,
    WaypointController,
    env_spec,
    make_env,
    maze_of,
    policies,
    private_tempdir,
    rollout,
)

PNG = b"\x89PNG\r\n\x1a\n"


def shortest_path(maze: Maze, start, goal) -> list:
    """The cells the controller's `next_cell` walks from `start` to `goal`, both included."""
    start, goal = maze.check_cell(start, "start cell"), maze.check_cell(goal, "goal cell")
    path = [start]
    while path[-1] != goal:
        path.append(maze.next_cell(path[-1], goal))
    return path


@pytest.fixture(scope="module")
def maze():
    return Maze(FOUR_ROOMS)


@pytest.fixture(scope="module")
def env():
    env = make_env("fourrooms")
    yield env
    env.close()


def test_four_rooms_of_sixteen_cells_joined_by_four_doorways(maze):
    assert (maze.rows, maze.cols) == (11, 11) and len(maze.free_cells) == 68
    assert sorted(maze.doorways()) == [(2, 5), (5, 2), (5, 8), (8, 5)]
    rooms = maze.rooms
    assert sorted(set(rooms.values())) == [0, 1, 2, 3]
    assert [sum(r == k for r in rooms.values()) for k in range(4)] == [16] * 4
    assert maze.rooms.get((1, 1)) == 0 and maze.rooms.get((1, 9)) == 1 and maze.rooms.get((9, 1)) == 2
    assert maze.rooms.get((9, 9)) == 3 and maze.rooms.get((2, 5)) is None
    # every free cell reaches every other
    for cell in maze.free_cells[::7]:
        assert (maze.distances_to(cell)[~maze.wall] >= 0).all()


def test_cell_centres_and_cells_agree_with_pointmaze(maze, env):
    sim = env.unwrapped.maze
    for cell in maze.free_cells:
        np.testing.assert_allclose(maze.cell_center(cell), sim.cell_rowcol_to_xy(np.array(cell)))
        assert maze.cell_of(maze.cell_center(cell) + 0.3) == tuple(sim.cell_xy_to_rowcol(maze.cell_center(cell) + 0.3))


def test_shortest_paths_match_an_independent_graph_search(maze):
    from scipy.sparse import lil_matrix
    from scipy.sparse.csgraph import shortest_path as graph_search

    index = {c: k for k, c in enumerate(maze.free_cells)}
    graph = lil_matrix((len(index), len(index)))
    for (i, j), k in index.items():
        for n in ((i + 1, j), (i, j + 1)):
            if n in index:
                graph[k, index[n]] = graph[index[n], k] = 1
    oracle = graph_search(graph.tocsr(), unweighted=True)
    rng = np.random.default_rng(0)
    for a, b in rng.integers(len(index), size=(40, 2)):
        start, goal = maze.free_cells[a], maze.free_cells[b]
        path = shortest_path(maze, start, goal)
        assert path[0] == start and path[-1] == goal and len(path) - 1 == oracle[a, b]
        assert all(abs(p[0] - q[0]) + abs(p[1] - q[1]) == 1 for p, q in zip(path, path[1:]))
        assert not any(maze.wall[c] for c in path)


def test_a_path_between_rooms_passes_a_doorway(maze):
    path = shortest_path(maze, (1, 1), (9, 9))
    assert set(path) & set(maze.doorways())
    assert len(path) - 1 == 16  # Manhattan distance: the doorways lie on a shortest route


@pytest.mark.parametrize("cell, match", [((0, 0), "is a wall"), ((5, 5), "is a wall"), ((11, 3), "outside"),
                                         ((-1, 3), "outside")])
def test_walls_and_cells_outside_the_map_are_refused(maze, cell, match):
    with pytest.raises(ValueError, match=match):
        shortest_path(maze, cell, (1, 1))
    with pytest.raises(ValueError, match=match):
        maze.distances_to(cell)


def test_an_unreachable_goal_is_refused():
    walled_in = Maze([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="no path from cell"):
        shortest_path(walled_in, (1, 1), (1, 3))
    with pytest.raises(ValueError, match="rectangular"):
        Maze([[1, 1], [1]])


def test_evaluation_pairs_are_deterministic_and_lie_in_different_rooms(maze):
    pairs = maze.evaluation_pairs(60, seed=3)
    assert pairs == maze.evaluation_pairs(60, seed=3) and pairs != maze.evaluation_pairs(60, seed=4)
    for start, goal in pairs:
        assert None not in (maze.rooms.get(start), maze.rooms.get(goal))
        assert maze.rooms.get(start) != maze.rooms.get(goal)
    assert len({maze.rooms.get(s) for s, _ in pairs}) == 4
    with pytest.raises(ValueError, match="fewer than two rooms"):
        Maze([[1, 1, 1], [1, 0, 1], [1, 1, 1]]).evaluation_pairs(1, 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_controller_reaches_goals_in_other_rooms(seed, maze):
    pols = policies(maze)
    pairs = maze.evaluation_pairs(4, seed)
    for name in ("controller", "data"):
        result = evaluate(lambda name=name: pols[name], pairs, seed, progress=False)
        assert result["success_rate"] == 1.0, name
        assert all(e["steps"] < env_spec("fourrooms").max_episode_steps for e in result["episodes"])


def test_the_controller_targets_the_next_cell_the_goal_and_leaves_a_wall_cell(maze):
    controller = WaypointController(maze)
    goal = maze.cell_center((1, 6)) + 0.2  # from (1, 4) the one shortest path runs down to the doorway (2, 5)
    np.testing.assert_allclose(controller.target(maze.cell_center((1, 4)), goal), maze.cell_center((2, 4)))
    np.testing.assert_allclose(controller.target(maze.cell_center((1, 6)) - 0.1, goal), goal)
    np.testing.assert_allclose(controller.target(np.array([-4.55, 3.0]), goal), maze.cell_center((2, 1)))
    obs = {"observation": np.r_[maze.cell_center((1, 4)), 0.5, 0.0], "desired_goal": goal}
    np.testing.assert_allclose(controller(obs), [-0.5, -1.0])  # 10 (target - position) - velocity = (-0.5, -10)


def test_a_rollout_ends_at_the_goal_with_reward_one(env, maze):
    rng = np.random.default_rng(0)
    ep = rollout(env, policies(maze)["controller"], (1, 1), (9, 9), seed=0, rng=rng)
    obs = ep["observations"]
    assert set(obs) == {"observation", "achieved_goal", "desired_goal"} and obs["observation"].shape[1] == 4
    assert len(obs["observation"]) == len(ep["actions"]) + 1 == len(ep["infos"]["success"])
    assert ep["terminations"][-1] and not any(ep["terminations"][:-1]) and not any(ep["truncations"])
    assert ep["rewards"][-1] == 1.0 and sum(ep["rewards"]) == 1.0 and ep["infos"]["success"][-1]
    assert np.linalg.norm(obs["achieved_goal"][-1] - obs["desired_goal"][0]) <= 0.45
    assert maze.cell_of(obs["desired_goal"][0]) == (9, 9) and maze.cell_of(obs["observation"][0, :2]) == (1, 1)


@pytest.mark.parametrize("start, goal, match", [((0, 1), (1, 1), "start cell .* is a wall"),
                                                ((1, 1), (5, 5), "goal cell .* is a wall"),
                                                ((1, 1), (1, 12), "outside"), ((1, 1), (1, 1), "same cell")])
def test_a_rollout_refuses_bad_cells(env, maze, start, goal, match):
    with pytest.raises(ValueError, match=match):
        rollout(env, policies(maze)["random"], start, goal, seed=0, rng=np.random.default_rng(0))


def test_data_are_deterministic_by_seed_and_read_flat():
    def arrays(seed):
        data = make_dataset("pointmaze-fourrooms", episodes=3, seed=seed, progress=False)
        return data, goal_trajectories_from_minari(data)

    data, a = arrays(5)
    _, b = arrays(5)
    _, c = arrays(6)
    assert data.total_episodes == 3 and data.spec.env_spec.id == "tt/PointMaze_FourRooms-v3"
    assert data.spec.env_spec.kwargs["maze_map"] == FOUR_ROOMS and data.spec.env_spec.max_episode_steps == 500
    np.testing.assert_array_equal(a.trajectories.joined, b.trajectories.joined)
    np.testing.assert_array_equal(a.goals, b.goals)
    assert a.trajectories.joined.shape != c.trajectories.joined.shape or not np.array_equal(
        a.trajectories.joined, c.trajectories.joined)
    t = a.trajectories
    assert (t.observation_dim, t.action_dim) == (4, 2)
    assert t.terminated.all() and a.reached.all() and (t.returns == 1.0).all()
    np.testing.assert_array_equal(a.goal_columns, [0, 1])
    assert (np.linalg.norm(a.final_observations[:, :2] - a.goals, axis=1) <= 0.45).all()
    # the default keeps the goal's reward: a goal task terminates at its goal
    ends = np.cumsum(t.lengths) - 1
    np.testing.assert_array_equal(t.joined[ends, 6], 1.0)
    import minari

    np.testing.assert_allclose(minari.get_normalized_score(data, np.array([0.0, 0.5, 1.0])), [0.0, 0.5, 1.0])


def test_data_set_size_is_in_episodes():
    with pytest.raises(ValueError, match="sized in episodes"):
        make_dataset("pointmaze-fourrooms", steps=100, progress=False)
    with pytest.raises(ValueError, match="must be positive"):
        make_dataset("pointmaze-fourrooms", episodes=0, progress=False)
    with pytest.raises(ValueError, match="unknown maze"):
        env_spec("sixrooms")


def d4rl_like_dataset(dataset_id: str):
    """Two episodes laid out as Minari's D4RL/pointmaze/* (a continuing task: truncated at the goal,
    no terminations), the observation's columns as PointMaze's."""
    import minari
    from minari.data_collector import EpisodeBuffer

    rng = np.random.default_rng(0)
    box = lambda n: gym.spaces.Box(-np.inf, np.inf, (n,), np.float64)
    buffers = []
    for k, n in enumerate((5, 3)):
        observation = rng.normal(size=(n + 1, 4))
        goal = rng.normal(size=2)
        observation[-1, :2] = goal + 0.1  # reached
        buffers.append(EpisodeBuffer(
            id=k, observations={"achieved_goal": observation[:, :2].copy(), "desired_goal": np.tile(goal, (n + 1, 1)),
                                "observation": observation},
            actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32), rewards=[0.0] * (n - 1) + [1.0],
            terminations=[False] * n, truncations=[False] * (n - 1) + [True]))
    env = make_env("PointMaze_UMaze-v3")  # as D4RL's: continuing, sparse
    space = gym.spaces.Dict({"achieved_goal": box(2), "desired_goal": box(2), "observation": box(4)})
    assert env.observation_space == space
    with private_tempdir():  # Minari makes the environment
        data = minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env.spec, eval_env=env.spec, algorithm_name="QIteration", author="tt",
            author_email="tt@localhost", code_permalink="tests/test_pointmaze.py", description="D4RL's layout")
    env.close()
    return data, buffers


def test_minaris_pointmaze_layout_is_read_flat_with_its_goals():
    data, buffers = d4rl_like_dataset("test/pointmaze/d4rl-like-v0")
    g = goal_trajectories_from_minari(data)
    t = g.trajectories
    np.testing.assert_array_equal(t.lengths, [5, 3])
    np.testing.assert_array_equal(t.terminated, [False, False])
    np.testing.assert_allclose(t.joined[:5, :4], buffers[0].observations["observation"][:5])
    np.testing.assert_allclose(t.joined[5:, 4:6], buffers[1].actions)
    np.testing.assert_allclose(g.goals, [b.observations["desired_goal"][0] for b in buffers])
    np.testing.assert_allclose(g.final_observations, [b.observations["observation"][-1] for b in buffers])
    assert g.reached.all()
    expected = np.zeros((2, 4))
    expected[:, :2] = g.goals
    np.testing.assert_allclose(g.goal_observations(), expected)
    hindsight = g.hindsight_goal_observations()
    np.testing.assert_allclose(hindsight[:, :2], g.final_observations[:, :2])
    assert (hindsight[:, 2:] == 0).all()


def test_the_controller_drives_in_d4rls_mazes_too():
    env = make_env("PointMaze_UMaze-v3", continuing_task=False)
    maze = maze_of(env)
    ep = rollout(env, policies(maze)["controller"], (1, 1), (3, 1), seed=0, rng=np.random.default_rng(0))
    assert ep["terminations"][-1] and shortest_path(maze, (1, 1), (3, 1))[2] == (1, 3)
    env.close()


def test_a_data_set_without_goals_is_refused(pendulum_medium):
    with pytest.raises(ValueError, match="not a goal data set"):
        goal_trajectories_from_minari(pendulum_medium)


def test_goal_observations_put_the_goal_in_its_columns():
    np.testing.assert_array_equal(goal_observations(np.array([[1.0, 2.0]]), np.array([2, 0]), 4), [[2.0, 0, 1.0, 0]])
    with pytest.raises(ValueError, match="3 dimensions"):
        goal_observations(np.zeros(3), np.array([0, 1]), 4)


def test_goal_columns_are_found_or_refused():
    obs = np.random.default_rng(0).normal(size=(6, 4))
    np.testing.assert_array_equal(goal_columns(obs, obs[:, [3, 1]]), [3, 1])
    with pytest.raises(ValueError, match="equals no observation column"):
        goal_columns(obs, obs[:, :2] + 1.0)


def test_paths_are_drawn_on_axes_and_to_png_leaving_pyplot_alone(tmp_path, maze):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    figures = plt.get_fignums()

    paths = [np.array([[-3.0, 3.0], [-2.0, 3.0], [0.0, 3.0], [2.0, 2.0]]), np.array([[3.0, -3.0], [3.0, -1.0]])]
    goals = [[2.0, 2.0], [-3.0, 3.0]]
    out = tmp_path / "paths.png"
    assert draw_paths(str(out), maze, paths, goals, planned=[paths[0][::-1], None], reached=[True, False],
                      title="t") == str(out)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5000
    ax = Figure().subplots()
    assert draw_paths(ax, maze, paths, goals) is ax
    assert len(ax.lines) >= 4 and len(ax.images) == 1
    assert plt.get_fignums() == figures


def test_the_controller_evaluation_writes_its_numbers_and_plot(tmp_path):
    results = evaluate_controller(n_goals=2, seed=0, out_dir=str(tmp_path), progress=False)
    assert set(results) == {"controller", "data", "random"}
    assert results["controller"]["success_rate"] == 1.0 and results["controller"]["n"] == 2
    assert (tmp_path / "controller_paths.png").read_bytes()[:8] == PNG
    import json

    saved = json.loads((tmp_path / "controller.json").read_text())
    assert saved["results"]["controller"]["success_rate"] == 1.0
    assert "path" not in saved["results"]["data"]["episodes"][0]
    with pytest.raises(ValueError, match="must be positive"):
        evaluate_controller(n_goals=0, progress=False)


def test_the_env_is_made_from_a_spec_without_registering_it_or_leaving_files():
    import glob
    import os
    import tempfile

    leftovers = lambda: set(glob.glob(os.path.join(tempfile.gettempdir(), "*.xml")))
    before, tempdir = leftovers(), tempfile.tempdir
    env = make_env(env_spec("fourrooms", max_episode_steps=7))
    assert leftovers() == before and tempfile.tempdir == tempdir
    assert env.spec.id not in gym.registry and env.spec.max_episode_steps == 7
    assert not env.unwrapped.continuing_task and env.unwrapped.reward_type == "sparse"
    assert maze_of(env).maze_map == FOUR_ROOMS
    env.close()


def test_goals_played_in_lanes_are_the_episodes_played_one_at_a_time(maze):
    """`evaluate_planner` steps several environments with one batch of plans, each taking the next
    pair when its episode ends: every episode (path, success, steps, first plan) is the one the same
    planner plays alone on that pair, and lanes left without a pair act on nothing."""
    import torch
    from test_goal import goal_model
    from test_planner import random_discretizer

    from tt.config import PlanConfig
    from tt.eval.goal import evaluate_planner
    from tt.search import Planner

    model = goal_model((4, 2, 12, 3, 1, 2, 16), seed=3, dtype=torch.float32)
    config = PlanConfig(horizon=2, beam_width=3, objective="likelihood", max_context_transitions=3)
    pairs = maze.evaluation_pairs(5, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random model's plans hold stop tokens
        runs = {n: evaluate_planner(Planner(model, random_discretizer(12, model.transition_dim), config, seed=0),
                                    [0, 1], pairs, seed=1, n_envs=n, progress=False, max_episode_steps=40)
                for n in (1, 3)}
    alone, lanes = runs[1]["episodes"], runs[3]["episodes"]
    assert len(lanes) == len(pairs) and [(tuple(e["start"]), tuple(e["goal"])) for e in lanes] == list(pairs)
    for a, b in zip(alone, lanes):
        assert (a["success"], a["steps"]) == (b["success"], b["steps"]) and a["steps"] <= 40
        np.testing.assert_array_equal(a["path"], b["path"])
        np.testing.assert_array_equal(a["planned"], b["planned"])
        assert b["planned"].shape == (2, 2)
    assert runs[3]["success_rate"] == runs[1]["success_rate"]
    with pytest.raises(ValueError, match="n_envs"):
        evaluate_planner(None, [0, 1], pairs, seed=1, n_envs=0)


# ----------------------------------------------------------------------------- D4RL's maze2d recipe


@pytest.fixture(scope="module")
def umaze_data():
    return make_dataset("pointmaze-umaze", episodes=6, seed=0, progress=False)


def test_maze2d_data_wander_between_goals_with_d4rls_sparse_reward(umaze_data):
    """pointmaze-umaze: episodes of 300 steps (truncated, never terminated) in Minari's D4RL/pointmaze
    layout; the controller reaches several goals per episode (the goal moves on once reached); the reward
    relabelled as D4RL's released data: 1 exactly where the ball starts a step within 0.5 of the evaluation
    goal's centre, whatever goal it headed for; D4RL's reference scores."""
    assert umaze_data.total_episodes == 6 and umaze_data.total_steps == 6 * 300
    meta = umaze_data.storage.metadata
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (23.85, 161.86)
    goals_reached, rewarded = 0, 0
    evaluation_goal = np.array([-1.0, 1.0])  # D4RL's cell (1, 1) of the 5 x 5 map, 1 m cells centred on (0, 0)
    for episode in umaze_data.iterate_episodes():
        obs = episode.observations
        assert not episode.terminations.any() and episode.truncations[-1]
        distance = np.linalg.norm(obs["achieved_goal"][:-1] - evaluation_goal, axis=1)
        np.testing.assert_array_equal(episode.rewards, (distance <= 0.5).astype(float))
        goals_reached += int((np.linalg.norm(np.diff(obs["desired_goal"], axis=0), axis=1) > 0).sum())
        rewarded += int(episode.rewards.sum() > 0)
    assert goals_reached >= 6 and rewarded >= 1


def test_maze2d_evaluation_plays_towards_d4rls_fixed_goal(umaze_data):
    """The evaluation environment: the goal fixed at D4RL's cell, random starts, 300 steps, no ending at
    the goal; the controller collects reward there, random actions almost none."""
    env = umaze_data.recover_environment(eval_env=True)
    maze = maze_of(env)
    controller, random_actions = policies(maze)["controller"], policies(maze)["random"]
    rng = np.random.default_rng(0)
    returns = {}
    for name, policy in (("controller", controller), ("random", random_actions)):
        obs, _ = env.reset(seed=1)
        assert np.linalg.norm(obs["desired_goal"] - maze.cell_center((1, 1))) <= 0.25 + 1e-9
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs, rng))
            total, steps, done = total + reward, steps + 1, terminated or truncated
            assert not terminated
        assert steps == 300
        returns[name] = total
    env.close()
    assert returns["controller"] > 100 and returns["random"] < 20, returns


def test_a_maze2d_run_and_critic_plan_in_the_evaluation_environment(umaze_data, tmp_path):
    """TT and TT+Q on pointmaze-umaze end to end from the command line (tiny run and critic): evaluation in
    the fixed-goal environment, the observation part of its dict observations, normalized by D4RL's scores."""
    import json

    from tt.cli import main

    run, critic = str(tmp_path / "run"), str(tmp_path / "critic")
    assert main(["train", "--dataset", "pointmaze-umaze", "--out", run, "--preset", "small", "--steps", "3",
                 "--device", "cpu"]) == 0
    assert main(["train-critic", "--dataset", "pointmaze-umaze", "--out", critic, "--steps", "20", "--hidden", "16",
                 "--device", "cpu"]) == 0
    out = str(tmp_path / "eval")
    assert main(["eval", "--run", run, "--critic", critic, "--episodes", "1", "--envs", "1", "--horizon", "2",
                 "--beam-width", "2", "--no-cuda-graphs", "--device", "cpu", "--out", out]) == 0
    with open(f"{out}/eval.json") as f:
        results = json.load(f)
    assert results["lengths"] == [300] and results["critic"] == critic
    assert results["normalized_scores"][0] == pytest.approx((results["returns"][0] - 23.85) / (161.86 - 23.85))
