"""Built-in data sets, generated locally as real Minari data sets, deterministic by seed.

    pendulum-*, invertedpendulum-*     scripted experts (tt.tasks.pendulum), in seconds
    hopper-*, halfcheetah-*, walker2d-*  the paper's locomotion tasks from SAC policies that tt
                                        ships (tt.tasks.locomotion), D4RL's variants and sizes
    pointmaze-fourrooms                 a goal task: PointMaze on a four-rooms map, a scripted
                                        waypoint controller driving to random goals (tt.tasks.pointmaze)
    pointmaze-{umaze,medium,large}      D4RL's maze2d on PointMaze: sparse reward, a fixed evaluation goal

Each stores reference scores (random and expert returns; the maze's 0 and 1 make its normalized score
the success rate), so `minari.get_normalized_score` works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable

from tt.io import atomic_write, swap_directory
from tt.tasks import locomotion, pendulum, pointmaze

BUILTIN: dict[str, tuple[str, str]] = {  # short name -> (task, variant)
    **{f"{task}-{v}": (task, v) for task in pendulum.TASKS for v in pendulum.VARIANTS},
    **{f"{task}-{v}": (task, v) for task in locomotion.ENV_IDS for v in locomotion.VARIANTS},
    **{f"pointmaze-{maze}": ("pointmaze", maze) for maze in pointmaze.TASKS},
}


def builtin_names() -> list[str]:
    return list(BUILTIN)


def dataset_id_of(name: str) -> str:
    task, variant = BUILTIN[name]
    return f"tt/{task}/{variant}-v0"


def resolve_dataset_id(name: str) -> str:
    """Built-in short names to Minari ids; anything else is returned unchanged."""
    return dataset_id_of(name) if name in BUILTIN else name


def env_id_of(task: str) -> str:
    return pendulum.TASKS[task].env_id if task in pendulum.TASKS else locomotion.ENV_IDS[task]


def check_size(name: str, episodes: int | None, steps: int | None) -> None:
    """Refuse an unknown built-in name, and a size the data set is not measured in or that holds less
    than one episode."""
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in data set {name!r}; choose from {', '.join(BUILTIN)}")
    task, _ = BUILTIN[name]
    if task in pendulum.TASKS or task == "pointmaze":
        if steps is not None:
            raise ValueError(f"{name} is sized in episodes (--episodes), not steps")
        return
    if episodes is not None:
        raise ValueError(f"{name} is sized in steps (--steps), not episodes")
    if steps is not None and steps < locomotion.EPISODE_STEPS:
        raise ValueError(f"--steps {steps} is less than one episode of {env_id_of(task)} (its time limit, "
                         f"{locomotion.EPISODE_STEPS} steps): give at least {locomotion.EPISODE_STEPS}")


def make_dataset(name: str, episodes: int | None = None, steps: int | None = None, seed: int = 0,
                 progress: bool = True):
    """Generate the built-in data set `name` (e.g. `hopper-medium`) and return it as a MinariDataset.

    Pendulums take a number of `episodes` per policy, the maze a number of `episodes`, locomotion
    tasks a number of `steps`.
    """
    import minari

    check_size(name, episodes, steps)
    task, variant = BUILTIN[name]
    if task in pendulum.TASKS:
        buffers, meta = pendulum.generate(task, variant, episodes, seed, progress)
        source = "tt/tasks/pendulum.py"
    elif task == "pointmaze":
        buffers, meta = pointmaze.generate(variant, episodes, seed, progress)
        source = "tt/tasks/pointmaze.py"
    else:
        buffers, meta = locomotion.generate(task, variant, steps, seed, progress)
        source = "tt/tasks/locomotion.py"
    dataset_id = dataset_id_of(name)
    env = pointmaze.env_spec(variant) if task == "pointmaze" else env_id_of(task)  # a spec: PointMaze, tt's map
    eval_env = pointmaze.env_spec(variant, evaluation=True) if task == "pointmaze" else env
    env_id = env if isinstance(env, str) else env.id
    with pointmaze.private_tempdir() if task == "pointmaze" else contextlib.nullcontext():  # Minari makes the env
        _build_beside(dataset_id, lambda: minari.create_dataset_from_buffers(
            dataset_id=dataset_id, buffer=buffers, env=env, eval_env=eval_env,
            algorithm_name=meta["algorithm_name"], author="tt", author_email="tt@localhost", code_permalink=source,
            ref_min_score=meta["ref_min_score"], ref_max_score=meta["ref_max_score"],
            description=f"tt built-in {variant} data for {env_id}, seed {seed}",
        ))
    return minari.load_dataset(dataset_id)


def _build_beside(dataset_id: str, create: Callable[[], object]) -> None:
    """Run `create` (which writes `dataset_id` under Minari's root) into a staging root beside the
    real one, then swap the finished data set in: a crash leaves the old data set or the new one.

    Minari finds its root through MINARI_DATASETS_PATH, so that variable points at the staging
    root while `create` runs and is restored after it."""
    from minari.storage.datasets_root_dir import get_dataset_path

    root = str(get_dataset_path())
    staging = tempfile.mkdtemp(dir=root, prefix=".tt-build-")
    before = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = staging
        try:
            create()
        finally:
            if before is None:
                del os.environ["MINARI_DATASETS_PATH"]
            else:
                os.environ["MINARI_DATASETS_PATH"] = before
        parts = dataset_id.split("/")[:-1]
        for namespace in ("/".join(parts[: i + 1]) for i in range(len(parts))):  # tt, then tt/hopper
            built = os.path.join(staging, namespace, "namespace_metadata.json")
            target = os.path.join(root, namespace, "namespace_metadata.json")
            if os.path.exists(built) and not os.path.exists(target):
                with atomic_write(target) as tmp:
                    shutil.copyfile(built, tmp)
        swap_directory(os.path.join(staging, dataset_id), os.path.join(root, dataset_id))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
