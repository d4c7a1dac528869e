#!/usr/bin/env bash
# On a GPU machine without network access: build tt._C for the torch found there, run the CUDA
# tests, then every benchmark (CPU and CUDA groups), and print the results table.
# Needs torch, triton, numpy, scipy, pytest and pytest-benchmark (the GPU image has them), not the RL
# packages (minari, gymnasium, mujoco): the tests it runs do not import them.
# Usage: bash benchmarks/gpu.sh [OUT_DIR]   (default $OUT, else /tmp/tt-gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/tt-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TT_REQUIRE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  git rev-parse --short HEAD 2>/dev/null || true
} | tee "$out/machine.txt"
echo "== build"
python3 -c "import setuptools, ninja" 2>/dev/null || {
  echo "setuptools and ninja are needed to build tt._C; carry their wheels (e.g. in .whl/) and"
  echo "  python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site:\$PYTHONPATH"
  exit 1
}
start=$(date +%s)
python3 setup.py -q build_ext --inplace -j "$(nproc)" > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s"
python3 -c "import tt.ops as o; print(o.backends())"
echo "== tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_attention.py tests/test_ops.py tests/test_model.py 2>&1 | tee "$out/tests.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== benchmarks"
python3 -m pytest -p no:cacheprovider benchmarks/ --benchmark-json "$out/benchmarks.json" > "$out/benchmarks.log" 2>&1 || status=1
sed -n '/speed-ups against the reference/,/^---/p' "$out/benchmarks.log" | grep -v '^---'
cp benchmarks/timings.json "$out/" 2>/dev/null || true
exit $status
