#!/usr/bin/env bash
# Set up (or refresh) .venv with torch and tt installed in editable mode; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_install() { python -m pip install -q --disable-pip-version-check "$@"; }
pip_install --upgrade pip setuptools wheel ninja
# The CUDA 13.0 build of torch: runs on CPU, and lets setup.py compile the CUDA sources.
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null \
  || pip_install "torch==2.14.1"
pip_install -e ".[dev]" --no-build-isolation
echo "tt installed in .venv ($(python -c 'import torch; print("torch", torch.__version__)'))"
