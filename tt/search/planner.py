"""`tt.Planner`: the search in a Gymnasium loop, one observation or a vector environment's batch."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from tt import ops
from tt.cache import KVCache
from tt.checkpoint import Run, load_critic, open_run
from tt.config import PlanConfig
from tt.device import resolve_device
from tt.discretize import Discretizer
from tt.model import TrajectoryTransformer
from tt.rng import Philox
from tt.search.graphs import PlanGraphs
from tt.search.objectives import CriticReturn, Objective, QFn, named
from tt.search.plan import beam_plan, check_config, check_memory, pad_prefixes, search_rows


@dataclass
class Plan:
    """One environment's plan, for inspection."""

    tokens: np.ndarray  # [H, T]
    transitions: np.ndarray  # [H, T] bin midpoints; NaN where the model predicted the episode's end
    score: float  # what the planner's objective maximizes (`Planner.objective.meaning`)


def critic_objective(critic_dir: str, run: Run, config: PlanConfig, device: torch.device) -> CriticReturn:
    """TT+Q's objective for `run` from the critic in `critic_dir`, checked against the run (the return
    objective, the same observation and action sizes, the same data set, the plan's discount). The
    critic learned Q of rewards scaled and shifted for IQL (`tt.iql.critic_defaults`): its values are
    taken back to the data's rewards, the units of the rewards the plan predicts."""
    from tt.tasks import resolve_dataset_id  # here: tt.tasks imports the environments

    if config.objective != "return":
        raise ValueError(f"--critic guides the return search (TT+Q); it cannot be used with the {config.objective} "
                         "objective")
    critic, stored, _ = load_critic(critic_dir, device)
    shape, O, A = critic.shape, run.model.config.observation_dim, run.model.config.action_dim
    if (shape.observation_dim, shape.action_dim) != (O, A):
        raise ValueError(f"critic {critic_dir} takes observations of {shape.observation_dim} and actions of "
                         f"{shape.action_dim} numbers; run {run.path} has {O} and {A}: train a critic on its data set")
    ours = run.data.get("dataset_id")
    if shape.dataset_id and ours and resolve_dataset_id(shape.dataset_id) != resolve_dataset_id(ours):
        raise ValueError(f"critic {critic_dir} was trained on {shape.dataset_id}, run {run.path} on {ours}: train a "
                         f"critic on {ours} (tt train-critic --dataset {ours})")
    trained = stored.get("train_critic", {})
    discount, scale, shift = trained.get("discount", 0.99), trained.get("reward_scale", 1.0), \
        trained.get("reward_shift", 0.0)
    if discount != config.discount:
        raise ValueError(f"critic {critic_dir} values returns discounted by {discount}, the plan discounts by "
                         f"{config.discount}: plan with --discount {discount}")
    midpoints = torch.as_tensor(run.discretizer.midpoints, dtype=torch.float32, device=device)
    return CriticReturn(data_units(critic.value, scale, shift, discount), midpoints)


def data_units(q_fn: QFn, scale: float, shift: float, discount: float) -> QFn:
    """Q of rewards `r * scale + shift` as Q of the rewards r: (Q - shift / (1 - discount)) / scale (the
    shift summed over an unending future; a constant, which ranks no candidate above another)."""
    offset = shift / (1.0 - discount) if discount < 1.0 else 0.0
    return lambda observations, actions: (q_fn(observations, actions) - offset) / scale


def check_env_sizes(env, observation_dim: int, action_dim: int, who: str) -> None:
    """Refuse a Gymnasium environment (single or vector) whose observation or action space is not a vector
    of these sizes: a ValueError naming both, led by `who` ("the model plans")."""
    spaces = {"observation": getattr(env, "single_observation_space", env.observation_space),
              "action": getattr(env, "single_action_space", env.action_space)}
    for kind, size in (("observation", observation_dim), ("action", action_dim)):
        shape = getattr(spaces[kind], "shape", None)
        if shape is None or len(shape) != 1 or shape[0] != size:
            raise ValueError(f"{who} {kind}s of size {size}, the environment's {kind} space is {spaces[kind]}")


def check_observations(obs, observation_dim: int) -> tuple[np.ndarray, bool]:
    """Observations `[O]` or `[n, O]` as float64 `[n, O]`, and whether one was given alone; a ValueError
    for another shape or a NaN or infinite value."""
    obs = np.asarray(obs, dtype=np.float64)
    single = obs.ndim == 1
    obs = obs[None] if single else obs
    if obs.ndim != 2 or obs.shape[1] != observation_dim:
        raise ValueError(f"observations must be [{observation_dim}] or [n, {observation_dim}], got "
                         f"{tuple(np.shape(obs))}")
    if not np.isfinite(obs).all():
        raise ValueError("observation contains NaN or infinite values")
    return obs, single


class Planner:
    """Drop-in planner for a Gymnasium loop: `act(obs)`, step the environment, `observe(reward, done)`.

    Works on one observation `[O]` or a batch `[n, O]` (one per environment of a vector env);
    each environment keeps its own context of up to C real transitions, reset when it is done.

    What it does to the model it is given: moves it to `device` in place (`model.to(device)`;
    default: the device the model is on) and puts it in eval mode (`model.eval()`, dropout off),
    and keeps a reference to it; it does not change its weights. Train a copy, or call
    `model.train()` again, to go on training it. The planner draws from its own Philox generator
    (`seed`, or fresh entropy from the OS without one): torch's global generator is never read
    or reseeded. `check_env(env)` checks a Gymnasium environment's spaces against the model.

    A goal-conditioned model plans towards a goal observation `[O]`: `goal` for every environment,
    or `set_goal(g, env)` for one (each environment of a vector env its own). Goals are
    discretized with the observation bins; its decode steps read the goal segment in the fused
    kernels (C++ on CPU, Triton on GPUs), but its plans are not captured as CUDA graphs.

    `objective` is what plans maximize (`tt.search.objectives`; default: the one `config.objective`
    names).
    """

    def __init__(self, model: TrajectoryTransformer, discretizer: Discretizer, config: PlanConfig = PlanConfig(),
                 device: str | torch.device | None = None, seed: int | None = None, goal: np.ndarray | None = None,
                 objective: Objective | None = None):
        if discretizer.transition_dim != model.transition_dim or discretizer.n_bins != model.config.n_bins:
            raise ValueError(f"discretizer ({discretizer.n_bins} bins, {discretizer.transition_dim} dims) does not "
                             f"match the model ({model.config.n_bins} bins, {model.transition_dim} dims)")
        self.device = resolve_device(device) if device is not None else model.tok_emb.weight.device
        self.model = model.to(self.device).eval()
        self.discretizer = discretizer
        self.config = config
        self.objective = objective or named(config.objective)
        check_config(model, config)
        check_memory(self.model, config, 1, self.objective)
        ops.check_tokens_per_row(model.config.n_bins + 1, self.device)
        self.O, self.A, self.T = model.config.observation_dim, model.config.action_dim, model.transition_dim
        if seed is None:  # fresh entropy, not torch.seed(): that would reseed the caller's global generator
            seed = int.from_bytes(os.urandom(8), "little") % 2**62
        self.rng = Philox(seed, self.device)
        self.stats = {"plans": 0, "stop_tokens_in_actions": 0}
        self._cache: KVCache | None = None
        self._graphs = None
        self._default_goal: np.ndarray | None = None
        self._goals: dict[int, np.ndarray] = {}
        if config.cuda_graphs and self.device.type == "cuda" and not model.config.goal_conditioned:
            if ops.backends()["sample_next"]["cuda"] == "CUDA":
                self._graphs = PlanGraphs(self.model, discretizer, config, self.rng, objective=self.objective)
            else:
                warnings.warn("CUDA graphs need tt._C's CUDA kernels (not built): planning eagerly", stacklevel=2)
        self.reset()
        if goal is not None:
            self.set_goal(goal)

    @classmethod
    def load(cls, run_dir: str, device: str | torch.device | None = None, seed: int | None = None,
             goal: np.ndarray | None = None, critic: str | None = None, **overrides) -> Planner:
        """A planner for a trained run directory; keyword arguments override `PlanConfig` fields.
        `device` as in training: "auto" (the default) is CUDA where there is one, else the CPU.
        `goal` as in the constructor (a goal-conditioned run). `critic`: a critic directory (`tt
        train-critic`) that guides the return search in place of the value token (TT+Q)."""
        device = resolve_device(device or "auto")
        return cls.from_run(open_run(run_dir, device), device, seed, goal, critic, **overrides)

    @classmethod
    def from_run(cls, run: Run, device: str | torch.device | None = None, seed: int | None = None,
                 goal: np.ndarray | None = None, critic: str | None = None, **overrides) -> Planner:
        """`load` for a run already loaded (`tt.checkpoint.open_run`); the model moves to `device`."""
        device = resolve_device(device or "auto")
        config = replace(PlanConfig(), **overrides)
        objective = None if critic is None else critic_objective(critic, run, config, device)
        return cls(run.model, run.discretizer, config, device, seed, goal, objective)

    def check_env(self, env) -> None:
        """Refuse a Gymnasium environment (single or vector) whose observation or action size is not the
        model's: a ValueError that names both sizes."""
        check_env_sizes(env, self.O, self.A, "the model plans")

    def reset(self, n_envs: int | None = None) -> None:
        """Forget every environment's context and plan."""
        self._n = n_envs
        self._context: list[list[np.ndarray]] = [[] for _ in range(n_envs or 0)]
        self._plans: list[Plan | None] = [None] * (n_envs or 0)
        self._age = [0] * (n_envs or 0)
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def reseed(self, seed: int, offset: int = 0) -> None:
        """Draw from Philox stream `seed` at `offset` from now on (the state is set in place: captured
        CUDA graphs read it)."""
        self.rng.state.copy_(torch.tensor([seed, offset]))

    def set_goal(self, goal: np.ndarray, env: int | None = None) -> None:
        """The goal observation `[O]` to plan towards: of environment `env`, or of every environment
        (`env=None`; `[n, O]`: one per environment, in order). Plans made after this use it."""
        if not self.model.config.goal_conditioned:
            raise ValueError("set_goal: this model is not goal-conditioned (trained without --goal-conditioned)")
        goal = np.asarray(goal, dtype=np.float64)
        if goal.ndim not in (1, 2) or goal.shape[-1] != self.O or (goal.ndim == 2 and env is not None):
            raise ValueError(f"a goal is an observation [{self.O}] (or [n, {self.O}], one per environment), "
                             f"got shape {tuple(goal.shape)}")
        if not np.isfinite(goal).all():
            raise ValueError("the goal contains NaN or infinite values")
        if env is not None:
            if not 0 <= env < (self._n if self._n is not None else env + 1):
                raise ValueError(f"set_goal: environment {env} is not one of the {self._n} tracked")
            self._goals[env] = goal
        elif goal.ndim == 2:
            if self._n is not None and len(goal) != self._n:
                raise ValueError(f"set_goal: {len(goal)} goals for {self._n} environments")
            self._goals = dict(enumerate(goal))
        else:
            self._default_goal, self._goals = goal, {}

    def _goal_tokens(self, envs: list[int]) -> torch.Tensor | None:
        """The goals of environments `envs` as observation tokens `[len(envs), O]` (None without a goal model)."""
        if not self.model.config.goal_conditioned:
            return None
        goals = [self._goals.get(i, self._default_goal) for i in envs]
        missing = [i for i, g in zip(envs, goals) if g is None]
        if missing:
            raise ValueError(f"the model is goal-conditioned but environment(s) {missing} have no goal: give "
                             "Planner(..., goal=g) or call planner.set_goal(g, env)")
        return torch.from_numpy(self.discretizer.discretize(np.stack(goals), columns=slice(0, self.O)))

    @property
    def current_plans(self) -> list[Plan | None]:
        """Each environment's plan in use (None before its first act or after done)."""
        return list(self._plans)

    # ------------------------------------------------------------------ the control loop

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions for observation(s) `[O]` or `[n, O]`: the first action of each plan."""
        obs, single = self._check_obs(obs)
        if self._pending is not None:
            raise RuntimeError("act() called twice without observe(): report the step's reward and done first")
        need = [i for i in range(len(obs)) if self._plans[i] is None or self._age[i] % self.config.plan_freq == 0
                or self._age[i] >= self.config.horizon]
        if need:
            for i, plan in zip(need, self._plan(obs[need], need)):
                self._plans[i], self._age[i] = plan, 0
        actions = np.stack([self._action(self._plans[i].tokens[self._age[i]]) for i in range(len(obs))])
        self._pending = (obs, actions)
        return actions[0] if single else actions

    def observe(self, reward, done) -> None:
        """Complete the step begun by `act`: reward(s) from the environment, done = terminated or truncated."""
        if self._pending is None:
            raise RuntimeError("observe() called without a preceding act()")
        obs, actions = self._pending
        reward = np.broadcast_to(np.asarray(reward, dtype=np.float64), (len(obs),))
        done = np.broadcast_to(np.asarray(done, dtype=bool), (len(obs),))
        if not np.isfinite(reward).all():
            raise ValueError(f"non-finite reward {reward}")
        C = self.config.max_context_transitions or self.model.config.n_transitions  # None: what the model holds
        placeholder = self.discretizer.n_bins - 1  # the value slot of a context transition is never attended
        for i in range(len(obs)):
            if done[i]:
                self._context[i], self._plans[i], self._age[i] = [], None, 0
                continue
            transition = np.concatenate([obs[i], actions[i], [reward[i], 0.0]])
            tokens = self.discretizer.discretize(transition)
            tokens[-1] = placeholder
            self._context[i] = (self._context[i] + [tokens])[-C:]
            self._age[i] += 1
        self._pending = None

    def plan(self, obs: np.ndarray) -> Plan | list[Plan]:
        """Plan(s) from the current context and `obs`, without acting."""
        obs, single = self._check_obs(obs)
        plans = self._plan(obs, list(range(len(obs))))
        return plans[0] if single else plans

    # ------------------------------------------------------------------ internals

    def _check_obs(self, obs) -> tuple[np.ndarray, bool]:
        obs, single = check_observations(obs, self.O)
        if self._n is None:
            self.reset(len(obs))
        elif len(obs) != self._n:
            raise ValueError(f"planner tracks {self._n} environments, got {len(obs)} observations; call reset()")
        return obs, single

    def check_memory(self, n_envs: int) -> None:
        """Refuse, before any plan, planning `n_envs` environments at once where it cannot fit in memory."""
        check_memory(self.model, self.config, n_envs, self.objective)

    def _plan(self, obs: np.ndarray, envs: list[int]) -> list[Plan]:
        obs_tokens = self.discretizer.discretize(obs, columns=slice(0, self.O))
        prefixes = [torch.from_numpy(np.concatenate(self._context[i] + [obs_tokens[k]])) for k, i in enumerate(envs)]
        config = self.config
        prefix = pad_prefixes(prefixes, self.T)
        rows = search_rows(config, len(envs), self.objective)
        length = self.model.config.block_size
        if self._cache is None or self._cache.max_rows < rows:
            check_memory(self.model, config, len(envs), self.objective)
            self._cache = self.model.setup_cache(rows, length)
        if self._graphs is not None:
            result = self._graphs.plan(prefix, self._cache)
        else:
            result = beam_plan(self.model, prefix, self.discretizer, config, self.rng, self._cache,
                               self._goal_tokens(envs), self.objective)
        self.stats["plans"] += len(envs)
        tokens = result.tokens.view(len(envs), config.horizon, self.T).cpu().numpy()
        return [Plan(t, self.discretizer.reconstruct(t), float(s)) for t, s in zip(tokens, result.score.tolist())]

    def _action(self, transition_tokens: np.ndarray) -> np.ndarray:
        """The action of a planned transition; a stop token there is read as the last bin, as the
        authors' reconstruction clips it (counted in `stats`)."""
        tokens = transition_tokens[self.O : self.O + self.A]
        stop = tokens == self.discretizer.stop_token
        if stop.any():
            self.stats["stop_tokens_in_actions"] += int(stop.sum())
            if self.stats["stop_tokens_in_actions"] == int(stop.sum()):
                warnings.warn("the plan's action holds a stop token (the model predicts the episode's end); "
                              "using the last bin, as the authors' reconstruction does", stacklevel=3)
            tokens = np.where(stop, self.discretizer.n_bins - 1, tokens)
        return self.discretizer.reconstruct(tokens, columns=slice(self.O, self.O + self.A))
