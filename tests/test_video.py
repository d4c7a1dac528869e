"""`tt eval --video`: one episode drawn off-screen on the CPU, written as .mp4 or .gif and read back."""

import ctypes.util
import json
import os
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from tt.cli import main
from tt.video import use_headless_rendering

pytestmark = [pytest.mark.filterwarnings("ignore:the plan's action holds a stop token"),
              pytest.mark.usefixtures("one_thread")]

TINY_PLAN = ["--horizon", "2", "--beam-width", "2", "--n-expand", "1", "--no-cuda-graphs", "--envs", "1"]
SET_BY_TT = ("MUJOCO_GL", "SDL_VIDEODRIVER")  # what `tt eval --video` sets where unset


@pytest.fixture(scope="module", autouse=True)
def render_settings_restored():
    """Undo, after the module, what `tt eval --video` set in this process's environment."""
    with pytest.MonkeyPatch.context() as mp:
        for name in SET_BY_TT:
            if name not in os.environ:
                mp.setenv(name, "")  # recorded as unset, so the undo removes it again
                mp.delenv(name)
        yield


def tiny_run(tmp_path_factory, dataset: str) -> str:
    out = str(tmp_path_factory.mktemp("run") / "r")
    assert main(["train", "--dataset", dataset, "--out", out, "--preset", "small", "--steps", "1",
                 "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory, pendulum_medium):
    return tiny_run(tmp_path_factory, "pendulum-medium")


@pytest.fixture(scope="module")
def inverted_pendulum_run(tmp_path_factory, inverted_pendulum_medium):
    return tiny_run(tmp_path_factory, "invertedpendulum-medium")


def evaluate(run: str, out, *flags: str) -> dict:
    assert main(["eval", "--run", run, *TINY_PLAN, "--out", str(out), *flags]) == 0
    with open(os.path.join(out, "eval.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def inverted_pendulum_video(inverted_pendulum_run, tmp_path_factory):
    """Two episodes in one environment (an autoreset in between), the first written as .mp4."""
    out = tmp_path_factory.mktemp("eval")
    path = str(out / "episode.mp4")
    return evaluate(inverted_pendulum_run, out, "--episodes", "2", "--video", path), path


def assert_one_episode(frames: np.ndarray, length: int, shape: tuple) -> None:
    """One frame after reset and one after each step; an rgb image each; the scene moves."""
    assert frames.shape == (length + 1, *shape, 3)
    assert frames.dtype == np.uint8
    assert len({frame.tobytes() for frame in frames}) > 1


def test_mujoco_episode_is_written_as_mp4(inverted_pendulum_video):
    results, path = inverted_pendulum_video
    assert results["video"] == path and os.path.exists(path)
    length = results["lengths"][0]
    assert length < 1000  # InvertedPendulum-v5 terminated early: the final frame comes before the autoreset
    assert_one_episode(iio.imread(path), length, (480, 480))  # MuJoCo's default 480x480 (EGL or OSMesa)


def test_video_leaves_the_evaluation_unchanged(inverted_pendulum_run, inverted_pendulum_video, tmp_path):
    with_video, _ = inverted_pendulum_video
    without = evaluate(inverted_pendulum_run, tmp_path, "--episodes", "2")
    assert "video" not in without
    assert without["returns"] == with_video["returns"] and without["lengths"] == with_video["lengths"]


def test_classic_control_episode_is_written_as_gif(pendulum_run, tmp_path):
    path = str(tmp_path / "episode.gif")
    results = evaluate(pendulum_run, tmp_path / "eval", "--episodes", "1", "--video", path)
    assert results["video"] == path and results["lengths"] == [200]
    assert_one_episode(iio.imread(path), 200, (500, 500))  # pygame's 500x500 Pendulum-v1


def test_an_unknown_suffix_is_refused_before_planning(pendulum_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tt.eval.episodes.Planner.from_run", lambda *a, **k: pytest.fail("made a planner"))
    path = str(tmp_path / "episode.avi")
    assert main(["eval", "--run", pendulum_run, *TINY_PLAN, "--episodes", "1", "--video", path]) == 2
    assert f"a video is written as .mp4 or .gif (chosen by the suffix), got '{path}'" in capsys.readouterr().err
    assert not os.path.exists(path)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # gymnasium's half-made viewer
def test_a_missing_gl_backend_is_explained(inverted_pendulum_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MUJOCO_GL", "nonsense")  # MuJoCo is imported already: Gymnasium reads it at the first frame
    path = str(tmp_path / "episode.mp4")
    assert main(["eval", "--run", inverted_pendulum_run, *TINY_PLAN, "--episodes", "1", "--video", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tt: error: cannot render InvertedPendulum-v5: MuJoCo found no working OpenGL "
                          "(MUJOCO_GL=nonsense; RuntimeError")
    assert "set MUJOCO_GL=egl (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)" in err
    assert "MUJOCO_GL=osmesa (apt-get install libosmesa6)" in err
    assert not os.path.exists(path)


def test_missing_pygame_is_explained(pendulum_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pygame", None)  # `import pygame` fails as if it were not installed
    path = str(tmp_path / "episode.gif")
    assert main(["eval", "--run", pendulum_run, *TINY_PLAN, "--episodes", "1", "--video", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tt: error: cannot render Pendulum-v1: it draws with pygame, which is missing: "
                          "pip install 'pygame>=2.1'")
    assert not os.path.exists(path)


def test_headless_rendering_is_chosen_only_where_unset(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setenv("SDL_VIDEODRIVER", "x11")
    use_headless_rendering()
    assert os.environ["MUJOCO_GL"] == "osmesa" and os.environ["SDL_VIDEODRIVER"] == "x11"
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delenv("SDL_VIDEODRIVER")
    use_headless_rendering()
    assert os.environ["SDL_VIDEODRIVER"] == "dummy"
    if sys.platform.startswith("linux") and ctypes.util.find_library("EGL"):  # as scripts/setup.sh installs
        assert os.environ["MUJOCO_GL"] == "egl"
