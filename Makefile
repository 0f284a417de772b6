# The two commands of the README:
#   make demo   set up what is missing, train ADT_EXP on the offline digits data, evaluate it
#   make test   set up what is missing, run the test suite
# and for the CUDA build (no GPU needed):
#   make cuda-build   build adt_fast._C against torch's CUDA wheel (a venv in ~/.cache/adt_fast)
#                     and fail unless build_info() lists the CUDA kernels (scripts/cuda_build.sh)
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/digits

.PHONY: setup demo test bench bench-smoke cmake-test cuda-build

setup:
	VENV=$(VENV) scripts/setup.sh

demo: setup
	$(PY) -m adt_fast train --method adt-exp --dataset digits --out $(RUN) $(if $(wildcard $(RUN)/config.json),--resume,)
	$(PY) -m adt_fast eval --checkpoint $(RUN) --dataset digits --out $(RUN)/report.json

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-group-by=func,param:batch

# Every suite once, untimed, so none can rot; training iterations only in the default mode (the
# other modes are tested in tests/, and resnet18 or emulated bf16 take tens of seconds a step
# on a CPU); the digits epoch without the amortised methods, whose default generators take
# about 70 s an epoch here (their training is tested in tests/test_amortized_methods.py, the
# benchmark's code path by the other methods); make bench times them all.
bench-smoke: setup
	$(PY) -m pytest benchmarks --benchmark-disable -q -k "not resnet18 and not (test_training_iteration and (fp32 or bf16)) and not (test_digits_epoch and (exp-am or imp-am or l2l))"

cmake-test:
	cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake
	ctest --test-dir build/cmake --output-on-failure

cuda-build:
	scripts/cuda_build.sh
