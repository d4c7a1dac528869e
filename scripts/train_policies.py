#!/usr/bin/env python
"""Train the behaviour policies of the built-in locomotion tasks with Soft Actor-Critic.

    pip install -e ".[policies]"        # stable-baselines3: needed here only, never at run time
    python scripts/train_policies.py train hopper --steps 300000 --out runs/policies
    python scripts/train_policies.py ship hopper --out runs/policies   # -> tt/tasks/policies/
    python scripts/train_policies.py plot hopper --out runs/policies   # -> benchmarks/policies_hopper.png

`train` is seeded, writes the actor every `--checkpoint-every` steps (safetensors, evaluated
over 5 deterministic episodes into `evals.jsonl`) and the whole agent with its replay buffer every
`--resume-every` steps, atomically, so a killed run continues where it was with `train` again.
`ship` picks the policies tt ships from those checkpoints: `expert`, the best one reached;
`medium`, the last one at or below half the expert's return (D4RL's recipe: roughly a third to a
half of the expert); `replay-*`, evenly spaced checkpoints from the start of training up to the
medium one (the medium-replay data set stands in for D4RL's replay buffer with them). Each
shipped policy gets a JSON card with its return measured over 20 episodes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tt.io import atomic_write, write_json  # noqa: E402
from tt.tasks.actor import Actor, load_actor, save_actor  # noqa: E402
from tt.tasks.locomotion import ENV_IDS, POLICY_DIR, make_env, random_policy  # noqa: E402
from tt.tasks.rollouts import collect_episodes, returns_of  # noqa: E402

SHIP_DIR = POLICY_DIR


def evaluate(actor: Actor, env_id: str, episodes: int, seed: int, deterministic: bool) -> np.ndarray:
    """Returns of `episodes` episodes (sampled actions draw from per-episode generators)."""
    runs = collect_episodes(lambda: make_env(env_id), actor.batch_policy(deterministic), seed, episodes=episodes,
                            n_envs=min(episodes, 10), progress=False)
    return returns_of(runs)


def train(args) -> None:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    env_id = ENV_IDS[args.task]
    work = os.path.join(args.out, args.task)
    os.makedirs(os.path.join(work, "actors"), exist_ok=True)
    agent_path, buffer_path = os.path.join(work, "agent.zip"), os.path.join(work, "replay_buffer.pkl")
    log_path, meta_path = os.path.join(work, "evals.jsonl"), os.path.join(work, "meta.json")
    env = gym.make(env_id)
    meta = {"task": args.task, "env_id": env_id, "seed": args.seed, "steps": args.steps, "wall_seconds": 0.0,
            "algorithm": "SAC (stable-baselines3, default hyper-parameters, learning_starts 10000)"}
    if os.path.exists(agent_path):  # resume: the agent, its replay buffer and the clock
        with open(meta_path) as f:
            meta = {**json.load(f), "steps": args.steps}  # the budget may be changed on resuming
        model = SAC.load(agent_path, env=env, device="cpu")
        model.load_replay_buffer(buffer_path)
        print(f"resumed {args.task} at step {model.num_timesteps}", flush=True)
    else:
        model = SAC("MlpPolicy", env, learning_starts=10_000, seed=args.seed, device="cpu", verbose=0)
    wall_before = meta["wall_seconds"]
    started = time.time()

    def save_agent() -> None:
        with atomic_write(buffer_path) as tmp:
            model.save_replay_buffer(tmp)
        with atomic_write(agent_path) as tmp:  # tmp ends in .zip, so SB3 writes it as named
            model.save(tmp)
        meta["wall_seconds"] = wall_before + time.time() - started
        write_json(meta_path, meta)

    class Checkpoints(BaseCallback):
        def _on_step(self) -> bool:
            step = self.model.num_timesteps
            if step % args.checkpoint_every == 0:
                actor = Actor.from_sb3(self.model)
                save_actor(os.path.join(work, "actors", f"step_{step:07d}.safetensors"), actor)
                returns = evaluate(actor, env_id, 5, seed=10_000, deterministic=True)
                wall = wall_before + time.time() - started
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "wall_seconds": round(wall, 1),
                                        "return_mean": float(returns.mean()),
                                        "return_std": float(returns.std())}) + "\n")
                print(f"{args.task} step {step}: return {returns.mean():.1f} +- {returns.std():.1f} "
                      f"({wall / 60:.1f} min)", flush=True)
            if step % args.resume_every == 0:
                save_agent()
            return True

    remaining = args.steps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=Checkpoints(), reset_num_timesteps=False,
                    progress_bar=False)
        save_agent()
    print(f"{args.task}: trained {model.num_timesteps} steps in {meta['wall_seconds'] / 60:.1f} min", flush=True)


def checkpoints_of(work: str) -> dict[int, str]:
    paths = glob.glob(os.path.join(work, "actors", "step_*.safetensors"))
    return {int(re.search(r"step_(\d+)", p).group(1)): p for p in paths}


def ship(args) -> None:
    env_id = ENV_IDS[args.task]
    work = os.path.join(args.out, args.task)
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(work, "evals.jsonl")) as f:
        log = {row["step"]: row for row in map(json.loads, f)}
    ckpts = checkpoints_of(work)
    steps = sorted(s for s in ckpts if s in log)
    # The expert is the best checkpoint by its 5-episode training evaluation, then measured anew.
    expert_step = max(steps, key=lambda s: log[s]["return_mean"])
    expert = load_actor(ckpts[expert_step])
    expert_returns = evaluate(expert, env_id, 20, seed=20_000, deterministic=False)
    target = args.medium_fraction * expert_returns.mean()
    random_returns = evaluate_random(env_id, 100)
    # medium: the last checkpoint before the expert whose sampled-action return is at most `target`
    medium_step, medium_returns = None, None
    for step in reversed([s for s in steps if s < expert_step]):
        if log[step]["return_mean"] > 1.3 * target:
            continue
        returns = evaluate(load_actor(ckpts[step]), env_id, 20, seed=20_000, deterministic=False)
        if returns.mean() <= target:
            medium_step, medium_returns = step, returns
            break
    if medium_step is None:
        raise SystemExit(f"no checkpoint of {args.task} reaches at most {target:.1f}")
    early = [s for s in steps if s <= medium_step]
    replay_steps = sorted({early[round(i * (len(early) - 1) / (args.replay - 1))] for i in range(args.replay)})
    common = {"task": args.task, "env_id": env_id, "seed": meta["seed"], "algorithm": meta["algorithm"],
              "training_budget_steps": meta["steps"], "trained_steps": max(steps),
              "training_wall_seconds": log[max(steps)]["wall_seconds"],
              "machine": args.machine, "reference_random_return": float(random_returns.mean()),
              "actions": "sampled from the squashed Gaussian (SAC's own exploration)", "eval_episodes": 20}
    os.makedirs(SHIP_DIR, exist_ok=True)
    shipped = {"expert": (expert_step, expert_returns), "medium": (medium_step, medium_returns)}
    for i, step in enumerate(replay_steps):
        shipped[f"replay-{i}"] = (step, None)
    for name, (step, returns) in shipped.items():
        actor = load_actor(ckpts[step])
        if returns is None:
            returns = evaluate(actor, env_id, 20, seed=20_000, deterministic=False)
        deterministic = evaluate(actor, env_id, 20, seed=20_000, deterministic=True)
        card = {**common, "policy": name, "training_steps": step,
                "wall_seconds_at_checkpoint": log[step]["wall_seconds"],
                "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                "deterministic_return_mean": float(deterministic.mean()),
                "deterministic_return_std": float(deterministic.std())}
        save_actor(os.path.join(SHIP_DIR, f"{args.task}-{name}.safetensors"), actor, card)
        print(f"{args.task}-{name}: step {step}, return {returns.mean():.1f} +- {returns.std():.1f}", flush=True)
    plot(args)


def plot(args) -> None:
    """The training curve (5-episode evaluations) with the shipped checkpoints marked, as a PNG."""
    from matplotlib.figure import Figure

    work = os.path.join(args.out, args.task)
    with open(os.path.join(work, "evals.jsonl")) as f:
        log = [json.loads(line) for line in f]
    steps = np.array([r["step"] for r in log])
    mean, std = np.array([r["return_mean"] for r in log]), np.array([r["return_std"] for r in log])
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    ax.plot(steps, mean, color="0.3", label="deterministic policy, 5 episodes")
    ax.fill_between(steps, mean - std, mean + std, color="0.3", alpha=0.2)
    for path in sorted(glob.glob(os.path.join(SHIP_DIR, f"{args.task}-*.json")), key=lambda p: "replay" not in p):
        with open(path) as f:
            card = json.load(f)
        kind = "medium-replay" if card["policy"].startswith("replay") else card["policy"]
        style = {"expert": ("tab:green", 8), "medium": ("tab:blue", 8)}.get(kind, ("tab:orange", 5))
        ax.errorbar(card["training_steps"], card["return_mean"], yerr=card["return_std"], fmt="o", color=style[0],
                    ms=style[1], label=f"{kind} (shipped; 20 episodes, sampled actions)", zorder=3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(f"SAC on {ENV_IDS[args.task]}, seed {args.seed}")
    fig.tight_layout()
    out = os.path.join(os.path.dirname(SHIP_DIR), "..", "..", "benchmarks", f"policies_{args.task}.png")
    with atomic_write(os.path.abspath(out)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def evaluate_random(env_id: str, episodes: int) -> np.ndarray:
    return returns_of(collect_episodes(lambda: make_env(env_id), random_policy(env_id), 30_000, episodes=episodes,
                                       n_envs=10, progress=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "ship", "plot"])
    parser.add_argument("task", choices=sorted(ENV_IDS))
    parser.add_argument("--out", default="runs/policies", help="work directory (checkpoints, logs)")
    parser.add_argument("--steps", type=int, default=300_000, help="training budget in environment steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--resume-every", type=int, default=50_000)
    parser.add_argument("--medium-fraction", type=float, default=0.5, help="medium <= this x expert return")
    parser.add_argument("--replay", type=int, default=5, help="checkpoints in the medium-replay mix")
    parser.add_argument("--machine", default="", help="written into the cards")
    args = parser.parse_args()
    {"train": train, "ship": ship, "plot": plot}[args.action](args)


if __name__ == "__main__":
    main()
