"""A stacked bidirectional LeakyRNN against torch.nn.RNN of the same configuration, on the CPU.

    python benchmarks/cpu/bench_dropin.py [--repeats N] [--threads 2] [--json PATH]
                                      [--steps T] [--batch B] [--hidden H] [--inputs I] [--layers L]

One forward + backward (loss = output.sum()) per call, default (T, B, H) = (100, 256, 500), I = 1,
2 layers, bidirectional, float32, timed in one process, interleaved round by round, median over
repeats:
  LeakyRNN      timescale_kernels.LeakyRNN(..., nonlinearity="tanh", backend="cpu"), tau trained
  torch.nn.RNN  the same layers and directions (tanh, oneDNN)

A hand-written harness rather than pytest-benchmark: the rounds interleave the two modules (and runs
of it alternate with a previous version of the package), an A/B comparison on a shared machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time

import torch
from bench_cpu import cpu_name  # run as a script: benchmarks/ is on sys.path
from torch import nn


def build(args):
    """(leaky, rnn, x): the two modules with the same weights, and one input (T, B, I)."""
    import timescale_kernels as tk
    torch.manual_seed(0)
    rnn = nn.RNN(args.inputs, args.hidden, num_layers=args.layers, nonlinearity="tanh", bidirectional=True)
    leaky = tk.LeakyRNN(args.inputs, args.hidden, num_layers=args.layers, bidirectional=True,
                        nonlinearity="tanh", tau_init=(1.0, 2.0), backend="cpu")
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            getattr(leaky, name).copy_(p)
    x = torch.rand(args.steps, args.batch, args.inputs).round()
    return leaky, rnn, x


def step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    output, _ = model(x)
    output.sum().backward()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--inputs", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    leaky, rnn, x = build(args)
    rows = {"LeakyRNN (cpu backend)": leaky, "torch.nn.RNN (tanh, oneDNN)": rnn}
    for model in rows.values():  # warm-up: allocations, oneDNN primitive creation
        step(model, x)
    times = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, model in rows.items():
            start = time.perf_counter()
            step(model, x)
            times[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ours, theirs = medians["LeakyRNN (cpu backend)"], medians["torch.nn.RNN (tanh, oneDNN)"]
    print(f"(T, B, H) = ({args.steps}, {args.batch}, {args.hidden}), I = {args.inputs}, {args.layers} layers, "
          f"bidirectional, {args.threads} threads, median of {args.repeats}")
    for name, ms in medians.items():
        print(f"  {name:32s} {ms:9.1f} ms")
    print(f"  LeakyRNN / torch.nn.RNN time ratio: {ours / theirs:.3f}")
    result = {"shape": {"T": args.steps, "B": args.batch, "H": args.hidden, "I": args.inputs,
                        "layers": args.layers, "bidirectional": True},
              "threads": args.threads, "repeats": args.repeats, "median_ms": medians, "all_ms": times,
              "ratio_leaky_over_torch": ours / theirs, "cpu": cpu_name(), "torch": torch.__version__,
              "date": datetime.date.today().isoformat()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
