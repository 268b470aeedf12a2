"""The placements against each other on one backend: forward+backward of tk.leaky_rnn, interleaved.

Every placement runs at each (T, B, H) and thread count in the same process, the placements taking
turns repeat after repeat (so that a change in the machine's load reaches all of them alike); each
figure is the median over the repeats, and the ratio is each placement's median over "outside"'s.

    python benchmarks/cpu/bench_placements.py --threads 1 2 --shapes 100,256,500 20,64,64
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import timescale_kernels as tk

PLACEMENTS = ("outside", "voltage", "inside")


def make_args(steps: int, batch: int, hidden: int, seed: int = 0) -> list[torch.Tensor]:
    """The op's tensors at the study's input size (I = 1), weights in torch.nn.RNN's range, all needing grad."""
    g = torch.Generator().manual_seed(seed)
    bound = hidden ** -0.5
    uniform = lambda *shape: (torch.rand(*shape, generator=g) * 2 - 1) * bound  # noqa: E731
    tensors = [torch.rand(steps, batch, 1, generator=g).round(), torch.zeros(batch, hidden), uniform(hidden, 1),
               uniform(hidden, hidden), uniform(hidden), uniform(hidden), 1 + torch.rand(hidden, generator=g)]
    return [t.requires_grad_() for t in tensors]


def fwd_bwd_seconds(args, placement: str, backend: str, nonlinearity: str) -> float:
    """Wall seconds of one forward and backward (loss = output.sum() + h_n.sum())."""
    start = time.perf_counter()
    out, h_n = tk.leaky_rnn(*args, nonlinearity=nonlinearity, placement=placement, backend=backend)
    (out.sum() + h_n.sum()).backward()
    return time.perf_counter() - start


def measure(shape, threads: int, repeats: int, backend: str, nonlinearity: str) -> dict:
    """{placement: median ms} at one shape and thread count, the placements interleaved."""
    torch.set_num_threads(threads)
    args = make_args(*shape)
    times = {p: [] for p in PLACEMENTS}
    for p in PLACEMENTS:  # warm-up: first-call allocations, the output pool
        fwd_bwd_seconds(args, p, backend, nonlinearity)
    for _ in range(repeats):
        for p in PLACEMENTS:
            times[p].append(fwd_bwd_seconds(args, p, backend, nonlinearity))
    return {p: 1e3 * statistics.median(t) for p, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["100,256,500", "20,64,64"], help="T,B,H each")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--nonlinearity", default="leaky_relu")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    rows = []
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        for threads in args.threads:
            ms = measure(shape, threads, args.repeats, args.backend, args.nonlinearity)
            ratios = {p: ms[p] / ms["outside"] for p in PLACEMENTS}
            rows.append({"shape": shape, "threads": threads, "ms": ms, "ratio_to_outside": ratios})
            print(f"(T, B, H) = {shape}, {threads} thread(s): " + ", ".join(
                f"{p} {ms[p]:.2f} ms ({ratios[p]:.3f})" for p in PLACEMENTS), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "nonlinearity": args.nonlinearity, "repeats": args.repeats,
                       "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
