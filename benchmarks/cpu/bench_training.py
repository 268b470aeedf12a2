"""Epochs per hour of the multi-head parity curriculum: our trainer against the study's training code.

    python benchmarks/cpu/bench_training.py [--paper] [--device cpu|cuda] [--Ns 10 30] [--steps 3] [--json PATH]

For each N (the curriculum holds N' = 2..N, one head each) both implementations run a few training
steps and test batches at the same shape in this process; the time of one epoch is projected to
600 training steps + 50 test batches (the study's epoch):

  ours   experiments.Trainer: batches generated on the device in a few vectorised ops, T from a CPU
         generator, the fastest available op backend, no host sync inside the epoch.
  study  the study's code path, rewritten here: per-sequence task generation in a Python loop
         (each sequence draws its bit rate, then its bits, then one parity per N; torch on the CPU,
         then moved to the device), the eager loop over time with small ops (leaky ReLU outside
         placement, diagonal zeroed in place every forward), all 100 readout heads evaluated each
         forward, loss.item() every step.

Default shapes are small (H=128, B=64) so that it ends in a couple of minutes on a laptop CPU;
--paper uses the study's H=500, B=256. The projection of the study's headline run (multi-head parity
from N=2 to N=100) assumes 1000 epochs with N growing linearly from 2 to 100, and an epoch cost
linear in N through the two measured points.

benchmarks/cpu/test_bench_training.py times the same runners on pytest-benchmark. This script stays
for what that harness does not do: alternating rounds of both implementations, the epoch and headline
projections, and --per-step's aten-call counts from torch.profiler.
"""
from __future__ import annotations

import argparse
import itertools
import datetime
import json
import platform
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

from timescale_kernels.experiments import Trainer, make_config
from timescale_kernels.tasks import sequence_length_range

EPOCH_STEPS, EPOCH_TESTS = 600, 50


# The study's way --------------------------------------------------------------------------------------
def study_batch(Ns, batch_size, length=None):
    """Per-sequence generation as in the study's make_batch_Nbit_pair_parity: (T, B, 1), [labels (B,)].
    length: T, else drawn as the study draws it (N + 2 .. 4N + 1)."""
    top = Ns[-1]
    length = np.random.randint(top + 2, top + 2 + 3 * top) if length is None else length
    with torch.no_grad():
        sequences = [((torch.rand(length) < torch.rand(1)) * 1.0).unsqueeze(-1) for _ in range(batch_size)]
        labels = [torch.stack([(s[-n:].sum() % 2).long() for s in sequences]) for n in Ns]
        sequences = torch.stack(sequences).permute(1, 0, 2)
    return sequences, labels


class StudyRNN(nn.Module):
    """The study's RNN_Stack with one layer: Linear input, Linear recurrence, tau per neuron, 100 heads."""

    def __init__(self, hidden, heads=100):
        super().__init__()
        self.input_layer = nn.Linear(1, hidden)
        self.w_hh = nn.Linear(hidden, hidden)
        self.taus = nn.Parameter(1 + torch.rand(hidden))
        self.fc = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(heads))
        self.afunc = nn.LeakyReLU()

    def forward(self, data):
        h = 0.1 * torch.rand(data.size(1), self.w_hh.in_features, device=data.device)
        x = self.input_layer(data)
        self.w_hh.weight.data.fill_diagonal_(0.0)
        for t in range(data.size(0)):
            tau = torch.clamp(self.taus, min=1.0)
            h = (1 - 1 / tau) * h + (self.w_hh(h) + x[t]) / tau
            h = self.afunc(h)
        return [fc(h) for fc in self.fc]


def study_runner(Ns, hidden, batch_size, device, lengths=None):
    """(train_step, test_step) of the study's code; lengths: an iterator of T per call (else drawn)."""
    model = StudyRNN(hidden).to(device)
    next_length = (lambda: None) if lengths is None else (lambda: next(lengths))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.1, nesterov=True)
    criterion = nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad()
        x, labels = study_batch(Ns, batch_size, next_length())
        x, labels = x.to(device), [y.to(device) for y in labels]
        out = model(x)
        loss = sum(criterion(out[i], labels[i]) for i in range(len(Ns)))
        loss.backward()
        loss.item()  # the study logs every step's loss
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=2.0)
        opt.step()

    @torch.no_grad()
    def test_step():
        x, labels = study_batch(Ns, batch_size, next_length())
        x, labels = x.to(device), [y.to(device) for y in labels]
        out = model(x)
        return [(out[i].argmax(1) == labels[i]).sum() for i in range(len(Ns))]

    return train_step, test_step


# Ours ---------------------------------------------------------------------------------------------------
def our_runner(Ns, hidden, batch_size, device, backend, lengths=None):
    """(train_step, test_step, backend) of our Trainer; lengths: an iterator of T per call (else the
    Trainer draws them)."""
    config = make_config("paper", hidden_size=hidden, batch_size=batch_size, steps_per_epoch=1, test_batches=1,
                         device=device, backend=backend)
    trainer = Trainer(config)
    if lengths is not None:
        trainer._lengths = lambda count: [next(lengths) for _ in range(count)]
    while trainer.curriculum.Ns[-1] < Ns[-1]:
        trainer.curriculum.advance()
    trainer.ensure_heads()
    return (lambda: trainer.train_epoch()), (lambda: trainer.evaluate(1)), trainer.backend


# One training step against the number of heads ---------------------------------------------------------
def _trainer_at(n_max, hidden, batch, steps, device, backend="auto"):
    """A Trainer of the quick preset's multi-head parity whose curriculum holds N = 2..n_max."""
    config = make_config("quick", hidden_size=hidden, batch_size=batch, steps_per_epoch=steps, test_batches=1,
                         device=device, backend=backend, seed=0)
    trainer = Trainer(config)
    while trainer.curriculum.Ns[-1] < n_max:
        trainer.curriculum.advance()
    trainer.ensure_heads()
    return trainer


def _recurrence_epoch(trainer, lengths):
    """The recurrence alone, forward + backward from the last state, at the lengths of one epoch."""
    rnn, batch, hidden = trainer.model.rnn, trainer.config.batch_size, trainer.config.hidden_size
    for length in lengths:
        x = torch.rand(length, batch, 1, device=trainer.device)
        h0 = torch.rand(1, batch, hidden, device=trainer.device)
        output, _ = rnn(x, h0)
        output[-1].sum().backward()
    for p in rnn.parameters():
        p.grad = None


def _count_events(fn, device):
    """(aten calls, device kernels, device memory copies/sets) recorded by torch.profiler while fn runs."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    events = prof.events()
    aten = sum(1 for e in events if e.name.startswith("aten::"))
    on_device = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    copies = sum(1 for e in on_device if "memcpy" in e.name.lower() or "memset" in e.name.lower())
    return aten, len(on_device) - copies, copies


def step_profile(device: str, n_max: int, steps: int = 20, hidden: int = 64, batch: int = 64,
                 rounds: int = 5, backend: str = "auto") -> dict:
    """One training step of multi-head parity with N = 2..n_max (n_max - 1 heads), quick preset's shapes.

    Times `rounds` epochs of `steps` steps (the Trainer's own train_epoch) against the recurrence alone
    (forward + backward, the same sequence lengths, the same batch) in alternating rounds, in wall and
    in process CPU time ("cpu_ms_per_step", "recurrence_cpu_ms", "cpu_step_over_recurrence"); counts the
    aten calls (all, nested ones included) with torch.profiler over one epoch, and on CUDA the kernels
    launched. Returns {"heads", "ms_per_step", "recurrence_ms", "step_over_recurrence",
    "aten_calls_per_step", "recurrence_aten_calls_per_step", "batch_aten_calls_per_step",
    "aten_calls_outside_recurrence_per_step" (the first less the second: the cpu backend calls a GEMM per
    time step, so the recurrence's own count grows with T, hence with N),
    and on CUDA "kernel_launches_per_step", "recurrence_kernel_launches_per_step",
    "memory_ops_per_step"}; times are medians over the rounds, per step.
    """
    trainer = _trainer_at(n_max, hidden, batch, steps, device, backend)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    lengths_gen = trainer.generators["lengths"]
    low, high = sequence_length_range(trainer.curriculum.Ns)

    def epoch_lengths():
        state = lengths_gen.get_state()  # the epoch about to run draws these same lengths
        lengths = torch.randint(low, high + 1, (steps,), generator=lengths_gen).tolist()
        lengths_gen.set_state(state)
        return lengths

    def timed(fn):
        """(wall, process CPU) ms per step; on a shared CPU the second is the less disturbed by other
        processes (with one thread it is the step's own work)."""
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        return ((time.perf_counter() - start) * 1e3 / steps, (time.process_time() - start_cpu) * 1e3 / steps)

    trainer.train_epoch()  # warm-up of both
    _recurrence_epoch(trainer, epoch_lengths())
    step_ms, rec_ms = [], []
    for _ in range(rounds):
        lengths = epoch_lengths()
        rec_ms.append(timed(lambda: _recurrence_epoch(trainer, lengths)))
        step_ms.append(timed(trainer.train_epoch))
    step_ms, rec_ms = np.array(step_ms), np.array(rec_ms)  # (rounds, wall / CPU)
    lengths = epoch_lengths()
    calls, kernels, copies = _count_events(trainer.train_epoch, device)
    rec_calls, rec_kernels, _ = _count_events(lambda: _recurrence_epoch(trainer, lengths), device)
    gen, Ns = trainer.generators["train"], trainer.curriculum.Ns
    batch_calls, _, _ = _count_events(lambda: [trainer._batch(gen, max(Ns) + 2) for _ in range(steps)], device)
    out = {"heads": trainer.model.num_heads, "N_max": n_max, "ms_per_step": float(np.median(step_ms[:, 0])),
           "recurrence_ms": float(np.median(rec_ms[:, 0])),
           "step_over_recurrence": float(np.median(step_ms[:, 0] / rec_ms[:, 0])),
           "cpu_ms_per_step": float(np.median(step_ms[:, 1])), "recurrence_cpu_ms": float(np.median(rec_ms[:, 1])),
           "cpu_step_over_recurrence": float(np.median(step_ms[:, 1] / rec_ms[:, 1])),
           "aten_calls_per_step": calls / steps, "recurrence_aten_calls_per_step": rec_calls / steps,
           "batch_aten_calls_per_step": batch_calls / steps,
           "aten_calls_outside_recurrence_per_step": (calls - rec_calls) / steps}
    if device.startswith("cuda"):
        out.update(kernel_launches_per_step=kernels / steps, recurrence_kernel_launches_per_step=rec_kernels / steps,
                   memory_ops_per_step=copies / steps)
    return out


def per_step_table(args) -> dict:
    """step_profile at each N of args.Ns; prints one row each."""
    print(f"multi-head parity, quick preset shapes H={args.hidden}, B={args.batch}, device {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {args.steps} steps per round, "
          f"median of {args.rounds} rounds")
    print(f"{'heads':>5} {'N':>7} {'ms/step':>8} {'recurrence':>10} {'ratio':>6} {'CPU ms':>7} {'CPU ratio':>9} "
          f"{'aten/step':>9} {'outside':>7} {'batch':>6}")
    rows = []
    for n in args.Ns:
        r = step_profile(args.device, n, steps=args.steps, hidden=args.hidden, batch=args.batch,
                         rounds=args.rounds, backend=args.backend)
        rows.append(r)
        print(f"{r['heads']:>5} {'2..' + str(n):>7} {r['ms_per_step']:>8.2f} {r['recurrence_ms']:>10.2f} "
              f"{r['step_over_recurrence']:>6.2f} {r['cpu_ms_per_step']:>7.2f} {r['cpu_step_over_recurrence']:>9.2f} "
              f"{r['aten_calls_per_step']:>9.1f} "
              f"{r['aten_calls_outside_recurrence_per_step']:>7.1f} {r['batch_aten_calls_per_step']:>6.1f}"
              + (f" launches {r['kernel_launches_per_step']:.1f}" if "kernel_launches_per_step" in r else ""))
    return {"rows": rows}


# Timing -------------------------------------------------------------------------------------------------
def seconds_per_call(fn, calls, device):
    fn()  # warm-up
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def measure(N, args):
    """Both implementations at one N, timed in alternating rounds; the median round counts."""
    Ns = list(range(2, N + 1))
    np.random.seed(0)
    torch.manual_seed(0)
    # Both implementations see the same sequence lengths, call by call: at N = 100, T spans 102..401,
    # and a few calls of lengths drawn apart would differ by a fifth in their mean.
    lengths = np.random.default_rng(N).integers(N + 2, 4 * N + 2, size=args.steps + 1).tolist()
    ours_train, ours_test, backend = our_runner(Ns, args.hidden, args.batch, args.device, args.backend,
                                                itertools.cycle(lengths))
    study_train, study_test = study_runner(Ns, args.hidden, args.batch, args.device, itertools.cycle(lengths))
    impls = {"ours": (ours_train, ours_test, backend), "study": (study_train, study_test, "eager loop")}
    times = {name: {"train": [], "test": []} for name in impls}
    for _ in range(args.rounds):  # alternate, so that a busy moment of the machine hits both
        for name, (train, test, _) in impls.items():
            times[name]["train"].append(seconds_per_call(train, args.steps, args.device))
            times[name]["test"].append(seconds_per_call(test, args.steps, args.device))
    rows = {}
    for name, (_, _, backend) in impls.items():
        t_train, t_test = (float(np.median(times[name][k])) for k in ("train", "test"))
        epoch = EPOCH_STEPS * t_train + EPOCH_TESTS * t_test
        rows[name] = {"backend": backend, "train_step_s": t_train, "test_batch_s": t_test, "epoch_s": epoch,
                      "epochs_per_hour": 3600.0 / epoch}
    rows["speedup"] = rows["study"]["epoch_s"] / rows["ours"]["epoch_s"]
    rows["timed_lengths"] = lengths[1:]  # the T of each timed call, both sides (the first is the warm-up's)
    return rows


def headline_projection(results, epochs=1000, n_end=100):
    """Hours for `epochs` epochs with N rising linearly from 2 to n_end, epoch cost linear in N."""
    (n1, r1), (n2, r2) = sorted(results.items())[:1][0], sorted(results.items())[-1]
    out = {}
    for name in ("ours", "study"):
        slope = max(0.0, (r2[name]["epoch_s"] - r1[name]["epoch_s"]) / (n2 - n1))  # noise cannot make it cheaper
        Ns = np.linspace(2, n_end, epochs)
        out[name] = float(np.sum(r1[name]["epoch_s"] + slope * (Ns - n1))) / 3600.0
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paper", action="store_true", help="the study's shapes: 500 neurons, batch 256")
    p.add_argument("--per-step", action="store_true",
                   help="instead: one training step against the number of heads (ms and aten calls per step, "
                        "the recurrence alone beside it); quick preset's shapes, 1 thread by default")
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--Ns", type=int, nargs="+", default=None,
                   help="highest N of the curriculum (default 10 30; with --per-step 3 6 11 20 42)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps and test batches per round (default 3; with --per-step 20)")
    p.add_argument("--rounds", type=int, default=None, help="alternating timing rounds; the median counts "
                                                            "(default 3; with --per-step 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 with --per-step)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()
    per_step = args.per_step
    args.hidden = args.hidden or (500 if args.paper else 64 if per_step else 128)
    args.batch = args.batch or (256 if args.paper else 64)
    args.Ns = args.Ns or ([3, 6, 11, 20, 42] if per_step else [10, 30])
    args.steps = args.steps or (20 if per_step else 3)
    args.rounds = args.rounds or (5 if per_step else 3)
    threads = args.threads or (1 if per_step else None)
    if threads:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message="timescale_kernels: the")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    meta = {"hidden": args.hidden, "batch": args.batch, "device": args.device, "device_name": device_name,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}
    summary = {**meta, **(per_step_table(args) if per_step else epoch_table(args))}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


def epoch_table(args) -> dict:
    """measure() at each N of args.Ns, and the headline projection; prints the table."""
    print(f"multi-head parity, H={args.hidden}, B={args.batch}, device {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; epoch = {EPOCH_STEPS} steps + "
          f"{EPOCH_TESTS} test batches, projected from the median of {args.rounds} rounds of {args.steps} timed each")
    results = {}
    print(f"{'N':>4} {'impl':>6} {'backend':>11} {'train step':>11} {'test batch':>11} {'epoch':>9} {'epochs/h':>9}")
    for N in args.Ns:
        results[N] = measure(N, args)
        for name in ("ours", "study"):
            r = results[N][name]
            print(f"{N:>4} {name:>6} {r['backend']:>11} {r['train_step_s'] * 1e3:>9.1f}ms {r['test_batch_s'] * 1e3:>9.1f}ms "
                  f"{r['epoch_s']:>8.1f}s {r['epochs_per_hour']:>9.1f}")
        print(f"{N:>4} study / ours epoch time: {results[N]['speedup']:.1f}x")
    summary = {"results": {str(k): v for k, v in results.items()}}
    if len(results) >= 2:
        hours = headline_projection(results)
        summary["headline_hours"] = hours
        print(f"projected headline run (1000 epochs, N rising linearly 2 -> 100, epoch cost linear in N through "
              f"the measured points, these shapes, this device): ours {hours['ours']:.1f} h, "
              f"study's code {hours['study']:.1f} h")
    return summary


if __name__ == "__main__":
    main()
