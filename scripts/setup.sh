#!/usr/bin/env bash
# Set up whatever is missing on a fresh machine: a virtual environment with torch, the test and
# data extras, and adt_fast itself built in place (C++ extension included). Idempotent: a second
# run installs nothing, unless the sources, the Python or torch version or the build settings
# changed, or the C++ extension adt_fast._C cannot be imported (missing, or its build failed):
# then it tries the build once more.
#   PYTHON                the Python that creates the venv (default python3)
#   VENV                  the venv (default .venv)
#   TORCH_SPEC            the torch to install into a venv without one (default torch==2.13.0;
#                         from PyPI on Linux that is the CUDA build, which runs on CPUs too)
#   TORCH_INDEX_URL       where to get it (pip's --index-url), e.g.
#                         https://download.pytorch.org/whl/cpu for the smaller CPU-only build
#   ADT_FAST_NO_EXTENSION=1       build no extension, and do not try again (setup.py)
#   ADT_FAST_REQUIRE_EXTENSION=1  fail unless adt_fast._C works (CI; tests/conftest.py checks it too)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

flag() {  # whether the variable named $1 is set to 1/true/yes/on, as setup.py reads its flags
  case "$(printf %s "${!1:-0}" | tr '[:upper:]' '[:lower:]')" in 1|true|yes|on) return 0 ;; *) return 1 ;; esac
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

versions() {  # without importing torch (the fast path stays fast); fails when torch is not installed
  "$PY" -c 'import importlib.metadata as m, sys; print("python", sys.version, "torch", m.version("torch"))' 2>/dev/null
}
if ! versions >/dev/null; then
  echo "setup: installing $TORCH_SPEC${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  "$PY" -m pip install --quiet ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
fi

# Everything the extension's build depends on; a change means building it again.
stamp="$VENV/.adt_fast-installed"
build_key=$({
  versions
  env | grep -E '^(ADT_FAST_(NO_EXTENSION|NO_CUDA|REQUIRE_CUDA|CUDA_ARCH|DEBUG)|TORCH_CUDA_ARCH_LIST|CUDA_HOME|CC|CXX|CFLAGS|CXXFLAGS|LDFLAGS)=' | sort || true
  cat pyproject.toml setup.py $(find csrc -type f | sort)
} | sha256sum | cut -d' ' -f1)

install_adt_fast() {
  echo "setup: installing build tools, extras and adt_fast (builds the C++ extension)"
  "$PY" -m pip install --quiet setuptools wheel ninja pybind11
  "$PY" -m pip install --quiet --no-build-isolation -e ".[test,data,tensorboard]"
  echo "$build_key" > "$stamp"
}

# Prints the backends; fails when adt_fast or its cpu backend (adt_fast._C) is unusable, or when
# the last build of adt_fast._C failed (an earlier build's library may still load, stale).
report_backends() {
  "$PY" - <<'PY'
import pathlib
import sys

import adt_fast

statuses = adt_fast.backends()
for b in statuses:
    print(f"setup: backend {b.name:9s} {'available' if b.available else 'unavailable: ' + str(b.reason)}")
build_error = pathlib.Path(adt_fast.__file__).with_name("_C_build_error.txt")
if build_error.is_file():
    print(f"setup: the last build of adt_fast._C failed: {build_error.read_text().strip()}")
sys.exit(0 if all(b.available for b in statuses if b.name == "cpu") and not build_error.is_file() else 3)
PY
}

installed=false
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$build_key" ]; then
  install_adt_fast
  installed=true
fi
until report_backends; do
  if ! $installed && ! flag ADT_FAST_NO_EXTENSION; then
    echo "setup: adt_fast._C did not build or does not load (above); installing again to rebuild it"
    install_adt_fast
    installed=true
    continue
  fi
  if flag ADT_FAST_REQUIRE_EXTENSION; then
    echo "setup: error: ADT_FAST_REQUIRE_EXTENSION=1, but adt_fast._C did not build or does not load (above)" >&2
    exit 1
  fi
  if ! flag ADT_FAST_NO_EXTENSION; then
    echo "setup: warning: adt_fast._C did not build (above), so its tests skip or test an earlier" \
         "build; the next setup tries again (ADT_FAST_NO_EXTENSION=1 stops that)" >&2
  fi
  break
done
