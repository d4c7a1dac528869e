"""`--resume` continues only the run it was given the options of, with the run's own discretizer;
`tt import-reference` never fits thresholds on a data set nobody named; evaluating an imported run
without a data set says what is missing."""

import numpy as np
import pytest
import torch

from tt import train as train_module
from tt.checkpoint import load_run, load_trainer_state, save_run
from tt.cli import main
from tt.config import make_config
from tt.discretize import Discretizer
from tt.train import train

TINY = dict(dataset="pendulum-medium", n_layer=1, n_head=2, n_embd=16, batch_size=32, n_bins=20,
            save_every=2, log_every=2, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory, pendulum_medium):
    out = str(tmp_path_factory.mktemp("resume") / "run")
    train(make_config("small", **TINY, max_steps=2), out, progress=False)
    return out


@pytest.mark.parametrize("option, value, named", [
    ("n_embd", 32, "n_embd=16"), ("batch_size", 16, "batch_size=32"), ("seed", 7, "seed=42"),
    ("n_bins", 30, "n_bins=20"), ("dataset", "invertedpendulum-medium", "dataset="),
])
def test_resume_with_other_options_is_an_error_naming_the_option(run, option, value, named):
    with pytest.raises(ValueError, match=f"--resume: the run in .* was trained with {named}"):
        train(make_config("small", **{**TINY, option: value}, max_steps=4), run, resume=True, progress=False)
    assert load_run(run)[3] == 2  # untouched


def test_resume_from_the_command_line_names_the_option(run, capsys):
    # the run was trained with the small preset and other sizes: the published preset differs
    assert main(["train", "--dataset", "pendulum-medium", "--out", run, "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tt: error: --resume: the run in") and len(err.splitlines()) == 1
    assert "was trained with batch_size=32, the options give batch_size=256 (set by --batch-size or --preset)" in err
    assert main(["train", "--dataset", "pendulum-medium", "--out", run, "--resume", "--batch-size", "32",
                 "--preset", "small"]) == 2
    assert "n_bins=20, the options give n_bins=100 (set by --preset)" in capsys.readouterr().err


def test_resume_loads_the_stored_discretizer(tmp_path, pendulum_medium, monkeypatch):
    """Thresholds stored with the run are the ones the resumed run trains with, even where the data
    would now fit others (the data set was remade, or the fit changed)."""
    out = str(tmp_path / "run")
    train(make_config("small", **TINY, max_steps=2), out, progress=False)
    model, disc, config, step = load_run(out)
    shifted = Discretizer(disc.thresholds + 1e-3)  # a discretizer the data would not give
    state = load_trainer_state(out)
    save_run(out, model, shifted, {k: v for k, v in config.items() if k != "model"}, step, state)

    def no_fit(*args, **kwargs):
        raise AssertionError("a resumed run fitted its discretizer again")

    monkeypatch.setattr(Discretizer, "fit", no_fit)
    train(make_config("small", **TINY, max_steps=4), out, resume=True, progress=False)
    _, resumed_disc, _, step = load_run(out)
    assert step == 4
    np.testing.assert_array_equal(resumed_disc.thresholds, shifted.thresholds)


def test_resume_may_change_where_training_stops_and_runs(run, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(run, copy)
    train(make_config("small", **{**TINY, "save_every": 3, "log_every": 1}, max_steps=3), copy, resume=True,
          progress=False)
    assert load_run(copy)[3] == 3


def test_import_reference_needs_a_dataset_or_thresholds(tmp_path, pendulum_medium, capsys, monkeypatch):
    fitted = []
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: fitted.append(a))
    torch.save({}, tmp_path / "state_0.pt")
    code = main(["import-reference", "--state-dict", str(tmp_path / "state_0.pt"), "--out", str(tmp_path / "imp")])
    assert code == 2 and not fitted and not (tmp_path / "imp").exists()
    assert "import-reference needs --dataset" in capsys.readouterr().err


def test_evaluating_an_imported_run_without_a_dataset_says_what_is_missing(tmp_path, capsys):
    from test_model import authors_state_dict

    sd = authors_state_dict(3, 1, 10, 4, 2, 16)
    torch.save({k: v.float() for k, v in sd.items()}, tmp_path / "state_0.pt")
    np.save(tmp_path / "thresholds.npy", np.linspace(-1, 1, 11)[:, None].repeat(6, 1))
    assert main(["import-reference", "--state-dict", str(tmp_path / "state_0.pt"), "--out", str(tmp_path / "imp"),
                 "--thresholds", str(tmp_path / "thresholds.npy"), "--observation-dim", "3", "--action-dim", "1",
                 "--n-head", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "imp"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "names no data set (imported with --thresholds)" in err and "--dataset" in err
    assert not (tmp_path / "imp" / "eval").exists()
