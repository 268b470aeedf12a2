"""The training group of `make gpu-check`: whole training steps of the multi-head parity curriculum.

    python benchmarks/gpu/bench_steps.py --results PATH [--dry-run] [--budget-s S]

results['training'] holds
  epochs/<N>      seconds per epoch (600 steps + 50 test batches) of our trainer and of the study's
                  code at N' = 2..N (benchmarks/cpu/bench_training.py's measure), at N = 30 and N = 100
  headline_hours  the study's headline run (multi-head parity to N = 100: 1000 epochs, N rising
                  linearly) projected from those two epochs
  launches/<N>    per training step at N' = 2..N (N = 10 and 100), from torch.profiler: GPU kernels,
                  kernel-launch API calls and aten calls (all levels), the step's milliseconds, and
                  the milliseconds of the recurrence alone (leaky_rnn forward+backward at the step's
                  mean length, same batch and width)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_results import deadline_passed, record, settings, short_error, sync, time_ms  # noqa: E402

import torch  # noqa: E402

LAUNCH_APIS = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
               "cudaLaunchCooperativeKernel", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync"}


def run_epochs(cfg, results, deadline):
    import bench_training
    args = types.SimpleNamespace(hidden=cfg["hidden"], batch=cfg["batch"], device=cfg["device"], backend="auto",
                                 steps=cfg["train_steps"], rounds=1)
    measured = {}
    for N in cfg["epoch_Ns"]:
        if deadline_passed(deadline, 15):
            record(results, ["training", "epochs", str(N)], {"skipped": "group time limit"})
            continue
        try:
            measured[N] = bench_training.measure(N, args)
            record(results, ["training", "epochs", str(N)], measured[N])
        except Exception as err:
            record(results, ["training", "epochs", str(N)], {"error": short_error(err)})
        print(f"training epochs N={N}: {measured.get(N)}", flush=True)
    if len(measured) == 2:
        hours = bench_training.headline_projection(measured)
        record(results, ["training", "headline_hours"], hours)
        print(f"training headline hours: {hours}", flush=True)


def recurrence_ms(T, batch, hidden, device, backend):
    """leaky_rnn forward+backward alone at (T, batch, hidden), input width 1."""
    from timescale_kernels import leaky_rnn
    from timescale_kernels.models import MemoryNet
    rnn = MemoryNet("leaky", hidden, num_heads=1).to(device).rnn
    x = torch.rand(T, batch, 1, device=device)
    h0 = torch.zeros(batch, hidden, device=device)
    params = [rnn.weight_ih, rnn.weight_hh, rnn.bias_ih, rnn.bias_hh, rnn.tau]

    def step():
        out, _ = leaky_rnn(x, h0, *params, backend=backend)
        out.sum().backward()
    step()
    sync(device)
    return time_ms(step, device, params)


def count_launches(train, device, steps):
    """{'gpu_kernels', 'launch_calls', 'aten_calls'} per call of train(), from torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train()
        sync(device)
    events = prof.events()
    return {"gpu_kernels": sum(e.device_type == DeviceType.CUDA for e in events) / steps,
            "launch_calls": sum(e.name in LAUNCH_APIS for e in events) / steps,
            "aten_calls": sum(e.name.startswith("aten::") for e in events) / steps}


def run_launches(cfg, results, deadline):
    from bench_training import our_runner, seconds_per_call
    from timescale_kernels.tasks import sequence_length_range
    device, steps = cfg["device"], max(2, cfg["train_steps"])
    for N in cfg["launch_Ns"]:
        key = f"2..{N}"
        if deadline_passed(deadline, 15):
            record(results, ["training", "launches", key], {"skipped": "group time limit"})
            continue
        row = {}
        try:
            Ns = list(range(2, N + 1))
            train, _, backend = our_runner(Ns, cfg["hidden"], cfg["batch"], device, "auto")
            row["backend"] = backend
            row["step_ms"] = seconds_per_call(train, steps, device) * 1e3
            row.update(count_launches(train, device, steps))
            low, high = sequence_length_range(Ns)
            row["mean_T"] = (low + high) // 2
            row["recurrence_ms"] = recurrence_ms(row["mean_T"], cfg["batch"], cfg["hidden"], device, backend)
            row["step_over_recurrence"] = row["step_ms"] / row["recurrence_ms"]
        except Exception as err:
            row["error"] = short_error(err)
        record(results, ["training", "launches", key], row)
        print(f"training launches {key}: {row}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True, help="the JSON file to update")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting measurements after this")
    args = parser.parse_args(argv)
    cfg = settings(args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench_steps: no CUDA device (use --dry-run to rehearse on the CPU)")
    os.environ.setdefault("TQDM_DISABLE", "1")
    deadline = None if args.budget_s is None else time.monotonic() + args.budget_s
    run_launches(cfg, Path(args.results), deadline)
    run_epochs(cfg, Path(args.results), deadline)


if __name__ == "__main__":
    main()
