#!/usr/bin/env bash
# Set up (or refresh) .venv with torch and tt installed in editable mode; idempotent, and quick
# when nothing that the build depends on changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_install() { python -m pip install -q --disable-pip-version-check "$@"; }
stamp=.venv/.tt-installed
want="cuda=${TT_REQUIRE_CUDA:-0} nocuda=${TT_NO_CUDA:-0}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -z "$(find csrc setup.py pyproject.toml -newer "$stamp" 2>/dev/null | head -n 1)" ]; then
  exit 0
fi
pip_install --upgrade pip setuptools wheel ninja
# The CUDA 13.0 build of torch: runs on CPU, and lets setup.py compile the CUDA sources.
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.14.1')" 2>/dev/null \
  || pip_install "torch==2.14.1"
pip_install -e ".[dev]" --no-build-isolation
python -c "import tt.ops as o; print('tt installed in .venv; ops:', o.backends())"
echo "$want" > "$stamp"
