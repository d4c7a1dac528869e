#!/usr/bin/env bash
# Two `tt train` side by side on one machine: one alone, a pair with OMP_NUM_THREADS=2 each (fixed), a pair
# sharing the cores as tt does by itself, one alone again; prints ms per step over steps 100-400 of each.
# Needs the pendulum-medium data set (`tt data make pendulum-medium`).
# Usage: bash benchmarks/side_by_side.sh [WORK_DIR]   (default /tmp/tt-side-by-side)
set -euo pipefail
work=${1:-/tmp/tt-side-by-side}
mkdir -p "$work"
train() { tt train --dataset pendulum-medium --preset small --steps 400 --overwrite --out "$work/$1" "${@:2}" \
  > "$work/$1.log" 2>&1; }
rate() {
  python3 - "$work/$1" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1] + "/metrics.jsonl")]
first = next(r for r in records if r["step"] == 100)
last = records[-1]
print(f"{sys.argv[1]}: {1e3 * (last['elapsed_s'] - first['elapsed_s']) / (last['step'] - first['step']):.1f} ms a step")
PY
}
unset OMP_NUM_THREADS
train alone; rate alone
OMP_NUM_THREADS=2 train fixed-1 & sleep 3; OMP_NUM_THREADS=2 train fixed-2 --seed 1; wait; rate fixed-1; rate fixed-2
train shared-1 & sleep 3; train shared-2 --seed 1; wait; rate shared-1; rate shared-2
train alone-again; rate alone-again
