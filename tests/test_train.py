import json
import os

import numpy as np
import pytest
import torch

from tt.checkpoint import CheckpointError, checkpoint_folder, load_run, save_run
from tt.cli import main
from tt.config import make_config
from tt.discretize import Discretizer
from tt.train import lr_multiplier, train

TINY = dict(dataset="pendulum-medium", n_layer=1, n_head=2, n_embd=16, batch_size=32, n_bins=20,
            save_every=10, log_every=5, device="cpu")


def test_lr_schedule_warmup_then_cosine_floor():
    assert lr_multiplier(0, 100, 1000) == 0.0
    assert lr_multiplier(50, 100, 1000) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, 1000) == pytest.approx(1.0)
    assert lr_multiplier(550, 100, 1000) == pytest.approx(0.5)
    assert lr_multiplier(5000, 100, 1000) == pytest.approx(0.1)


def test_step_budget_schedule_warms_up_then_ends_at_the_floor(pendulum_medium, tmp_path):
    """The `cpu` preset's schedule: a fixed number of steps, warmup over the first 5 %, cosine to 10 % at the end."""
    cfg = make_config("cpu", **{**TINY, "budget_steps": 40, "warmup_fraction": 0.25, "log_every": 1})
    train(cfg, str(tmp_path / "run"), progress=False)
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(lrs) == 40
    peak = int(np.argmax(lrs))
    assert peak == 9 and lrs[peak] == pytest.approx(cfg.learning_rate)  # 10 of 40 steps warm up
    assert lrs[-1] == pytest.approx(0.1 * cfg.learning_rate)
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


def test_budget_steps_from_the_command_line_size_the_schedule(monkeypatch, tmp_path):
    """`tt train --budget-steps N` (with --steps below a preset's epochs) gives the step-budget schedule."""
    import tt.train
    from tt.cli import main

    seen = []
    monkeypatch.setattr(tt.train, "train", lambda cfg, out, **kw: seen.append(cfg))
    main(["train", "--dataset", "pendulum-medium", "--out", str(tmp_path), "--preset", "small", "--steps", "300",
          "--budget-steps", "300"])
    assert seen[0].budget_steps == 300 and seen[0].max_steps == 300 and seen[0].n_layer == 3


def test_training_lowers_loss_and_checkpoint_reloads_identically(pendulum_medium, tmp_path):
    cfg = make_config("small", **{**TINY, "max_steps": 60, "learning_rate": 3e-3})
    model = train(cfg, str(tmp_path / "run"), progress=False)
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert records[-1]["step"] == 60
    assert records[-1]["loss"] < 0.9 * records[0]["loss"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    loaded, disc, config, step = load_run(str(tmp_path / "run"))
    assert step == 60 and config["data"]["dataset_id"] == "tt/pendulum/medium-v0"
    tokens = torch.randint(0, 21, (4, model.config.block_size))
    assert torch.equal(loaded(tokens), model(tokens))
    assert disc.n_bins == 20 and disc.transition_dim == 6


def test_resume_continues_exactly(pendulum_medium, tmp_path):
    straight = train(make_config("small", **TINY, max_steps=30), str(tmp_path / "a"), progress=False)
    train(make_config("small", **TINY, max_steps=20), str(tmp_path / "b"), progress=False)
    resumed = train(make_config("small", **TINY, max_steps=30), str(tmp_path / "b"), resume=True, progress=False)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def small_run(tmp_path):
    from tt.model import GPTConfig, TrajectoryTransformer

    model = TrajectoryTransformer(GPTConfig(3, 1, n_bins=10, n_transitions=2, n_layer=1, n_head=1, n_embd=8))
    disc = Discretizer(np.linspace(0, 1, 11)[:, None].repeat(6, 1))
    save_run(str(tmp_path / "run"), model, disc, {"note": "test"})
    return str(tmp_path / "run"), model


def test_corrupt_checkpoint_is_detected(tmp_path):
    run, _ = small_run(tmp_path)
    path = os.path.join(checkpoint_folder(run), "model.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match="does not match checkpoint.json"):
        load_run(run)


def test_mismatched_discretizer_is_detected(tmp_path):
    run, model = small_run(tmp_path)
    save_run(run, model, Discretizer(np.linspace(0, 1, 11)[:, None].repeat(5, 1)), {})
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_run(run)


def test_missing_run_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no run directory"):
        load_run(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no checkpoint.json"):
        load_run(str(tmp_path / "empty"))


def test_cli_data_and_train(pendulum_medium, tmp_path, capsys):
    assert main(["data", "list"]) == 0
    assert "pendulum-medium" in capsys.readouterr().out
    assert main(["train", "--dataset", "pendulum-medium", "--out", str(tmp_path / "r"), "--preset", "small",
                 "--steps", "3", "--device", "cpu"]) == 0
    assert load_run(str(tmp_path / "r"))[3] == 3


def test_cli_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--dataset", "mujoco/nothing/here-v0", "--out", str(tmp_path / "r")]) == 2
    assert "unknown data set 'mujoco/nothing/here-v0'" in capsys.readouterr().err


def test_cli_import_reference(tmp_path, pendulum_medium):
    from test_model import authors_gpt_forward, authors_state_dict

    sd = authors_state_dict(3, 1, 100, 10, 2, 32)
    torch.save({k: v.float() for k, v in sd.items()}, tmp_path / "state_0.pt")
    assert main(["import-reference", "--state-dict", str(tmp_path / "state_0.pt"), "--dataset", "pendulum-medium",
                 "--out", str(tmp_path / "imp"), "--n-head", "2"]) == 0
    model, disc, _, _ = load_run(str(tmp_path / "imp"))
    assert disc.n_bins == 100 and disc.transition_dim == 6
    tokens = torch.randint(0, 101, (2, 30))
    sd32 = {k: v.float() for k, v in sd.items()}
    torch.testing.assert_close(model(tokens), authors_gpt_forward(sd32, tokens, 3, 1, 100, 2), rtol=1e-4, atol=1e-4)


def test_bf16_training_steps_keep_the_fp32_losses_within_a_tolerance():
    """`--precision bf16` (autocast: bfloat16 matrix products, float32 weights, optimizer and loss) against
    fp32 over 20 steps from the same weights and batches (dropout off): every loss within 1e-3 relative
    (measured: at most 3e-5 at these shapes), and no weight further from fp32's than Adam's 20 steps of
    the learning rate could take it (measured: 1.2e-3)."""
    import copy

    from tt.model import GPTConfig, TrajectoryTransformer
    from tt.train import configure_optimizer, precision_context, training_step

    cfg = make_config("small", n_layer=2, n_embd=32, n_head=2, batch_size=8)
    config = GPTConfig(11, 3, n_bins=100, n_transitions=4, n_layer=2, n_head=2, n_embd=32, embd_pdrop=0,
                       resid_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    start = TrajectoryTransformer(config).train()
    losses, models = {}, {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(start)
        optimizer, g = configure_optimizer(model, cfg), torch.Generator().manual_seed(1)
        losses[precision] = []
        for _ in range(20):
            t = torch.randint(0, 100, (8, config.block_size + 1), generator=g)
            loss = training_step(model, model, optimizer, t[:, :-1], t[:, 1:], torch.ones(8, config.block_size), None,
                                 cfg.grad_clip, precision_context(precision, torch.device("cpu")))
            losses[precision].append(loss.item())
        models[precision] = model
    torch.testing.assert_close(torch.tensor(losses["bf16"]), torch.tensor(losses["fp32"]), rtol=1e-3, atol=0)
    assert losses["bf16"] != losses["fp32"]  # bf16 did run
    for a, b in zip(models["fp32"].parameters(), models["bf16"].parameters()):  # Adam moves each by ~lr a step
        torch.testing.assert_close(a, b, rtol=0, atol=20 * cfg.learning_rate)


def test_precision_is_an_option_a_resume_may_change(tmp_path, pendulum_medium):
    """--precision is recorded in the run, and a resume may change it (the weights are float32 either way)."""
    out = str(tmp_path / "run")
    assert main(["train", "--dataset", "pendulum-medium", "--out", out, "--preset", "small", "--steps", "2",
                 "--batch-size", "8", "--n-transitions", "2", "--precision", "bf16", "--device", "cpu"]) == 0
    assert load_run(out)[2]["train"]["precision"] == "bf16"
    assert main(["train", "--dataset", "pendulum-medium", "--out", out, "--preset", "small", "--steps", "3",
                 "--batch-size", "8", "--n-transitions", "2", "--precision", "fp32", "--device", "cpu",
                 "--resume"]) == 0
    assert load_run(out)[3] == 3 and load_run(out)[2]["train"]["precision"] == "fp32"


def test_compiled_training_step_gives_the_eager_losses():
    """`--compile` (torch.compile of the step, the model's ops as plain torch under Inductor) against eager
    fp32 over 4 steps from the same weights and batches with dropout off: every loss within 1e-4 relative
    (Inductor reorders float32 sums; measured ~1e-6)."""
    import copy

    from tt.model import GPTConfig, TrajectoryTransformer
    from tt.train import configure_optimizer, precision_context, training_step

    cfg = make_config("small", n_layer=1, n_embd=16, n_head=2, batch_size=4)
    config = GPTConfig(3, 1, n_bins=20, n_transitions=3, n_layer=1, n_head=2, n_embd=16, embd_pdrop=0,
                       resid_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    start = TrajectoryTransformer(config).train()
    losses = {}
    for compiled in (False, True):
        model = copy.deepcopy(start)
        optimizer, g = configure_optimizer(model, cfg), torch.Generator().manual_seed(1)
        trained = torch.compile(model) if compiled else model
        losses[compiled] = []
        for _ in range(4):
            t = torch.randint(0, 20, (4, config.block_size + 1), generator=g)
            loss = training_step(trained, model, optimizer, t[:, :-1], t[:, 1:], torch.ones(4, config.block_size),
                                 None, cfg.grad_clip, precision_context("fp32", torch.device("cpu")))
            losses[compiled].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=0)


def test_compile_that_fails_warns_and_trains_as_without_it(pendulum_medium, tmp_path, monkeypatch):
    """Where torch.compile fails (here: a "compiled" model that runs the model for 4 steps, then raises, as a
    recompilation for a new batch shape may), `--compile` says so once and the run is the run without it,
    step for step (the failed step retried from its random state); the option is recorded, and a resume
    may change it."""

    class FailsToCompile(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            if self.calls > 4:
                raise RuntimeError("backend compiler failed: no C++ compiler\nmore lines")
            return self.module(*args, **kwargs)

    cfg = make_config("small", **{**TINY, "max_steps": 12})
    train(cfg, str(tmp_path / "eager"), progress=False)
    monkeypatch.setattr(torch, "compile", FailsToCompile)
    with pytest.warns(UserWarning, match=r"--compile: torch.compile failed \(RuntimeError: backend compiler failed: no "
                      r"C\+\+ compiler\); training without it") as caught:
        train(make_config("small", **{**TINY, "max_steps": 12, "compile": True}), str(tmp_path / "compiled"),
              progress=False)
    assert sum("--compile" in str(w.message) for w in caught) == 1
    metrics = [[json.loads(line)["loss"] for line in open(tmp_path / run / "metrics.jsonl")]
               for run in ("eager", "compiled")]
    assert metrics[0] == metrics[1]
    assert load_run(str(tmp_path / "compiled"))[2]["train"]["compile"] is True
    train(make_config("small", **{**TINY, "max_steps": 14}), str(tmp_path / "compiled"), resume=True, progress=False)


def test_the_loop_reads_the_loss_back_only_to_log_it(pendulum_medium, tmp_path, monkeypatch):
    """No host synchronization per step: the losses stay on the device until a metrics record (or a
    checkpoint) needs them, so a GPU is never waited for between steps. Each step's loss is watched (a
    tensor subclass that every op on it passes on) for reads back to the host."""
    import tt.train

    reads = []

    class Watched(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.numpy):
                reads.append(func.__name__)
            return super().__torch_function__(func, types, args, kwargs or {})

    step = tt.train.training_step
    monkeypatch.setattr(tt.train, "training_step", lambda *a, **k: step(*a, **k).as_subclass(Watched))
    train(make_config("small", **{**TINY, "max_steps": 30, "log_every": 15, "save_every": 100}), str(tmp_path / "run"),
          progress=False)
    assert reads == ["item", "item"]  # one per metrics record
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [15, 30] and all(np.isfinite(r["loss"]) for r in records)
