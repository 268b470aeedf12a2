"""K networks in one leaky_rnn call against what a user has otherwise, one forward + backward each:
K = 8 of (T, B, H) = (20, 64, 64) and K = 4 of (100, 256, 500) (bench_ensemble.py's rows: one
ensemble call, K separate calls, torch.func.vmap over the reference loop, K torch.nn.RNN modules);
and one epoch of K = 4 quick-preset networks (multi-head parity, N = 2..12) trained as one ensemble
against the same four one after another (bench_ensemble_training.py's runners)."""
from __future__ import annotations

import bench_ensemble
import bench_ensemble_training
import pytest
import torch

from timescale_kernels.ops import cpu

ROWS = ("one call", "K calls", "vmap(ref)", "K nn.RNN")


@pytest.mark.parametrize("row", ROWS)
def test_ensemble_op(benchmark, ensemble_shape, row):
    (count, (steps, batch, hidden)), rounds = ensemble_shape
    if row in ("one call", "K calls") and not cpu.is_available():
        pytest.skip(f"the C++ CPU kernel is not available: {cpu.unavailable_reason()}")
    torch.manual_seed(0)
    step = bench_ensemble.ensemble_rows(count, steps, batch, hidden)[row]
    benchmark.group = f"ensemble fwd+bwd K = {count} of (T, B, H) = ({steps}, {batch}, {hidden})"
    benchmark.extra_info.update(K=count, T=steps, B=batch, H=hidden, I=1, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)


@pytest.mark.parametrize("row", ("ensemble", "one after another"))
def test_ensemble_training_epoch(benchmark, ensemble_training, row):
    seeds, n_max, steps, rounds = ensemble_training
    run = bench_ensemble_training.ensemble_epoch if row == "ensemble" else bench_ensemble_training.lone_epochs
    benchmark.group = f"training epoch, {seeds} quick-preset networks, N = 2..{n_max}, {steps} steps"
    benchmark.extra_info.update(seeds=seeds, n_max=n_max, steps=steps, threads=torch.get_num_threads())
    # A fresh group of trainers each round, so every round trains the same epoch.
    benchmark.pedantic(run, setup=lambda: ((bench_ensemble_training.trainers(seeds, n_max, steps),), {}),
                       rounds=rounds, warmup_rounds=0)
