"""The CPU benchmark suite on pytest-benchmark: shapes, the --bench-tiny switch, and the import path
of the scripts beside it whose code it times (bench_cpu.py, bench_training.py, bench_tau_net.py,
bench_ensemble.py, bench_ensemble_training.py).

    pytest benchmarks/cpu --benchmark-only                      # the suite; `make bench` saves and compares
    pytest benchmarks/cpu --benchmark-disable --bench-tiny      # every benchmark once at a tiny shape

Shapes are (T, B, H) with I = 1 input, float32, torch's default threads. Each benchmark names its
group (one shape or one workload), so that pytest-benchmark's table compares the implementations of
one group side by side.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_cpu, bench_training, bench_tau_net

warnings.filterwarnings("ignore", message="timescale_kernels: the")  # a missing kernel skips its rows instead

# (T, B, H) of one forward + backward, and the rounds each gets (the study's loop takes seconds at the largest).
OP_SHAPES = {(20, 64, 64): 10, (50, 64, 128): 10, (100, 256, 500): 3}
# The training step: the curriculum's largest N (heads N = 2..N), hidden size and batch, rounds.
TRAINING = {10: 20, 30: 10}
TRAINING_SHAPE = (128, 64)
# The tau_net simulation: steps after 500 burn-in, 10 trials of the study's 500-neuron network.
TAU_NET = {"steps": 2000, "burn_in": 500, "trials": 10, "hidden": 500, "chunk": 2048, "rounds": 3}

# Ensembles: K networks of (T, B, H) in one call, rounds; an ensemble training epoch (seeds, N max, steps, rounds).
ENSEMBLES = {(8, (20, 64, 64)): 10, (4, (100, 256, 500)): 3}
ENSEMBLE_TRAINING = (4, 12, 20, 3)

TINY_OP_SHAPES = {(4, 3, 8): 1}
TINY_ENSEMBLES, TINY_ENSEMBLE_TRAINING = {(2, (4, 3, 8)): 1}, (2, 3, 2, 1)
TINY_TRAINING, TINY_TRAINING_SHAPE = {3: 1}, (8, 4)
TINY_TAU_NET = {"steps": 40, "burn_in": 5, "trials": 2, "hidden": 8, "chunk": 16, "rounds": 1}


def pytest_addoption(parser):
    parser.addoption("--bench-tiny", action="store_true",
                     help="tiny shapes: checks that every benchmark runs (with --benchmark-disable)")


def _tiny(config) -> bool:
    return bool(config.getoption("--bench-tiny"))


def pytest_generate_tests(metafunc):
    tiny = _tiny(metafunc.config)
    if "op_shape" in metafunc.fixturenames:
        shapes = TINY_OP_SHAPES if tiny else OP_SHAPES
        metafunc.parametrize("op_shape", list(shapes.items()), ids=["T{}-B{}-H{}".format(*s) for s in shapes])
    if "ensemble_shape" in metafunc.fixturenames:
        shapes = TINY_ENSEMBLES if tiny else ENSEMBLES
        metafunc.parametrize("ensemble_shape", list(shapes.items()),
                             ids=["K{}-T{}-B{}-H{}".format(k, *s) for k, s in shapes])
    if "training_n" in metafunc.fixturenames:
        runs = TINY_TRAINING if tiny else TRAINING
        metafunc.parametrize("training_n", list(runs.items()), ids=[f"N2-{n}" for n in runs])


@pytest.fixture
def training_shape(request) -> tuple[int, int]:
    """(hidden size, batch) of the training-step benchmarks."""
    return TINY_TRAINING_SHAPE if _tiny(request.config) else TRAINING_SHAPE


@pytest.fixture
def ensemble_training(request) -> tuple[int, int, int, int]:
    """(seeds, N max, steps per epoch, rounds) of the ensemble training epoch."""
    return TINY_ENSEMBLE_TRAINING if _tiny(request.config) else ENSEMBLE_TRAINING


@pytest.fixture
def tau_net_settings(request) -> dict:
    return dict(TINY_TAU_NET if _tiny(request.config) else TAU_NET)
