#!/usr/bin/env bash
# On a GPU machine without network access: install tt (building tt._C for the torch found there),
# run the GPU tests, then the CUDA benchmarks, a profile of one plan per window mode, training
# throughput under torchrun at 1 and N processes (one a GPU), the scaling sweeps on the GPU and last
# the CPU benchmarks, and print the speed-up tables.
# Needs torch, triton, numpy, scipy, safetensors, tqdm, matplotlib, pytest, pytest-benchmark,
# setuptools and ninja (the GPU image has them), not the RL packages (minari, gymnasium, mujoco): the
# tests it runs do not import them. Each phase has a time limit, so the whole run ends inside 10
# minutes, and OUT_DIR keeps what finished (7 files: run.log, benchmarks-{cuda,cpu}.json,
# profile.txt, scaling-cuda.{json,png}, distributed-cuda.jsonl) even when a phase runs out of time.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (default $OUT, else /tmp/tt-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/tt-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TT_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
status=0
begin=$(date +%s)
elapsed() { echo "$(( $(date +%s) - begin )) s"; }
left() { echo $(( 570 - $(date +%s) + begin )); }

main() {
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__)"
git rev-parse --short HEAD 2>/dev/null || true

echo "== build"
# An editable install, as a user's: it builds tt._C and maps kernels/ to tt.kernels (an in-place
# build_ext alone leaves tt.kernels missing, and the Triton paths would silently fall back).
python3 -m pip install --no-build-isolation --no-deps --no-index -e . > /tmp/tt-build.log 2>&1 \
  || { tail -30 /tmp/tt-build.log; return 1; }
echo "built and installed at $(elapsed)"
(cd /tmp && python3 -c "
import torch, tt.kernels.attention, tt.ops as o
b = o.backends(); print(b)
assert torch.cuda.is_available(), 'no CUDA device'
assert b['sample_next']['cuda'] == 'CUDA' and b['attention']['cuda'] == b['decode_layers']['cuda'] == 'Triton', \
    'a GPU path is missing'
") || return 1

echo "== tests"
parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")  # Triton compiles in 8 processes
timeout 240 python3 -m pytest -q -p no:cacheprovider $parallel tests/test_cuda.py tests/test_attention.py tests/test_beam_expand.py tests/test_prefix_rows.py \
  tests/test_ops.py tests/test_model.py tests/test_goal_triton.py 2>&1 | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "tests done at $(elapsed)"

benchmarks() {  # benchmarks/ on one kind of device: the speed-up table, the JSON in OUT_DIR
  echo "== benchmarks ($1)"
  [ "$(left)" -gt 30 ] || { echo "no time left"; status=1; return; }
  TT_BENCH_DEVICES=$1 timeout "$(left)" python3 -m pytest -p no:cacheprovider benchmarks/ \
    --benchmark-json "$out/benchmarks-$1.json" > "/tmp/tt-benchmarks-$1.log" 2>&1 || status=1
  sed -n '/speed-ups against the reference/,/^---/p' "/tmp/tt-benchmarks-$1.log" | grep -v '^---'
  tail -2 "/tmp/tt-benchmarks-$1.log"
  echo "benchmarks ($1) done at $(elapsed)"
}

benchmarks cuda

echo "== profile (eager plans; graphs replay the same kernels)"
if [ "$(left)" -gt 200 ]; then
  for window in exact cached; do
    timeout 90 python3 benchmarks/profile_plan.py --device cuda --window "$window" 2>&1 \
      | grep -v '^\(USDT\|ERROR\|WARNING\)'
  done > "$out/profile.txt"
  grep '^# plan' "$out/profile.txt"
else
  echo "no time left"; status=1
fi
echo "profiled at $(elapsed)"

echo "== distributed training (cuda): tokens/s at 1 and N processes, one GPU each, the same global batch"
: > "$out/distributed-cuda.jsonl"
for n in $(printf '%s\n' 1 "$(nvidia-smi -L | wc -l)" | sort -un); do
  if [ "$(left)" -gt 240 ]; then  # the scaling sweeps keep their time
    timeout 75 python3 -m torch.distributed.run --standalone --nproc-per-node "$n" benchmarks/train_throughput.py \
      --device cuda --out "/tmp/tt-throughput-$n" >> "$out/distributed-cuda.jsonl" 2> "/tmp/tt-throughput-$n.log" \
      || { tail -5 "/tmp/tt-throughput-$n.log"; status=1; }
  else
    echo "no time left for $n processes"; status=1
  fi
done
cat "$out/distributed-cuda.jsonl"
echo "distributed training done at $(elapsed)"

echo "== scaling (cuda)"
if [ "$(left)" -gt 150 ]; then
  timeout $(( $(left) - 90 )) python3 benchmarks/scaling.py --device cuda --out "$out" || status=1
else
  echo "no time left"; status=1
fi
echo "scaling done at $(elapsed)"

benchmarks cpu
return $status
}

main 2>&1 | tee "$out/run.log"
exit "${PIPESTATUS[0]}"
