"""The `tt` command line: data, training, reference import, evaluation and the demo."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys

import numpy as np

from tt.config import CriticConfig, DynamicsConfig, PlanConfig, PredictConfig, TrainConfig, flag
from tt.destination import check_destination, destination, staging_beside
from tt.io import read_state_dict, swap_directory
from tt.memory import retain_freed_memory


def is_first_rank() -> bool:
    """The process that writes results: the only one, or torchrun's rank 0 (before its process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def cmd_data(args) -> None:
    import minari

    from tt.tasks import builtin_names, check_size, dataset_id_of, make_dataset

    if args.data_cmd == "list":
        local = set(minari.list_local_datasets())
        for name in builtin_names():
            mark = "made" if dataset_id_of(name) in local else "    "
            print(f"{name:28s} {dataset_id_of(name):34s} {mark}")
        for other in sorted(local - {dataset_id_of(n) for n in builtin_names()}):
            print(f"{'':28s} {other:34s} made")
        return
    check_size(args.name, args.episodes, args.steps)
    if not args.overwrite and dataset_id_of(args.name) in minari.list_local_datasets():
        raise ValueError(f"data set {dataset_id_of(args.name)} exists: give --overwrite to make it again (the old one "
                         "stays until the new one is complete)")
    dataset = make_dataset(args.name, episodes=args.episodes, steps=args.steps, seed=args.seed)
    print(f"made {dataset.spec.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps")


def cmd_train(args) -> None:
    """Train; under torchrun with DistributedDataParallel, the batch shared out over the processes."""
    from tt import distributed
    from tt.config import make_config
    from tt.train import train

    overrides = {**given(args, TrainConfig), "dataset": args.dataset}
    if "goal" in overrides and not overrides.get("goal_conditioned"):
        raise ValueError(f"--goal {overrides['goal']} chooses a goal-conditioned model's hindsight goals: add "
                         "--goal-conditioned (or leave --goal out)")
    cfg = make_config(args.preset, **overrides)
    with distributed.process_group(cfg.device):
        # an existing run is continued (--resume) or replaced whole once the new one is complete (--overwrite)
        replace = distributed.from_main(lambda: check_destination(args.out, "run", args.overwrite, args.resume))
        if args.download:
            from tt.data import load_dataset

            if distributed.local_rank() == 0:  # one download per machine
                load_dataset(args.dataset, download=True)
            distributed.barrier()
        staging = distributed.from_main(lambda: staging_beside(args.out, "run")) if replace else None
        try:
            train(cfg, staging or args.out, resume=args.resume, between_steps=args.cores.refresh)
            if staging and distributed.is_main():
                swap_directory(staging, args.out)
        finally:
            if staging and distributed.is_main() and os.path.exists(staging):
                shutil.rmtree(staging)
        if distributed.is_main():
            print(f"run written to {args.out}")


def cmd_import_reference(args) -> None:

    from tt.checkpoint import save_run
    from tt.discretize import Discretizer
    from tt.model import TrajectoryTransformer

    if not (args.dataset or args.thresholds):  # no silent default: the thresholds decide every token
        raise ValueError("import-reference needs --dataset (fit the discretizer on it, as the authors do) or "
                         "--thresholds (an .npy of [N+1, T] thresholds)")
    check_destination(args.out, "run", args.overwrite)  # before any work
    state_dict = read_state_dict(args.state_dict)
    if args.thresholds:
        discretizer = Discretizer(np.load(args.thresholds, allow_pickle=False))
        info = {}
    else:
        from tt.config import make_config
        from tt.train import prepare_data

        _, discretizer, info = prepare_data(make_config(dataset=args.dataset, n_bins=args.n_bins))
    obs_dim = args.observation_dim or info.get("observation_dim")
    act_dim = args.action_dim or info.get("action_dim")
    if obs_dim is None or act_dim is None:
        raise SystemExit("give --observation-dim and --action-dim, or --dataset to read them from")
    model = TrajectoryTransformer.from_reference(state_dict, obs_dim, act_dim, n_head=args.n_head)
    with destination(args.out, "run", args.overwrite) as out:
        save_run(out, model, discretizer, {"data": info, "imported_from": args.state_dict})
    print(f"imported {args.state_dict} into {args.out}")


def _number(kind: type, ok, expected: str, requirement: str):
    """An argparse type: parse `kind`, then refuse values for which `ok` is false."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer", ">= 1")  # sizes and counts
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number", "> 0")
fraction = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]", "in [0, 1]")
finite_float = _number(float, lambda v: abs(v) < float("inf"), "a number", "finite")  # NaN fails too


def or_none(kind):
    """An argparse type that also takes `none` (the PlanConfig field's None: no filter, no crop)."""
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = f"{kind.__name__} or none"
    return parse


# A settings field's kind (tt.config.setting) -> its flag's argparse type.
KINDS = {"count": positive_int, "step": _number(int, lambda v: v >= 0, "an integer", ">= 0"), "integer": int,
         "positive": positive_float, "finite": finite_float, "fraction": fraction}
PLAN_FLAGS = tuple(f.name for f in dataclasses.fields(PlanConfig))  # every PlanConfig field is a flag


def add_settings_flags(parser: argparse.ArgumentParser, settings: type, default: str | None = None) -> None:
    """Flags for the fields of a settings dataclass that have a kind (`tt.config.setting`): their types, help
    and defaults from the fields (`default`: what to say of the default instead of the field's). Absent
    flags stay absent from the parsed arguments: the dataclass's own default (or a preset's) applies."""
    for f in dataclasses.fields(settings):
        if "kind" not in f.metadata:
            continue
        kind, text, name = f.metadata["kind"], f.metadata["help"].replace("%", "%%"), f.metadata["flag"]
        name = name or flag(f.name)
        if kind == "switch":
            parser.add_argument("--no-" + name[2:], dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                help=text + ": turn it off")
            continue
        if kind == "flag":  # --name and --no-name (off by default)
            parser.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=text)
            continue
        choices = kind if isinstance(kind, tuple) else None
        parse = str if choices or kind == "text" else KINDS[kind.removesuffix(" or none")]
        shown = default or ("none" if f.default is None else f.default)
        parser.add_argument(name, dest=f.name, type=or_none(parse) if str(kind).endswith(" or none") else parse,
                            choices=choices, default=argparse.SUPPRESS, help=f"{text} (default: {shown})")


def given(args: argparse.Namespace, settings: type) -> dict:
    """The fields of a settings dataclass given by their flags (`add_settings_flags`; absent flags are not in
    `args`)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(settings)
            if "kind" in f.metadata and hasattr(args, f.name)}


def plan_overrides(args: argparse.Namespace) -> dict:
    """The PlanConfig fields given on the command line."""
    return given(args, PlanConfig)


def cmd_eval(args) -> None:
    """Evaluate; under torchrun the rounds of episodes are shared out over the processes."""
    from tt import distributed
    from tt.checkpoint import open_run
    from tt.eval.episodes import evaluate

    if args.iql_policy:
        return eval_policy(args)
    out = args.out or os.path.join(args.run, "eval")
    run = open_run(args.run)  # loaded once, here
    if run.goal_conditioned:  # a goal task: success rate and steps to the goal over pairs of rooms
        from tt.eval.goal import evaluate_goals

        if args.critic:
            raise ValueError("--critic guides the return search; a goal-conditioned run plans with the likelihood "
                             "objective towards its goals")
        with destination(out, "evaluation", args.overwrite) as where:
            r = evaluate_goals(run, n_goals=args.episodes, seed=args.seed, out=where, device=args.device,
                               n_envs=args.envs, **plan_overrides(args))
        steps = "-" if r["mean_steps_to_goal"] is None else f"{r['mean_steps_to_goal']:.1f}"
        print(f"success {100 * r['success_rate']:.1f} % (s.e. {100 * r['se']:.1f}) over {r['n']} goals in another "
              f"room, mean steps to goal {steps}; written to {out}")
        return
    with destination(out, "evaluation", args.overwrite, writes=is_first_rank()) as where, \
            distributed.process_group(args.device):
        results = evaluate(run, episodes=args.episodes, n_envs=args.envs, seed=args.seed, out=where,
                           device=args.device, video=args.video, critic=args.critic, **plan_overrides(args))
        is_main = distributed.is_main()
    if is_main:
        print_returns(results, "planning", out)


def eval_policy(args) -> None:
    """`tt eval --iql-policy CRITIC`: the critic's own policy, rolled out as a planner would be."""
    from tt import distributed
    from tt.eval.episodes import evaluate_policy

    planning = [f"--{name.replace('_', '-')}" for name in plan_overrides(args)]
    if args.critic or planning:
        raise ValueError(f"--iql-policy acts without planning: {' '.join(['--critic'] * bool(args.critic) + planning)} "
                         "does not apply")
    out = args.out or os.path.join(args.iql_policy, "eval")
    with destination(out, "evaluation", args.overwrite, writes=is_first_rank()) as where, \
            distributed.process_group(args.device):
        results = evaluate_policy(args.iql_policy, episodes=args.episodes, n_envs=args.envs, seed=args.seed,
                                  out=where, device=args.device, video=args.video)
        is_main = distributed.is_main()
    if is_main:
        print_returns(results, "acting", out)


def print_returns(results: dict, doing: str, out: str) -> None:
    print(f"{results['dataset_id']}: return {results['mean_return']:.1f} +- {results['std_return']:.1f} over "
          f"{results['episodes']} episodes, normalized score {results['mean_normalized_score']:.3f}, "
          f"{1000 * results['plan_seconds_per_env_step']:.1f} ms {doing} per environment step; written to {out}")


def cmd_train_critic(args) -> None:
    """Train IQL's critic (TT+Q's Q-function) on a data set's transitions."""
    from tt.config import CriticConfig
    from tt.iql import train_critic

    cfg = CriticConfig(**{**given(args, CriticConfig), "dataset": args.dataset})
    replace = check_destination(args.out, "critic", args.overwrite, args.resume)
    staging = staging_beside(args.out, "critic") if replace else None
    try:
        train_critic(cfg, staging or args.out, resume=args.resume)
        if staging:
            swap_directory(staging, args.out)
    finally:
        if staging and os.path.exists(staging):
            shutil.rmtree(staging)
    print(f"critic written to {args.out}")


def default_jobs(args) -> int:
    """`tt score`'s processes when --jobs is not given: one per run, as many as this process's threads, on
    the CPU; one under torchrun (the ranks share the episodes) and on a GPU (each process would hold
    its own CUDA context and cache on it)."""
    from tt import distributed
    from tt.device import resolve_device

    if distributed.world_size() > 1 or resolve_device(args.device or "auto").type != "cpu":
        return 1
    return min(len(args.runs), args.cores.threads)


def cmd_score(args) -> None:
    """Score runs; under torchrun every run's episodes are shared out over the processes."""
    from tt import distributed
    from tt.eval.score import combine_evaluations, format_table, score_runs

    if args.from_evals:
        if plan_overrides(args):
            raise ValueError(f"--from-evals combines evaluations with their own plan settings; drop "
                             f"{', '.join(plan_overrides(args))}")
        with destination(args.out, "score", args.overwrite) as where:
            summary, is_main = combine_evaluations(args.runs, out=where), True
    else:
        with destination(args.out, "score", args.overwrite, writes=is_first_rank()) as where, \
                distributed.process_group(args.device):
            jobs = args.jobs or default_jobs(args)
            summary = score_runs(args.runs, episodes=args.episodes, n_envs=args.envs, seed=args.seed, out=where,
                                 device=args.device, jobs=jobs, **plan_overrides(args))
            is_main = distributed.is_main()
    if is_main:
        print(format_table(summary))
        print(f"written to {args.out}")


DEMO = dict(dataset="pendulum-medium", episodes=10, envs=5, plan=dict(horizon=5, beam_width=16, n_expand=2))


def cmd_demo(args) -> None:
    """Generate the built-in default data set, train the small preset, plan in the environment."""
    import time

    from tt.config import make_config
    from tt.eval.episodes import evaluate
    from tt.tasks import make_dataset
    from tt.train import train

    started = time.time()
    with destination(args.out, "run", args.overwrite) as out:
        make_dataset(DEMO["dataset"], seed=args.seed)
        train(make_config("small", dataset=DEMO["dataset"], seed=args.seed, max_steps=args.train_steps), out)
    episodes = args.episodes if args.episodes is not None else DEMO["episodes"]
    results = evaluate(args.out, episodes=episodes, n_envs=DEMO["envs"], seed=args.seed,
                       out=os.path.join(args.out, "eval"), **DEMO["plan"])
    rows = [("data set mean return", results["dataset_mean_return"]),
            ("expert return (reference)", results["ref_max_score"]),
            ("random return (reference)", results["ref_min_score"]),
            ("Trajectory Transformer return", results["mean_return"]),
            ("Trajectory Transformer normalized score", results["mean_normalized_score"])]
    print(f"\n{results['dataset_id']}, {results['episodes']} episodes, plan {DEMO['plan']}")
    for name, value in rows:
        print(f"  {name:42s} {value:10.3f}")
    print(f"  {'wall time (s)':42s} {time.time() - started:10.1f}")
    print(f"run, plots and eval.json in {args.out}")


def cmd_predict(args) -> None:
    """Open-loop prediction on held-out episodes: the Trajectory Transformer and, given, the ensemble."""
    from tt.video import use_headless_rendering

    use_headless_rendering()  # frames.png: before MuJoCo is imported
    from tt.predict.experiment import format_table, predict

    config = PredictConfig(**given(args, PredictConfig))
    out = args.out or os.path.join(args.run, "predict")
    with destination(out, "prediction", args.overwrite) as where:
        results = predict(args.run, args.dynamics, config, out=where, device=args.device, frames=args.frames)
    print(format_table(results))
    print(f"predict.json, predict.png{', frames.png' if results['frames'] else ''} written to {out}")


def cmd_train_dynamics(args) -> None:
    from tt.predict.ensemble import train_dynamics

    config = DynamicsConfig(dataset=args.dataset, **given(args, DynamicsConfig))
    check_destination(args.out, "ensemble", args.overwrite)  # train_dynamics swaps the new one in whole
    train_dynamics(config, args.out)
    print(f"ensemble written to {args.out}")


class DefaultsShown(argparse.HelpFormatter):
    """Help that ends with the option's default, where it has one worth saying (not None, not a switch's)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or not action.option_strings or action.default in (None, True, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Argument errors as every other error of tt: one line `tt: error: ...` on stderr, exit status 2; `--help`
    shows every option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsShown)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"tt: error: {self.prog.removeprefix('tt ')}: {message}\n" if self.prog != "tt"
                  else f"tt: error: {message}\n")


def add_data_command(sub) -> None:
    data = sub.add_parser("data", help="built-in data sets")
    data_sub = data.add_subparsers(dest="data_cmd", required=True)
    data_sub.add_parser("list", help="built-in and local data sets")
    make = data_sub.add_parser("make", help="generate a built-in data set")
    make.add_argument("name")
    make.add_argument("--episodes", type=positive_int, help="pendulums: episodes per policy")
    make.add_argument("--steps", type=positive_int, help="locomotion: environment steps (default 1M, as D4RL)")
    make.add_argument("--seed", type=int, default=0, help="the data set's seed")
    make.add_argument("--overwrite", action="store_true",
                      help="make a data set that exists again (the old one stays until the new one is complete)")
    data.set_defaults(func=cmd_data)


def add_train_command(sub) -> None:
    train = sub.add_parser("train", help="train a Trajectory Transformer")
    train.add_argument("--dataset", required=True, help="Minari id or built-in name")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--preset", default="published", help="published | cpu | small")
    add_settings_flags(train, TrainConfig, default="the preset's")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (the old one stays until the new one is complete)")
    train.add_argument("--download", action="store_true", help="fetch a remote Minari data set first")
    train.set_defaults(func=cmd_train)


def add_import_reference_command(sub) -> None:
    imp = sub.add_parser("import-reference", help="import the authors' GPT state_dict into a run directory")
    imp.add_argument("--state-dict", required=True, help="their state_<epoch>.pt")
    imp.add_argument("--out", required=True, help="run directory")
    imp.add_argument("--dataset", help="fit the discretizer on this data set, as the authors do")
    imp.add_argument("--thresholds", help="or take thresholds [N+1, T] from this .npy")
    imp.add_argument("--n-bins", type=positive_int, default=100, help="bins per dimension, as their model's")
    imp.add_argument("--observation-dim", type=positive_int, help="without --dataset: the observation size")
    imp.add_argument("--action-dim", type=positive_int, help="without --dataset: the action size")
    imp.add_argument("--n-head", type=positive_int, default=4, help="attention heads, as their model's")
    imp.add_argument("--overwrite", action="store_true", help="replace the run in --out, once the new one is written")
    imp.set_defaults(func=cmd_import_reference)


def add_eval_command(sub) -> None:
    ev = sub.add_parser("eval", help="plan in the data set's environment and report returns")
    agent = ev.add_mutually_exclusive_group(required=True)
    agent.add_argument("--run", help="run directory")
    agent.add_argument("--iql-policy", metavar="CRITIC", help="evaluate the IQL policy of a critic directory (tt "
                       "train-critic) instead of a planner: the baseline TT+Q is read against")
    ev.add_argument("--episodes", type=int, default=10, help="episodes played")  # evaluate() refuses < 1
    ev.add_argument("--envs", type=int, default=2, help="environments stepped in parallel")
    ev.add_argument("--seed", type=int, default=0, help="seed of the environments and the planner")
    ev.add_argument("--device", help="auto | cpu | cuda (default: auto)")
    ev.add_argument("--out", help="results directory (default RUN/eval, or CRITIC/eval)")
    ev.add_argument("--overwrite", action="store_true", help="replace the evaluation in --out once this one is done")
    ev.add_argument("--video", help="render the first episode to this .mp4 or .gif file")
    ev.add_argument("--critic", help="a critic directory (tt train-critic) that guides the return search in place "
                    "of the value token (TT+Q)")
    add_settings_flags(ev, PlanConfig)
    ev.set_defaults(func=cmd_eval)


def add_train_critic_command(sub) -> None:
    tc = sub.add_parser("train-critic", help="train IQL's Q-function for TT+Q (tt eval --critic)")
    tc.add_argument("--dataset", required=True, help="Minari id or built-in name")
    tc.add_argument("--out", required=True, help="critic directory")
    add_settings_flags(tc, CriticConfig)
    tc.add_argument("--resume", action="store_true", help="continue the critic in --out")
    tc.add_argument("--overwrite", action="store_true",
                    help="replace the critic in --out (the old one stays until the new one is complete)")
    tc.set_defaults(func=cmd_train_critic)


def add_score_command(sub) -> None:
    sc = sub.add_parser("score", help="the paper's protocol: evaluate runs, normalized score x100, mean and s.e.")
    sc.add_argument("runs", nargs="+", help="run directories (several seeds and data sets)")
    sc.add_argument("--episodes", type=int, default=10, help="episodes per run")  # score_runs() refuses < 1
    sc.add_argument("--envs", type=int, default=2, help="environments stepped in parallel")
    sc.add_argument("--seed", type=int, default=0, help="seed of the environments and the planner")
    sc.add_argument("--device", help="auto | cpu | cuda (default: auto)")
    sc.add_argument("--jobs", type=positive_int, help="runs evaluated at once, each in a process of its own sharing "
                    "the threads out (default: as many as runs and threads allow on the CPU; 1 on a GPU and "
                    "under torchrun)")
    sc.add_argument("--out", default="score", help="results directory (score.json, score.png, one folder a run)")
    sc.add_argument("--overwrite", action="store_true", help="replace the score in --out once this one is done")
    sc.add_argument("--from-evals", action="store_true",
                    help="the paths are evaluations made before (folders with eval.json, e.g. OUT/RUN of separate "
                    "`tt score` calls): combine them, evaluating nothing (their episodes, seed and plan settings "
                    "hold; they must agree)")
    add_settings_flags(sc, PlanConfig)
    sc.set_defaults(func=cmd_score)


def add_predict_command(sub) -> None:
    pr = sub.add_parser("predict", help="open-loop prediction on held-out episodes, the model's against an "
                        "ensemble's (the paper's Figures 2 and 3)")
    pr.add_argument("--run", required=True, help="run directory (trained with held-out episodes)")
    pr.add_argument("--dynamics", help="a Gaussian ensemble's directory (tt train-dynamics) to compare with")
    pr.add_argument("--device", help="auto | cpu | cuda (default: auto)")
    pr.add_argument("--out", help="results directory (default RUN/predict)")
    pr.add_argument("--overwrite", action="store_true", help="replace the prediction in --out once this one is done")
    pr.add_argument("--no-frames", dest="frames", action="store_false",
                    help="skip frames.png (MuJoCo tasks: true and predicted states rendered)")
    add_settings_flags(pr, PredictConfig)
    pr.set_defaults(func=cmd_predict)


def add_train_dynamics_command(sub) -> None:
    dyn = sub.add_parser("train-dynamics", help="train a single-step Gaussian ensemble (PETS), the baseline of "
                         "tt predict")
    dyn.add_argument("--dataset", required=True, help="Minari id or built-in name")
    dyn.add_argument("--out", required=True, help="ensemble directory")
    add_settings_flags(dyn, DynamicsConfig)
    dyn.add_argument("--overwrite", action="store_true",
                     help="replace the ensemble in --out (the old one stays until the new one is complete)")
    dyn.set_defaults(func=cmd_train_dynamics)


def add_demo_command(sub) -> None:
    demo = sub.add_parser("demo", help="the main job: data, training and planning on the built-in default")
    demo.add_argument("--out", default="runs/demo", help="the demo's run directory")
    demo.add_argument("--overwrite", action="store_true", help="replace the demo's run in --out once it is done")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data, training and planning")
    demo.add_argument("--train-steps", type=positive_int, help="cut training short (a quick check, not the result)")
    demo.add_argument("--episodes", type=positive_int, help=f"evaluation episodes (default {DEMO['episodes']})")
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="tt", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_data_command(sub)
    add_train_command(sub)
    add_import_reference_command(sub)
    add_eval_command(sub)
    add_train_critic_command(sub)
    add_score_command(sub)
    add_predict_command(sub)
    add_train_dynamics_command(sub)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument error (2, already reported on one line)
        return e.code if isinstance(e.code, int) else 2
    retain_freed_memory()  # this process is tt's own: fewer page faults in CPU planning and training
    if getattr(args, "video", None):  # before MuJoCo is imported: off-screen GL unless the caller chose one
        from tt.video import use_headless_rendering

        use_headless_rendering()
    from tt.threads import CoreShare

    try:
        with CoreShare() as args.cores:  # this process's threads: its share of the cores among tt's processes
            args.func(args)
    except (ValueError, LookupError, FileNotFoundError) as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank fails alike: say it once
            print(f"tt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
