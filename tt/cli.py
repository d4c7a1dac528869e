"""The `tt` command line: data, training, reference import, evaluation and the demo."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def cmd_data(args) -> None:
    from tt.envs import builtin_names, dataset_id_of, make_dataset

    if args.data_cmd == "list":
        import minari

        local = set(minari.list_local_datasets())
        for name in builtin_names():
            mark = "made" if dataset_id_of(name) in local else "    "
            print(f"{name:28s} {dataset_id_of(name):34s} {mark}")
        for other in sorted(local - {dataset_id_of(n) for n in builtin_names()}):
            print(f"{'':28s} {other:34s} made")
        return
    dataset = make_dataset(args.name, episodes=args.episodes, seed=args.seed)
    print(f"made {dataset.spec.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps")


def cmd_train(args) -> None:
    from tt.train import make_config, train

    overrides = dict(dataset=args.dataset, max_steps=args.steps, seed=args.seed, device=args.device,
                     epochs=args.epochs, batch_size=args.batch_size)
    cfg = make_config(args.preset, **overrides)
    train(cfg, args.out, resume=args.resume)
    print(f"run written to {args.out}")


def cmd_import_reference(args) -> None:
    import torch

    from tt.checkpoint import save_run
    from tt.discretize import Discretizer
    from tt.model import TrajectoryTransformer

    state_dict = torch.load(args.state_dict, map_location="cpu", weights_only=True)
    if args.thresholds:
        discretizer = Discretizer(np.load(args.thresholds, allow_pickle=False))
        info = {}
    else:
        from tt.train import make_config, prepare_data

        _, discretizer, info = prepare_data(make_config(dataset=args.dataset, n_bins=args.n_bins))
    obs_dim = args.observation_dim or info.get("observation_dim")
    act_dim = args.action_dim or info.get("action_dim")
    if obs_dim is None or act_dim is None:
        raise SystemExit("give --observation-dim and --action-dim, or --dataset to read them from")
    model = TrajectoryTransformer.from_reference(state_dict, obs_dim, act_dim, n_head=args.n_head)
    save_run(args.out, model, discretizer, {"data": info, "imported_from": args.state_dict})
    print(f"imported {args.state_dict} into {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tt", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="built-in data sets")
    data_sub = data.add_subparsers(dest="data_cmd", required=True)
    data_sub.add_parser("list", help="built-in and local data sets")
    make = data_sub.add_parser("make", help="generate a built-in data set")
    make.add_argument("name")
    make.add_argument("--episodes", type=int)
    make.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=cmd_data)

    train = sub.add_parser("train", help="train a Trajectory Transformer")
    train.add_argument("--dataset", required=True, help="Minari id or built-in name")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--preset", default="published", help="published | small")
    train.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--epochs", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto | cpu | cuda")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.set_defaults(func=cmd_train)

    imp = sub.add_parser("import-reference", help="import the authors' GPT state_dict into a run directory")
    imp.add_argument("--state-dict", required=True, help="their state_<epoch>.pt")
    imp.add_argument("--out", required=True)
    imp.add_argument("--dataset", help="fit the discretizer on this data set, as the authors do")
    imp.add_argument("--thresholds", help="or take thresholds [N+1, T] from this .npy")
    imp.add_argument("--n-bins", type=int, default=100)
    imp.add_argument("--observation-dim", type=int)
    imp.add_argument("--action-dim", type=int)
    imp.add_argument("--n-head", type=int, default=4)
    imp.set_defaults(func=cmd_import_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, LookupError, FileNotFoundError) as e:
        print(f"tt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
