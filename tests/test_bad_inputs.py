"""Every bad input tried on the command line gives one line `tt: error: ...`, exit status 2, no
traceback, and writes or changes nothing; the Planner refuses what it cannot plan with.

The inputs tried are the parameters of `test_cli_refuses_a_bad_input` (one id each):
counts and sizes that are zero or negative on every subcommand, every plan flag out of range,
an unknown preset, data set, built-in name and window mode, a directory that is not a run, a
run imported without a data set, a model whose action size is not the environment's, a data set
whose episodes all have length 1, and an import without --dataset or --thresholds.
"""

import os
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from tt import ops
from tt.checkpoint import save_run
from tt.cli import PLAN_FLAGS, build_parser, main, plan_overrides
from tt.config import PlanConfig
from tt.discretize import Discretizer
from tt.model import GPTConfig, TrajectoryTransformer
from tt.search import Planner
from tt.search import plan as search_plan

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = "tt/pendulum/medium-v0"
LENGTH_ONE = "tt-test/length-one-v0"


def tiny_model(O=3, A=1, n_bins=10) -> tuple[TrajectoryTransformer, Discretizer]:
    torch.manual_seed(0)
    model = TrajectoryTransformer(GPTConfig(O, A, n_bins=n_bins, n_transitions=2, n_layer=1, n_head=1, n_embd=8))
    return model, Discretizer(np.linspace(-1, 1, n_bins + 1)[:, None].repeat(O + A + 2, 1))


@pytest.fixture(scope="module")
def length_one_dataset():
    """200 episodes of one step each (Pendulum): no step but the last, so no training window."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    env = gym.make("Pendulum-v1")
    buffers = []
    for i in range(200):
        obs, _ = env.reset(seed=i)
        action = env.action_space.sample()
        after, reward, *_ = env.step(action)
        buffers.append(EpisodeBuffer(id=i, observations=np.stack([obs, after]), actions=action[None],
                                     rewards=[float(reward)], terminations=[True], truncations=[False]))
    return minari.create_dataset_from_buffers(
        dataset_id=LENGTH_ONE, buffer=buffers, env="Pendulum-v1", eval_env="Pendulum-v1", algorithm_name="random",
        author="tt", author_email="tt@localhost", code_permalink="tests/test_bad_inputs.py", description="length 1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pendulum_medium, length_one_dataset):
    """Run directories the bad inputs point at, and a state dict to import."""
    root = tmp_path_factory.mktemp("runs")
    model, disc = tiny_model()
    save_run(str(root / "run"), model, disc, {"data": {"dataset_id": PENDULUM}})
    save_run(str(root / "imported"), model, disc, {"data": {}, "imported_from": "state_0.pt"})
    wide, wide_disc = tiny_model(A=2)
    save_run(str(root / "two-actions"), wide, wide_disc, {"data": {"dataset_id": PENDULUM}})
    os.makedirs(root / "empty")
    torch.save({}, root / "state_0.pt")
    os.makedirs(root / "ensemble")  # an ensemble's files, as tt train-dynamics leaves them
    (root / "ensemble" / "config.json").write_text("{}")
    (root / "ensemble" / "model.safetensors").write_bytes(b"weights")
    os.makedirs(root / "notes")
    (root / "notes" / "todo.txt").write_text("a user's own files")
    (root / "a-file").write_text("not a directory")
    torch.manual_seed(0)
    goal = TrajectoryTransformer(GPTConfig(3, 1, n_bins=10, n_transitions=2, n_layer=1, n_head=1, n_embd=8,
                                           goal_conditioned=True))
    save_run(str(root / "goal"), goal, disc, {"data": {"dataset_id": PENDULUM}, "train": {"goal_conditioned": True}})
    save_run(str(root / "other-env"), model, disc, {"data": {"dataset_id": PENDULUM, "env_id": "CartPole-v1"}})
    os.makedirs(root / "evaluation")  # what tt eval leaves
    (root / "evaluation" / "eval.json").write_text("{}")
    return root


def bad(name, *argv, error):
    return pytest.param(list(argv), error, id=name)


EVAL = ("eval", "--run", "{runs}/run")
BAD_INPUTS = [
    bad("eval-episodes-0", *EVAL, "--episodes", "0", error="need at least one episode and one environment"),
    bad("eval-envs-0", *EVAL, "--envs", "0", error="got episodes=10, envs=0"),
    bad("eval-envs-negative", *EVAL, "--envs", "-2", error="got episodes=10, envs=-2"),
    bad("eval-episodes-not-a-number", *EVAL, "--episodes", "ten", error="invalid int value: 'ten'"),
    bad("score-episodes-0", "score", "{runs}/run", "--episodes", "0", error="need at least one episode"),
    bad("score-envs-0", "score", "{runs}/run", "--envs", "0", error="need at least one episode and one environment"),
    bad("data-make-episodes-0", "data", "make", "pendulum-medium", "--episodes", "0", error="--episodes: must be >= 1"),
    bad("data-make-steps-negative", "data", "make", "hopper-medium", "--steps", "-5", error="--steps: must be >= 1"),
    bad("data-make-one-step", "data", "make", "hopper-medium", "--steps", "1",
        error="--steps 1 is less than one episode of Hopper-v5 (its time limit, 1000 steps)"),
    bad("data-make-five-steps", "data", "make", "walker2d-medium-replay", "--steps", "5",
        error="--steps 5 is less than one episode of Walker2d-v5"),
    bad("train-goal-without-goal-model", "train", "--dataset", "pendulum-medium", "--out", "r", "--goal", "future",
        error="--goal future chooses a goal-conditioned model's hindsight goals: add --goal-conditioned"),
    bad("train-steps-0", "train", "--dataset", "pendulum-medium", "--out", "r", "--steps", "0", error="--steps: must"),
    bad("train-discretizer", "train", "--dataset", "pendulum-medium", "--out", "r", "--discretizer", "median",
        error="invalid choice: 'median'"),
    bad("train-batch-size-0", "train", "--dataset", "pendulum-medium", "--out", "r", "--batch-size", "0",
        error="--batch-size: must be >= 1"),
    bad("train-epochs-0", "train", "--dataset", "pendulum-medium", "--out", "r", "--epochs", "0",
        error="--epochs: must be > 0"),
    bad("train-epochs-negative", "train", "--dataset", "pendulum-medium", "--out", "r", "--epochs", "-1",
        error="--epochs: must be > 0"),
    bad("import-n-bins-0", "import-reference", "--state-dict", "{runs}/state_0.pt", "--out", "imp", "--dataset",
        "pendulum-medium", "--n-bins", "0", error="--n-bins: must be >= 1"),
    bad("import-observation-dim-0", "import-reference", "--state-dict", "{runs}/state_0.pt", "--out", "imp",
        "--thresholds", "t.npy", "--observation-dim", "0", error="--observation-dim: must be >= 1"),
    bad("import-n-head-negative", "import-reference", "--state-dict", "{runs}/state_0.pt", "--out", "imp",
        "--dataset", "pendulum-medium", "--n-head", "-2", error="--n-head: must be >= 1"),
    bad("demo-episodes-0", "demo", "--out", "d", "--episodes", "0", error="--episodes: must be >= 1"),
    bad("demo-train-steps-0", "demo", "--out", "d", "--train-steps", "0", error="--train-steps: must be >= 1"),
    *[bad(f"plan-{flag}-{value}", *EVAL, flag, value, error=f"{flag}: {message}") for flag, value, message in [
        ("--horizon", "0", "must be >= 1"), ("--beam-width", "0", "must be >= 1"), ("--n-expand", "-1", "must be"),
        ("--max-context-transitions", "0", "must be >= 1"), ("--k-obs", "0", "must be >= 1"),
        ("--k-act", "-3", "must be >= 1"), ("--k-rew", "0", "must be >= 1"), ("--plan-freq", "0", "must be >= 1"),
        ("--temperature", "0", "must be > 0"), ("--temperature", "inf", "must be > 0"),
        ("--cdf-act", "1.5", "must be in [0, 1]"), ("--cdf-obs", "-0.1", "must be in [0, 1]"),
        ("--cdf-rew", "2", "must be in [0, 1]"), ("--discount", "nan", "must be finite"),
        ("--window", "sideways", "invalid choice: 'sideways'"),
        ("--objective", "reward", "invalid choice: 'reward'")]],
    bad("impossible-plan-config", *EVAL, "--max-context-transitions", "1", error="max_context_transitions=1"),
    *[bad(f"plan-{flag}-over-the-tokens", *EVAL, flag, "100000", "--objective", objective,
          error=f"{flag[2:].replace('-', '_')}=100000: the model has 11 tokens per position")
      for flag, objective in [("--k-act", "likelihood"), ("--k-obs", "return"), ("--k-rew", "return")]],
    bad("unknown-preset", "train", "--dataset", "pendulum-medium", "--out", "r", "--preset", "huge",
        error="unknown preset 'huge'"),
    bad("unknown-dataset", "train", "--dataset", "mujoco/nothing/here-v0", "--out", "r",
        error="unknown data set 'mujoco/nothing/here-v0'"),
    bad("unknown-builtin", "data", "make", "nothing-medium", error="unknown built-in data set 'nothing-medium'"),
    bad("eval-not-a-run", "eval", "--run", "{runs}/empty", error="no checkpoint.json: not a tt run"),
    bad("eval-missing-run", "eval", "--run", "{runs}/missing", error="no run directory"),
    bad("score-not-a-run", "score", "{runs}/empty", error="no checkpoint.json: not a tt run"),
    bad("resume-not-a-run", "train", "--dataset", "pendulum-medium", "--out", "{runs}/empty", "--resume",
        error="no checkpoint.json: not a tt run"),
    bad("eval-imported-without-dataset", "eval", "--run", "{runs}/imported", error="names no data set"),
    bad("eval-action-size-mismatch", "eval", "--run", "{runs}/two-actions", "--episodes", "1",
        error="the model plans actions of size 2"),
    bad("train-episodes-of-length-1", "train", "--dataset", LENGTH_ONE, "--out", "r", "--preset", "small",
        error="no training windows: all 200 episodes of the data set have length 1"),
    bad("import-without-dataset-or-thresholds", "import-reference", "--state-dict", "{runs}/state_0.pt",
        "--out", "imp", error="needs --dataset"),
    # nothing destroyed: a destination of another kind is refused, one of the command's own kind without leave
    *[bad(f"train-over-{name}", "train", "--dataset", "pendulum-medium", "--out", f"{{runs}}/{name}", error=error)
      for name, error in [("run", "already holds a tt run (tt train, tt import-reference): give --resume to "
                                  "continue it or --overwrite to replace it"),
                          ("ensemble", "holds a dynamics ensemble (tt train-dynamics), not a tt run"),
                          ("notes", "holds a directory of other files, not a tt run"),
                          ("a-file", "holds a file, not a tt run")]],
    bad("train-overwrite-over-ensemble", "train", "--dataset", "pendulum-medium", "--out", "{runs}/ensemble",
        "--overwrite", error="holds a dynamics ensemble (tt train-dynamics), not a tt run"),
    bad("train-overwrite-and-resume", "train", "--dataset", "pendulum-medium", "--out", "{runs}/run", "--overwrite",
        "--resume", error="--overwrite and --resume: give one"),
    bad("train-dynamics-over-run", "train-dynamics", "--dataset", "pendulum-medium", "--out", "{runs}/run",
        error="holds a tt run (tt train, tt import-reference), not a dynamics ensemble"),
    bad("train-dynamics-overwrite-over-run", "train-dynamics", "--dataset", "pendulum-medium", "--out", "{runs}/run",
        "--overwrite", error="holds a tt run (tt train, tt import-reference), not a dynamics ensemble"),
    bad("train-dynamics-over-ensemble", "train-dynamics", "--dataset", "pendulum-medium", "--out",
        "{runs}/ensemble", error="already holds a dynamics ensemble (tt train-dynamics): give --overwrite"),
    bad("import-over-run", "import-reference", "--state-dict", "{runs}/state_0.pt", "--out", "{runs}/run",
        "--dataset", "pendulum-medium", error="already holds a tt run"),
    bad("score-goal-run", "score", "{runs}/run", "{runs}/goal", error="goal-conditioned run: tt score averages "
        "returns over runs; measure its success rate with `tt eval --run"),
    bad("score-k-obs-over-the-tokens", "score", "{runs}/run", "--k-obs", "12", error="k_obs=12: the model has 11"),
    bad("eval-data-from-another-environment", "eval", "--run", "{runs}/other-env", error="data set "
        "tt/pendulum/medium-v0 now holds Pendulum-v1 data, run {runs}/other-env was trained on CartPole-v1"),
    bad("eval-over-evaluation", *EVAL, "--out", "{runs}/evaluation", error="already holds an evaluation (tt eval): "
        "give --overwrite to replace it"),
    bad("eval-over-run", *EVAL, "--out", "{runs}/run", "--overwrite", error="holds a tt run (tt train, "
        "tt import-reference), not an evaluation"),
    bad("score-over-evaluation", "score", "{runs}/run", "--out", "{runs}/evaluation",
        error="holds an evaluation (tt eval), not a score"),
    bad("predict-over-notes", "predict", "--run", "{runs}/run", "--out", "{runs}/notes",
        error="holds a directory of other files, not a prediction"),
    bad("demo-over-ensemble", "demo", "--out", "{runs}/ensemble", error="holds a dynamics ensemble"),
    bad("data-make-existing", "data", "make", "pendulum-medium", error="data set tt/pendulum/medium-v0 exists: give "
        "--overwrite to make it again"),
    bad("import-over-notes", "import-reference", "--state-dict", "{runs}/state_0.pt", "--out", "{runs}/notes",
        "--dataset", "pendulum-medium", "--overwrite", error="holds a directory of other files"),
]


def snapshot(*roots: Path) -> dict:
    """Every path under `roots` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, error", BAD_INPUTS)
def test_cli_refuses_a_bad_input(argv, error, runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, error = [a.format(runs=runs) for a in argv], error.format(runs=runs)
    minari_root = Path(os.environ["MINARI_DATASETS_PATH"])
    before = snapshot(tmp_path, runs, minari_root)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tt: error: "), captured.err
    assert error in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(tmp_path, runs, minari_root) == before, "a refused command wrote or changed files"


def test_every_plan_config_field_has_a_flag_and_none_where_it_means_off():
    flags = set(PLAN_FLAGS) | {"cuda_graphs"}
    assert flags == {f.name for f in fields(PlanConfig)}
    args = build_parser().parse_args(["eval", "--run", "r", "--k-obs", "none", "--k-act", "4", "--k-rew", "None",
                                      "--cdf-obs", "none", "--cdf-act", "none", "--cdf-rew", "0.7",
                                      "--max-context-transitions", "none", "--no-cuda-graphs"])
    overrides = plan_overrides(args)
    assert overrides == dict(k_obs=None, k_act=4, k_rew=None, cdf_obs=None, cdf_act=None, cdf_rew=0.7,
                             max_context_transitions=None, cuda_graphs=False)
    assert plan_overrides(build_parser().parse_args(["eval", "--run", "r"])) == {}  # absent: PlanConfig's default
    PlanConfig(**overrides)


@pytest.mark.parametrize("obs, error", [
    (np.zeros(4), r"observations must be \[3\]"),
    (np.zeros((2, 2)), r"observations must be \[3\] or \[n, 3\]"),
    (np.array([0.0, np.nan, 0.0]), "NaN or infinite"),
    (np.array([0.0, np.inf, 0.0]), "NaN or infinite"),
    (np.array([[0.0, 0.0, -np.inf]]), "NaN or infinite"),
], ids=["size", "batch-size", "nan", "inf", "minus-inf"])
def test_planner_refuses_observations_it_cannot_plan_from(obs, error):
    model, disc = tiny_model()
    planner = Planner(model, disc, PlanConfig(horizon=1, beam_width=2, n_expand=1), seed=0)
    with pytest.raises(ValueError, match=error):
        planner.act(obs)


def test_planner_refuses_an_environment_of_other_sizes():
    import gymnasium as gym

    model, disc = tiny_model(A=2)
    planner = Planner(model, disc, PlanConfig(horizon=1, beam_width=2, n_expand=1), seed=0)
    env = gym.make("Pendulum-v1")
    with pytest.raises(ValueError, match="the model plans actions of size 2"):
        planner.check_env(env)
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1")])
    with pytest.raises(ValueError, match="actions of size 2"):
        planner.check_env(vector)
    Planner(*tiny_model(A=1), seed=0).check_env(vector)  # the right sizes pass
    vector.close()


def test_bins_the_cuda_kernel_cannot_take_are_refused_on_the_host(monkeypatch):
    header = (ROOT / "csrc" / "cuda" / "kernels" / "sample_next.cuh").read_text()
    assert int(re.search(r"kSampleNextMaxVocab = (\d+);", header).group(1)) == ops.CUDA_MAX_TOKENS
    monkeypatch.setattr(ops.dispatch, "compiled", lambda op, device: True)  # as where tt._C's CUDA kernels are built
    ops.check_tokens_per_row(ops.CUDA_MAX_TOKENS, "cuda")
    ops.check_tokens_per_row(ops.CUDA_MAX_TOKENS + 1, "cpu")  # the C++ op takes any number
    with pytest.raises(ValueError, match="1024 bins .* more than the CUDA sampling kernel takes"):
        ops.check_tokens_per_row(ops.CUDA_MAX_TOKENS + 1, "cuda")
    with pytest.raises(ValueError, match="1999 bins"):
        ops.check_tokens_per_row(2000, torch.device("cuda", 0))


def test_planner_checks_the_bins_before_planning(monkeypatch):
    seen = []
    monkeypatch.setattr(ops, "check_tokens_per_row", lambda n, device: seen.append((n, torch.device(device).type)))
    Planner(*tiny_model(n_bins=10), seed=0)
    assert seen == [(11, "cpu")]


@pytest.mark.parametrize("make, error", [
    (lambda: GPTConfig(0, 1), "observation_dim must be >= 1, got 0"),
    (lambda: GPTConfig(3, -1), "action_dim must be >= 1, got -1"),
    (lambda: GPTConfig(3, 1, n_bins=0), "n_bins must be >= 1"),
    (lambda: GPTConfig(3, 1, n_transitions=0), "n_transitions must be >= 1"),
    (lambda: GPTConfig(3, 1, n_layer=0), "n_layer must be >= 1"),
    (lambda: GPTConfig(3, 1, n_head=3), "multiple of n_head"),
    (lambda: GPTConfig(3, 1, attn_pdrop=1.0), r"attn_pdrop must be in \[0, 1\)"),
    (lambda: Discretizer.fit(np.zeros((4, 6)), n_bins=0), "n_bins must be >= 1"),
    (lambda: PlanConfig(horizon=0), "horizon must be >= 1"),
    (lambda: PlanConfig(k_act=0), "k_act must be >= 1 or None"),
    (lambda: PlanConfig(cdf_rew=1.2), r"cdf_rew must be in \[0, 1\] or None"),
    (lambda: PlanConfig(temperature=float("inf")), "temperature must be > 0 and finite"),
    (lambda: PlanConfig(discount=float("nan")), "discount must be finite"),
    (lambda: __import__("tt.config").config.make_config(batch_size=0), "batch_size must be >= 1"),
    (lambda: __import__("tt.config").config.make_config(epochs=-1.0), "epochs must be > 0"),
    (lambda: __import__("tt.config").config.make_config(n_transitions=0), "n_transitions must be >= 1"),
], ids=["observation-dim", "action-dim", "model-bins", "transitions", "layers", "heads", "dropout", "fit-bins",
        "horizon", "k-act", "cdf-rew", "temperature", "discount", "batch-size", "epochs", "train-transitions"])
def test_library_configs_refuse_zero_and_negative_sizes(make, error):
    with pytest.raises(ValueError, match=error):
        make()


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":
        path.write_bytes(b"\0" * 64 + data[64:])
    else:  # the middle overwritten: the headers open, an object inside does not
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\xff" * 2000 + data[middle + 2000 :])


@pytest.fixture
def damaged_root(tmp_path_factory, monkeypatch):
    """A Minari root of its own holding a small pendulum-medium, for damaging."""
    from tt.tasks import make_dataset

    root = tmp_path_factory.mktemp("minari-damaged")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    make_dataset("pendulum-medium", episodes=3, seed=0, progress=False)
    return root


@pytest.mark.parametrize("how", ["truncated", "header", "middle"])
@pytest.mark.parametrize("command", ["train", "train-dynamics", "eval"])
def test_a_damaged_data_set_is_one_line_naming_its_file(damaged_root, runs, tmp_path, monkeypatch, capsys, how,
                                                        command):
    (data_file,) = damaged_root.rglob("*.hdf5")
    damage(data_file, how)
    monkeypatch.chdir(tmp_path)
    argv = {"train": ["train", "--dataset", "pendulum-medium", "--out", "r", "--preset", "small", "--steps", "1"],
            "train-dynamics": ["train-dynamics", "--dataset", "pendulum-medium", "--out", "e"],
            "eval": ["eval", "--run", str(runs / "run"), "--episodes", "1"]}[command]
    before = snapshot(tmp_path, runs, damaged_root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tt: error: "), err
    assert "medium-v0" in err and "make it again" in err and "Traceback" not in err
    assert snapshot(tmp_path, runs, damaged_root) == before


@pytest.mark.parametrize("name, content", [
    ("random.pt", np.random.default_rng(0).bytes(5000)), ("random-1.pt", np.random.default_rng(1).bytes(5000)),
    ("truncated.safetensors", None), ("empty.pt", b""),
])
def test_a_damaged_state_dict_is_one_line_naming_its_file(runs, tmp_path, monkeypatch, capsys, name, content):
    from safetensors.torch import save_file

    path = tmp_path / name
    if content is None:
        save_file({"w": torch.zeros(100)}, str(path))
        path.write_bytes(path.read_bytes()[:20])
    else:
        path.write_bytes(content)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, runs)
    assert main(["import-reference", "--state-dict", str(path), "--out", "imp", "--dataset", "pendulum-medium"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"tt: error: {path} is damaged or not a state dict" in err, err
    assert snapshot(tmp_path, runs) == before


def test_a_search_too_large_for_memory_is_refused_before_allocating(runs, tmp_path, monkeypatch, capsys):
    """The issue's command (a beam of 100,000 expanded 100,000 times) against a limit the tiny run's
    search passes: refused within a second, with the figure and the limit, nothing allocated."""
    import resource
    import time

    monkeypatch.setattr(search_plan, "available_memory", lambda device: 100 * 2**20)
    monkeypatch.chdir(tmp_path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    for objective in ("likelihood", "return"):
        assert main(["eval", "--run", str(runs / "run"), "--objective", objective, "--beam-width", "100000",
                     "--n-expand", "100000", "--horizon", "1"]) == 2
        err = capsys.readouterr().err
        assert re.search(r"tt: error: planning 1 environment\(s\) with beam_width=100000, n_expand=100000, horizon=1 "
                         r"\(\w+\) needs at least [\d.]+ GiB \(KV cache [\d.]+, .*\), more than the 0.1 GiB available "
                         "on cpu", err), err
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 * 1024  # kB: no large allocation
    monkeypatch.setattr(search_plan, "available_memory", lambda device: 2**40)
    model, disc = tiny_model()
    planner = Planner(model, disc, PlanConfig(beam_width=1000, horizon=1), seed=0)
    monkeypatch.setattr(search_plan, "available_memory", lambda device: 2**20)
    with pytest.raises(ValueError, match=r"planning 3 environment\(s\)"):
        planner.check_memory(3)  # the evaluation's environments plan in one batch
    with pytest.raises(ValueError, match="more than the 0.0 GiB available"):
        planner.act(np.zeros((3, 3)))
