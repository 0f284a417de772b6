#!/usr/bin/env bash
# Builds adt_fast._C against torch's CUDA wheel with the CUDA toolkit at CUDA_HOME, with
# ADT_FAST_REQUIRE_CUDA=1, and fails unless build_info() lists the CUDA kernels for every
# architecture asked. No GPU needed (nothing runs on one); CI runs it whenever nvcc is present.
# The build uses a copy of the working tree (tracked and untracked, not ignored files), so the
# checkout's own .venv build is left alone. The venv lives outside the checkout and is reused;
# creating it downloads torch's CUDA wheel with its CUDA libraries (about 4.7 GB).
#   CUDA_VENV             the venv (default ~/.cache/adt_fast/cuda-venv)
#   CUDA_HOME             the CUDA toolkit (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST  the architectures to build and check (default 9.0)
#   TORCH_SPEC            the torch to install into a new venv (default torch==2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_VENV=${CUDA_VENV:-$HOME/.cache/adt_fast/cuda-venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export ADT_FAST_REQUIRE_CUDA=1
unset ADT_FAST_CUDA_ARCH ADT_FAST_NO_CUDA ADT_FAST_NO_EXTENSION  # setup.py would prefer them
PY="$CUDA_VENV/bin/python"

if ! "$PY" -c "import sys, torch; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
  echo "cuda-build: installing $TORCH_SPEC (torch's CUDA wheel, about 4.7 GB) into $CUDA_VENV"
  [ -x "$PY" ] || python3 -m venv "$CUDA_VENV"
  # --isolated: ignore this machine's pip configuration, whose local wheel folder has the CPU torch
  "$PY" -m pip install --isolated --quiet "$TORCH_SPEC" setuptools wheel ninja numpy
fi

src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done \
  | xargs -0 cp --parents -t "$src"
echo "cuda-build: building adt_fast._C in $CUDA_VENV (CUDA_HOME=$CUDA_HOME, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
(cd "$src" && "$PY" -m pip install --no-build-isolation --no-deps --quiet .)
echo "cuda-build: built in $(( $(date +%s) - start )) s"

# cuobjdump (shipped with nvcc, and with triton) lists what the library really embeds.
cuobjdump=$(command -v "$CUDA_HOME/bin/cuobjdump" || ls "$CUDA_VENV"/lib/python*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -1 || true)
cd "$CUDA_VENV"  # import the installed package, not a source tree's
"$PY" - "$cuobjdump" <<'PY'
import os, re, subprocess, sys

import adt_fast._C as C

info = C.build_info()
print(f"cuda-build: build_info() = {info}")
listed = info["cuda_archs"].split(",") if info["cuda"] else []
asked = [f"sm_{major}{minor}" for major, minor in re.findall(r"(\d+)\.(\d+)", os.environ["TORCH_CUDA_ARCH_LIST"])]
missing = [target for target in asked if target not in listed]
if not info["cuda"] or not asked or missing:
    sys.exit(f"cuda-build: FAILED: the CUDA kernels for {missing or asked} are not in adt_fast._C "
             f"(TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']!r})")
cuobjdump = sys.argv[1]
if cuobjdump:
    listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", C.__file__], capture_output=True,
                             text=True).stdout
    embedded = {f"sm_{n}" for n in re.findall(r"\.sm_(\w+)\.cubin", listing)}
    embedded |= {f"compute_{n}" for n in re.findall(r"\.sm_(\w+)\.ptx", listing)}
    if embedded != set(listed):
        sys.exit(f"cuda-build: FAILED: build_info() lists {listed}, cuobjdump finds {sorted(embedded)}")
    print(f"cuda-build: cuobjdump agrees: {sorted(embedded)}")
else:
    print("cuda-build: no cuobjdump found; the embedded targets were not cross-checked")
print("cuda-build: OK")
PY
