#!/usr/bin/env bash
# On a GPU machine without network access: install tt (building tt._C for the torch found there),
# run the GPU tests, then every benchmark, CUDA groups first, and print the speed-up tables.
# Needs torch, triton, numpy, scipy, safetensors, tqdm, pytest, pytest-benchmark, setuptools and
# ninja (the GPU image has them), not the RL packages (minari, gymnasium, mujoco): the tests it runs
# do not import them. Each phase has a time limit, so the whole run ends inside 10 minutes and
# leaves its logs, JSON and a profile in OUT_DIR (8 files) even when a phase runs out of time.
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
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__)"
  git rev-parse --short HEAD 2>/dev/null || true
} | tee "$out/machine.txt"

echo "== build"
# An editable install, as a user's: it builds tt._C and maps kernels/ to tt.kernels (an in-place
# build_ext alone leaves tt.kernels missing, and the Triton paths would silently fall back).
python3 -m pip install --no-build-isolation --no-deps --no-index -e . > "$out/build.log" 2>&1 \
  || { tail -30 "$out/build.log"; exit 1; }
echo "built and installed at $(elapsed)"
(cd /tmp && python3 -c "
import torch, tt.kernels.attention, tt.ops as o
b = o.backends(); print(b)
assert torch.cuda.is_available(), 'no CUDA device'
assert b['sample_next']['cuda'] == 'CUDA' and b['attention']['cuda'] == 'Triton', 'a GPU path is missing'
") || exit 1

echo "== tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_attention.py \
  tests/test_ops.py tests/test_model.py 2>&1 | tee "$out/tests.log" | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "tests done at $(elapsed)"

profile() {  # where a plan's time goes on the GPU, eager (graphs replay the same kernels)
  echo "== profile"
  for window in exact cached; do
    timeout 90 python3 benchmarks/profile_plan.py --device cuda --window "$window" 2>&1 | grep -v '^\(USDT\|ERROR\|WARNING\)'
  done > "$out/profile.txt"
  grep '^# plan' "$out/profile.txt"
  echo "profiled at $(elapsed)"
}

for device in cuda cpu; do
  echo "== benchmarks ($device)"
  left=$(( 570 - $(date +%s) + begin ))
  [ "$left" -gt 30 ] || { echo "no time left for the $device benchmarks"; status=1; break; }
  TT_BENCH_DEVICES=$device timeout "$left" python3 -m pytest -p no:cacheprovider benchmarks/ \
    --benchmark-json "$out/benchmarks-$device.json" > "$out/benchmarks-$device.log" 2>&1 || status=1
  sed -n '/speed-ups against the reference/,/^---/p' "$out/benchmarks-$device.log" | grep -v '^---'
  tail -3 "$out/benchmarks-$device.log"
  echo "benchmarks ($device) done at $(elapsed)"
  [ "$device" = cuda ] && profile
done
exit $status
