#!/usr/bin/env bash
# Set up whatever is missing on a fresh machine: a virtual environment with torch, the test and
# data extras, and adt_fast itself built in place (C++ extension included). Idempotent: a second
# run with unchanged sources installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # the CPU wheel on this machine's disk

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi

stamp="$VENV/.adt_fast-installed"
sources_hash=$(cat pyproject.toml setup.py $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sources_hash" ]; then
  echo "setup: installing build tools, extras and adt_fast (builds the C++ extension)"
  "$PY" -m pip install --quiet setuptools wheel ninja pybind11
  "$PY" -m pip install --quiet --no-build-isolation -e ".[test,data,tensorboard]"
  echo "$sources_hash" > "$stamp"
fi

"$PY" - <<'PY'
import adt_fast
for b in adt_fast.backends():
    print(f"setup: backend {b.name:9s} {'available' if b.available else 'unavailable: ' + str(b.reason)}")
PY
