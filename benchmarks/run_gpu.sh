#!/usr/bin/env bash
# On a GPU machine with torch (CUDA build), triton and nvcc but no internet: build the extension,
# run the GPU tests (marker `cuda`) and print every benchmark table. Installs nothing from the
# network. Results also go to ${OUT:-benchmarks/out}/ as JSON.
# It stops with an error, before any test, unless torch sees a GPU and the `cuda` backend is
# available: otherwise every CUDA test and benchmark would skip and the run would look green.
# Stages run in order of what matters most (correctness, then the op, then training) and each has
# a time limit in seconds, so a slow stage costs its own rows, not the rest of a short lease:
#   LIMIT_TESTS (each of the two test stages) LIMIT_OP_GPU LIMIT_PROFILE LIMIT_OP LIMIT_TRAIN LIMIT_CMAKE
#   LIMIT_SUITE (last: the rest of the test suite, which on a GPU machine trains and evaluates on
#   the GPU wherever a test leaves the device to its default)
#   (defaults below, about 18 minutes in all; 0 skips a stage)
#   TRAIN_FILTER   a pytest -k expression for the train-step suite (default: all of it)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
export ADT_FAST_CUDA_ARCH=${ADT_FAST_CUDA_ARCH:-9.0}
export ADT_FAST_REQUIRE_CUDA=1   # a CUDA build that fails fails the install (setup.py)
export PYTHONUNBUFFERED=1
status=0

stage() {  # stage NAME LIMIT COMMAND...: run COMMAND under a time limit; a failure or timeout marks the run failed
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  [ "$limit" -eq 0 ] && { echo "== $name: skipped (limit 0)"; return; }
  echo "== $name (limit ${limit} s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  [ $rc -eq 124 ] && echo "run_gpu.sh: $name ran past its ${limit} s limit" >&2
  [ $rc -ne 0 ] && status=1
  echo "== $name took $(( $(date +%s) - start )) s (exit $rc)"
}

echo "== machine ($(date -u '+%F %H:%M UTC'))"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
# Without triton the Triton rows, the same-bytes floor and the trivial pair would all skip and the
# run would still look green: stop here instead.
$PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  || { echo "run_gpu.sh: FAILED: torch and triton must both import (the error is above)" >&2; exit 1; }
command -v nvcc >/dev/null && nvcc --version | tail -2

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
import adt_fast._C

backends = {b.name: b for b in adt_fast.backends()}
for b in backends.values():
    print(f"  {b.name:9s}", "ok" if b.available else b.reason)
if not torch.cuda.is_available():
    sys.exit("run_gpu.sh: FAILED: torch sees no CUDA GPU; this script measures the GPU backends")
if not backends["cuda"].available:
    sys.exit(f"run_gpu.sh: FAILED: the cuda backend is not available ({backends['cuda'].reason})")
print("  build_info:", adt_fast._C.build_info())
PY

stage "GPU tests (marker cuda)" "${LIMIT_TESTS:-120}" $PY -m pytest -q -p no:cacheprovider -m cuda tests
stage "op tests (all backends, CPU and GPU)" "${LIMIT_TESTS:-120}" \
  $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_philox.py

bench() {
  local name=$1 limit=$2; shift 2
  stage "benchmark: $name" "$limit" \
    $PY -m pytest -q -p no:cacheprovider --benchmark-only --benchmark-max-time=0.5 --benchmark-min-rounds=5 \
    --benchmark-columns=median,iqr,rounds --benchmark-sort=name \
    --benchmark-json="$OUT_DIR/$name.json" "$@"
}
bench op_gpu "${LIMIT_OP_GPU:-120}" benchmarks/test_op_gpu.py --benchmark-group-by=func,param:batch
stage "kernels of one call (profile_gpu.py)" "${LIMIT_PROFILE:-90}" \
  $PY benchmarks/profile_gpu.py --batch 64 512 4096 --cuda-splits default small-calls
bench op "${LIMIT_OP:-120}" benchmarks/test_op.py --benchmark-group-by=func,param:batch
bench train_step "${LIMIT_TRAIN:-150}" benchmarks/test_train_step.py --benchmark-group-by=param:arch,param:mode \
  ${TRAIN_FILTER:+-k "$TRAIN_FILTER"}

if command -v cmake >/dev/null && command -v ninja >/dev/null; then
  stage "CMake build + ctest (CUDA core tests run here)" "${LIMIT_CMAKE:-120}" bash -c \
    "cmake -S . -B build/cmake-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null \
     && cmake --build build/cmake-gpu >/dev/null && ctest --test-dir build/cmake-gpu --output-on-failure"
elif [ "${LIMIT_CMAKE:-120}" -ne 0 ]; then
  echo "run_gpu.sh: FAILED: cmake and ninja are needed for the CUDA ctest stage (LIMIT_CMAKE=0 skips it)" >&2
  status=1
fi
stage "the rest of the test suite (default device: the GPU)" "${LIMIT_SUITE:-300}" \
  $PY -m pytest -q -p no:cacheprovider -m "not cuda" tests --ignore=tests/test_ops.py --ignore=tests/test_philox.py
exit $status
