"""Figures as PNG files. Each function writes one file and returns its path.

Figures are matplotlib Figure objects rendered by the Agg canvas directly, without pyplot: no display
is needed and the caller's pyplot backend and open figures are left alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def _new(figsize):
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _f(values) -> np.ndarray:
    """A list that may hold None (JSON's NaN) as a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def tau_histogram(stats: dict, path, title: str = "") -> Path:
    """stats: tau_stats() output (hist edges/counts, mean)."""
    fig, ax = _new((4.5, 3.2))
    edges, counts = np.asarray(stats["hist"]["edges"]), np.asarray(stats["hist"]["counts"])
    ax.stairs(counts, edges, fill=True, alpha=0.7)
    ax.axvline(stats["mean"], color="k", ls="--", lw=1, label=f"mean {stats['mean']:.2f}")
    ax.set(xlabel="trained tau = clamp(tau, 1) (steps)", ylabel="neurons", title=title)
    ax.legend(frameon=False)
    return _save(fig, path)


def autocorrelation_fits(fit, path, neurons=None, count: int = 6, title: str = "") -> Path:
    """fit: a TimescaleFit; neurons: which to show (default: count spread over the tau_net range)."""
    lags = np.arange(fit.max_lag + 1)
    if neurons is None:
        ok = np.flatnonzero(np.isfinite(fit.tau))
        ranked = ok[np.argsort(fit.tau[ok])]
        neurons = ranked[np.linspace(0, len(ranked) - 1, min(count, len(ranked))).astype(int)] if len(ranked) else []
    fig, ax = _new((5, 3.5))
    for i, n in enumerate(neurons):
        color = f"C{i % 10}"
        ax.plot(lags, fit.ac[n], "o", ms=3, color=color)
        label = f"#{n}: tau {fit.tau[n]:.1f} ({'double' if fit.model[n] == 2 else 'single'})"
        ax.plot(lags, fit.curve(n), "-", color=color, lw=1, label=label)
    ax.set(xlabel="lag (steps)", ylabel="autocorrelation (normalised)", title=title)
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


def tau_scatter(tau, tau_net, path, title: str = "") -> Path:
    """Trained tau (clamped) against tau_net per neuron; NaN tau_net are left out (and counted)."""
    tau, tau_net = np.asarray(tau, dtype=float), _f(tau_net)
    ok = np.isfinite(tau_net)
    fig, ax = _new((4, 4))
    ax.scatter(tau[ok], tau_net[ok], s=6, alpha=0.6)
    top = max(np.nanmax(tau), np.nanmax(tau_net) if ok.any() else 1.0)
    ax.plot([1, top], [1, top], "k--", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="trained tau", ylabel="tau_net",
           title=f"{title} ({(~ok).sum()} without fit)" if (~ok).any() else title)
    return _save(fig, path)


def ablation_bars(ablation: dict, path, title: str = "") -> Path:
    """ablation: ablation_study() output."""
    fig, ax = _new((5, 3.2))
    k = ablation["k"]
    for offset, name in ((0, "short"), (k + 1, "long")):
        part = ablation[name]
        ax.bar(np.arange(len(part["accuracy"])) + offset, part["accuracy"], color="C0" if name == "short" else "C3",
               label=f"{name}est tau (mean rel. {part['mean_relative']:.3f})")
    ax.axhline(ablation["baseline"], color="k", ls="--", lw=1, label="intact")
    ax.set(ylabel="accuracy", xlabel="silenced neuron (by tau)", ylim=(0, 1.02),
           title=title or f"ablation, N = {ablation['N']}")
    ax.set_xticks([])
    ax.legend(fontsize=7, loc="lower center", framealpha=0.9)
    return _save(fig, path)


def perturbation_curves(perturbation: dict, path, title: str = "") -> Path:
    """perturbation: perturbation_study() output, or {label: output} to overlay several networks."""
    runs = perturbation if "eps" not in perturbation else {"": perturbation}
    fig, ax = _new((5, 3.5))
    for i, (label, run) in enumerate(runs.items()):
        for target, style in (("weights", "-o"), ("tau", "--s")):
            if target in run:
                eps = np.asarray(run[target].get("eps", run["eps"]), dtype=float)  # a grid per target, or one
                x = np.where(eps > 0, eps, np.nan)
                ax.errorbar(x, run[target]["relative_mean"], yerr=run[target]["relative_std"], fmt=style, ms=3,
                            color=f"C{i}", label=f"{label} {target}".strip(), capsize=2)
    ax.set(xscale="log", xlabel="eps", ylabel="relative accuracy", title=title)
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


def forgetting_heatmap(matrix: dict, path, title: str = "") -> Path:
    """matrix: forgetting_matrix() output."""
    acc = np.asarray(matrix["accuracy"], dtype=float)
    fig, ax = _new((max(4.0, 1.5 + 0.35 * acc.shape[1]), max(3.0, 1.2 + 0.3 * acc.shape[0])))
    im = ax.imshow(acc, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    if acc.size <= 225:  # small matrices: print the values too
        for (i, j), v in np.ndenumerate(acc):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.8 else "k")
    ax.set_xticks(range(len(matrix["Ns"])), matrix["Ns"], fontsize=7)
    ax.set_yticks(range(len(matrix["labels"])), matrix["labels"], fontsize=7)
    ax.set_xlabel("N scored")
    ax.set_ylabel("checkpoint")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="accuracy")
    return _save(fig, path)


def lines(series: dict, path, xlabel: str, ylabel: str, title: str = "", refs: dict | None = None) -> Path:
    """series: {label: (x, y) or (x, y, yerr)}; refs: {label: (x, y)} drawn as black markers."""
    fig, ax = _new((5, 3.5))
    for i, (label, xy) in enumerate(series.items()):
        x, y = np.asarray(xy[0], dtype=float), _f(xy[1])
        if len(xy) > 2 and xy[2] is not None:
            ax.fill_between(x, y - _f(xy[2]), y + _f(xy[2]), color=f"C{i}", alpha=0.2)
        ax.plot(x, y, "-o", ms=3, color=f"C{i}", label=label)
    for j, (label, xy) in enumerate((refs or {}).items()):
        ax.plot(xy[0], xy[1], marker="x^svD"[j % 5], color="k", ms=7, ls="none", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)
