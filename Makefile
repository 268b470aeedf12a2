# The two commands of the README: `make demo` and `make test`.
# Both create .venv if absent, install torch (keeping one that is already importable, e.g. a
# CUDA build), this package with its C++ extension, and the test (pytest, triton, nn4n), sweep
# (Ray) and examples (neurogym) extras.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.timescale_kernels-installed
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: all install demo test test-install test-fast bench gpu-check gpu-tune triton-3.6 clean

all: test

$(VPY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(STAMP): $(VPY) pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install "$(TORCH_SPEC)"
	$(VPY) -m pip install -q setuptools wheel ninja
	TIMESCALE_KERNELS_REQUIRE_EXT=1 $(VPY) -m pip install -q --no-build-isolation -e ".[test,sweep,examples]"
	$(VPY) -c "import timescale_kernels as tk; print('backends:', tk.available_backends())"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VPY) -m timescale_kernels.cli demo --out $(DEMO_OUT)

# The GPU machine's triton (3.6.0), installed beside the newest for the compile tests: sm_90's and every
# card's (tests/test_triton_compile.py and test_triton_cards.py put this folder first on PYTHONPATH in a subprocess).
TRITON_SIDE := $(VENV)/triton-3.6.0
$(TRITON_SIDE)/.installed: $(VPY)
	$(VPY) -m pip install -q --no-deps --upgrade --target $(TRITON_SIDE) triton==3.6.0
	touch $@

triton-3.6: $(TRITON_SIDE)/.installed

test: $(STAMP) $(TRITON_SIDE)/.installed test-install
	TIMESCALE_KERNELS_TRITON36=$(abspath $(TRITON_SIDE)) $(VPY) -m pytest -q tests

# The install as users do it: the sdist and the wheel built with plain commands (an isolated build,
# no torch in it), the wheel installed into a fresh venv holding only torch and the wheel's own
# dependencies, and tests/install_smoke.py run there on an empty kernel cache, so that the first
# use compiles the kernel (a few minutes on 2 cores).
INSTALL_CHECK ?= build/install-check
test-install: $(STAMP)
	rm -rf $(INSTALL_CHECK)
	$(VPY) -m pip install -q build
	$(VPY) -m build --outdir $(INSTALL_CHECK)/dist .
	$(PYTHON) -m venv $(INSTALL_CHECK)/venv
	$(INSTALL_CHECK)/venv/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(INSTALL_CHECK)/venv/bin/python -m pip install -q $(INSTALL_CHECK)/dist/*.whl
	cd $(INSTALL_CHECK) && TIMESCALE_KERNELS_CACHE_DIR=$$PWD/cache venv/bin/python $(CURDIR)/tests/install_smoke.py

# The CPU benchmarks (benchmarks/cpu, pytest-benchmark; a few minutes on 2 cores): each run is saved
# as JSON under BENCH_STORAGE and compared with the previous run saved there from this machine's
# Python (nothing to compare on the first). BENCH_ARGS passes more options, e.g. -k training.
BENCH_STORAGE ?= benchmarks/results/pytest-benchmark
bench: $(STAMP)
	$(VPY) -m pytest benchmarks/cpu --benchmark-only -p no:cacheprovider --benchmark-storage=$(BENCH_STORAGE) \
		--benchmark-autosave --benchmark-compare $(BENCH_ARGS)

# On a machine with CUDA, torch and triton (no network, no C++ build): GPU benchmarks, GPU tests and one
# compact table, in at most about 6 minutes on an H100/H200. Result files (gpu-<device>.json, .md, .log)
# go to OUT_DIR (or GPU_CHECK_OUT_DIR; default benchmarks/results/). GPU_CHECK_ARGS=--dry-run
# rehearses the command on the CPU. TIMESCALE_KERNELS_JIT=0: the CPU kernel is not compiled there (GPU
# time is scarce and nothing in it measures the CPU kernel); its tests skip, as without a build.
GPU_CHECK_BUDGET ?= 330
gpu-check:
	TIMESCALE_KERNELS_JIT=0 PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu/gpu_check.py --budget-s $(GPU_CHECK_BUDGET) $(GPU_CHECK_ARGS)

# After gpu-check, in the GPU time left (about 3.5 minutes): the launchers' choices measured (the default
# family's tiles, the persistent tilings, the family by shape, a bidirectional layer on two streams).
# Files gpu-tune-<device>.json, .md, .log go where gpu-check's go; GPU_TUNE_ARGS=--dry-run rehearses it.
GPU_TUNE_BUDGET ?= 210
gpu-tune:
	TIMESCALE_KERNELS_JIT=0 PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/kernel_tools/gpu_tune.py --budget-s $(GPU_TUNE_BUDGET) $(GPU_TUNE_ARGS)

clean:
	rm -rf build *.egg-info timescale_kernels/*.so $(DEMO_OUT)
