# The two commands of the README: `make demo` and `make test`.
# Both create .venv if absent, install torch (keeping one that is already importable, e.g. a
# CUDA build), this package with its C++ extension, and the test (pytest, triton, nn4n) and sweep
# (Ray) extras.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.timescale_kernels-installed
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: all install demo test test-fast bench gpu-check gpu-tune triton-3.6 clean

all: test

$(VPY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(STAMP): $(VPY) pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install "$(TORCH_SPEC)"
	$(VPY) -m pip install -q setuptools wheel ninja
	TIMESCALE_KERNELS_REQUIRE_EXT=1 $(VPY) -m pip install -q --no-build-isolation -e ".[test,sweep]"
	$(VPY) -c "import timescale_kernels as tk; print('backends:', tk.available_backends())"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VPY) -m timescale_kernels.cli demo --out $(DEMO_OUT)

# The GPU machine's triton (3.6.0), installed beside the newest for the sm_90 compile tests
# (tests/test_triton_compile.py puts this folder first on PYTHONPATH in a subprocess).
TRITON_SIDE := $(VENV)/triton-3.6.0
$(TRITON_SIDE)/.installed: $(VPY)
	$(VPY) -m pip install -q --no-deps --upgrade --target $(TRITON_SIDE) triton==3.6.0
	touch $@

triton-3.6: $(TRITON_SIDE)/.installed

test: $(STAMP) $(TRITON_SIDE)/.installed
	TIMESCALE_KERNELS_TRITON36=$(abspath $(TRITON_SIDE)) $(VPY) -m pytest -q tests

# The CPU benchmarks, each written to benchmarks/results/ as JSON (a few minutes on 2 cores).
bench: $(STAMP)
	$(VPY) benchmarks/bench_cpu.py --repeats 5 --json benchmarks/results/cpu-2core-epyc.json
	$(VPY) benchmarks/bench_training.py --json benchmarks/results/training-cpu-2core.json
	$(VPY) benchmarks/bench_tau_net.py --steps 10000 --repeats 2 --json benchmarks/results/tau_net-cpu-2core.json

# On a machine with CUDA, torch and triton (no network, no C++ build): GPU benchmarks, GPU tests and one
# compact table, in at most about 6 minutes on an H100/H200. Result files (gpu-<device>.json, .md, .log)
# go to OUT_DIR (or GPU_CHECK_OUT_DIR; default benchmarks/results/). GPU_CHECK_ARGS=--dry-run
# rehearses the command on the CPU.
GPU_CHECK_BUDGET ?= 330
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_check.py --budget-s $(GPU_CHECK_BUDGET) $(GPU_CHECK_ARGS)

# After gpu-check, in the GPU time left (about 3.5 minutes): the launchers' choices measured (the default
# family's tiles, the persistent tilings, the family by shape, a bidirectional layer on two streams).
# Files gpu-tune-<device>.json, .md, .log go where gpu-check's go; GPU_TUNE_ARGS=--dry-run rehearses it.
GPU_TUNE_BUDGET ?= 210
gpu-tune:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/gpu_tune.py --budget-s $(GPU_TUNE_BUDGET) $(GPU_TUNE_ARGS)

clean:
	rm -rf build *.egg-info timescale_kernels/*.so $(DEMO_OUT)
