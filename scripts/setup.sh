#!/usr/bin/env bash
# Set up (or refresh) .venv with torch and tt installed in editable mode; idempotent, and quick
# when nothing that the build depends on changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# `tt eval --video` renders MuJoCo on the CPU through Mesa's EGL: install the Debian packages when they
# are missing and this can (root, apt-get); never fail the set-up over them, say what is missing instead.
render_pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri"
if command -v dpkg-query >/dev/null 2>&1; then
  missing=$(for p in $render_pkgs; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || printf '%s ' "$p"; done)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && { apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } >/dev/null 2>&1
    then
      echo "installed for tt eval --video (MuJoCo rendering): $missing"
    else
      echo "note: tt eval --video on MuJoCo tasks needs these packages, not installed: $missing(apt-get install them as root)"
    fi
  fi
fi
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
