"""Training and evaluation under torchrun (gloo on CPU) against one process.

Two processes with half the batch each must train as one process with the whole batch (dropout
off: the same objective, up to the order of float sums), a checkpoint of either must resume in
the other, and sharded evaluation must return the same episodes as one process. Run as a script
(`torchrun ... tests/test_distributed.py OPTIONS OUT [--resume]`) this file is one training rank.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_score import PLAN
from test_train import TINY

from tt import distributed
from tt.checkpoint import load_run
from tt.cli import main
from tt.config import make_config
from tt.io import read_jsonl
from tt.train import _restore_rng, local_part, rank_seed, train

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread, as each rank has

OPTIONS = {**TINY, "dropout": 0.0, "batch_size": 64, "log_every": 1, "save_every": 1000,
           "precision": "fp32"}  # exact to float32 rounding: bf16 rounds each process's products otherwise
STEPS = 50  # 38 steps an epoch: the short last batch and a new epoch's order are crossed
TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # float32; the ranks' sums are added in another order


def torchrun(*args: str, nproc: int = 2) -> None:
    """`torchrun --standalone --nproc-per-node nproc ARGS` (a script or `-m module`, and its arguments)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def train_in_processes(out: str, steps: int, nproc: int = 2, resume: bool = False) -> None:
    torchrun(__file__, json.dumps({**OPTIONS, "max_steps": steps}), out, *(["--resume"] if resume else []),
             nproc=nproc)


def losses(run: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(run, "metrics.jsonl"))}


def assert_same_weights(run: str, other: str) -> None:
    (model, _, _, step), (twin, _, _, twin_step) = load_run(run), load_run(other)
    assert step == twin_step
    for (name, p), q in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(p, q, **TOLERANCE, msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture(scope="module")
def runs(pendulum_medium, tmp_path_factory) -> dict[str, str]:
    """STEPS steps in one process (the whole batch) and in two (half each); a two-process run cut at
    half-way and resumed in one process."""
    root = tmp_path_factory.mktemp("runs")
    paths = {name: str(root / name) for name in ("one", "two", "resumed")}
    train(make_config("small", **OPTIONS, max_steps=STEPS), paths["one"], progress=False)
    train_in_processes(paths["two"], STEPS)
    train_in_processes(paths["resumed"], STEPS // 2)
    train(make_config("small", **OPTIONS, max_steps=STEPS), paths["resumed"], resume=True, progress=False)
    return paths


def test_two_processes_with_half_the_batch_train_as_one_with_all_of_it(runs):
    one, two = losses(runs["one"]), losses(runs["two"])
    assert list(two) == list(range(1, STEPS + 1))  # rank 0 alone logs: every step once
    np.testing.assert_allclose(list(two.values()), list(one.values()), **TOLERANCE)
    tokens = [[r["tokens"] for r in read_jsonl(os.path.join(runs[k], "metrics.jsonl"))] for k in ("one", "two")]
    assert tokens[0] == tokens[1]  # the schedule counts the whole batch's tokens
    assert_same_weights(runs["two"], runs["one"])


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    resumed, two = losses(runs["resumed"]), losses(runs["two"])
    assert list(resumed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(list(resumed.values()), list(two.values()), **TOLERANCE)
    assert_same_weights(runs["resumed"], runs["two"])


def test_a_one_process_checkpoint_resumes_in_two_processes(runs, tmp_path):
    out = str(tmp_path / "run")
    train(make_config("small", **OPTIONS, max_steps=STEPS - 5), out, progress=False)
    train_in_processes(out, STEPS, resume=True)
    np.testing.assert_allclose(list(losses(out).values()), list(losses(runs["one"]).values()), **TOLERANCE)
    assert_same_weights(out, runs["one"])


def test_sharded_evaluation_returns_the_episodes_of_one_process(runs, tmp_path):
    """5 episodes 2 at a time: rounds {0, 1}, {2, 3} on rank 0 and {4} on rank 1."""
    flags = ["eval", "--run", runs["one"], "--episodes", "5", "--envs", "2", "--seed", "3", "--device", "cpu", *PLAN]
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    torchrun("-m", "tt", "--", *flags, "--out", str(tmp_path / "two"))  # `--`: torchrun takes --run for --run-path
    one, two = (json.loads((tmp_path / name / "eval.json").read_text()) for name in ("one", "two"))
    assert len(one["returns"]) == 5
    for key in ("returns", "lengths", "normalized_scores", "mean_return", "episodes", "n_envs", "plan_config"):
        assert two[key] == one[key], key
    assert (tmp_path / "two" / "plan_vs_actual.png").stat().st_size > 1000  # rank 0 holds round 0's trace


def test_a_batch_is_shared_out_in_rank_order(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    parts = {}
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        parts[rank] = distributed.shard(8), local_part(torch.tensor([7, 5]))
    assert [shard for shard, _ in parts.values()] == [range(0, 3), range(3, 6), range(6, 8)]
    # a last batch smaller than the world: rank 2 runs a window at share 0 (it adds nothing)
    assert [(part.tolist(), share) for _, (part, share) in parts.values()] == [([7], 0.5), ([5], 0.5), ([7], 0.0)]


@pytest.mark.parametrize("saved_world", [1, 2])
def test_a_rank_resumes_with_its_own_generator_when_the_world_is_the_same(monkeypatch, saved_world):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with torch.random.fork_rng():
        states = [torch.manual_seed(seed).get_state() for seed in range(saved_world)]
        state = {"rng": states[0], **({"rng_ranks": torch.stack(states)} if saved_world > 1 else {})}
        _restore_rng(state, seed=7, step=3, device=torch.device("cpu"))
        expected = states[1] if saved_world == 2 else torch.manual_seed(rank_seed(7, 1, 3)).get_state()
        assert torch.equal(torch.get_rng_state(), expected)


def test_the_batch_must_divide_among_the_processes(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match=r"batch size \(64\) must be a multiple of the number of processes \(3\)"):
        train(make_config("small", **OPTIONS, max_steps=1), str(tmp_path / "run"), progress=False)


def test_one_process_needs_no_group():
    assert not torch.distributed.is_initialized()
    with distributed.process_group("cpu"):
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        assert distributed.all_gather("x") == ["x"] and distributed.from_main(lambda: 4) == 4
        assert distributed.shard(5) == range(5)
    assert not torch.distributed.is_initialized()


if __name__ == "__main__":  # one rank of `train_in_processes`
    options, out = json.loads(sys.argv[1]), sys.argv[2]
    with distributed.process_group("cpu"):
        train(make_config("small", **options), out, resume="--resume" in sys.argv, progress=False)
