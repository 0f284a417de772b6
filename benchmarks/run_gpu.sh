#!/usr/bin/env bash
# On a GPU machine with torch (CUDA build), triton and nvcc but no internet: build the extension,
# run the GPU tests (marker `cuda`) and print every benchmark table. Installs nothing from the
# network. Budget: under 8 minutes. Results also go to ${OUT:-benchmarks/out}/ as JSON.
# It stops with an error, before any test, unless torch sees a GPU and the `cuda` backend is
# available: otherwise every CUDA test and benchmark would skip and the run would look green.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
export ADT_FAST_CUDA_ARCH=${ADT_FAST_CUDA_ARCH:-9.0}
export ADT_FAST_REQUIRE_CUDA=1   # a CUDA build that fails fails the install (setup.py)
status=0

echo "== machine ($(date -u +%F))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

echo "== build"
start=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps --no-index -q -e .; then
  echo "run_gpu.sh: FAILED: building adt_fast with its CUDA kernels failed (the error is above)" >&2
  exit 1
fi
echo "build took $(( $(date +%s) - start )) s"
$PY - <<'PY' || exit 1
import sys

import torch

import adt_fast

backends = {b.name: b for b in adt_fast.backends()}
for b in backends.values():
    print(f"  {b.name:9s}", "ok" if b.available else b.reason)
if not torch.cuda.is_available():
    sys.exit("run_gpu.sh: FAILED: torch sees no CUDA GPU; this script measures the GPU backends")
if not backends["cuda"].available:
    sys.exit(f"run_gpu.sh: FAILED: the cuda backend is not available ({backends['cuda'].reason})")
print("  build_info:", adt_fast._C.build_info())
PY

echo "== GPU tests"
$PY -m pytest -q -m cuda tests -p no:cacheprovider || status=1
echo "== op tests (all backends, CPU and GPU)"
$PY -m pytest -q tests/test_ops.py tests/test_philox.py -p no:cacheprovider || status=1

if command -v cmake >/dev/null && command -v ninja >/dev/null; then
  echo "== CMake build + ctest (CUDA core tests run here)"
  cmake -S . -B build/cmake-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null \
    && cmake --build build/cmake-gpu >/dev/null && ctest --test-dir build/cmake-gpu --output-on-failure || status=1
fi

bench() {
  local name=$1; shift
  echo "== benchmark: $name"
  $PY -m pytest -q -p no:cacheprovider --benchmark-only --benchmark-max-time=0.5 --benchmark-min-rounds=5 \
    --benchmark-columns=median,iqr,rounds --benchmark-sort=name \
    --benchmark-json="$OUT_DIR/$name.json" "$@" || status=1
}
bench op benchmarks/test_op.py --benchmark-group-by=func,param:batch
bench op_gpu benchmarks/test_op_gpu.py --benchmark-group-by=func,param:batch
bench train_step benchmarks/test_train_step.py --benchmark-group-by=param:arch,param:mode
exit $status
