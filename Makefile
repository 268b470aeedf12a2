# The two commands of the README: `make demo` and `make test`.
# Both create .venv if absent, install torch (keeping one that is already importable, e.g. a
# CUDA build), this package with its C++ extension, and the test and sweep (Ray) extras.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.timescale_kernels-installed
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: all install demo test test-fast bench gpu-check clean

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

test: $(STAMP)
	$(VPY) -m pytest -q tests

# The CPU benchmarks, each written to benchmarks/results/ as JSON (a few minutes on 2 cores).
bench: $(STAMP)
	$(VPY) benchmarks/bench_cpu.py --repeats 5 --json benchmarks/results/cpu-2core-epyc.json
	$(VPY) benchmarks/bench_training.py --json benchmarks/results/training-cpu-2core.json
	$(VPY) benchmarks/bench_tau_net.py --steps 10000 --repeats 2 --json benchmarks/results/tau_net-cpu-2core.json

# On a machine with CUDA and a python3 that already has torch and triton (no network needed):
# builds and installs the package, runs the GPU tests, then the whole benchmark table, and writes
# benchmarks/results/.
# The whole command stays under 8 minutes: about a minute to build, then a 7-minute budget.
GPU_CHECK_BUDGET ?= 420
gpu-check:
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	$(PYTHON) benchmarks/gpu_check.py --budget-s $(GPU_CHECK_BUDGET)

clean:
	rm -rf build *.egg-info timescale_kernels/*.so $(DEMO_OUT)
