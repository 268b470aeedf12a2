"""PNG figures of a run (and of several runs side by side), drawn with matplotlib's Agg canvas.

Figures are built with the object API (Figure + FigureCanvasAgg), so importing this module never
changes pyplot's backend for the caller.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..files import atomic_write_bytes
from .rundir import RunDir


def checkpoint_taus(run_dir: RunDir) -> list[tuple[list[int], np.ndarray]]:
    """(Ns, clamp(tau, 1) as an (H,) array) per checkpoint, in training order; leaky cores only.
    Unreadable files are skipped with a warning (a plot must not fail a run)."""
    out = []
    for path in run_dir.checkpoints():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            tau = blob["state_dict"].get("rnn.tau")
            Ns = [int(n) for n in blob["meta"]["Ns"]]
        except Exception as err:  # a damaged file: skip it, keep plotting
            warnings.warn(f"plots: skipping {path} ({type(err).__name__})", RuntimeWarning, stacklevel=2)
            continue
        if tau is not None:
            out.append((Ns, tau.float().clamp(min=1.0).numpy()))
    return out


def _save(fig: Figure, path: Path) -> Path:
    import io
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# viridis without its last tenth: the palest yellows vanish on white.
_CMAP = ListedColormap(colormaps["viridis"](np.linspace(0.0, 0.9, 256)))


def _colors(values):
    values = list(values)
    lo, hi = min(values), max(values)
    return {v: _CMAP(0.0 if hi == lo else (v - lo) / (hi - lo)) for v in values}


def _colorbar(fig, ax, values, label):
    """A colour bar for _colors(values), for figures with too many lines for a legend."""
    lo, hi = min(values), max(values)
    fig.colorbar(ScalarMappable(Normalize(lo, hi if hi > lo else lo + 1), _CMAP), ax=ax, label=label)


def plot_accuracy(rows: list[dict], path) -> Path:
    """Test accuracy of every head (one line per N) against the epoch."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    Ns = sorted({n for row in rows for n in row["acc"]})
    colors = _colors(Ns)
    for n in Ns:
        pts = [(row["epoch"], row["acc"][n]) for row in rows if n in row["acc"]]
        ax.plot(*zip(*pts), color=colors[n], lw=1, label=f"N={n}" if len(Ns) <= 12 else None)
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0.4, 1.02), title="accuracy per head")
    if len(Ns) <= 12:
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    elif Ns:
        _colorbar(fig, ax, Ns, "N")
    return _save(fig, Path(path))


def plot_progress(runs: dict[str, list[dict]], path) -> Path:
    """The highest N passed against the epoch and against wall time, one line per run."""
    fig = Figure(figsize=(9, 3.6))
    ax_epoch, ax_time = fig.subplots(1, 2, sharey=True)
    for label, rows in runs.items():
        reached = [row["N_reached"] if row["N_reached"] is not None else np.nan for row in rows]
        ax_epoch.step([row["epoch"] for row in rows], reached, where="post", label=label)
        ax_time.step([row["wall_time"] / 60 for row in rows], reached, where="post", label=label)
    ax_epoch.set(xlabel="epoch", ylabel="highest N passed")
    ax_time.set(xlabel="training wall time (min)")
    ax_epoch.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_tau_hist(taus: list[tuple[list[int], np.ndarray]], path, title: str = "") -> Path:
    """Histogram of clamp(tau, 1) at every checkpoint, coloured by the highest N passed."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    colors = _colors([max(Ns) for Ns, _ in taus] or [0])
    top = max((float(t.max()) for _, t in taus), default=2.0)
    bins = np.linspace(1.0, max(top, 1.5), 40)
    for Ns, tau in taus:
        ax.hist(tau, bins=bins, histtype="step", color=colors[max(Ns)], label=f"N={min(Ns)}..{max(Ns)}")
    ax.set(xlabel="tau (clamped at 1)", ylabel="neurons", title=title or "tau per checkpoint")
    if 0 < len(taus) <= 10:
        ax.legend(fontsize=7)
    elif taus:
        _colorbar(fig, ax, [max(Ns) for Ns, _ in taus], "highest N passed")
    return _save(fig, Path(path))


def plot_tau_vs_N(runs: dict[str, list[tuple[list[int], np.ndarray]]], path) -> Path:
    """Mean (line) and standard deviation (band) of clamp(tau, 1) against the highest N passed."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for label, taus in runs.items():
        if not taus:
            continue
        n = np.array([max(Ns) for Ns, _ in taus])
        mean = np.array([t.mean() for _, t in taus])
        std = np.array([t.std() for _, t in taus])
        line, = ax.plot(n, mean, marker="o", ms=3, label=label)
        ax.fill_between(n, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(xlabel="highest N passed", ylabel="clamp(tau, 1): mean +- std")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def write_plots(run_dir: RunDir, rows: list[dict] | None = None) -> list[Path]:
    """All figures of one run into run_dir/plots/; returns the files written."""
    rows = run_dir.read_metrics() if rows is None else rows
    out = run_dir.plots_dir
    written = []
    if rows:
        written.append(plot_accuracy(rows, out / "accuracy.png"))
        written.append(plot_progress({"this run": rows}, out / "n_reached.png"))
    taus = checkpoint_taus(run_dir)
    if taus:
        written.append(plot_tau_hist(taus, out / "tau_hist.png"))
        written.append(plot_tau_vs_N({"this run": taus}, out / "tau_vs_N.png"))
    return written
