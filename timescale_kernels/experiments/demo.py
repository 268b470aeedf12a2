"""The demo: multi-head against single-head N-parity on a CPU, and a report beside the study's figures.

    DIR/multi/, DIR/single/    two run directories (rundir.py), trained one after the other
    DIR/plots/*.png            both runs in one figure each
    DIR/report.md              which curriculum got further, and how tau differs
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..files import atomic_write_json, atomic_write_text
from .config import make_config
from .plots import checkpoint_taus, plot_progress, plot_tau_vs_N, write_plots
from .rundir import RunDir, RunDirError
from .scoring import load_any_checkpoint, score
from .trainer import Trainer

RUNS = (("multi-head", "multi"), ("single-head", "single"))
# The study's repository sits beside ours in this project's layout; elsewhere this is simply absent.
STUDY_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference_checkpoints"
STUDY_FILES = (("multi-head", "multi_head_parity/rnn_N2_N11.pt"), ("single-head", "single_head_parity/rnn_N5_N5.pt"),
               ("single-head", "single_head_parity/rnn_N11_N11.pt"))

STUDY_CLAIMS = """\
| | multi-head | single-head |
| --- | --- | --- |
| highest N passed within 1000 epochs | 100 | stalls near 35 |
| mean clamp(tau, 1) as N grows | stays near 1.2-1.5 | grows, about 1.4 to 1.7 between N = 15 and 32 |
"""


def prepare_demo_dir(out: Path) -> None:
    """Creates out, or clears a previous demo there; refuses a directory that holds anything else."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "demo.json").exists():
        raise RunDirError(f"out: {out} is not empty and holds no earlier demo; choose another --out")
    for _, name in RUNS:
        RunDir(out / name).prepare_new(overwrite=True)
    if (out / "plots").is_dir():
        shutil.rmtree(out / "plots")
    (out / "report.md").unlink(missing_ok=True)


def run_demo(out, *, budget: float = 600.0, seed: int = 0, progress: bool = False, log=None,
             study_dir: Path | None = STUDY_DIR, **overrides) -> Path:
    """Trains the two quick runs, each for about 45% of budget seconds of training, then writes the
    report; returns its path. overrides: RunConfig settings on top of the quick preset."""
    out = Path(out)
    prepare_demo_dir(out)
    atomic_write_json(out / "demo.json", {"budget": budget, "seed": seed, "overrides": overrides})
    results = {}
    start = time.perf_counter()
    for label, curriculum in RUNS:
        settings = {"max_epochs": 100_000, "time_budget": 0.45 * budget, **overrides}
        config = make_config("quick", curriculum=curriculum, seed=seed, **settings)
        run_dir = RunDir(out / curriculum)
        run_dir.write_config(config)
        if log:
            log(f"demo: training {label} parity ({config.hidden_size} neurons) for about "
                f"{config.time_budget / 60:.1f} min")
        trainer = Trainer(config, run_dir, progress=progress, log=log)
        summary = trainer.run()
        write_plots(run_dir, trainer.metrics)
        atomic_write_json(run_dir.path / "summary.json", summary)
        results[label] = (config, summary, trainer.metrics, checkpoint_taus(run_dir), run_dir)
        if summary["stop_reason"] == "interrupted":
            break
    plots = out / "plots"
    plot_progress({label: r[2] for label, r in results.items()}, plots / "n_reached.png")
    plot_tau_vs_N({label: r[3] for label, r in results.items()}, plots / "tau_vs_N.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)  # the quick preset's choice, for these small passes too
    try:
        study = _study_networks(study_dir)
    finally:
        torch.set_num_threads(threads)
    report = out / "report.md"
    atomic_write_text(report, _report(results, study, budget, time.perf_counter() - start))
    return report


def _study_networks(study_dir) -> list[tuple[str, str, dict, np.ndarray]]:
    """(curriculum, file, accuracy per N, clamp(tau, 1)) for the study's shipped networks found."""
    found = []
    if study_dir is None or not Path(study_dir).is_dir():
        return found
    for label, name in STUDY_FILES:
        path = Path(study_dir) / name
        if not path.is_file():
            continue
        model, meta = load_any_checkpoint(path)
        top = max(meta["Ns"])
        probe = {n: meta["head_for_N"].get(n, 0) for n in sorted({top, max(2, top // 2)})}
        acc = score(model, "parity", probe, batch_size=256, seed=0, together=True)
        found.append((label, name, acc, model.rnn.tau.detach().clamp(min=1.0).numpy()))
    return found


def _fmt_tau(tau) -> str:
    return f"{tau.mean():.2f} +- {tau.std():.2f}"


def _report(results, study, budget, wall) -> str:
    lines = ["# Multi-head against single-head N-parity: a small CPU demo", ""]
    lines += _settings_lines(results, budget, wall) + _reached_lines(results) + _tau_lines(results)
    lines += ["", "## The study's figures (500 neurons, 1000 epochs, N-parity)", "", STUDY_CLAIMS]
    if study:
        lines += ["The study's own networks, shipped with this project (trained by its code, seed 0), "
                  "scored here on 256 fresh sequences per N:", "",
                  "| curriculum | file | accuracy | clamp(tau, 1), mean +- std |", "| --- | --- | --- | --- |"]
        for label, name, acc, tau in study:
            accs = ", ".join(f"N={n}: {a:.2f}" for n, a in acc.items())
            lines.append(f"| {label} | {name} | {accs} | {_fmt_tau(tau)} |")
        lines.append("")
    lines += ["## Figures", "", "![highest N passed against epoch and wall time](plots/n_reached.png)", "",
              "![tau against N](plots/tau_vs_N.png)", ""]
    for label, r in results.items():
        rel = r[4].path.name
        lines.append(f"{label}: [accuracy per head]({rel}/plots/accuracy.png), "
                     f"[tau histograms]({rel}/plots/tau_hist.png), [metrics]({rel}/metrics.csv)")
    lines += ["", "## Read with care", "",
              "These runs are small and short: a few dozen neurons trained for minutes on a CPU, against 500 "
              "neurons trained for up to 1000 epochs of 600 steps of batch 256 in the study. The N reached and "
              "the tau statistics depend on the seed and the time given; one seed proves little. To repeat the "
              "study's runs use `timescale-kernels train --preset paper` on a GPU.", ""]
    return "\n".join(lines)


def _settings_lines(results, budget, wall) -> list[str]:
    if not results:
        return []
    c = next(iter(results.values()))[0]
    return [f"Both networks: {c.hidden_size} leaky-RNN neurons with trainable tau, batch {c.batch_size}, "
            f"{c.steps_per_epoch} SGD steps (lr {c.lr}, momentum {c.momentum}) and {c.test_batches} test "
            f"batches per epoch, promotion above {c.threshold:.0%} test accuracy, seed {c.seed}, "
            f"device {c.device}, timescale_kernels {__version__}. Each curriculum got about "
            f"{0.45 * budget / 60:.1f} minutes of training; the whole demo took {wall / 60:.1f} minutes.", ""]


def _reached_lines(results) -> list[str]:
    lines = ["## What our runs reached", "", "| | " + " | ".join(results) + " |",
             "| --- |" + " --- |" * len(results)]

    def row(name, fn):
        lines.append(f"| {name} | " + " | ".join(fn(r) for r in results.values()) + " |")

    row("highest N passed", lambda r: str(r[1]["N_reached"] if r[1]["N_reached"] is not None else "none"))
    row("epochs", lambda r: str(r[1]["epochs"]))
    row("training wall time", lambda r: f"{r[1]['wall_time'] / 60:.1f} min")
    row("stopped because", lambda r: r[1]["stop_reason"])
    row("op backend", lambda r: r[1]["backend"])
    row("clamp(tau, 1) at the last checkpoint, mean +- std", lambda r: _fmt_tau(r[3][-1][1]) if r[3] else "-")
    reached = {label: (r[1]["N_reached"] or 0) for label, r in results.items()}
    lines.append("")
    if len(reached) == 2:
        (a, na), (b, nb) = reached.items()
        if na == nb:
            lines.append(f"Both curricula passed N = {na} in the time given.")
        else:
            best = a if na > nb else b
            lines.append(f"The {best} curriculum reached the larger N ({max(na, nb)} against {min(na, nb)}) "
                         "in the same training time.")
    return lines


def _tau_lines(results) -> list[str]:
    lines = ["", "## tau per checkpoint (mean +- std of clamp(tau, 1))", "",
             "| highest N passed | " + " | ".join(results) + " |", "| --- |" + " --- |" * len(results)]
    per_run = [{max(Ns): tau for Ns, tau in r[3]} for r in results.values()]
    for n in sorted({n for taus in per_run for n in taus}):
        lines.append(f"| {n} | " + " | ".join(_fmt_tau(t[n]) if n in t else "" for t in per_run) + " |")
    for label, r in results.items():
        if len(r[3]) >= 2:
            (n0, t0), (n1, t1) = (max(r[3][0][0]), r[3][0][1]), (max(r[3][-1][0]), r[3][-1][1])
            lines.append(f"\n{label}: mean clamp(tau, 1) went from {t0.mean():.2f} at N = {n0} to {t1.mean():.2f} "
                         f"at N = {n1} (std {t0.std():.2f} to {t1.std():.2f}).")
    return lines
