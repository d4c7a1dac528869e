"""The paper's locomotion tasks: shipped SAC policies and the D4RL-style data sets made from them."""

import functools
import json
import os

import gymnasium as gym
import numpy as np
import pytest

from tt.cli import main
from tt.tasks import locomotion, make_dataset
from tt.tasks.actor import Actor, load_actor, load_card, save_actor
from tt.tasks.rollouts import RolloutWorkers, collect_episodes

SHAPES = {"hopper": (11, 3), "halfcheetah": (17, 6), "walker2d": (17, 6)}
TERMINATES = {"hopper": True, "halfcheetah": False, "walker2d": True}


def shipped(task: str, name: str) -> str:
    return locomotion.policy_path(task, name)


@pytest.mark.parametrize("task", sorted(SHAPES))
def test_shipped_policies_have_cards_with_measured_returns(task):
    names = ["medium", "expert", *locomotion.replay_names(task)]
    assert len(names) >= 4
    for name in names:
        path = shipped(task, name)
        assert os.path.getsize(path) < 1_000_000, f"{path} must stay under 1 MB"
        card = load_card(path)
        for key in ("task", "training_steps", "seed", "training_wall_seconds", "return_mean", "return_std",
                    "eval_episodes", "reference_random_return"):
            assert key in card, f"{path}'s card lacks {key}"
        assert card["task"] == task and card["eval_episodes"] == 20
    expert, medium = load_card(shipped(task, "expert")), load_card(shipped(task, "medium"))
    assert medium["training_steps"] < expert["training_steps"]
    assert medium["return_mean"] < expert["return_mean"]
    assert expert["return_mean"] > expert["reference_random_return"]
    replay_steps = [load_card(shipped(task, n))["training_steps"] for n in locomotion.replay_names(task)]
    assert replay_steps == sorted(replay_steps) and replay_steps[-1] == medium["training_steps"]


@pytest.mark.parametrize("task", sorted(SHAPES))
def test_each_shipped_policy_loads_and_runs_a_short_episode(task):
    env_id = locomotion.ENV_IDS[task]
    for name in ["medium", "expert", *locomotion.replay_names(task)]:
        actor = load_actor(shipped(task, name))
        assert (actor.observation_dim, actor.action_dim) == SHAPES[task]
        env = gym.make(env_id, max_episode_steps=50)
        obs, _ = env.reset(seed=0)
        total, steps, done = 0.0, 0, False
        while not done:
            action = actor.act(obs[None])[0]
            assert env.action_space.contains(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, steps, done = total + reward, steps + 1, terminated or truncated
        assert steps > 0 and np.isfinite(total)


def test_the_expert_beats_the_medium_policy_in_the_environment():
    """Measured again here, not read off the card: 3 sampled-action episodes each."""
    returns = {}
    for name in ("medium", "expert"):
        actor = load_actor(shipped("hopper", name))
        episodes = collect_episodes(lambda: gym.make("Hopper-v5"), actor.batch_policy(), seed=5, episodes=3,
                                    n_envs=3, progress=False)
        returns[name] = np.mean([sum(e["rewards"]) for e in episodes])
    assert returns["expert"] > returns["medium"], returns


def test_actor_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    import torch

    layer = lambda o, i: (torch.randn(o, i), torch.randn(o))
    actor = Actor([layer(8, 5), layer(8, 8)], layer(2, 8), layer(2, 8), np.array([-1.0, -2.0], np.float32),
                  np.array([1.0, 2.0], np.float32))
    path = str(tmp_path / "a.safetensors")
    save_actor(path, actor, {"task": "x"})
    back = load_actor(path)
    obs = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(back.act(obs), actor.act(obs))
    noise = rng.standard_normal((4, 2)).astype(np.float32)
    drawn = back.act(obs, noise)
    assert (drawn >= actor.low).all() and (drawn <= actor.high).all() and not np.allclose(drawn, back.act(obs))
    assert json.load(open(tmp_path / "a.json")) == {"task": "x"}
    with pytest.raises(ValueError, match="observations must be"):
        actor.act(obs[:, :4])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt policy file"):
        load_actor(str(tmp_path / "bad.safetensors"))
    with pytest.raises(FileNotFoundError, match="no shipped policy hopper-nope"):
        locomotion.load_policy("hopper", "nope")


@pytest.mark.parametrize("task", sorted(SHAPES))
@pytest.mark.parametrize("variant", locomotion.VARIANTS)
def test_data_sets_have_the_papers_shapes_and_ends(task, variant):
    steps = 1500
    data = make_dataset(f"{task}-{variant}", steps=steps, seed=0, progress=False)
    assert data.spec.dataset_id == f"tt/{task}/{variant}-v0"
    assert data.total_steps == steps
    assert data.observation_space.shape == (SHAPES[task][0],) and data.action_space.shape == (SHAPES[task][1],)
    assert data.spec.env_spec.id == locomotion.ENV_IDS[task]
    episodes = list(data.iterate_episodes())
    terminations = sum(int(e.terminations.sum()) for e in episodes)
    for e in episodes:
        assert len(e.observations) == len(e.actions) + 1
        assert not (e.terminations & e.truncations).any(), "terminations and truncations are kept apart"
        assert e.terminations[-1] or e.truncations[-1], "every episode ends"
        assert not (e.terminations[:-1].any() or e.truncations[:-1].any())
    if not TERMINATES[task]:
        assert terminations == 0 and all(e.truncations[-1] for e in episodes)
        if variant in ("random", "medium", "expert"):  # one policy: every episode but the cut one runs 1000 steps
            assert len(episodes[0].actions) == 1000 and all(len(e.actions) == 1000 for e in episodes[:-1])
    elif variant == "random":
        assert terminations > 0, "a random hopper or walker falls"
    assert episodes[-1].truncations[-1], "the data set's last episode is cut at the step budget"


@pytest.mark.parametrize("task", ["hopper", "walker2d"])
def test_medium_and_expert_data_hold_real_terminations(task):
    data = make_dataset(f"{task}-medium-expert", steps=4000, seed=0, progress=False)
    episodes = list(data.iterate_episodes())
    assert any(e.terminations[-1] for e in episodes), "the agent falls: real terminations"
    for e in episodes:  # an episode that survives runs into the 1000-step limit: a truncation, not a termination
        assert len(e.actions) <= 1000 and (not e.truncations[-1] or not e.terminations[-1])


def test_the_time_limit_is_a_truncation():
    data = make_dataset("halfcheetah-expert", steps=2500, seed=0, progress=False)
    lengths = [(len(e.actions), bool(e.truncations[-1]), bool(e.terminations.any())) for e in data.iterate_episodes()]
    assert lengths == [(1000, True, False), (1000, True, False), (500, True, False)]


def test_normalized_score_is_0_for_random_and_100_for_expert():
    import minari

    data = make_dataset("hopper-random", steps=1000, seed=0, progress=False)
    card = load_card(shipped("hopper", "expert"))
    meta = data.storage.metadata
    assert meta["ref_min_score"] == card["reference_random_return"]
    assert meta["ref_max_score"] == card["return_mean"]
    scores = minari.get_normalized_score(data, np.array([meta["ref_min_score"], meta["ref_max_score"]]))
    np.testing.assert_allclose(100 * scores, [0.0, 100.0], atol=1e-9)


def test_generation_is_deterministic_by_seed():
    from tt.data import trajectories_from_minari

    a = trajectories_from_minari(make_dataset("hopper-medium-replay", steps=2500, seed=3, progress=False))
    b = trajectories_from_minari(make_dataset("hopper-medium-replay", steps=2500, seed=3, progress=False))
    np.testing.assert_array_equal(a.joined, b.joined)
    c = trajectories_from_minari(make_dataset("hopper-medium-replay", steps=2500, seed=4, progress=False))
    assert not np.array_equal(a.joined[:100], c.joined[:100])


def test_data_make_through_the_cli(capsys):
    import minari

    exists = "tt/halfcheetah/medium-v0" in minari.list_local_datasets()  # made by another test of this session
    assert main(["data", "make", "halfcheetah-medium", "--steps", "1200"]) == (2 if exists else 0)
    if exists:  # a data set that exists is made again only when asked
        assert "exists: give --overwrite to make it again" in capsys.readouterr().err
        assert main(["data", "make", "halfcheetah-medium", "--steps", "1200", "--overwrite"]) == 0
    assert "1200 steps" in capsys.readouterr().out
    assert main(["data", "make", "halfcheetah-medium", "--steps", "1200"]) == 2  # now it exists
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "hopper-medium-replay" in listing and "tt/halfcheetah/medium-v0" in listing
    assert main(["data", "make", "hopper-medium", "--episodes", "3"]) == 2
    assert "sized in steps" in capsys.readouterr().err
    assert main(["data", "make", "hopper-mediocre"]) == 2
    assert "unknown built-in data set" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["hopper", "halfcheetah"])
def test_an_action_does_not_depend_on_the_batch_it_comes_in(task):
    """Rows one at a time and in shuffled batches of many sizes give the same bits: what makes the
    data independent of the number of environments and workers."""
    actor = load_actor(shipped(task, "medium"))
    rng = np.random.default_rng(0)
    obs = (rng.normal(size=(300, actor.observation_dim)) * rng.uniform(0.1, 10, size=(300, 1))).astype(np.float32)
    noise = rng.standard_normal((300, actor.action_dim)).astype(np.float32)
    alone = np.concatenate([actor.act(obs[i:i + 1], noise[i:i + 1]) for i in range(300)])
    alone_mean = np.concatenate([actor.act(obs[i:i + 1]) for i in range(300)])
    for size in (2, 7, 8, 9, 16, 17, 300):
        order = rng.permutation(300)
        batched, batched_mean = np.empty_like(alone), np.empty_like(alone)
        for start in range(0, 300, size):
            rows = order[start:start + size]
            batched[rows], batched_mean[rows] = actor.act(obs[rows], noise[rows]), actor.act(obs[rows])
        np.testing.assert_array_equal(batched, alone, err_msg=f"batches of {size}")
        np.testing.assert_array_equal(batched_mean, alone_mean, err_msg=f"batches of {size}")


def _fields(buffers) -> list:
    return [(b.id, b.observations.tobytes(), b.actions.tobytes(), b.rewards, b.terminations, b.truncations)
            for b in buffers]


def test_data_are_identical_for_any_number_of_workers_and_environments():
    runs = {(workers, n_envs): locomotion.generate("hopper", "medium-replay", 3000, 2, False, n_envs=n_envs,
                                                   workers=workers)[0]
            for workers, n_envs in [(1, 16), (2, 5)]}  # 16 lanes in this process; 3 + 2 in two workers
    first = _fields(runs[1, 16])
    assert sum(len(b.rewards) for b in runs[1, 16]) == 3000
    assert len(first) > 10, "several episodes, so the lanes and workers share them out"
    for key, buffers in runs.items():
        assert _fields(buffers) == first, f"workers, environments = {key}"


def test_the_step_budget_is_exact_and_cuts_a_longer_run():
    make = functools.partial(locomotion.make_env, "Hopper-v5")
    policy = locomotion.random_policy("Hopper-v5")
    longer = collect_episodes(make, policy, seed=7, steps=3000, n_envs=4, progress=False)
    for steps in (1, 17, 1000, 2345):
        episodes = collect_episodes(make, policy, seed=7, steps=steps, n_envs=5, progress=False)
        assert sum(len(e["rewards"]) for e in episodes) == steps
        for e in episodes:
            assert len(e["observations"]) == len(e["actions"]) + 1
            assert e["terminations"][-1] or e["truncations"][-1], "every episode ends"
            assert not (e["terminations"][:-1].any() or e["truncations"][:-1].any())
        for e, full in zip(episodes[:-1], longer):  # whole episodes are the longer run's
            for key in e:
                np.testing.assert_array_equal(e[key], full[key])
        last, full = episodes[-1], longer[len(episodes) - 1]
        n = len(last["rewards"])
        np.testing.assert_array_equal(last["observations"], full["observations"][:n + 1])
        np.testing.assert_array_equal(last["actions"], full["actions"][:n])
        if n < len(full["rewards"]):
            assert last["truncations"][-1] and not last["terminations"][-1], "the cut episode is truncated"


def test_worker_errors_are_raised_in_the_parent():
    import torch

    layer = lambda o, i: (torch.randn(o, i), torch.randn(o))
    wrong = Actor([layer(8, 5)], layer(3, 8), layer(3, 8), -np.ones(3, np.float32), np.ones(3, np.float32))
    make = functools.partial(locomotion.make_env, "Hopper-v5")
    with RolloutWorkers(2) as pool:
        with pytest.raises(RuntimeError, match=r"rollout worker \d failed: ValueError: observations must be"):
            pool.collect(make, wrong.batch_policy(), seed=0, steps=100, n_envs=2, progress=False)
        with pytest.raises(TypeError, match="picklable"):
            pool.collect(lambda: make(), wrong.batch_policy(), seed=0, steps=100, progress=False)
        episodes = pool.collect(make, locomotion.random_policy("Hopper-v5"), seed=0, steps=100, n_envs=2,
                                progress=False)  # the pool still works after an error
    assert sum(len(e["rewards"]) for e in episodes) == 100
