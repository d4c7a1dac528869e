"""`tt train-critic`: Implicit Q-Learning on a data set's transitions, with TorchRL's `IQLLoss`.

TorchRL's loss (twin Q towards r + discount * V(s'), V as an expectile of the target Q's minimum,
advantage-weighted policy) and its `SoftUpdate` of the target run on tt's networks (`tt.critic`);
the directory is checkpointed as a run is (`tt.checkpoint.save_critic`), resumes at the same step with
the same batches, and shows progress. Rewards are shifted and scaled as IQL's paper does per domain
(`critic_defaults`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tt.checkpoint import load_critic, load_trainer_state, save_critic
from tt.config import CriticConfig
from tt.critic import Critic, CriticShape, GaussianPolicy, mlp
from tt.data import DatasetDamagedError, load_dataset
from tt.device import resolve_device
from tt.goal_data import flat_observations, prepends_position
from tt.io import append_line, plot_losses, read_jsonl, write_jsonl
from tt.progress import progress as progress_bar


@dataclass
class Transitions:
    """A data set's transitions: (s, a, r, s', terminated), rows aligned; actions in the action space's units."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    episode_returns: np.ndarray  # [E] undiscounted, for the reward scale
    action_low: np.ndarray
    action_high: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


def read_transitions(dataset) -> Transitions:
    """Every step of a Minari data set as a transition, s' the observation after it; a goal data set's
    observations as tt reads them (`tt.goal_data.flat_observations`: no goal, as D4RL's maze2d and
    AntMaze observations)."""
    obs, act, rew, nxt, term, returns = [], [], [], [], [], []
    prepend = None
    try:
        for episode in dataset.iterate_episodes():
            n = len(episode.rewards)
            o = episode.observations
            if isinstance(o, dict):
                prepend = prepends_position(o) if prepend is None else prepend  # decided by the first episode
                o = flat_observations(o, prepend)
            o = np.asarray(o)
            obs.append(o[:n])
            nxt.append(o[1 : n + 1])
            act.append(np.asarray(episode.actions)[:n])
            rew.append(np.asarray(episode.rewards, dtype=np.float64))
            term.append(np.asarray(episode.terminations, dtype=bool)[:n])
            returns.append(rew[-1].sum())
    except (OSError, RuntimeError, KeyError) as e:
        raise DatasetDamagedError(f"data set {dataset.spec.dataset_id}: an episode cannot be read ({e})") from e
    space = dataset.action_space
    return Transitions(np.concatenate(obs).astype(np.float32), np.concatenate(act).astype(np.float32),
                       np.concatenate(rew), np.concatenate(nxt).astype(np.float32), np.concatenate(term),
                       np.asarray(returns), np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))


def is_antmaze(dataset_id: str) -> bool:
    return "antmaze" in dataset_id.lower()


def critic_defaults(dataset_id: str, transitions: Transitions) -> dict:
    """IQL's published per-domain settings for the config fields left None: AntMaze expectile 0.9,
    temperature 10, rewards - 1; elsewhere expectile 0.7, temperature 3, rewards x 1000 / (max - min
    episode return)."""
    if is_antmaze(dataset_id):
        return dict(expectile=0.9, temperature=10.0, reward_shift=-1.0, reward_scale=1.0)
    spread = float(transitions.episode_returns.max() - transitions.episode_returns.min())
    return dict(expectile=0.7, temperature=3.0, reward_shift=0.0, reward_scale=1000.0 / spread if spread > 0 else 1.0)


class _OneQ(nn.Module):
    """One of the twin Q networks as TorchRL calls it (it stacks two and maps over them)."""

    def __init__(self, shape: CriticShape):
        super().__init__()
        self.net = mlp(shape.observation_dim + shape.action_dim, shape.hidden, shape.layers, 1)

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([observation, action], -1))


def iql_loss(shape: CriticShape, cfg: CriticConfig):
    """TorchRL's IQLLoss over tt's networks (twin Q, V, Gaussian policy), the target updated by SoftUpdate."""
    from tensordict.nn import TensorDictModule
    from torchrl.modules import ProbabilisticActor
    from torchrl.modules.distributions import IndependentNormal
    from torchrl.objectives import IQLLoss, SoftUpdate, ValueEstimators

    O, A = shape.observation_dim, shape.action_dim
    policy = TensorDictModule(GaussianPolicy(O, A, shape.hidden, shape.layers), ["observation"], ["loc", "scale"])
    actor = ProbabilisticActor(policy, in_keys=["loc", "scale"], distribution_class=IndependentNormal)
    q = TensorDictModule(_OneQ(shape), ["observation", "action"], ["state_action_value"])
    v = TensorDictModule(mlp(O, shape.hidden, shape.layers, 1), ["observation"], ["state_value"])
    loss = IQLLoss(actor, q, v, num_qvalue_nets=2, loss_function="l2", temperature=cfg.temperature,
                   expectile=cfg.expectile)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=cfg.discount)
    return loss, SoftUpdate(loss, tau=cfg.tau)


# where each network of the loss lives in tt.critic.Critic's state dict
_PREFIXES = {"qvalue_network_params.module.net.": "q.", "target_qvalue_network_params.module.net.": "target_q.",
             "value_network_params.module.": "v.", "actor_network_params.module.0.module.": "policy."}


def critic_weights(loss_state: dict) -> dict:
    """The IQLLoss's state dict as `tt.critic.Critic`'s (twin Q layer `2i` of the MLP -> weights.i)."""
    weights = {}
    for key, value in loss_state.items():
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            continue
        rest = key[len(prefix):]
        if _PREFIXES[prefix] in ("q.", "target_q."):
            layer, kind = rest.split(".")
            rest = f"{ {'weight': 'weights', 'bias': 'biases'}[kind]}.{int(layer) // 2}"
        weights[_PREFIXES[prefix] + rest] = value
    return weights


def batch_of(data: dict[str, torch.Tensor], index: torch.Tensor):
    """The transitions `index` as the TensorDict IQLLoss reads (batch size given: with one observation and
    one action number every input is `[B, 1]`, which TorchRL would take for the batch)."""
    from tensordict import TensorDict

    rows = {k: v[index] for k, v in data.items()}
    done = rows["terminal"][:, None]
    return TensorDict({"observation": rows["observation"], "action": rows["action"],
                       "next": {"observation": rows["next_observation"], "reward": rows["reward"][:, None],
                                "done": done, "terminated": done}}, batch_size=[len(index)])


def iql_losses(loss, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy, Q, V) losses of a batch (`batch_of`)."""
    out = loss(batch)
    return out["loss_actor"], out["loss_qvalue"], out["loss_value"]


def train_critic(cfg: CriticConfig, out: str, resume: bool = False, progress: bool = True,
                 transitions: Transitions | None = None, dataset_id: str | None = None) -> Critic:
    """Train IQL on `cfg.dataset` into directory `out` (or on `transitions`, named `dataset_id`); returns
    the critic. `resume`: continue the critic in `out` (same options). Torch's global random state is the
    caller's (training draws inside `torch.random.fork_rng`)."""
    device = resolve_device(cfg.device)
    if transitions is None:
        dataset = load_dataset(cfg.dataset)
        transitions, dataset_id = read_transitions(dataset), dataset.spec.dataset_id
    dataset_id = dataset_id or cfg.dataset
    filled = {k: v for k, v in critic_defaults(dataset_id, transitions).items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **filled)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train(cfg, out, resume, progress, device, transitions, dataset_id)


def _train(cfg: CriticConfig, out: str, resume: bool, progress: bool, device: torch.device,
           transitions: Transitions, dataset_id: str) -> Critic:
    shape = CriticShape(transitions.observations.shape[1], transitions.actions.shape[1], cfg.hidden, cfg.layers,
                        dataset_id)
    low, high = torch.from_numpy(transitions.action_low), torch.from_numpy(transitions.action_high)
    scale = lambda a: (2.0 * (torch.from_numpy(a) - low) / (high - low) - 1.0).clamp(-1.0, 1.0)
    data = {"observation": torch.from_numpy(transitions.observations),
            "next_observation": torch.from_numpy(transitions.next_observations), "action": scale(transitions.actions),
            "reward": torch.from_numpy(transitions.rewards * cfg.reward_scale + cfg.reward_shift).float(),
            "terminal": torch.from_numpy(transitions.terminals)}
    data = {k: v.to(device) for k, v in data.items()}
    torch.manual_seed(cfg.seed)
    loss, target_update = iql_loss(shape, cfg)
    loss.to(device)
    groups = [{"params": list(loss.actor_network_params.values(True, True)), "name": "policy"},
              {"params": list(loss.qvalue_network_params.values(True, True))},
              {"params": list(loss.value_network_params.values(True, True))}]
    optimizer = torch.optim.Adam(groups, lr=cfg.learning_rate)
    batches = torch.Generator().manual_seed(cfg.seed + 1)
    config = {"train_critic": dataclasses.asdict(cfg),
              "data": {"dataset_id": dataset_id, "transitions": len(transitions)}}
    metrics_path = os.path.join(out, "metrics.jsonl")
    step, elapsed_before = 0, 0.0
    if resume:
        check_critic_resume(out, cfg)
        state = load_trainer_state(out)
        loss.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        batches.set_state(state["batch_rng"])
        step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        write_jsonl(metrics_path, [r for r in read_jsonl(metrics_path) if r["step"] <= step])
    else:
        os.makedirs(out, exist_ok=True)
        write_jsonl(metrics_path, [])

    def checkpoint() -> None:
        critic = Critic(shape)
        critic.load_state_dict({**critic_weights(loss.state_dict()), "action_low": low, "action_high": high})
        state = {"loss": loss.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                 "batch_rng": batches.get_state(), "step": torch.tensor(step),
                 "elapsed_s": torch.tensor(time.time() - started, dtype=torch.float64)}
        save_critic(out, critic, config, step, state)
        plot_losses(metrics_path, os.path.join(out, "loss.png"), ("loss_q", "loss_v", "loss_policy"), "IQL losses")

    started = time.time() - elapsed_before
    bar = progress_bar(cfg.max_steps, "training the critic", progress, initial=step)
    sums, summed = torch.zeros(3, device=device), 0  # losses since the last record, read back when logged
    while step < cfg.max_steps:
        index = torch.randint(len(transitions), (cfg.batch_size,), generator=batches).to(device)
        loss_policy, loss_q, loss_v = iql_losses(loss, batch_of(data, index))
        optimizer.param_groups[0]["lr"] = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * step / cfg.max_steps))
        optimizer.zero_grad(set_to_none=True)
        (loss_policy + loss_q + loss_v).backward()
        optimizer.step()
        target_update.step()
        sums += torch.stack([loss_q, loss_v, loss_policy]).detach()
        step, summed = step + 1, summed + 1
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            q, v, p = (sums / summed).tolist()
            append_line(metrics_path, json.dumps({"step": step, "loss_q": q, "loss_v": v, "loss_policy": p,
                                                  "elapsed_s": time.time() - started}))
            bar.set_postfix(loss_q=f"{q:.3g}", loss_v=f"{v:.3g}", refresh=False)
            sums, summed = sums.zero_(), 0
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            checkpoint()
    bar.close()
    return load_critic(out, device)[0]


# Options a resumed critic may change: where it runs and how often it reports (not --steps: the policy's
# learning-rate schedule is sized by it).
CRITIC_RESUMABLE = {"device", "save_every", "log_every"}


def check_critic_resume(out: str, cfg: CriticConfig) -> None:
    """The critic in `out` was trained with `cfg` but for CRITIC_RESUMABLE: a mismatch is a ValueError."""
    from tt.tasks import resolve_dataset_id

    _, stored, _ = load_critic(out)
    given = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for name, was in stored.get("train_critic", {}).items():
        now = given.get(name)
        if name == "dataset":
            was, now = resolve_dataset_id(was), resolve_dataset_id(now)
        if name not in CRITIC_RESUMABLE and now != was:
            raise ValueError(f"--resume: the critic in {out} was trained with {name}={was!r}, the options give "
                             f"{now!r}: give the options it was trained with, or a new --out")
