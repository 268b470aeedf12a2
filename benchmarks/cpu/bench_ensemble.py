"""The cpu backend at its GEMM floor, and K networks in one call, forward + backward on the CPU.

    python benchmarks/cpu/bench_ensemble.py [--repeats N] [--threads 1 2] [--json PATH] [--skip-floor]
                                        [--skip-ensemble] [--skip-padded]

Floor rows, per shape (T, B, H) in (20, 64, 64), (50, 64, 128), (100, 256, 500), I = 1, float32:
  cpu backend    leaky_rnn(..., backend="cpu"), loss = output.sum(), backward
  GEMM floor     the same GEMMs alone, as a loop of torch.mm: per step h_{t-1} W^T forward and
                 d_drive W backward, plus dW as one (H, T*B) x (T*B, H) GEMM
  torch.nn.RNN   Elman tanh RNN (oneDNN) at the same shape
Ensemble rows: K = 8 networks of (20, 64, 64) and K = 4 of (100, 256, 500), per-network weights
and tau, a shared input:
  one call       leaky_rnn with (K, ...) tensors, backend="cpu"
  K calls        the same networks one leaky_rnn call each
  vmap(ref)      torch.func.vmap over leaky_rnn(..., backend="reference"): what a user writes today
  K nn.RNN       K torch.nn.RNN modules, one after another
Padded rows: K = 4 networks of (T_k, 64, 64), T_k = 12, 20, 16, 9, as the ensemble trainer runs
networks whose tasks have different sequence lengths:
  padded call    one leaky_rnn call, every input padded to the longest T, lengths (K, B) per network
  K calls        each network one call at its own T, no lengths

The harness is hand-written rather than torch.utils.benchmark: on a machine shared with other
work the load drifts over seconds, so the rows being compared run interleaved, round by round, in
one process (each round runs every row once, in an order shuffled each round), and the ratios
come from the medians of those rounds.
--clock cpu times each call by the process's CPU time instead of the wall clock: on an oversubscribed
machine a call longer than a scheduler slice is descheduled for most of its wall time; CPU time
counts only its own work (with one thread; with more it sums the threads' times).
"""
from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import time

import torch

import timescale_kernels as tk

FLOOR_SHAPES = [(20, 64, 64), (50, 64, 128), (100, 256, 500)]
ENSEMBLES = [(8, (20, 64, 64)), (4, (100, 256, 500))]
PADDED = ((12, 20, 16, 9), 64, 64)  # each network's T, then B and H


def params(hidden, inputs=1, count=None, seed=0):
    """leaky_rnn's parameters (per network with a leading count when given), requiring grad."""
    g = torch.Generator().manual_seed(seed)
    lead = () if count is None else (count,)
    p = dict(weight_ih=torch.randn(*lead, hidden, inputs, generator=g),
             weight_hh=torch.randn(*lead, hidden, hidden, generator=g) / hidden ** 0.5,
             bias_ih=0.1 * torch.randn(*lead, hidden, generator=g),
             bias_hh=0.1 * torch.randn(*lead, hidden, generator=g),
             tau=1.0 + 9.0 * torch.rand(*lead, hidden, generator=g))
    return {k: v.requires_grad_() for k, v in p.items()}


def leaky_step(x, h0, p, backend="cpu"):
    out, _ = tk.leaky_rnn(x, h0, *p.values(), backend=backend)
    out.sum().backward()


def gemm_floor(steps, batch, hidden):
    """The step: the GEMMs of one forward + backward alone (torch.mm into preallocated buffers)."""
    w = torch.randn(hidden, hidden) / hidden ** 0.5
    w_t = w.t().contiguous()
    h = torch.randn(steps + 1, batch, hidden)
    d = torch.randn(steps, batch, hidden)
    out = torch.empty(batch, hidden)

    def step():
        for t in range(steps):
            torch.mm(h[t], w_t, out=out)
        for t in range(steps - 1, -1, -1):
            torch.mm(d[t], w, out=out)
        d.view(-1, hidden).t().mm(h[:-1].reshape(-1, hidden))
    return step


def nn_rnn_step(rnn, x, h0):
    out, _ = rnn(x, h0.unsqueeze(0))
    out.sum().backward()


def time_rounds(rows: dict, repeats: int, clock=time.perf_counter) -> dict:
    """Median seconds per call of each row: a warm-up call each, then rounds running every row once,
    in an order shuffled each round (a fixed seed). A call's time depends on the row before it (at
    (20, 64, 64) the same call read 1.16x to 1.43x the GEMM loop by its place in a fixed order), so in
    a fixed or rotated order a row would always follow the same row; shuffled, each follows each."""
    for fn in rows.values():
        fn()
    names, order = list(rows), random.Random(0)
    times = {name: [] for name in rows}
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            start = clock()
            rows[name]()
            times[name].append(clock() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def floor_rows(steps, batch, hidden):
    x, h0 = torch.randn(steps, batch, 1), torch.zeros(batch, hidden)
    p = params(hidden)
    rnn = torch.nn.RNN(1, hidden)
    return {"cpu backend": lambda: leaky_step(x, h0, p), "GEMM floor": gemm_floor(steps, batch, hidden),
            "torch.nn.RNN": lambda: nn_rnn_step(rnn, x, h0)}


def ensemble_rows(count, steps, batch, hidden):
    x, h0 = torch.randn(steps, batch, 1), torch.zeros(batch, hidden)
    p = params(hidden, count=count)
    singles = [{k: v[i].detach().clone().requires_grad_() for k, v in p.items()} for i in range(count)]
    rnns = [torch.nn.RNN(1, hidden) for _ in range(count)]

    def separate():
        for q in singles:
            leaky_step(x, h0, q)

    def vmapped():
        def one(w_ih, w_hh, b_ih, b_hh, tau):
            return tk.leaky_rnn(x, h0, w_ih, w_hh, b_ih, b_hh, tau, backend="reference")[0]
        torch.func.vmap(one)(*p.values()).sum().backward()

    def modules():
        for rnn in rnns:
            nn_rnn_step(rnn, x, h0)
    return {"one call": lambda: leaky_step(x, h0, p), "K calls": separate, "vmap(ref)": vmapped,
            "K nn.RNN": modules}


def padded_rows(lengths, batch, hidden):
    """One call over K networks padded to the longest T with per-network lengths, against K calls."""
    count, steps = len(lengths), max(lengths)
    xs = [torch.randn(t, batch, 1) for t in lengths]
    padded = torch.zeros(count, steps, batch, 1)
    for k, x in enumerate(xs):
        padded[k, :x.shape[0]] = x
    per_row = torch.tensor(lengths).unsqueeze(1).expand(count, batch).contiguous()
    h0 = torch.zeros(count, batch, hidden)
    p = params(hidden, count=count)
    singles = [{k: v[i].detach().clone().requires_grad_() for k, v in p.items()} for i in range(count)]

    def together():
        out, _ = tk.leaky_rnn(padded, h0, *p.values(), backend="cpu", lengths=per_row)
        out.sum().backward()

    def separate():
        for x, q in zip(xs, singles):
            leaky_step(x, h0[0], q)
    return {"padded call": together, "K calls": separate}


def report(title, ms, base, others):
    print(title)
    for name, value in ms.items():
        ratio = "" if name == base else f"  {base} / {name} = {ms[base] / value:.2f}x" if name in others else ""
        print(f"  {name:14s} {value:9.2f} ms{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-ensemble", action="store_true")
    parser.add_argument("--skip-padded", action="store_true")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time per call (for an oversubscribed machine, one thread)")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in [] if args.skip_floor else FLOOR_SHAPES:
            repeats = args.repeats if shape[2] < 500 else max(3, args.repeats // 3)
            ms = {k: 1e3 * v for k, v in time_rounds(floor_rows(*shape), repeats, clock).items()}
            report(f"floor {shape}, {threads} thread(s), median of {repeats}, {args.clock} clock", ms, "cpu backend",
                   ("GEMM floor", "torch.nn.RNN"))
            results.append(dict(kind="floor", shape=shape, threads=threads, repeats=repeats, median_ms=ms))
        for count, shape in [] if args.skip_ensemble else ENSEMBLES:
            repeats = args.repeats if shape[2] < 500 else max(3, args.repeats // 3)
            ms = {k: 1e3 * v for k, v in time_rounds(ensemble_rows(count, *shape), repeats, clock).items()}
            report(f"ensemble K={count} of {shape}, {threads} thread(s), median of {repeats}, {args.clock} clock", ms,
                   "one call", ("K calls", "vmap(ref)", "K nn.RNN"))
            results.append(dict(kind="ensemble", K=count, shape=shape, threads=threads, repeats=repeats,
                                median_ms=ms))
        if not args.skip_padded:
            ms = {k: 1e3 * v for k, v in time_rounds(padded_rows(*PADDED), args.repeats, clock).items()}
            report(f"padded ensemble T_k={PADDED[0]}, (B, H) = {PADDED[1:]}, {threads} thread(s), median of "
                   f"{args.repeats}, {args.clock} clock", ms, "padded call", ("K calls",))
            results.append(dict(kind="padded", lengths=PADDED[0], shape=PADDED[1:], threads=threads,
                                repeats=args.repeats, median_ms=ms))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(benchmark="bench_ensemble", date=datetime.datetime.now().isoformat(timespec="seconds"),
                           torch=torch.__version__, clock=args.clock, results=results), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
