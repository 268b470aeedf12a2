"""One training step of the multi-head parity curriculum (heads N = 2..10 and 2..30, H = 128, B = 64):
our Trainer against the study's training code (bench_training.py's runners: its per-sequence task
generation, eager loop, 100 heads, loss.item() every step). Both see the same sequence lengths,
drawn once from the study's range N + 2 .. 4N + 1, call by call."""
from __future__ import annotations

import itertools

import bench_training
import numpy as np
import pytest
import torch


@pytest.mark.parametrize("who", ["ours", "study"])
def test_training_step(benchmark, training_n, training_shape, who):
    n_max, rounds = training_n
    hidden, batch = training_shape
    Ns = list(range(2, n_max + 1))
    np.random.seed(0)
    torch.manual_seed(0)
    lengths = itertools.cycle(np.random.default_rng(n_max).integers(n_max + 2, 4 * n_max + 2, size=64).tolist())
    if who == "ours":
        step, _, backend = bench_training.our_runner(Ns, hidden, batch, "cpu", "auto", lengths)
    else:
        (step, _), backend = bench_training.study_runner(Ns, hidden, batch, "cpu", lengths), "eager loop"
    benchmark.group = f"training step, multi-head parity N = 2..{n_max}, H = {hidden}, B = {batch}"
    benchmark.extra_info.update(N_max=n_max, H=hidden, B=batch, backend=backend, threads=torch.get_num_threads())
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=2)
