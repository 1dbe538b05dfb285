# Fresh machine: `make demo` (set up + main job) and `make test` (set up + whole test suite).
# Everything lives in the virtual environment .venv in the project root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-stamp
export MAX_JOBS ?= 2

.PHONY: setup build demo test lint cmake-build wheel wheel-check bench bench-baseline bench-gate gpu-check clean

$(DEPS): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -r requirements.txt
	touch $@

# Incremental (ninja) in-place build of infer_fast._C, then the editable install for the `infer-fast` script.
build: $(DEPS)
	$(BIN)/python setup.py -q build_ext --inplace
	test -x $(BIN)/infer-fast || INFER_FAST_SKIP_EXT=1 $(BIN)/pip install -q -e . --no-build-isolation --no-deps

setup: build

demo: build
	$(BIN)/infer-fast demo

lint: $(DEPS)
	$(BIN)/ruff check infer_fast tests bench setup.py

cmake-build: $(DEPS)
	$(BIN)/cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(BIN)/python)
	$(BIN)/cmake --build build/cmake -j $(MAX_JOBS)

test: build lint
	$(BIN)/python -m pytest -q tests

wheel: $(DEPS)
	$(BIN)/pip wheel . --no-build-isolation --no-deps -w wheelhouse

# Install the wheel into a scratch folder and import it from outside the project (uses the venv's torch).
wheel-check: wheel
	rm -rf build/wheel-check && $(BIN)/pip install -q --no-deps --target build/wheel-check wheelhouse/infer_fast-*.whl
	cd build/wheel-check && PYTHONPATH=. ../../$(BIN)/python -c "import infer_fast, torch; \
	  assert infer_fast.__file__.startswith('$(abspath build/wheel-check)'), infer_fast.__file__; \
	  from infer_fast.models.classes import imagenet1k_wnids; assert len(imagenet1k_wnids()) == 1000; \
	  print('wheel ok:', infer_fast.__version__, 'cuda kernels:', infer_fast.cuda_enabled())"

# The fused-op suite (pytest-benchmark): every op x shape x mode x provider, the ratio table at the end.
# BENCH_ARGS passes more, e.g. BENCH_ARGS="--bench-size quick -k bn_stat_loss".
BENCH_ARGS ?=
BENCH_MACHINE ?= cpu-x86_64-2core
BENCH_STORAGE := --benchmark-storage=file://bench/baselines/$(BENCH_MACHINE)
SUITE := $(BIN)/python -m pytest bench/suites -p no:cacheprovider --benchmark-only
bench: build
	$(SUITE) $(BENCH_ARGS)

# A baseline for this machine class, to commit: bench/baselines/$(BENCH_MACHINE)/<interpreter>/NNNN_<commit>_....json
bench-baseline: build
	$(SUITE) $(BENCH_STORAGE) --benchmark-autosave $(BENCH_ARGS)

# Before a kernel change lands: infer_fast's figures against the newest baseline of this machine class; fails when a
# median is more than 25 % slower.
bench-gate: build
	$(SUITE) -k infer_fast $(BENCH_STORAGE) --benchmark-compare --benchmark-compare-fail=median:25% $(BENCH_ARGS)

# A GPU machine's own python3 (torch with CUDA, nvcc, ninja, pytest; no venv, no network): build for the local GPU,
# every CUDA test, CPU-vs-CUDA agreement, benchmarks; under 8 minutes. Results: $(GPU_CHECK_OUT)/summary.md.
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	$(PY) bench/gpu_check.py $(GPU_CHECK_OUT)

clean:
	rm -rf build dist wheelhouse *.egg-info infer_fast/_C*.so infer_fast/_build.py
