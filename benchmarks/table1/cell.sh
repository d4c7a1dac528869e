#!/usr/bin/env bash
# One cell of Table 1 at CPU scale, end to end: tt's data set, a `cpu`-preset model (resumed where a
# stopped training left it), `tt score` over 10 episodes with the authors' planning settings for the
# data set (their config/offline.py: horizon 5 on halfcheetah-* and walker2d-medium-expert,
# plan_freq 5 on hopper-medium; beam 32 for the evaluation budget, theirs is 128), then the table again.
#
#   benchmarks/table1/cell.sh hopper-medium-expert [SEED]     # RUNS=runs by default
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1
seed=${2:-0}
runs=${RUNS:-runs}
tt=${TT:-.venv/bin/tt}
plan=(--horizon 15 --beam-width 32)
case $name in
  halfcheetah-*|walker2d-medium-expert) plan=(--horizon 5 --beam-width 32) ;;
  hopper-medium) plan+=(--plan-freq 5) ;;
esac
if ! $tt data list 2>/dev/null | grep -Eq "^$name +[^ ]+ +made"; then
  $tt data make "$name"
fi
run=$runs/$name-cpu-s$seed
resume=()
[ -f "$run/checkpoint.json" ] && resume=(--resume)
$tt train --dataset "$name" --preset cpu --seed "$seed" --out "$run" "${resume[@]}"
$tt score "$run" --episodes 10 --envs 10 --seed 0 "${plan[@]}" --out "benchmarks/table1/$name" --overwrite
.venv/bin/python benchmarks/table1.py
