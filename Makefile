# Fresh machine: `make demo` (set up + main job) and `make test` (set up + whole test suite).
# Everything lives in the virtual environment .venv in the project root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-stamp
export MAX_JOBS ?= 2

.PHONY: setup build demo test lint cmake-build dist wheel-check source-check bench bench-baseline bench-gate gpu-check clean

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
	$(BIN)/ruff check infer_fast tests bench setup.py .ci

cmake-build: $(DEPS)
	$(BIN)/cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE=$(abspath $(BIN)/python)
	$(BIN)/cmake --build build/cmake -j $(MAX_JOBS)

test: build lint
	$(BIN)/python -m pytest -q tests

# sdist + wheel (python -m build, in the tree: the in-place build's objects under build/ are reused), then auditwheel:
# the wheel tagged manylinux_2_28 with torch's, c10's and CUDA's libraries left to the torch install (as torchao and
# xformers do; libgomp.so.1 is torch's own too). The audit resolves those libraries where they are at run time (torch's
# lib/ and the nvidia wheels' lib/ folders), so the glibc floor it reports is the whole install's. auditwheel fails
# when the wheel needs a newer glibc than $(MANYLINUX). Result: dist/*.tar.gz and wheelhouse/*.whl.
MANYLINUX ?= manylinux_2_28_x86_64
AUDITWHEEL_EXCLUDE := --exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libcudart.so*' \
	--exclude 'libgomp.so*'
TORCH_LIB_PATH = $(shell $(BIN)/python -c "import glob, os, torch; d = os.path.dirname(os.path.dirname(torch.__file__)); \
	print(':'.join([os.path.join(d, 'torch', 'lib'), *glob.glob(os.path.join(d, 'nvidia', '*', 'lib'))]))")
dist: $(DEPS)
	rm -rf dist wheelhouse
	$(BIN)/python -m build --sdist --wheel --no-isolation --outdir dist .
	AUDITWHEEL_LD_LIBRARY_PATH=$(TORCH_LIB_PATH) PATH=$(abspath $(BIN)):$$PATH $(BIN)/auditwheel repair \
	  --plat $(MANYLINUX) --only-plat $(AUDITWHEEL_EXCLUDE) -w wheelhouse dist/infer_fast-*.whl
	AUDITWHEEL_LD_LIBRARY_PATH=$(TORCH_LIB_PATH) $(BIN)/auditwheel show wheelhouse/infer_fast-*.whl

# The repaired wheel in a fresh venv (torch and the runtime requirements only) outside the source tree: import,
# `infer-fast info`, each op on CPU, a 2-iteration distill on digits.
wheel-check:
	$(PY) .ci/wheel_check.py --wheel wheelhouse/infer_fast-*.whl

# `pip install <clean clone>` with build isolation (what a user types), then the same smoke test.
source-check:
	$(PY) .ci/wheel_check.py --source

# The fused-op suite (pytest-benchmark): every op x shape x mode x provider, the ratio table at the end.
# BENCH_ARGS passes more, e.g. BENCH_ARGS="--bench-size quick -k bn_stat_loss".
BENCH_ARGS ?=
# The committed baseline's machine class and the settings it was made with (the gate must use the same ones). On this
# shared 2-core VM two threads stall on each other's time slices; one thread does not. A GPU class: BENCH_GATE_ARGS=
BENCH_MACHINE ?= cpu-x86_64-1thread
BENCH_GATE_ARGS ?= --bench-threads=1
BENCH_STORAGE := --benchmark-storage=file://bench/baselines/$(BENCH_MACHINE) $(BENCH_GATE_ARGS)
SUITE := $(BIN)/python -m pytest bench/suites -p no:cacheprovider --benchmark-only
bench: build
	$(SUITE) $(BENCH_ARGS)

# infer_fast's figures as this machine class's baseline, to commit:
# bench/baselines/$(BENCH_MACHINE)/<interpreter>/NNNN_<commit>_<date>.json (make bench compares with eager/compile)
bench-baseline: build
	$(SUITE) --bench-providers=infer_fast $(BENCH_STORAGE) --benchmark-autosave $(BENCH_ARGS)

# Before a kernel change lands: infer_fast's figures against the newest baseline of this machine class; fails when a
# median is more than 25 % slower.
bench-gate: build
	$(SUITE) --bench-providers=infer_fast $(BENCH_STORAGE) --benchmark-compare --benchmark-compare-fail=median:25% $(BENCH_ARGS)

# A GPU machine's own python3 (torch with CUDA, nvcc, ninja, pytest; no venv, no network): build for the local GPU,
# every CUDA test, CPU-vs-CUDA agreement, benchmarks; under 8 minutes. Results: $(GPU_CHECK_OUT)/summary.md.
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	$(PY) bench/gpu_check.py $(GPU_CHECK_OUT)

clean:
	rm -rf build dist wheelhouse *.egg-info infer_fast/_C*.so infer_fast/_build.py
