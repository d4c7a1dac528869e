"""Planning and prediction settings, below everything that reads them (the search, the reference oracle,
the CLI, whose flags are derived from their fields)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields

OBJECTIVES = ("return", "likelihood")  # the built-in objectives a PlanConfig names (tt.search.objectives)
WINDOWS = ("exact", "cached")  # how a search conditions each token (DESIGN, "The window rule")
GOAL_MODES = ("final", "future")  # a goal-conditioned model's hindsight goals
DISCRETIZERS = ("quantile", "uniform")
PRECISIONS = ("auto", "fp32", "bf16")  # a training step's arithmetic (tt.train.precision_context)

Filter = tuple[int | None, float | None]  # (top_k, cdf) of one token kind; None: that filter is off


def setting(default, kind: str | tuple[str, ...], help: str, flag: str | None = None):
    """A field of a settings dataclass with what the command line needs to offer it as a flag: its kind
    ("count" >= 1, "step" >= 0, "integer", "positive", "finite", "fraction" in [0, 1], "... or none",
    "switch" (on by default), "flag" (off by default), "text", or a tuple of choices), its help and its flag
    (default: the field's name). The command-line flags are derived from these (`tt.cli`), in one place."""
    return field(default=default, metadata={"kind": kind, "help": help, "flag": flag})


def flag(name: str) -> str:
    """The command-line flag of a settings field's name: `--beam-width` for `beam_width`."""
    return "--" + name.replace("_", "-")


def flag_of(settings: type, name: str) -> str | None:
    """The flag that sets field `name` of a settings dataclass (None: no flag sets it)."""
    found = next((f for f in fields(settings) if f.name == name), None)
    if found is None or "kind" not in found.metadata:
        return None
    return found.metadata["flag"] or flag(name)


@dataclass(frozen=True)
class PlanConfig:
    """Planning settings; names and defaults as the authors' flags."""

    horizon: int = setting(15, "count", "transitions planned")
    beam_width: int = setting(128, "count", "beams kept per plan")
    n_expand: int = setting(2, "count", "copies of each beam expanded")
    max_context_transitions: int | None = setting(5, "count or none",
                                                  "transitions a prediction conditions on (none: the block)")
    k_obs: int | None = setting(1, "count or none", "top-k of observation tokens (none: off)")
    k_act: int | None = setting(None, "count or none", "top-k of action tokens (none: off)")
    k_rew: int | None = setting(1, "count or none", "top-k of reward and value tokens (none: off)")
    cdf_obs: float | None = setting(None, "fraction or none", "cdf filter of observation tokens (none: off; 1: off)")
    cdf_act: float | None = setting(0.6, "fraction or none", "cdf filter of action tokens (none: off; 1: off)")
    cdf_rew: float | None = setting(None, "fraction or none",
                                    "cdf filter of reward and value tokens (none: off; 1: off)")
    temperature: float = setting(1.0, "positive", "logits are divided by it")
    discount: float = setting(0.99, "finite", "discount of the planned rewards")
    plan_freq: int = setting(1, "count", "plan every this many steps")
    window: str = setting("exact", WINDOWS, "exact (the authors' conditioning) | cached (cheaper)")
    objective: str = setting("return", OBJECTIVES,
                             "return (reward plus value: offline RL) | likelihood (the likeliest sequence: imitation)")
    cuda_graphs: bool = setting(True, "switch", "on CUDA, tt.Planner replays each plan's search as a CUDA graph")

    def __post_init__(self):
        for name in ("horizon", "beam_width", "n_expand", "plan_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_context_transitions", "k_obs", "k_act", "k_rew"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        for name in ("cdf_obs", "cdf_act", "cdf_rew"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {getattr(self, name)}")
        if not math.isfinite(self.discount):
            raise ValueError(f"discount must be finite, got {self.discount}")
        if self.max_context_transitions == 1 and self.horizon > 1:
            raise ValueError("max_context_transitions=1 leaves nothing to condition the next observation on "
                             "(the authors' crop empties the window): use >= 2, or horizon=1")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be 'exact' or 'cached', got {self.window!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be 'return' or 'likelihood', got {self.objective!r}")
        if not 0 < self.temperature < math.inf:
            raise ValueError(f"temperature must be > 0 and finite, got {self.temperature}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def command_flags(overrides: dict) -> list[str]:
        """PlanConfig fields as the flags that set them (`tt eval`, `tt score`): a command that reproduces them."""
        names = {f.name for f in fields(PlanConfig)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"not PlanConfig fields: {', '.join(sorted(unknown))}")
        args = []
        for name, value in overrides.items():
            if name == "cuda_graphs":
                args += [] if value else ["--no-cuda-graphs"]
            else:
                args += [flag(name), "none" if value is None else str(value)]
        return args

    def filters(self, observation_dim: int, action_dim: int) -> list[Filter]:
        """Each token kind's (top_k, cdf), by offset in a transition: observation, action, reward, value."""
        return [(self.k_obs, self.cdf_obs)] * observation_dim + [(self.k_act, self.cdf_act)] * action_dim + \
            [(self.k_rew, self.cdf_rew)] * 2


@dataclass(frozen=True)
class PredictConfig:
    """What `predict` samples. Filters (top-k, cdf) are off by default: predictions are the model's own
    distribution; the planner's filters are options."""

    episodes: int = setting(10, "count", "held-out episodes to predict")
    horizon: int = setting(100, "count", "steps predicted")
    samples: int = setting(32, "count", "futures sampled per episode")
    context: int | None = setting(None, "count or none", "previous transitions a prediction conditions on "
                                  "(none: all the model holds, K-1; 1: Markovian)")
    start: int | None = setting(None, "step or none", "the step predictions start from (none: --context)")
    seed: int = setting(0, "integer", "the samples' seed")
    window: str = setting("exact", WINDOWS, "exact (the authors' conditioning) | cached (cheaper)")
    temperature: float = setting(1.0, "positive", "logits are divided by it")
    k_obs: int | None = setting(None, "count or none", "top-k of observation tokens (none: off)")
    cdf_obs: float | None = setting(None, "fraction or none", "cdf filter of observation tokens (none: off)")
    k_rew: int | None = setting(None, "count or none", "top-k of reward and value tokens (none: off)")
    cdf_rew: float | None = setting(None, "fraction or none", "cdf filter of reward and value tokens (none: off)")

    def __post_init__(self):
        for name in ("episodes", "horizon", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context is not None and self.context < 1:
            raise ValueError(f"context must be >= 1 transition (the Markovian model conditions on one), got "
                             f"{self.context}")
        if self.start is not None and self.start < 0:
            raise ValueError(f"start must be >= 0, got {self.start}")
        self.plan_config(2)  # the filters, window and temperature as the planner checks them

    def plan_config(self, context: int) -> PlanConfig:
        """The planner's settings for sampling with `context` previous transitions (its window C = context + 1)."""
        return PlanConfig(horizon=1, beam_width=self.samples, n_expand=1, max_context_transitions=context + 1,
                          k_obs=self.k_obs, cdf_obs=self.cdf_obs, k_act=None, cdf_act=None, k_rew=self.k_rew,
                          cdf_rew=self.cdf_rew, temperature=self.temperature, window=self.window, cuda_graphs=False)


@dataclass
class TrainConfig:
    """Defaults as published; `epochs=None` scales them as 50 * 1e6 / number of windows."""

    dataset: str = "pendulum-medium"
    n_bins: int = 100
    discretizer: str = setting("quantile", DISCRETIZERS, "bins: quantile (the authors') or uniform (for data piled "
                               "on bounds, such as saturated actions, which quantile bins merge with their "
                               "neighbours)")
    action_discretizer: str | None = setting(None, DISCRETIZERS, "the actions' bins, when not --discretizer's "
                                             "(uniform for saturated actions, quantile for the rest)")
    discount: float = 0.99
    termination_penalty: float | None = -100.0
    n_transitions: int = setting(10, "count", "transitions per training window (K; 2: the Markovian model of tt "
                                 "predict --context 1)")
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    action_weight: float = 5.0
    batch_size: int = setting(256, "count", "windows per optimizer step")
    learning_rate: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    epochs: float | None = setting(None, "positive", "passes over the data the schedule is sized by (none: 50 * 1e6 "
                                   "/ windows)")
    decay_epochs: float = 20.0  # cosine reaches 10% after this many epochs of tokens
    budget_steps: int | None = setting(None, "count", "size the learning-rate schedule by steps instead of epochs: "
                                       "warmup over 5%, then cosine to 10% at this step (the cpu preset's "
                                       "16,000); give it with --steps below the preset's schedule, or the rate "
                                       "never decays")
    warmup_fraction: float = 0.05  # of budget_steps (the published schedule warms up over one epoch)
    max_steps: int | None = setting(None, "count", "stop after this many optimizer steps, whatever the schedule "
                                    "says", flag="--steps")
    save_every: int = setting(1000, "count", "optimizer steps between checkpoints")
    log_every: int = 20
    seed: int = setting(42, "integer", "the run's seed")
    device: str = setting("auto", "text", "auto | cpu | cuda | cuda:N")
    precision: str = setting("auto", PRECISIONS, "a step's arithmetic: fp32, bf16 (autocast), or auto (bf16 on "
                             "CUDA and on CPUs with AVX512-BF16 or AMX, fp32 elsewhere)")
    compile: bool = setting(False, "flag", "torch.compile the training step (Inductor; falls back to eager with a "
                            "warning where it cannot compile); off by default: slower on the CPUs measured")
    holdout_episodes: int = setting(0, "step", "leave the data set's last episodes out of training (tt predict "
                                    "measures on them)")
    hidden_obs_fraction: float = setting(0.0, "fraction", "partial observability: hide each observation dimension "
                                         "with this probability (a fixed seeded mask, recorded in the run)")
    goal_conditioned: bool = setting(False, "flag", "a goal observation before every window (the authors' "
                                     "ConditionalGPT), trained with hindsight goals; plan towards goals with the "
                                     "likelihood objective")
    goal: str = setting("final", GOAL_MODES, "the hindsight goal: the episode's final observation (the authors') or "
                        "an observation drawn uniformly from the episode's future (needs --goal-conditioned)")

    def __post_init__(self):
        for name in ("n_bins", "n_transitions", "n_layer", "n_head", "n_embd", "batch_size", "budget_steps",
                     "max_steps", "save_every", "log_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("epochs", "decay_epochs", "learning_rate"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.holdout_episodes < 0:
            raise ValueError(f"holdout_episodes must be >= 0, got {self.holdout_episodes}")
        if not 0.0 <= self.hidden_obs_fraction < 1.0:
            raise ValueError(f"hidden_obs_fraction must be in [0, 1), got {self.hidden_obs_fraction}")
        if self.goal not in GOAL_MODES:
            raise ValueError(f"goal must be one of {', '.join(GOAL_MODES)}, got {self.goal!r}")
        if self.goal_conditioned and (self.holdout_episodes or self.hidden_obs_fraction):
            raise ValueError("goal-conditioned training takes every episode with every observation dimension: "
                             "no --holdout-episodes or --hidden-obs-fraction")


PRESETS: dict[str, dict] = {
    "published": {},
    # A few minutes on 2 CPU cores for the built-in data sets.
    "small": dict(n_layer=3, n_head=4, n_embd=96, batch_size=64, epochs=8, decay_epochs=8, save_every=500),
    # About an hour on 2 CPU cores for the locomotion tasks: the published model and context, batch
    # 32 and a fixed number of steps (0.22 s a step on a Zen 4 with bf16 math; 10,000 steps before the
    # training step was made faster, issue #28; step timings: benchmarks/RESULTS.md).
    "cpu": dict(batch_size=32, budget_steps=16_000, save_every=500),
}


def make_config(preset: str = "published", **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
    return TrainConfig(**{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class CriticConfig:
    """Implicit Q-Learning (Kostrikov et al. 2021) as published: twin Q, expectile regression for V, a
    Polyak-averaged target, advantage-weighted policy, 256 x 2 MLPs. `None` fields take the data set's
    published values (`critic_defaults`): AntMaze expectile 0.9, temperature 10 and reward - 1;
    elsewhere expectile 0.7, temperature 3 and rewards scaled by 1000 / (max - min episode return)."""

    dataset: str = "pendulum-medium"
    expectile: float | None = setting(None, "fraction or none", "V's expectile of Q (none: 0.9 on AntMaze, 0.7 "
                                      "elsewhere)")
    temperature: float | None = setting(None, "positive or none", "the policy's inverse temperature (beta; none: "
                                        "10 on AntMaze, 3 elsewhere)")
    reward_shift: float | None = setting(None, "finite or none", "added to every reward (none: -1 on AntMaze, 0 "
                                         "elsewhere)")
    reward_scale: float | None = setting(None, "positive or none", "rewards multiplied by it before the shift "
                                         "(none: 1 on AntMaze, 1000 / (max - min episode return) elsewhere)")
    discount: float = setting(0.99, "fraction", "discount of the Q targets")
    tau: float = 0.005  # Polyak averaging of the target Q
    hidden: int = setting(256, "count", "units per hidden layer")
    layers: int = setting(2, "count", "hidden layers")
    learning_rate: float = 3e-4
    batch_size: int = setting(256, "count", "transitions per optimizer step")
    max_steps: int = setting(1_000_000, "count", "optimizer steps (the published 1M)", flag="--steps")
    save_every: int = setting(10_000, "count", "optimizer steps between checkpoints")
    log_every: int = 1000
    seed: int = setting(0, "integer", "the critic's seed")
    device: str = setting("auto", "text", "auto | cpu | cuda | cuda:N")

    def __post_init__(self):
        for name in ("hidden", "layers", "batch_size", "max_steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.expectile is not None and not 0.0 < self.expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {self.expectile}")
        if not 0.0 <= self.discount <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"discount must be in [0, 1] and tau in (0, 1], got {self.discount}, {self.tau}")


@dataclass
class DynamicsConfig:
    """The ensemble and its training; defaults after PETS and MBPO, with a step budget for the CPU."""

    dataset: str = "pendulum-medium"
    members: int = setting(5, "count", "networks in the ensemble")
    hidden: int = setting(200, "count", "units per hidden layer")
    layers: int = setting(4, "count", "hidden layers")
    learning_rate: float = 1e-3
    weight_decay: float = 5e-5  # L2 on the weight matrices (PETS: 2.5e-5 to 1e-4 by layer)
    batch_size: int = setting(256, "count", "transitions per optimizer step")
    validation_fraction: float = 0.1  # of the training transitions, held out for early stopping ...
    max_validation: int = 5000  # ... at most this many
    max_steps: int = setting(20_000, "count", "at most this many optimizer steps", flag="--steps")
    eval_every: int = setting(1000, "count", "steps between held-out evaluations")
    patience: int = setting(5, "count", "evaluations without a member improving by min_delta before training stops")
    min_delta: float = 0.01  # nats per dimension
    holdout_episodes: int = setting(0, "step", "the data set's last episodes left out, as the run's")
    hidden_obs_fraction: float = setting(0.0, "fraction", "partial observability, as the run's: each observation "
                                         "dimension hidden with this probability (a fixed seeded mask)")
    seed: int = setting(0, "integer", "the ensemble's seed")
    device: str = setting("auto", "text", "auto | cpu | cuda | cuda:N")

    def __post_init__(self):
        for name in ("members", "hidden", "layers", "batch_size", "max_validation", "max_steps", "eval_every",
                     "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if self.holdout_episodes < 0:
            raise ValueError(f"holdout_episodes must be >= 0, got {self.holdout_episodes}")
        if not 0.0 <= self.hidden_obs_fraction < 1.0:
            raise ValueError(f"hidden_obs_fraction must be in [0, 1), got {self.hidden_obs_fraction}")
