"""The tau_net simulation of one network (10 trials of random bits, the study's 500-neuron multi-head
checkpoint where ../shared holds it, else a random network): the op in chunks and analysis.simulate
(the op with streaming autocorrelations) against the study's per-step loop (bench_tau_net.py's).
2,000 steps after 500 of burn-in; the study runs 100,000, and the time grows linearly with steps."""
from __future__ import annotations

import bench_tau_net
import pytest
import torch

from timescale_kernels.analysis import simulate


def _drive(settings: dict):
    """The model, its name, bits x (burn_in + steps, trials, 1) and h0 (trials, H)."""
    model, name = bench_tau_net.load_model(settings["hidden"], torch.device("cpu"))
    total, trials = settings["steps"] + settings["burn_in"], settings["trials"]
    gen = torch.Generator().manual_seed(0)
    rate = torch.rand(trials, generator=gen)
    x = (torch.rand(total, trials, generator=gen) < rate).float().unsqueeze(-1)
    return model, name, x, model.initial_state(trials, gen)


@pytest.mark.parametrize("row", ["study loop", "op auto", "tau_net auto"])
def test_tau_net_simulation(benchmark, tau_net_settings, row):
    s = tau_net_settings
    model, name, x, h0 = _drive(s)
    if row == "study loop":
        def run():
            return bench_tau_net.study_loop(model, x, h0)
    elif row == "op auto":
        def run():
            return bench_tau_net.op_chunks(model, x, h0, "auto", s["chunk"])
    else:
        def run():
            return simulate(model, trials=s["trials"], steps=s["steps"], burn_in=s["burn_in"], chunk=s["chunk"],
                            backend="auto", generator=torch.Generator().manual_seed(0))
    benchmark.group = f"tau_net simulation, {s['trials']} trials x {s['burn_in'] + s['steps']} steps, {name}"
    benchmark.extra_info.update(steps=s["burn_in"] + s["steps"], trials=s["trials"], network=name,
                                threads=torch.get_num_threads())
    benchmark.pedantic(run, rounds=s["rounds"], warmup_rounds=1)
