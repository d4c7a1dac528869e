"""Batched rollouts: many environments stepped together, one policy call per step for all of them,
in this process or split over worker processes.

Episode k starts from `env.reset(seed=seed + k)` and draws its action noise from its own
generator seeded by (seed, k), and the policy's action for a row depends on that row alone
(`tt.tasks.actor.Actor.act` evaluates fixed-size blocks). So an episode's content is a function of
(seed, k): the data are the same, bit for bit, whatever the number of environments, the number of
workers, and whichever environment or worker ran an episode.

The work is split by episode. Each environment (a lane) takes the next episode index from a
counter shared by all lanes of all workers, while the steps taken so far leave the budget unmet;
the parent gathers the episodes, puts them in index order, and cuts the budget exactly. Which
episodes are needed, and how far, is decided from lower bounds on the steps of the episodes before
them (the steps taken so far), so a late or partial view only costs extra steps, never changes
the data: an episode stops early only past the point where the budget cuts it anyway.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from tt.progress import progress as progress_bar

# policy(observations [B, O], generators [B]) -> actions [B, A]; picklable to run in workers
BatchPolicy = Callable[[np.ndarray, list[np.random.Generator]], np.ndarray]

# slots of the shared counters: the next episode index, the steps taken by all started episodes, the
# abort flag, and the finished prefix: episodes [0, PREFIX) have ended, taking PREFIX_STEPS steps
NEXT, USED, ABORT, PREFIX, PREFIX_STEPS = range(5)
FLUSH_SECONDS = 0.1  # a worker sends its finished episodes at most this often (the parent publishes the prefix)


def default_workers() -> int:
    """Two worker processes where two cores are available (data generation's target), else one; one
    also when the main program cannot be imported again by a worker (a script read from stdin)."""
    main_path = getattr(sys.modules["__main__"], "__file__", None)
    if main_path is not None and not os.path.exists(main_path):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(2, cores))


@dataclass
class _Job:
    make_env: Callable[[], gym.Env]
    policy: BatchPolicy
    seed: int
    steps: int | None
    episodes: int | None

    def wants(self, started: int, used: int) -> bool:
        """Is episode `started` needed, given that the episodes before it took at least `used` steps?"""
        return started < self.episodes if self.episodes is not None else used < self.steps


class _Counters:
    """Episodes handed out and steps taken, shared by every lane of one collection (a plain list in
    this process, shared memory and a lock across workers)."""

    def __init__(self, values=None, lock=None):
        self.values = values if values is not None else [0] * 5
        self.lock = lock if lock is not None else contextlib.nullcontext()

    def reset(self) -> None:
        for slot in range(5):
            self.values[slot] = 0

    def take(self, job: _Job) -> tuple[int, int] | None:
        """(index, steps taken before it started) of the next needed episode, or None once none is.

        All started episodes come before the new one, so the steps they took are a lower bound on
        the steps of the episodes before it: once that reaches the budget, no later episode is kept.
        """
        with self.lock:
            k, used = self.values[NEXT], self.values[USED]
            if self.values[ABORT] or not job.wants(k, used):
                return None
            self.values[NEXT] = k + 1
            return k, used

    def add(self, steps: int) -> None:
        with self.lock:
            self.values[USED] += steps

    def set_prefix(self, ended: int, steps: int) -> None:
        with self.lock:
            self.values[PREFIX], self.values[PREFIX_STEPS] = ended, steps

    def prefix(self) -> tuple[int, int]:
        with self.lock:
            return self.values[PREFIX], self.values[PREFIX_STEPS]

    def abort(self) -> None:
        self.values[ABORT] = 1

    @property
    def aborted(self) -> bool:
        return bool(self.values[ABORT])


class _Episode:
    """One running episode in a lane: its buffers, its generator, and how far it can be needed."""

    def __init__(self, env: gym.Env, job: _Job, index: int, used_before: int):
        self.env, self.index = env, index
        self.dtype = env.action_space.dtype
        obs, _ = env.reset(seed=job.seed + index)
        self.rng = np.random.default_rng([job.seed, index])
        self.used_before = used_before  # the episodes before this one take at least this many steps
        self.observations, self.actions, self.rewards = [obs], [], []
        self.terminated = self.truncated = self.stopped = False

    @property
    def obs(self) -> np.ndarray:
        return self.observations[-1]

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def over(self) -> bool:
        return self.terminated or self.truncated or self.stopped

    def step(self, action: np.ndarray) -> None:
        obs, reward, self.terminated, self.truncated, _ = self.env.step(action.astype(self.dtype))
        self.observations.append(obs)
        self.actions.append(action)
        self.rewards.append(float(reward))

    def fields(self) -> dict:
        n = len(self.rewards)
        terminations, truncations = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        terminations[-1], truncations[-1] = bool(self.terminated), bool(self.truncated)
        return dict(observations=np.stack(self.observations), actions=np.stack(self.actions),
                    rewards=np.array(self.rewards), terminations=terminations, truncations=truncations)


def _run_lanes(job: _Job, n_lanes: int, counters: _Counters, emit: Callable[[int, dict], None],
               tick: Callable[[], None] = lambda: None) -> None:
    """Step `n_lanes` environments together until no needed episode is left; `emit(index, fields)`
    each episode as it ends, `tick()` after each step."""
    envs = [job.make_env() for _ in range(n_lanes)]
    lanes: list[_Episode | None] = [None] * n_lanes
    more = True
    try:
        while not counters.aborted:
            for i in range(n_lanes):
                if more and lanes[i] is None:
                    taken = counters.take(job)
                    if taken is None:
                        more = False
                    else:
                        lanes[i] = _Episode(envs[i], job, *taken)
            live = [e for e in lanes if e is not None]
            if not live:
                break
            actions = job.policy(np.stack([e.obs for e in live]), [e.rng for e in live])
            for episode, action in zip(live, actions):
                episode.step(action)
            counters.add(len(live))
            if job.steps is not None and counters.values[USED] >= job.steps:
                _stop_past_budget(live, counters.prefix(), job.steps)
            for i, episode in enumerate(lanes):
                if episode is not None and episode.over:
                    emit(episode.index, episode.fields())
                    lanes[i] = None
            tick()
    finally:
        for env in envs:
            env.close()


def _stop_past_budget(live: list[_Episode], prefix: tuple[int, int], steps: int) -> None:
    """Stop each running episode whose steps and a lower bound on the steps of the episodes before
    it reach the budget: it is the one the budget cuts, there or earlier, or it is not kept.

    The bound is the larger of the steps taken when it started, and the finished prefix's steps
    plus the steps of the running episodes between the prefix and it (all of them have index >= the
    prefix's end, which is the first episode not ended)."""
    before = prefix[1]
    for episode in sorted(live, key=lambda e: e.index):
        if max(before, episode.used_before) + len(episode) >= steps:
            episode.stopped = True
        before += len(episode)


@contextlib.contextmanager
def _one_torch_thread():
    """Tiny matrix products run fastest on one thread (and the policy's arithmetic stays fixed)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Gathered:
    """The episodes gathered so far by index, and the prefix of them that has ended, published to
    the lanes through the counters."""

    def __init__(self, counters: _Counters):
        self.episodes: dict[int, dict] = {}
        self.counters, self.ended, self.ended_steps = counters, 0, 0

    def add(self, index: int, fields: dict) -> None:
        self.episodes[index] = fields
        if index == self.ended:
            while self.ended in self.episodes:
                self.ended_steps += len(self.episodes[self.ended]["rewards"])
                self.ended += 1
            self.counters.set_prefix(self.ended, self.ended_steps)

    def show(self, bar, job: _Job) -> None:
        done = min(self.counters.values[USED], job.steps) if job.steps is not None else len(self.episodes)
        bar.update(done - bar.n)


class _Outbox:
    """A worker's finished episodes, sent to the parent in batches (at most every FLUSH_SECONDS)."""

    def __init__(self, results, rank: int):
        self.results, self.rank = results, rank
        self.pending: list[tuple[int, dict]] = []
        self.sent = time.monotonic()

    def emit(self, index: int, fields: dict) -> None:
        self.pending.append((index, fields))
        if time.monotonic() - self.sent > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.results.put(("episodes", self.rank, self.pending))
        self.pending, self.sent = [], time.monotonic()


def _worker(rank: int, tasks, results, values, lock) -> None:
    """A worker process: runs its lanes of each job it is sent until it is sent None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the workers
    import torch

    torch.set_num_threads(1)
    counters = _Counters(values, lock)
    while (task := tasks.get()) is not None:
        payload, n_lanes = task
        outbox = _Outbox(results, rank)
        try:
            _run_lanes(pickle.loads(payload), n_lanes, counters, outbox.emit)
            outbox.flush()
            results.put(("done", rank, None))
        except BaseException:  # noqa: BLE001 - everything goes back to the parent, which raises
            counters.abort()
            results.put(("error", rank, traceback.format_exc()))
    results.cancel_join_thread()  # sent None: the parent reads nothing more, so exit without waiting on it


class RolloutWorkers:
    """Collects episodes in `workers` processes (started on first use and kept for the next
    collection until `close`), or in this process when `workers` is 1. A context manager.
    `preload` names modules the workers need (e.g. the environments'), imported once in the server.

    Workers start from multiprocessing's fork server (which imports torch once, not per worker;
    "spawn" where there is none), never by a plain fork of this process, which may hold torch's
    threads. As with any such start, a script that uses workers runs its work under
    `if __name__ == "__main__":`. A worker's error is raised here as RuntimeError.
    """

    def __init__(self, workers: int = 1, preload: tuple[str, ...] = ()):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers, self.preload = workers, preload
        self.processes: list = []

    def __enter__(self) -> RolloutWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the workers: a running collection aborted, each asked to stop, ended if it does not
        within a few seconds."""
        if not self.processes:
            return
        self.counters.abort()
        for tasks in self.tasks:
            with contextlib.suppress(Exception):
                tasks.put(None)
        for p in self.processes:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
        for q in [*self.tasks, self.results]:  # the workers are gone: exit never waits to deliver to them
            q.cancel_join_thread()
            q.close()
        self.processes, self.tasks = [], []

    def _start(self) -> None:
        if "forkserver" in mp.get_all_start_methods():  # a server that has imported torch once forks each worker
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload([__name__, *self.preload])
        else:
            ctx = mp.get_context("spawn")
        self.values, self.lock = ctx.RawArray("q", 5), ctx.Lock()
        self.counters = _Counters(self.values, self.lock)
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(self.workers)]
        self.processes = []
        for rank in range(self.workers):
            p = ctx.Process(target=_worker, args=(rank, self.tasks[rank], self.results, self.values, self.lock),
                            daemon=True, name=f"tt-rollouts-{rank}")
            p.start()
            self.processes.append(p)  # started: `close` ends it

    def collect(self, make_env: Callable[[], gym.Env], policy: BatchPolicy, seed: int, *, steps: int | None = None,
                episodes: int | None = None, n_envs: int = 16, desc: str = "rollouts",
                progress: bool = True) -> list[dict]:
        """Episodes as Minari buffer fields (arrays; observations include the final one), in episode
        order.

        With `steps`, episodes run until their steps add up to exactly `steps`: the episode that
        crosses the budget is cut there and marked truncated (D4RL's fixed-size data sets). With
        `episodes`, that many whole episodes. `n_envs` environments in all are stepped together,
        split over the workers.
        """
        if (steps is None) == (episodes is None):
            raise ValueError("give either steps or episodes")
        if (steps is not None and steps < 1) or (episodes is not None and episodes < 1):
            raise ValueError(f"need at least one step and episode, got steps={steps}, episodes={episodes}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be at least 1, got {n_envs}")
        job = _Job(make_env, policy, seed, steps, episodes)
        bar = progress_bar(steps if steps is not None else episodes, desc, progress)
        try:
            if self.workers == 1:
                finished = self._collect_here(job, n_envs, bar)
            else:
                finished = self._collect_in_workers(job, n_envs, bar)
        finally:
            bar.close()
        ordered = [finished[i] for i in range(len(finished))]
        return _cut_to_budget(ordered, steps) if steps is not None else ordered

    def _collect_here(self, job: _Job, n_envs: int, bar) -> dict[int, dict]:
        gathered = _Gathered(_Counters())
        with _one_torch_thread():
            _run_lanes(job, n_envs, gathered.counters, gathered.add, lambda: gathered.show(bar, job))
        return gathered.episodes

    def _collect_in_workers(self, job: _Job, n_envs: int, bar) -> dict[int, dict]:
        try:
            payload = pickle.dumps(job)
        except Exception as e:
            raise TypeError(f"with workers > 1 the environment factory and the policy must be picklable "
                            f"(module-level functions, functools.partial, objects), not lambdas: {e}") from e
        if not self.processes or any(not p.is_alive() for p in self.processes):
            self.close()
            self._start()
        self.counters.reset()
        gathered = _Gathered(self.counters)
        lanes = [n_envs // self.workers + (rank < n_envs % self.workers) for rank in range(self.workers)]
        active = {rank for rank, n in enumerate(lanes) if n}
        for rank in active:
            self.tasks[rank].put((payload, lanes[rank]))
        errors = []
        while active:
            try:
                kind, rank, body = self.results.get(timeout=0.2)
            except queue.Empty:
                dead = [(rank, self.processes[rank].exitcode) for rank in active if not self.processes[rank].is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(f"rollout worker {dead[0][0]} died (exit code {dead[0][1]}; its error, if any, "
                                       "is printed above). A script that uses workers must run its work under "
                                       "`if __name__ == '__main__':`, since each worker imports it again") from None
            else:
                if kind == "episodes":
                    for index, fields in body:
                        gathered.add(index, fields)
                elif kind == "done":
                    active.discard(rank)
                else:  # "error": the worker set the abort flag, so the others stop soon
                    errors.append((rank, body))
                    active.discard(rank)
            gathered.show(bar, job)
        if errors:
            rank, trace = errors[0]
            raise RuntimeError(f"rollout worker {rank} failed: {trace.strip().splitlines()[-1]}\n{trace}")
        return gathered.episodes


def collect_episodes(make_env: Callable[[], gym.Env], policy: BatchPolicy, seed: int, *, steps: int | None = None,
                     episodes: int | None = None, n_envs: int = 16, workers: int = 1, desc: str = "rollouts",
                     progress: bool = True) -> list[dict]:
    """`RolloutWorkers(workers).collect(...)`: one collection, its workers ended after it."""
    with RolloutWorkers(workers) as pool:
        return pool.collect(make_env, policy, seed, steps=steps, episodes=episodes, n_envs=n_envs, desc=desc,
                            progress=progress)


def _cut_to_budget(episodes: list[dict], steps: int) -> list[dict]:
    """The first episodes in order, the last one cut (and truncated) so the steps add up to `steps`.

    Only that last one may have been stopped early (without an end of its own)."""
    kept, total = [], 0
    for fields in episodes:
        n = len(fields["rewards"])
        if total + n >= steps:
            cut = steps - total
            if cut < n or not (fields["terminations"][-1] or fields["truncations"][-1]):
                fields = {k: v[: cut + 1] if k == "observations" else v[:cut].copy() for k, v in fields.items()}
                fields["terminations"][-1] = False
                fields["truncations"][-1] = True
            kept.append(fields)
            return kept
        if not (fields["terminations"][-1] or fields["truncations"][-1]):
            raise RuntimeError(f"episode {len(kept)} was stopped before the budget was reached")
        kept.append(fields)
        total += n
    raise RuntimeError(f"the episodes hold {total} steps, fewer than the budget of {steps}")


def as_buffers(episodes: list[dict], first_id: int = 0) -> list:
    """Minari EpisodeBuffers from `collect_episodes` output."""
    from minari.data_collector import EpisodeBuffer

    return [EpisodeBuffer(id=first_id + i, observations=np.asarray(e["observations"]),
                          actions=np.asarray(e["actions"]), rewards=np.asarray(e["rewards"]).tolist(),
                          terminations=np.asarray(e["terminations"]).tolist(),
                          truncations=np.asarray(e["truncations"]).tolist())
            for i, e in enumerate(episodes)]


def returns_of(episodes: list[dict]) -> np.ndarray:
    return np.array([float(np.sum(e["rewards"])) for e in episodes])
