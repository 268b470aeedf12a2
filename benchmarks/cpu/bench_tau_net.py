"""The tau_net simulation of one network: our op in chunks against the study's per-step loop.

    python benchmarks/cpu/bench_tau_net.py [--steps T] [--trials B] [--hidden H] [--device cpu|cuda|all]
                                       [--backends auto,cpu,triton,reference] [--threads N] [--repeats R] [--json PATH]

The study drives each trained network with 10 trials of 100,500 random bits (500 burn-in) without
gradients and records every neuron. Rows, timed in one process on the same network (the study's
multi-head checkpoint when present, else a random one with H neurons):
  study loop       the study's forward: a Python loop of small eager ops per step, every state cloned
                   into a list, then copied to one numpy array (as its analysis code does)
  study loop + FFT ac   the same, then every neuron's autocorrelation from the recording by FFT
  op <backend>     timescale_kernels.leaky_rnn under no_grad, chunks of --chunk steps, state carried
  tau_net <backend> analysis.simulate: the op plus the streaming autocorrelation and covariance sums
  fit              fit_autocorrelation of every neuron (single and double exponentials, AIC)
"vs study": op rows against the study loop, tau_net rows against the study loop + FFT ac.
--steps shortens the run; the table extrapolates linearly to the full 100,500 steps. Each row is the
best of --repeats interleaved rounds.

benchmarks/cpu/test_bench_tau_net.py times the same functions on pytest-benchmark. This script stays
for the interleaved rounds (a shared machine's load hits every row alike), the extrapolation to the
study's 100,500 steps, the fit's time and the GPU rows.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from timescale_kernels import available_backends, leaky_rnn  # noqa: E402
from timescale_kernels.analysis import autocorrelation, fit_autocorrelation, simulate  # noqa: E402
from timescale_kernels.checkpoints import load_study_checkpoint  # noqa: E402
from timescale_kernels.models import MemoryNet  # noqa: E402

FULL_STEPS = 100_500
STUDY_FILE = (Path(__file__).resolve().parents[3] / "shared" / "reference_checkpoints" / "multi_head_parity"
              / "rnn_N2_N11.pt")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def study_loop(model, x, h0):
    """The study's RNN_Stack.forward(savetime=True) for one layer with trained tau."""
    rnn = model.rnn
    w = rnn.weight_hh.clone()
    w.fill_diagonal_(0.0)
    inp_all = F.linear(x, rnn.weight_ih, rnn.bias_ih)           # its input layer, once for all steps
    h = h0
    states = [h.clone()]
    for t in range(x.shape[0]):
        inp = inp_all[t]
        h = ((1 - 1 / torch.clamp(rnn.tau, min=1.0)) * h
             + (F.linear(h, w, rnn.bias_hh) + inp) / torch.clamp(rnn.tau, min=1.0))
        h = F.leaky_relu(h)
        states.append(h.clone())
    return np.array([s.cpu().numpy() for s in states])


@torch.no_grad()
def op_chunks(model, x, h0, backend, chunk):
    rnn = model.rnn
    h = h0
    for lo in range(0, x.shape[0], chunk):
        _, h = leaky_rnn(x[lo:lo + chunk], h, rnn.weight_ih, rnn.weight_hh, rnn.bias_ih, rnn.bias_hh, rnn.tau,
                         backend=backend)
    return h


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def load_model(hidden, device):
    if STUDY_FILE.is_file() and hidden == 500:
        return load_study_checkpoint(STUDY_FILE, device=device), STUDY_FILE.name
    torch.manual_seed(0)
    return MemoryNet("leaky", hidden, num_heads=1).to(device), f"random H={hidden}"


def run_device(device, args, rows):
    model, name = load_model(args.hidden, device)
    total = args.steps + args.burn_in
    scale = FULL_STEPS / total
    gen = torch.Generator(device=device).manual_seed(0)
    rate = torch.rand(args.trials, generator=gen, device=device)
    x = (torch.rand(total, args.trials, generator=gen, device=device) < rate).float().unsqueeze(-1)
    h0 = model.initial_state(args.trials, gen)
    backends = [b for b in args.backends if b in ("auto", "reference") or b in available_backends()]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]      # the interpreter is for tests, not timing
    cases = []                                                   # (method, steps run, fn)
    if not args.no_study:
        cases.append(("study loop", total, lambda: study_loop(model, x, h0)))
        # Its analysis then needs every neuron's autocorrelation from the recording (here by the
        # vectorised FFT of analysis.autocorrelation, faster than its per-neuron loop).
        cases.append(("study loop + FFT ac", total, lambda: autocorrelation(
            study_loop(model, x, h0)[1 + args.burn_in:].transpose(1, 0, 2), 30)))
    for b in backends:
        op_chunks(model, x[:64], h0, b, args.chunk)              # warm-up (compilation, autotuning)
        cases.append((f"op {b}", total, lambda b=b: op_chunks(model, x, h0, b, args.chunk)))
    for b in backends:
        if b == "reference" and len(backends) > 1:
            continue
        cases.append((f"tau_net {b}", total, lambda b=b: simulate(
            model, trials=args.trials, steps=args.steps, burn_in=args.burn_in, chunk=args.chunk, backend=b,
            generator=torch.Generator(device=device).manual_seed(0))))
    best, sim = {}, None
    # Interleaved rounds, best of --repeats: on a shared machine the minimum is the least disturbed.
    for _ in range(args.repeats):
        for method, _, fn in cases:
            seconds, out = timed(fn, device)
            best[method] = min(best.get(method, float("inf")), seconds)
            if method.startswith("tau_net"):
                sim = out
    for method, steps, _ in cases:
        rows.append((str(device), method, steps, best[method], best[method] * scale))
    # Simulation rows compare with the study's loop; the rows with autocorrelations with its loop + FFT.
    base = {"sim": best.get("study loop"), "ac": best.get("study loop + FFT ac")}
    base = {k: v * scale for k, v in base.items() if v is not None}
    if sim is not None:
        seconds, _ = timed(lambda: fit_autocorrelation(sim.ac, 30), device)
        rows.append((str(device), f"fit {sim.ac.shape[0]} neurons", 0, seconds, seconds))
    return name, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=FULL_STEPS - 500, help="measured steps (after burn-in)")
    parser.add_argument("--burn-in", type=int, default=500)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--device", default="all", choices=("cpu", "cuda", "all"))
    parser.add_argument("--backends", default="auto,cpu,triton,reference",
                        type=lambda s: [b.strip() for b in s.split(",") if b.strip()])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the table keeps each row's best")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-study", action="store_true", help="skip the study's loop")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="timescale_kernels: the")
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows, bases = [], {}
    for device in devices:
        name, bases[str(device)] = run_device(device, args, rows)
    print(f"tau_net simulation: {args.trials} trials x {args.steps + args.burn_in} steps, H={args.hidden} ({name}), "
          f"chunk {args.chunk}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'device':<8} {'method':<22} {'steps run':>10} {'seconds':>9} {'at 100,500 steps':>17} {'vs study':>9}")
    for dev, method, steps, seconds, full in rows:
        kind = "ac" if method.startswith(("tau_net", "study loop + FFT")) else "sim"
        base = bases.get(dev, {}).get(kind)
        ratio = f"{base / full:8.1f}x" if base and not method.startswith("fit") else "        -"
        print(f"{dev:<8} {method:<22} {steps:>10} {seconds:>9.3f} {full:>17.2f} {ratio}")
    if args.json:
        info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
                "platform": platform.platform(), "threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "args": {k: v for k, v in vars(args).items()},
                "rows": [dict(zip(("device", "method", "steps", "seconds", "seconds_at_100500"), r)) for r in rows]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
