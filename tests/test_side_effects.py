"""tt leaves its caller's state alone: torch's global generator, matplotlib's backend and pyplot's
figures; the Planner says what it does to the model it is given; evaluation chooses its device as
training does."""

import json

import matplotlib
import numpy as np
import pytest
import torch

from tt.checkpoint import save_run
from tt.config import PlanConfig
from tt.discretize import Discretizer
from tt.model import GPTConfig, TrajectoryTransformer
from tt.search import Planner
from tt.search import planner as planner_module

pytestmark = pytest.mark.filterwarnings("ignore:the plan's action holds a stop token")


def tiny():
    model = TrajectoryTransformer(GPTConfig(3, 1, n_bins=10, n_transitions=2, n_layer=1, n_head=1, n_embd=8))
    return model, Discretizer(np.linspace(-1, 1, 11)[:, None].repeat(6, 1))


def test_a_planner_without_a_seed_leaves_torchs_global_generator_alone():
    model, disc = tiny()
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    planners = [Planner(model, disc, PlanConfig(horizon=1, beam_width=2, n_expand=1)) for _ in range(2)]
    for planner in planners:
        planner.act(np.zeros(3))
    assert torch.equal(torch.get_rng_state(), state)
    assert planners[0].rng.current() != planners[1].rng.current()  # still a fresh seed each


def test_training_leaves_torchs_global_generator_alone(pendulum_medium, tmp_path):
    from tt.config import make_config
    from tt.train import train

    torch.manual_seed(99)
    state = torch.get_rng_state()
    train(make_config("small", dataset="pendulum-medium", n_layer=1, n_head=2, n_embd=16, batch_size=16, n_bins=20,
                      device="cpu", max_steps=1), str(tmp_path / "run"), progress=False)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.fixture
def other_backend():
    """matplotlib set to a backend tt would not choose (svg), and restored afterwards."""
    import matplotlib.pyplot as plt

    old = matplotlib.get_backend()
    plt.close("all")
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(old)


def test_plots_leave_matplotlibs_backend_and_pyplot_alone(other_backend, tmp_path):
    import matplotlib.pyplot as plt

    from tt.eval.episodes import plot_plan_vs_actual, plot_returns
    from tt.eval.score import plot_scores
    from tt.io import plot_losses

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n"
                                                    for s in range(1, 5)))
    plot_losses(str(tmp_path / "metrics.jsonl"), str(tmp_path / "loss.png"))
    results = {"returns": [1.0, 2.0], "dataset_mean_return": 1.5, "mean_return": 1.5, "ref_max_score": 3.0,
               "dataset_id": "d"}
    plot_returns(results, np.array([0.5, 1.0, 2.5]), str(tmp_path / "returns.png"))
    model, disc = tiny()
    planner = Planner(model, disc, PlanConfig(horizon=2, beam_width=2, n_expand=1), seed=0)
    plan = planner.plan(np.zeros(3))
    plot_plan_vs_actual({"actual": [np.zeros(4)] * 3, "plan": plan}, planner, str(tmp_path / "plan.png"))
    run = {"name": "r", "dataset_id": "d", "episodes": 2, "score": 50.0}
    plot_scores({"datasets": [{"dataset_id": "d", "reference_scores": True, "se_runs": None, "score": 50.0,
                               "dataset_score": 40.0}], "runs": [run]}, str(tmp_path / "score.png"))
    assert matplotlib.get_backend() == other_backend
    assert plt.get_fignums() == []
    for png in ("loss.png", "returns.png", "plan.png", "score.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_planner_says_what_it_does_to_the_model():
    doc = Planner.__doc__
    assert "model.to(device)" in doc and "model.eval()" in doc
    model, disc = tiny()
    model.train()
    Planner(model, disc, seed=0, device="cpu")
    assert not model.training  # as documented


@pytest.mark.parametrize("device, expected", [(None, "auto"), ("cpu", "cpu")])
def test_planner_load_chooses_the_device_as_training_does(tmp_path, monkeypatch, device, expected):
    model, disc = tiny()
    save_run(str(tmp_path / "run"), model, disc, {})
    asked = []
    real = planner_module.resolve_device
    monkeypatch.setattr(planner_module, "resolve_device", lambda d: asked.append(str(d)) or real(d))
    Planner.load(str(tmp_path / "run"), device=device, seed=0)
    assert asked[0] == expected
