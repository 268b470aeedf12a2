"""Four seeds trained as one ensemble against the same four one after another, in one process.

    python benchmarks/cpu/bench_ensemble_training.py [--seeds 4 [K ...]] [--n-max 12] [--steps 50] [--rounds 5]
        [--threads 1] [--model leaky|gru|lstm] [--breakdown] [--json PATH]

The quick shapes (64 neurons, batch 64), multi-head parity with the curriculum at N = 2..n_max (one
head each), one thread. Each round times one epoch (--steps training steps and 2 test batches) of
the K lone Trainers one after another, then the same epoch of the K networks as one
EnsembleTrainer, alternating, from the same starting networks; the result is the median ratio
(ensemble / one after another), in wall time and in process CPU time (the less disturbed on a
shared machine).

--breakdown: the time per training step split into the batch (task bits, labels, h0; padding and
stacking for the ensemble), the recurrence (forward and backward), the readout and loss (forward and
backward) and the optimizer (clip, step, zero_grad), for the K lone networks together and for the
ensemble, from an instrumented copy of the step (the phases separated by detaching the final state).

--seeds K1 K2 ...: the comparison at each ensemble size, each in its own process (in one process a
size's times depend on the sizes run before it), then a straight line through the ensemble's epoch
times (CPU time at one thread, wall time at several), E(K) = fixed + K * per_network (least
squares): per_network is what one more network costs the ensemble, fixed what it pays once. With
one lone network's epoch l, the ratio at K is (fixed + K * per_network) / (K * l); it tends to
per_network / l as K grows, and reaching a ratio r at K needs per_network <= r * l - fixed / K
(printed for r = 0.5). --plot PATH draws it: each size's epoch time per network, lone and in the
ensemble, with the fitted curve fixed / K + per_network and half a lone network's time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from timescale_kernels.experiments import Trainer, make_config
from timescale_kernels.experiments.ensemble import EnsembleTrainer
from timescale_kernels.experiments.stack import NetworkStack
from timescale_kernels.experiments.trainer import clip_gradients

PHASES = ("batch", "recurrence", "readout_loss", "optimizer")


MODEL = {"name": "leaky"}


def trainers(seeds: int, n_max: int, steps: int) -> list[Trainer]:
    """Fresh quick-preset Trainers (seeds 0..seeds-1) whose curricula hold N = 2..n_max."""
    out = []
    for seed in range(seeds):
        trainer = Trainer(make_config("quick", seed=seed, steps_per_epoch=steps, test_batches=2, device="cpu",
                                      model=MODEL["name"]))
        while trainer.curriculum.Ns[-1] < n_max:
            trainer.curriculum.advance()
        trainer.ensure_heads()
        out.append(trainer)
    return out


def timed(fn) -> tuple[float, float]:
    """(wall s, process CPU s) of fn()."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def lone_epochs(group):
    for trainer in group:
        trainer.train_epoch()
        trainer.evaluate()


def ensemble_epoch(group):
    ensemble = EnsembleTrainer(group)
    stack = NetworkStack(ensemble.active)
    ensemble._prepare_heads(stack)
    ensemble.train_epoch(stack)
    ensemble.evaluate(stack)
    stack.write_back()


def compare(args, seeds: int) -> dict:
    """Median times of one epoch of `seeds` networks, one after another and as one ensemble."""
    times = {"lone": [], "ensemble": []}
    for _ in range(args.rounds):
        times["lone"].append(timed(lambda: lone_epochs(trainers(seeds, args.n_max, args.steps))))
        times["ensemble"].append(timed(lambda: ensemble_epoch(trainers(seeds, args.n_max, args.steps))))
    return _medians(times)


def compare_sizes(args) -> dict:
    """{K: compare(args, K)} for each K in args.seeds, each size in its own process: in one process
    a size's times depend on the sizes run before it (K = 2 read 1.01-1.11x after larger ensembles
    and 0.85-0.92x alone, benchmarks/NOTES.md)."""
    epochs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.seeds:
            path = Path(tmp) / f"{k}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--seeds", str(k), "--n-max", str(args.n_max),
                       "--steps", str(args.steps), "--rounds", str(args.rounds), "--threads", str(args.threads),
                       "--model", args.model, "--json", str(path)]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            print(done.stdout, end="", flush=True)
            if done.returncode != 0:
                raise SystemExit(f"bench_ensemble_training: the run of {k} networks failed (exit status "
                                 f"{done.returncode})")
            epochs[k] = json.loads(path.read_text())["epoch"]
    return epochs


def _medians(times: dict) -> dict:
    med = {k: np.median(np.array(v), axis=0) for k, v in times.items()}
    return {"lone_s": med["lone"].tolist(), "ensemble_s": med["ensemble"].tolist(),
            "ratio_wall": float(med["ensemble"][0] / med["lone"][0]),
            "ratio_cpu": float(med["ensemble"][1] / med["lone"][1]), "rounds": times}


def fit_sizes(epochs: dict, target: float = 0.5, column: int = 1) -> dict:
    """The ensemble's epoch time as fixed + K * per_network, from {K: compare()'s result} at two or
    more sizes (least squares), and one lone network's epoch (the lone epochs' time over K, averaged);
    column 1 reads process CPU times (one thread), 0 wall times (several threads, whose CPU time
    counts the threads' waiting).
    Returns those three in seconds, the ratio as K grows (per_network / lone_network) and, at each K,
    the per_network that the target ratio would need with the same fixed cost."""
    sizes = sorted(epochs)
    if len(sizes) < 2:
        raise ValueError(f"fit_sizes: expected at least two ensemble sizes; got {sizes}")
    k = np.array(sizes, dtype=float)
    ensemble = np.array([epochs[s]["ensemble_s"][column] for s in sizes])
    per_network, fixed = np.polyfit(k, ensemble, 1)
    lone = float(np.mean([epochs[s]["lone_s"][column] / s for s in sizes]))
    return {"time": ("wall", "CPU")[column], "fixed_s": float(fixed), "per_network_s": float(per_network),
            "lone_network_s": lone, "ratio_limit": float(per_network / lone), "target": target,
            "per_network_needed_s": {str(s): float(target * lone - fixed / s) for s in sizes}}


def plot_sizes(out: dict, path: str) -> None:
    """A PNG of out["sizes"] and out["fit"] (this script's JSON): epoch time per network against K."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fit, column = out["fit"], 1 if out["fit"].get("time", "CPU") == "CPU" else 0
    sizes = sorted(int(k) for k in out["sizes"])
    per = {kind: [out["sizes"][str(k)][f"{kind}_s"][column] / k for k in sizes] for kind in ("lone", "ensemble")}
    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(sizes, per["lone"], "o-", color="0.45", label="one after another")
    ax.plot(sizes, per["ensemble"], "o-", color="tab:blue", label="one ensemble")
    grid = np.linspace(min(sizes), max(sizes), 200)
    ax.plot(grid, fit["fixed_s"] / grid + fit["per_network_s"], "--", color="tab:blue",
            label=f"fit: {fit['fixed_s']:.3f} / K + {fit['per_network_s']:.3f}")
    ax.axhline(fit["target"] * fit["lone_network_s"], color="tab:red", lw=0.8,
               label=f"{fit['target']:g} x a lone network")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(k) for k in sizes])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("networks K")
    ax.set_ylabel(f"{fit.get('time', 'CPU')} s per network, one epoch")
    ax.set_title(f"{out['threads']} thread(s), {out.get('model', 'leaky')}, N = 2..{out['n_max']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _phase(totals, name, start):
    now = time.process_time()
    totals[name] += now - start
    return now


def lone_breakdown(group, steps) -> dict:
    """CPU ms per step of each phase, summed over the lone networks."""
    totals = dict.fromkeys(PHASES, 0.0)
    for trainer in group:
        heads, params = trainer.curriculum.heads, trainer.optimizer.param_groups[0]["params"]
        for length in trainer._lengths(steps):
            t = time.process_time()
            x, labels, h0 = trainer._batch(trainer.generators["train"], length)
            t = _phase(totals, "batch", t)
            h_n = trainer.model.core_final_state(x, h0)
            state = h_n.detach().requires_grad_()
            t = _phase(totals, "recurrence", t)
            logits = trainer.model.readout(state, heads)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1)) * len(heads)
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t = _phase(totals, "readout_loss", t)
            h_n.backward(state.grad)
            t = _phase(totals, "recurrence", t)
            clip_gradients(params, trainer.config.clip)
            trainer._step(None)
            _phase(totals, "optimizer", t)
    return {k: 1e3 * v / steps for k, v in totals.items()}


def ensemble_breakdown(group, steps) -> dict:
    """CPU ms per step of each phase of the ensemble's step (all K networks)."""
    ensemble = EnsembleTrainer(group)
    stack = NetworkStack(ensemble.active)
    ensemble._prepare_heads(stack)
    totals = dict.fromkeys(PHASES, 0.0)
    for lengths in zip(*[t._lengths(steps) for t in group]):
        t = time.process_time()
        x, labels, h0 = ensemble._batches("train", list(lengths))
        t = _phase(totals, "batch", t)
        h_n = stack.final_states(x, h0, list(lengths))
        state = h_n.detach().requires_grad_()
        t = _phase(totals, "recurrence", t)
        h1 = torch.nn.functional.pad(state, (0, 1), value=1.0)
        table = stack.tensors["readout.table"]
        logits = torch.bmm(h1, table.view(len(stack), -1, stack.hidden + 1).transpose(1, 2))
        losses = stack.losses(logits.view(len(stack), h1.shape[1], stack.capacity, -1), labels)
        stack.zero_grad()
        losses.sum().backward()
        t = _phase(totals, "readout_loss", t)
        h_n.backward(state.grad)
        t = _phase(totals, "recurrence", t)
        stack.clip_and_step(None)
        _phase(totals, "optimizer", t)
    return {k: 1e3 * v / steps for k, v in totals.items()}


def breakdown(args, seeds: int) -> dict:
    rows = {"lone": [], "ensemble": []}
    for _ in range(args.rounds):
        rows["lone"].append(lone_breakdown(trainers(seeds, args.n_max, args.steps), args.steps))
        rows["ensemble"].append(ensemble_breakdown(trainers(seeds, args.n_max, args.steps), args.steps))
    return {kind: {p: float(np.median([r[p] for r in rs])) for p in PHASES} for kind, rs in rows.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[4],
                   help="networks per ensemble; several sizes add the fit of the ensemble's cost against K")
    p.add_argument("--n-max", type=int, default=12)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", choices=("leaky", "gru", "lstm"), default="leaky",
                   help="GRU and LSTM run their recurrences network by network inside the ensemble")
    p.add_argument("--breakdown", action="store_true", help="also the per-step breakdown by phase (CPU time)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="with several --seeds: a PNG of the time per network against K")
    args = p.parse_args()
    if min(args.seeds) < 1 or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: expected distinct sizes of at least 1; got {args.seeds}")
    if args.plot and len(args.seeds) < 2:
        p.error("--plot: expected two or more --seeds")
    torch.set_num_threads(args.threads)
    MODEL["name"] = args.model
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "threads": args.threads, "seeds": args.seeds[0],
           "model": args.model, "n_max": args.n_max, "steps": args.steps, "rounds": args.rounds}
    if len(args.seeds) == 1:
        out["epoch"] = e = compare(args, args.seeds[0])
        print(f"one epoch ({args.steps} steps + 2 test batches) of {args.seeds[0]} networks at N = 2..{args.n_max}, "
              f"{args.threads} thread(s): one after another {e['lone_s'][0]:.3f} s wall / {e['lone_s'][1]:.3f} s CPU, "
              f"ensemble {e['ensemble_s'][0]:.3f} / {e['ensemble_s'][1]:.3f}: ratio {e['ratio_wall']:.3f} wall, "
              f"{e['ratio_cpu']:.3f} CPU", flush=True)
    else:
        epochs = compare_sizes(args)
        out["epoch"] = epochs[args.seeds[0]]
        out["sizes"] = {str(k): v for k, v in epochs.items()}
        out["fit"] = fit = fit_sizes(epochs, column=1 if args.threads == 1 else 0)
        print(f"ensemble epoch {fit['time']} s = {fit['fixed_s']:.4f} + K x {fit['per_network_s']:.4f}; "
              f"one lone network {fit['lone_network_s']:.4f} s: ratio -> {fit['ratio_limit']:.3f} as K grows; "
              "0.5 would need a network's share at "
              + ", ".join(f"K = {k}: {v:.4f} s" for k, v in fit["per_network_needed_s"].items()))
        if args.plot:
            plot_sizes(out, args.plot)
    if args.breakdown:
        out["breakdown_ms_per_step"] = rows = breakdown(args, args.seeds[0])
        print(f"{'CPU ms per step':<22}" + "".join(f"{p:>14}" for p in PHASES) + f"{'total':>10}")
        for kind, r in rows.items():
            print(f"{kind:<22}" + "".join(f"{r[p]:>14.3f}" for p in PHASES) + f"{sum(r.values()):>10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
