"""TT+Q: the return search guided by a learned critic (`tt.search.CriticReturn`), IQL's critic trained with
TorchRL's loss (`tt.iql`), and the command line around them (`tt train-critic`, `tt eval --critic`, `tt eval
--iql-policy`)."""

import json
import os

import numpy as np
import pytest
import torch
from test_planner import GREEDY, random_discretizer, random_model, random_prefixes

from tt import reference
from tt.checkpoint import CheckpointError, load_critic
from tt.cli import main
from tt.config import CriticConfig, PlanConfig
from tt.critic import Critic, CriticShape
from tt.iql import Transitions, batch_of, critic_weights, iql_loss, iql_losses, train_critic
from tt.rng import Philox
from tt.search import CriticReturn, beam_plan, pad_prefixes

pytestmark = pytest.mark.filterwarnings("ignore:the plan's action holds a stop token",
                                        "ignore:No target network updater")


def random_critic(O: int, A: int, seed: int = 0) -> Critic:
    torch.manual_seed(seed)
    critic = Critic(CriticShape(O, A, hidden=16, layers=2)).double()
    with torch.no_grad():
        for w in critic.target_q.weights:
            w.mul_(3.0)  # Q large enough to decide between candidates
    return critic


@pytest.mark.parametrize("window", ["exact", "cached"])
@pytest.mark.parametrize("O, A, contexts, horizon, beam", [(3, 1, [2, 0, 1], 3, 4), (5, 2, [1, 3], 4, 6),
                                                          (2, 3, [0], 2, 3), (3, 2, [2], 4, 8)])
def test_tt_q_plans_equal_the_reference(window, O, A, contexts, horizon, beam):
    """Random weights and a random critic: TT+Q plans equal the reference plan by plan, token for token, and
    each reported score is what its tokens score with that critic. Batches of several plans plan greedily
    (their draws are not the reference's one plan's); one plan draws from the reference's Philox stream,
    with the default filters, and the critic changes its plan."""
    model, disc = random_model(O, A, K=6), random_discretizer(15, O + A + 2)
    mids = torch.tensor(disc.midpoints)
    critic = random_critic(O, A)
    config = PlanConfig(horizon=horizon, beam_width=beam, n_expand=2, max_context_transitions=4, window=window,
                        **(GREEDY if len(contexts) > 1 else {}))
    prefixes = random_prefixes(model, contexts, torch.Generator().manual_seed(1))
    result = beam_plan(model, pad_prefixes(prefixes, O + A + 2), disc, config, Philox(0),
                       objective=CriticReturn(critic.value, mids.float()))
    n_ctx = max(contexts)
    for b, prefix in enumerate(prefixes):
        crop = reference.window_crop(model, config, n_ctx, n_ctx - contexts[b])
        tokens, score = reference.beam_plan(model, prefix, mids, config, Philox(0), crop=crop, q_fn=critic.value)
        assert result.tokens[b].tolist() == tokens.tolist()
        assert result.score[b].item() == pytest.approx(score.item(), rel=1e-6)
        own = reference.plan_score(model, prefix, result.tokens[b], mids, config, crop=crop, q_fn=critic.value)
        assert result.score[b].item() == pytest.approx(own.item(), rel=1e-6)
    if len(contexts) == 1:
        plain = beam_plan(model, pad_prefixes(prefixes, O + A + 2), disc, config, Philox(0))
        assert not torch.equal(result.tokens, plain.tokens)  # the critic chose another plan


def test_the_exported_critic_is_the_network_torchrl_trained():
    """TorchRL's IQL losses on a batch equal IQL's formulas evaluated with tt's Critic built from the loss's
    weights (`critic_weights`): twin Q towards r + discount * V(s'), V's expectile of the target Q's minimum,
    the policy's advantage-weighted log-likelihood."""
    shape = CriticShape(4, 2, hidden=8, layers=2)
    cfg = CriticConfig(expectile=0.7, temperature=3.0, discount=0.9)
    torch.manual_seed(0)
    loss, update = iql_loss(shape, cfg)
    for _ in range(3):  # the target moves away from Q
        with torch.no_grad():
            for p in loss.qvalue_network_params.values(True, True):
                p.add_(torch.randn_like(p) * 0.1)
        update.step()
    g = torch.Generator().manual_seed(1)
    n = 32
    data = {"observation": torch.randn(n, 4, generator=g), "next_observation": torch.randn(n, 4, generator=g),
            "action": torch.rand(n, 2, generator=g) * 2 - 1, "reward": torch.randn(n, generator=g),
            "terminal": torch.rand(n, generator=g) < 0.2}
    batch = batch_of(data, torch.arange(n))
    loss_policy, loss_q, loss_v = iql_losses(loss, batch)
    critic = Critic(shape)
    critic.load_state_dict({**critic_weights(loss.state_dict()), "action_low": -torch.ones(2),
                            "action_high": torch.ones(2)})
    s, a, r, s2, d = (data[k] for k in ("observation", "action", "reward", "next_observation", "terminal"))
    with torch.no_grad():
        target = r + cfg.discount * (~d) * critic.v(s2)[:, 0]
        expected_q = ((critic.q(s, a) - target) ** 2).sum(0).mean()
        u = critic.target_q(s, a).min(0).values - critic.v(s)[:, 0]
        expected_v = (torch.where(u > 0, cfg.expectile, 1 - cfg.expectile) * u**2).mean()
        mean, std = critic.policy(s)
        log_prob = torch.distributions.Normal(mean, std).log_prob(a).sum(-1)
        expected_policy = -(torch.exp(cfg.temperature * u).clamp(max=100.0) * log_prob).mean()
    torch.testing.assert_close(loss_q.detach(), expected_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_v.detach(), expected_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_policy.detach(), expected_policy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(critic.value(s, a), critic.target_q(s, a).min(0).values)


def chain_episodes(n: int, seed: int) -> tuple[Transitions, np.ndarray]:
    """A sparse-reward task: a point on [-1, 1] from 0 moves by 0.1 * action (actions from a random walk with
    a drift of its own per episode); reward 1 and the episode's end on reaching x > 0.8, else 40 steps. Returns
    the transitions and, per transition, whether its episode reached the goal."""
    rng = np.random.default_rng(seed)
    rows, success = [], []
    for _ in range(n):
        x, drift, episode = 0.0, rng.uniform(-0.6, 0.6), []
        for _ in range(40):
            a = float(np.clip(drift + rng.normal(0, 0.5), -1, 1))
            x2 = float(np.clip(x + 0.1 * a, -1, 1))
            done = x2 > 0.8
            episode.append((x, a, float(done), x2, done))
            x = x2
            if done:
                break
        rows += episode
        success += [episode[-1][4]] * len(episode)
    obs, act, rew, nxt, term = (np.array(c) for c in zip(*rows))
    returns = np.array([1.0, 0.0])
    transitions = Transitions(obs[:, None].astype(np.float32), act[:, None].astype(np.float32), rew,
                              nxt[:, None].astype(np.float32), term.astype(bool), returns,
                              -np.ones(1, np.float32), np.ones(1, np.float32))
    return transitions, np.array(success)


def test_a_trained_critic_ranks_successful_transitions_above_failed_ones(tmp_path):
    """IQL on a sparse-reward task: on held-out episodes, Q of the transitions of episodes that reach the goal
    is above Q of those that do not (AUC over pairs of transitions)."""
    train, _ = chain_episodes(300, seed=0)
    held_out, success = chain_episodes(100, seed=1)
    assert 0.1 < success.mean() < 0.9  # transitions of both kinds of episode
    cfg = CriticConfig(hidden=32, layers=2, batch_size=128, max_steps=600, save_every=600, log_every=200,
                       reward_scale=1.0, reward_shift=0.0, device="cpu")
    critic = train_critic(cfg, str(tmp_path / "critic"), progress=False, transitions=train, dataset_id="chain")
    q = critic.value(torch.from_numpy(held_out.observations), torch.from_numpy(held_out.actions)).numpy()
    good, bad = q[success], q[~success]
    auc = (good[:, None] > bad[None, :]).mean()
    assert auc > 0.8, f"AUC {auc:.3f}: Q does not tell successful transitions from failed ones"


def test_a_critic_resumes_at_the_same_step_with_the_same_batches(tmp_path, monkeypatch):
    """Stopped after its checkpoint at step 10 (as by a crash) and resumed, a critic ends as the one trained
    without a stop; a resume with other options is refused."""
    import tt.iql

    train, _ = chain_episodes(40, seed=0)
    cfg = CriticConfig(hidden=8, layers=1, batch_size=16, max_steps=20, save_every=10, log_every=5,
                       reward_scale=1.0, reward_shift=0.0, device="cpu")
    whole = train_critic(cfg, str(tmp_path / "whole"), progress=False, transitions=train, dataset_id="chain")
    save = tt.iql.save_critic

    def save_then_stop(out, critic, config, step, state):
        save(out, critic, config, step, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(tt.iql, "save_critic", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_critic(cfg, str(tmp_path / "parts"), progress=False, transitions=train, dataset_id="chain")
    monkeypatch.setattr(tt.iql, "save_critic", save)
    assert load_critic(str(tmp_path / "parts"))[2] == 10
    resumed = train_critic(cfg, str(tmp_path / "parts"), resume=True, progress=False, transitions=train,
                           dataset_id="chain")
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with pytest.raises(ValueError, match="--resume: the critic .* was trained with hidden=8"):
        train_critic(CriticConfig(**{**cfg.__dict__, "hidden": 16}), str(tmp_path / "parts"), resume=True,
                     progress=False, transitions=train, dataset_id="chain")


@pytest.fixture(scope="module")
def run_and_critic(tmp_path_factory, pendulum_medium):
    """A tiny run on pendulum-medium and a tiny critic of the same data set, both from the command line."""
    root = tmp_path_factory.mktemp("ttq")
    run, critic = str(root / "run"), str(root / "critic")
    assert main(["train", "--dataset", "pendulum-medium", "--out", run, "--preset", "small", "--steps", "3",
                 "--device", "cpu"]) == 0
    assert main(["train-critic", "--dataset", "pendulum-medium", "--out", critic, "--steps", "30", "--hidden", "16",
                 "--batch-size", "32", "--device", "cpu"]) == 0
    return root, run, critic


EVAL = ["--episodes", "1", "--envs", "1", "--horizon", "2", "--beam-width", "2", "--no-cuda-graphs", "--device", "cpu"]


def test_train_critic_then_eval_with_it(run_and_critic, capsys):
    root, run, critic = run_and_critic
    loaded, config, step = load_critic(critic)
    assert step == 30 and loaded.shape.dataset_id == "tt/pendulum/medium-v0"
    assert config["train_critic"]["expectile"] == 0.7 and config["train_critic"]["temperature"] == 3.0
    assert os.path.isfile(os.path.join(critic, "loss.png"))
    out = str(root / "eval")
    assert main(["eval", "--run", run, "--critic", critic, "--out", out, *EVAL]) == 0
    with open(os.path.join(out, "eval.json")) as f:
        results = json.load(f)
    assert results["critic"] == critic and len(results["returns"]) == 1
    assert main(["train-critic", "--dataset", "pendulum-medium", "--out", critic, "--steps", "30"]) == 2
    assert "holds a critic" in capsys.readouterr().err


def test_the_iql_policy_is_evaluated_as_a_planner_is(run_and_critic):
    """`tt eval --iql-policy`: the critic's policy, its mean action, in the same episodes as a planner's (episode k
    reset with seed + k): the returns equal a plain loop's."""
    from tt.data import load_dataset

    root, _, critic_dir = run_and_critic
    out = str(root / "policy-eval")
    assert main(["eval", "--iql-policy", critic_dir, "--episodes", "3", "--envs", "2", "--seed", "5", "--out", out,
                 "--device", "cpu"]) == 0
    with open(os.path.join(out, "eval.json")) as f:
        results = json.load(f)
    assert results["policy"] == "iql" and results["critic"] == critic_dir and os.path.isfile(os.path.join(out,
                                                                                                          "returns.png"))
    critic = load_critic(critic_dir)[0]
    env = load_dataset("pendulum-medium").recover_environment(eval_env=True)
    expected = []
    for k in range(3):
        obs, _ = env.reset(seed=5 + k)
        total, done = 0.0, False
        while not done:
            action = critic.act(torch.from_numpy(np.asarray(obs, np.float64))[None])[0].double().numpy()
            obs, reward, terminated, truncated, _ = env.step(action.astype(env.action_space.dtype))
            total, done = total + reward, terminated or truncated
        expected.append(total)
    np.testing.assert_allclose(results["returns"], expected, rtol=1e-6)


def test_the_iql_policy_refuses_what_it_cannot_act_on(run_and_critic, tmp_path, capsys):
    import gymnasium as gym

    from tt.eval.agents import PolicyAgent

    root, _, critic_dir = run_and_critic
    agent = PolicyAgent.load(critic_dir)
    with pytest.raises(ValueError, match="the IQL policy takes observations of size 3, the environment's"):
        agent.check_env(gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        agent.act(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"observations must be \[3\] or \[n, 3\]"):
        agent.act(np.zeros((2, 4)))
    out = str(tmp_path / "policy")
    assert main(["eval", "--iql-policy", critic_dir, "--episodes", "1", "--out", out, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert "holds an evaluation of a critic's iql policy, not of a run" in one_line_error(
        capsys, ["score", "--from-evals", out, "--out", str(tmp_path / "score")])


def test_the_critic_is_read_in_the_units_of_the_data_rewards(run_and_critic):
    """IQL learned Q of rewards scaled (here by 1000 / (max - min return)) and shifted; the plan adds it to the
    predicted rewards in the data's units: (Q - shift / (1 - discount)) / scale."""
    from tt.checkpoint import open_run
    from tt.search.planner import critic_objective, data_units

    _, run, critic_dir = run_and_critic
    critic, stored, _ = load_critic(critic_dir)
    scale = stored["train_critic"]["reward_scale"]
    assert scale != 1.0 and stored["train_critic"]["reward_shift"] == 0.0
    objective = critic_objective(critic_dir, open_run(run), PlanConfig(), torch.device("cpu"))
    s, a = torch.randn(5, 3), torch.rand(5, 1) * 4 - 2
    torch.testing.assert_close(objective.q_fn(s, a), critic.value(s, a) / scale)
    shifted = data_units(critic.value, 2.0, -1.0, 0.99)  # AntMaze's shift: -1 a step, 100 steps' worth
    torch.testing.assert_close(shifted(s, a), (critic.value(s, a) + 100.0) / 2.0)


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tt: error: ") and "\n" not in err, err
    return err


def test_a_wrong_critic_is_a_clear_one_line_error(run_and_critic, tmp_path, capsys):
    root, run, critic = run_and_critic
    transitions, _ = chain_episodes(10, seed=0)  # observations of 1 number, actions of 1
    other_size = str(tmp_path / "other-size")
    train_critic(CriticConfig(hidden=8, layers=1, max_steps=2, device="cpu"), other_size, progress=False,
                 transitions=transitions, dataset_id="chain")
    same_size = Transitions(np.zeros((8, 3), np.float32), np.zeros((8, 1), np.float32), np.zeros(8),
                            np.zeros((8, 3), np.float32), np.zeros(8, bool), np.array([0.0, 1.0]),
                            -2 * np.ones(1, np.float32), 2 * np.ones(1, np.float32))
    other_data = str(tmp_path / "other-data")
    train_critic(CriticConfig(hidden=8, layers=1, max_steps=2, device="cpu"), other_data, progress=False,
                 transitions=same_size, dataset_id="tt/pendulum/expert-v0")
    damaged = str(tmp_path / "damaged")
    train_critic(CriticConfig(hidden=8, layers=1, max_steps=2, device="cpu"), damaged, progress=False,
                 transitions=same_size, dataset_id="tt/pendulum/medium-v0")
    (weights,) = [os.path.join(d, f) for d, _, fs in os.walk(damaged) for f in fs if f == "critic.safetensors"]
    with open(weights, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 16)
    base = ["eval", "--run", run, *EVAL]
    assert "takes observations of 1 and actions of 1 numbers" in one_line_error(capsys, [*base, "--critic",
                                                                                         other_size])
    assert "was trained on tt/pendulum/expert-v0" in one_line_error(capsys, [*base, "--critic", other_data])
    assert "no run directory" in one_line_error(capsys, [*base, "--critic", str(tmp_path / "missing")])
    assert "does not match checkpoint.json" in one_line_error(capsys, [*base, "--critic", damaged])
    assert "holds no critic" in one_line_error(capsys, [*base, "--critic", run])
    assert "cannot be used with the likelihood objective" in one_line_error(
        capsys, [*base, "--critic", critic, "--objective", "likelihood"])
    assert "values returns discounted by 0.99, the plan discounts by 0.9" in one_line_error(
        capsys, [*base, "--critic", critic, "--discount", "0.9"])
    with pytest.raises(CheckpointError, match="holds no critic"):
        load_critic(run)
    policy = ["eval", "--iql-policy", critic, "--episodes", "1", "--device", "cpu"]
    assert "--iql-policy acts without planning: --critic --horizon" in one_line_error(
        capsys, [*policy, "--critic", critic, "--horizon", "3"])
    assert "no run directory" in one_line_error(capsys, [*policy[:2], str(tmp_path / "missing"), *policy[3:]])
    assert "holds no critic" in one_line_error(capsys, [*policy[:2], run, *policy[3:]])
    assert "not allowed with argument" in one_line_error(capsys, [*policy, "--run", run])


def antmaze_like_dataset(dataset_id: str = "D4RL/antmaze/umaze-v1", episodes: int = 3, steps: int = 40):
    """A small data set written exactly as Minari's D4RL/antmaze/*-v1 (their environment, AntMaze_UMaze-v4:
    dict observations of 27 numbers without the ant's x and y, 8 actions, sparse reward, a continuing task:
    episodes truncated, never terminated), from random actions; its evaluation environment cut to 30 steps."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    from tt.tasks.pointmaze import _import_point_maze, private_tempdir

    _import_point_maze()
    spec = gym.spec("AntMaze_UMaze-v4")
    with private_tempdir():
        env = gym.make(spec, continuing_task=True, reset_target=False)
    rng = np.random.default_rng(0)
    buffers = []
    for k in range(episodes):
        obs, _ = env.reset(seed=k)
        observations, actions, rewards = [obs], [], []
        for _ in range(steps):
            action = rng.uniform(-1, 1, size=8).astype(np.float32)
            obs, reward, *_ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
        buffers.append(EpisodeBuffer(
            id=k, observations={key: np.stack([o[key] for o in observations]) for key in observations[0]},
            actions=np.stack(actions), rewards=rewards, terminations=[False] * steps,
            truncations=[False] * (steps - 1) + [True]))
    eval_spec = gym.envs.registration.EnvSpec(spec.id, entry_point=spec.entry_point, max_episode_steps=30,
                                              kwargs={**spec.kwargs, "continuing_task": True, "reset_target": False})
    with private_tempdir():
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env.spec, eval_env=eval_spec, algorithm_name="random", author="tt",
            author_email="tt@localhost", code_permalink="tests/test_critic.py", ref_min_score=0.0, ref_max_score=1.0,
            description="AntMaze in Minari's D4RL layout, random actions")
    env.close()
    return dataset_id


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_antmaze_path_end_to_end(tmp_path, capsys):
    """On a data set written as Minari's D4RL/antmaze/umaze-v1: `tt data list` lists it, `tt train` reads D4RL's
    observation (x, y, then the ant's 27 numbers), `tt train-critic` applies AntMaze's settings (reward - 1,
    expectile 0.9, temperature 10) and `tt eval --critic` plays AntMaze with it."""
    from tt.data import load_dataset
    from tt.goal_data import goal_trajectories_from_minari

    dataset_id = antmaze_like_dataset()
    assert main(["data", "list"]) == 0
    assert dataset_id in capsys.readouterr().out
    read = goal_trajectories_from_minari(load_dataset(dataset_id))
    assert read.trajectories.observation_dim == 29 and read.goal_columns.tolist() == [0, 1]
    run, critic, out = str(tmp_path / "run"), str(tmp_path / "critic"), str(tmp_path / "eval")
    assert main(["train", "--dataset", dataset_id, "--out", run, "--preset", "small", "--steps", "2",
                 "--n-transitions", "3", "--device", "cpu"]) == 0
    assert main(["train-critic", "--dataset", dataset_id, "--out", critic, "--steps", "10", "--hidden", "16",
                 "--device", "cpu"]) == 0
    settings = load_critic(critic)[1]["train_critic"]
    assert (settings["reward_shift"], settings["expectile"], settings["temperature"]) == (-1.0, 0.9, 10.0)
    assert load_critic(critic)[0].shape.observation_dim == 29
    assert main(["eval", "--run", run, "--critic", critic, "--episodes", "1", "--envs", "1", "--horizon", "2",
                 "--beam-width", "2", "--no-cuda-graphs", "--device", "cpu", "--out", out]) == 0
    with open(os.path.join(out, "eval.json")) as f:
        results = json.load(f)
    assert results["dataset_id"] == dataset_id and results["lengths"] == [30] and results["critic"] == critic
    assert main(["eval", "--iql-policy", critic, "--episodes", "1", "--device", "cpu", "--out", out + "-iql"]) == 0
    with open(os.path.join(out + "-iql", "eval.json")) as f:
        assert json.load(f)["lengths"] == [30]
