"""Episode videos: render one episode of a MuJoCo or classic-control task to .mp4 or .gif, on CPU.

MuJoCo draws through OpenGL, which needs no display when Mesa provides it: EGL (`MUJOCO_GL=egl`)
or OSMesa (`MUJOCO_GL=osmesa`). MuJoCo reads `MUJOCO_GL` once, so it has to be set before MuJoCo
starts; the library never sets it (a caller's environment is theirs): `use_headless_rendering()`
is for a program's entry point (`tt eval --video` calls it), and a first frame that cannot be
drawn is reported as one `RenderUnavailable` that says what is missing and how to install it.
Classic control draws with pygame. Videos are written with imageio: .mp4 as H.264 through the
ffmpeg binary that imageio-ffmpeg bundles, .gif through Pillow (which imageio requires).
"""

from __future__ import annotations

import ctypes.util
import os
import pathlib
import sys
import traceback

import gymnasium as gym
import numpy as np

from tt.io import atomic_write

SUFFIXES = (".mp4", ".gif")
MESA_EGL = "libegl1 libegl-mesa0 libgl1-mesa-dri"  # Debian/Ubuntu packages for MUJOCO_GL=egl on CPU
MESA_OSMESA = "libosmesa6"  # for MUJOCO_GL=osmesa


class RenderUnavailable(ValueError):
    """The asked-for video cannot be made on this machine (a ValueError, so `tt` reports it in one line)."""


def use_headless_rendering() -> None:
    """Select off-screen rendering for this process where the caller has not; for entry points only.

    Sets `MUJOCO_GL` (Linux: egl, or osmesa where only OSMesa is installed) and `SDL_VIDEODRIVER=dummy`
    (pygame draws into memory with no window and no complaint about a missing display), each only when
    unset. Call it before MuJoCo is imported.
    """
    if sys.platform.startswith("linux") and "MUJOCO_GL" not in os.environ:
        for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
            if ctypes.util.find_library(library):
                os.environ["MUJOCO_GL"] = backend
                break
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def check_video_path(path: str) -> str:
    """The suffix of `path` (.mp4 or .gif); raises when it is neither or its writer is not installed.

    Cheap, so callers run it before any planning.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"a video is written as .mp4 or .gif (chosen by the suffix), got {path!r}")
    try:
        import imageio  # noqa: F401

        if suffix == ".mp4":
            import imageio_ffmpeg  # noqa: F401
    except ImportError as e:
        raise RenderUnavailable(f"writing {path} needs the Python package {e.name}, which is missing: "
                                "pip install 'imageio>=2.30' 'imageio-ffmpeg>=0.5' (it bundles ffmpeg)") from e
    return suffix


def rendering_env(dataset) -> gym.Env:
    """The Minari data set's evaluation environment, drawing rgb frames (Minari passes `render_mode` to gym.make).

    Making a MuJoCo environment imports MuJoCo, which loads the GL that `MUJOCO_GL` names: a failure there
    is explained like a failed first frame.
    """
    try:
        return dataset.recover_environment(eval_env=True, render_mode="rgb_array")
    except Exception as e:
        if _raised_in(e, "mujoco"):
            raise _unavailable(getattr(dataset.env_spec, "id", dataset.spec.dataset_id), e) from e
        raise


def write_video(path: str, frames: list[np.ndarray], fps: float) -> str:
    """Write rgb frames [H, W, 3] uint8 to `path` (.mp4 or .gif by its suffix) in one rename; returns `path`.

    .mp4: H.264 (yuv420p) through imageio-ffmpeg. .gif: Pillow with a fast octree palette per frame (4x
    quicker than its default median cut); Pillow merges identical consecutive frames, adding their durations.
    """
    suffix = check_video_path(path)
    with atomic_write(path) as tmp:
        if suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray(frame).quantize(method=Image.Quantize.FASTOCTREE) for frame in frames]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                           loop=0)
            return path
        import imageio

        # yuv420p needs even sides, not multiples of 16: keep the frames' size (500x500 stays 500x500)
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, macro_block_size=2)
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def _raised_in(error: Exception, package: str) -> bool:
    """Whether `error` passed through a module of `package` (e.g. mujoco/, gymnasium/envs/mujoco/)."""
    return any(package in pathlib.PurePath(frame.filename).parts[:-1]
               for frame in traceback.extract_tb(error.__traceback__))


def _unavailable(name: str, error: Exception) -> RenderUnavailable:
    """Why environment `name` cannot draw, and what to install."""
    cause = f"{type(error).__name__}: {error}"
    if _raised_in(error, "mujoco"):
        return RenderUnavailable(
            f"cannot render {name}: MuJoCo found no working OpenGL (MUJOCO_GL={os.environ.get('MUJOCO_GL', 'unset')}; "
            f"{cause}). Without a display MuJoCo renders on the CPU through Mesa: set MUJOCO_GL=egl (Debian/Ubuntu: "
            f"apt-get install {MESA_EGL}) or MUJOCO_GL=osmesa (apt-get install {MESA_OSMESA}) before Python starts "
            "(`tt eval --video` picks one itself when MUJOCO_GL is unset; scripts/setup.sh installs the EGL packages)")
    if "pygame" in str(error):
        return RenderUnavailable(f"cannot render {name}: it draws with pygame, which is missing: "
                                 f"pip install 'pygame>=2.1' ({cause})")
    return RenderUnavailable(f"cannot render {name}: {cause}")


class EpisodeVideo(gym.Wrapper):
    """Records the wrapped environment's first episode and writes it to `path` when that episode ends.

    Frames: the one after reset, then one after each step, so an episode of T steps gives T + 1. They are
    drawn inside `step`, before a vector env's same-step autoreset replaces the final state, and kept in
    memory until the episode ends (a 480x480 MuJoCo frame is 0.7 MB). `written` is the path once written.
    """

    def __init__(self, env: gym.Env, path: str):
        super().__init__(env)
        check_video_path(path)
        self.path, self.written = path, None
        self.frames: list[np.ndarray] = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if self.written is None:
            self.frames = [self._first_frame()]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.written is None and self.frames:
            self.frames.append(self.env.render())
            if terminated or truncated:
                self.written = write_video(self.path, self.frames, fps=self.env.metadata.get("render_fps") or 30)
                self.frames = []
        return obs, reward, terminated, truncated, info

    def _first_frame(self) -> np.ndarray:
        try:
            frame = self.env.render()
        except Exception as e:  # any failure here is a missing backend or library: say which
            name = self.env.spec.id if self.env.spec is not None else type(self.env.unwrapped).__name__
            raise _unavailable(name, e) from e
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise RenderUnavailable(f"the environment drew no rgb frame (render_mode={self.env.render_mode!r}, "
                                    f"got {type(frame).__name__}): make it with render_mode='rgb_array'")
        return frame
