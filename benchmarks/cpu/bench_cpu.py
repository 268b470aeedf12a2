"""One forward + backward of a leaky RNN on the CPU: the cpu backend against its baselines.

    python benchmarks/cpu/bench_cpu.py [--repeats N] [--json PATH] [--steps T] [--batch B] [--hidden H]
                                   [--mixed-lengths]

Rows, all at the same shape (default T=100, B=256, H=500, I=1, float32), timed in one process,
interleaved round by round, median over repeats:
  cpu backend   timescale_kernels.leaky_rnn(..., backend="cpu"), loss = output.sum(), backward
  eager loop    the study's way: a Python loop of small ops per time step, autograd backward
  torch.nn.RNN  Elman tanh RNN (oneDNN), the floor a fused library reaches at this shape

With --mixed-lengths, one batch whose rows have lengths uniform in T/4..T (25..100 at T=100),
against the same batch padded to T (every row runs all T steps):
  cpu backend, padded / cpu backend, mixed lengths   leaky_rnn without and with lengths=
  torch.nn.RNN, padded / torch.nn.RNN, packed        the padded tensor, and a PackedSequence of it

benchmarks/cpu/test_bench_op.py times the same step functions on pytest-benchmark (saved runs,
comparison with the last). This script stays for what that harness does not do: rounds interleaved
across the rows, so that a busy moment of a shared machine hits every row alike, and the ratios.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_params(hidden: int, inputs: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    params = {
        "weight_ih": torch.randn(hidden, inputs, generator=gen),
        "weight_hh": torch.randn(hidden, hidden, generator=gen) / hidden ** 0.5,
        "bias_ih": 0.1 * torch.randn(hidden, generator=gen),
        "bias_hh": 0.1 * torch.randn(hidden, generator=gen),
        "tau": 1.0 + 9.0 * torch.rand(hidden, generator=gen),
    }
    return {k: v.requires_grad_() for k, v in params.items()}


def cpu_backend_step(x, h0, p):
    """The full op path: input GEMM, masked W, alpha, the C++ core, dW GEMM in the backward."""
    from timescale_kernels import leaky_rnn
    out, _ = leaky_rnn(x, h0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["tau"],
                       nonlinearity="leaky_relu", placement="outside", backend="cpu")
    out.sum().backward()


def eager_step(x, h0, p):
    """The study's model written lean: per step leaky_relu((1 - alpha) h + alpha (x_t W_ih^T + b_ih +
    h (W*mask)^T + b_hh)), the input projection inside the loop."""
    hidden = p["weight_hh"].shape[0]
    mask = 1.0 - torch.eye(hidden)
    alpha = 1.0 / torch.clamp(p["tau"], min=1.0)
    h = h0
    outputs = []
    for x_t in x:
        pre = x_t @ p["weight_ih"].T + p["bias_ih"] + h @ (p["weight_hh"] * mask).T + p["bias_hh"]
        h = F.leaky_relu((1 - alpha) * h + alpha * pre)
        outputs.append(h)
    torch.stack(outputs).sum().backward()


def study_loop_step(x, h0, p):
    """The loop as the study's code writes it (its RNN_Stack with trainable tau): the input layer
    applied to all T steps at once, then per step x[t] indexed out of that (T, B, H) tensor, tau
    clamped twice, the recurrent Linear on h. Indexing a step out of a tensor that needs a gradient
    makes autograd build a zero (T, B, H) gradient per step in the backward pass, so this loop costs
    O(T^2 B H) memory traffic on top of its GEMMs."""
    hidden = p["weight_hh"].shape[0]
    w = p["weight_hh"] * (1.0 - torch.eye(hidden))  # the study zeroes the diagonal once per forward
    inp = x @ p["weight_ih"].T + p["bias_ih"]         # (T, B, H)
    h = h0
    outputs = []
    for t in range(x.shape[0]):
        h = (1 - 1 / torch.clamp(p["tau"], min=1.0)) * h + (h @ w.T + p["bias_hh"] + inp[t]) / torch.clamp(
            p["tau"], min=1.0)
        h = F.leaky_relu(h)
        outputs.append(h)
    torch.stack(outputs).sum().backward()


def mixed_length_rows(x, h0, params, rnn, seed: int = 0) -> dict:
    """The rows of --mixed-lengths: the same batch padded, and with lengths uniform in T/4..T."""
    from timescale_kernels import leaky_rnn
    steps, batch, _ = x.shape
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, steps // 4), steps + 1, (batch,), generator=gen)
    print(f"lengths: uniform in {max(1, steps // 4)}..{steps}, mean {lengths.double().mean():.1f} "
          f"(work fraction of the serial steps {lengths.sum().item() / (steps * batch):.3f})")
    p = params

    def leaky(lengths_or_none):
        out, _ = leaky_rnn(x, h0, p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"], p["tau"],
                           nonlinearity="leaky_relu", placement="outside", backend="cpu", lengths=lengths_or_none)
        out.sum().backward()

    def nn_rnn(packed: bool):
        seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, _ = rnn(seq, h0.unsqueeze(0))
        (out.data if packed else out).sum().backward()

    return {"cpu backend, padded": lambda: leaky(None),
            "cpu backend, mixed lengths": lambda: leaky(lengths),
            "torch.nn.RNN, padded": lambda: nn_rnn(False),
            "torch.nn.RNN, packed": lambda: nn_rnn(True)}


def print_speedups(ms: dict) -> None:
    eager_ms, rnn_ms = ms.get("eager loop"), ms["torch.nn.RNN"]
    print(f"{'':16s} {'ms':>9s} {'speedup vs eager':>17s} {'speedup vs nn.RNN':>18s}")
    for name, value in ms.items():
        vs_eager = f"{eager_ms / value:.2f}x" if eager_ms else "-"
        print(f"{name:16s} {value:9.1f} {vs_eager:>17s} {rnn_ms / value:17.2f}x")
    if eager_ms:
        print("eager loop: as the study's code writes it; lean eager loop: the same model with x_t W_ih^T "
              "per step (no indexing into a tensor that needs a gradient)")


def print_mixed_lengths(ms: dict) -> None:
    print(f"{'':28s} {'ms':>9s} {'time / padded':>14s}")
    for name, value in ms.items():
        padded = ms[name.split(",")[0] + ", padded"]
        print(f"{name:28s} {value:9.1f} {value / padded:14.3f}")


def time_rows(rows: dict, params: list, repeats: int) -> dict:
    """Seconds per call of each row: one warm-up call each, then rounds that run every row once."""
    times = {name: [] for name in rows}
    for fn in rows.values():  # warm-up: allocator, oneDNN primitives, thread pool
        fn()
    for _ in range(repeats):
        for name, fn in rows.items():
            for p in params:
                p.grad = None
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--no-eager", action="store_true", help="skip the (slow) eager loop")
    parser.add_argument("--mixed-lengths", action="store_true",
                        help="time a batch of lengths uniform in T/4..T against the same batch padded to T")
    args = parser.parse_args()
    steps, batch, hidden, inputs = args.steps, args.batch, args.hidden, 1

    torch.manual_seed(0)
    x = torch.randn(steps, batch, inputs)
    h0 = torch.zeros(batch, hidden)
    params = make_params(hidden, inputs)
    rnn = torch.nn.RNN(inputs, hidden, nonlinearity="tanh")

    def nn_rnn_step():
        out, _ = rnn(x, h0.unsqueeze(0))
        out.sum().backward()

    if args.mixed_lengths:
        rows = mixed_length_rows(x, h0, params, rnn)
    else:
        rows = {"cpu backend": lambda: cpu_backend_step(x, h0, params)}
    if not args.no_eager and not args.mixed_lengths:
        rows["eager loop"] = lambda: study_loop_step(x, h0, params)
        rows["lean eager loop"] = lambda: eager_step(x, h0, params)
    if not args.mixed_lengths:
        rows["torch.nn.RNN"] = nn_rnn_step

    times = time_rows(rows, list(params.values()) + list(rnn.parameters()), args.repeats)
    ms = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    print(f"forward+backward, T={steps} B={batch} H={hidden} I={inputs} float32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    (print_mixed_lengths if args.mixed_lengths else print_speedups)(ms)

    if args.json:
        result = {
            "benchmark": "bench_cpu --mixed-lengths" if args.mixed_lengths else "bench_cpu",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "shape": {"T": steps, "B": batch, "H": hidden, "I": inputs, "dtype": "float32"},
            "repeats": args.repeats,
            "median_ms": ms,
            "all_ms": {name: [1e3 * t for t in ts] for name, ts in times.items()},
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
