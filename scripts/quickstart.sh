#!/usr/bin/env bash
# dpkit quick start: one command to install and run the demo, one to install and run the tests.
#
#   bash scripts/quickstart.sh run     # .venv + dpkit (torch only if missing), then `dpkit demo`
#   bash scripts/quickstart.sh test    # .venv + dpkit[test], then ruff, mypy and pytest over tests/, the notebooks and the exercises
#
# Environment knobs:
#   PYTHON=python3.12           interpreter for the virtual environment (3.10 or newer)
#   DPKIT_VENV=.venv            where the virtual environment lives
#   DPKIT_TORCH_SPEC=torch==2.13.0   what to install when torch is missing
#   DPKIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu   optional index for that install (CPU-only wheels)
# The venv sees system site-packages, so a torch you already have (e.g. a CUDA build) is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-run}"
# each step says how long the script has run so far (CI must finish in 20 minutes: the log shows where they go)
step() { echo "== [$((SECONDS / 60)) min $((SECONDS % 60)) s] $*"; }
case "$mode" in run|test) ;; *) echo "usage: $0 run|test" >&2; exit 2 ;; esac

PY="${PYTHON:-python3}"
VENV="${DPKIT_VENV:-.venv}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "dpkit needs Python 3.10 or newer ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV"
  "$PY" -m venv --system-site-packages "$VENV"
fi
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  step "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') is already installed: keeping it"
else
  spec="${DPKIT_TORCH_SPEC:-torch==2.13.0}"
  step "installing $spec"
  if [ -n "${DPKIT_TORCH_INDEX:-}" ]; then
    "${pip[@]}" "$spec" --index-url "$DPKIT_TORCH_INDEX"
  else
    "${pip[@]}" "$spec"
  fi
fi

if [ "$mode" = run ]; then
  step "installing dpkit"
  "${pip[@]}" -e .
  step "running the demo: data parallelism at world sizes 1, 2, 4"
  exec "$VENV/bin/python" -m dpkit.cli demo --out results/demo
fi

step "installing dpkit with its test extras"
"${pip[@]}" -e ".[test]"
# tests/test_browser.py runs the notebooks in JupyterLab in Chromium: Debian's package, not Playwright's download
if [ -x /usr/bin/chromium ]; then
  step "Chromium for the browser test: /usr/bin/chromium is there"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  step "installing Chromium for the browser test: apt-get update -q && apt-get install -y -q chromium"
  if ! { apt-get update -q && apt-get install -y -q chromium; }; then
    echo "== Chromium could not be installed: tests/test_browser.py will be skipped" >&2
  fi
else
  echo "== no /usr/bin/chromium, and installing it needs root and apt-get: tests/test_browser.py will be skipped" >&2
fi
step "lint (ruff) and types (mypy)"
"$VENV/bin/python" -m ruff check dpkit tests notebooks exercises
"$VENV/bin/python" -m ruff format --check dpkit tests notebooks exercises
"$VENV/bin/python" -m mypy
step "running the test suite"
# the exercise notebooks run with their reference solutions plugged in (exercises/README.md)
export DPKIT_EXERCISE_SOLUTIONS=1
"$VENV/bin/python" -m pytest tests notebooks exercises --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg --durations=15
step "test suite done"
