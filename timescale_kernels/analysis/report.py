"""Markdown: one analysed run (run_markdown) and several runs side by side with the study's figures
(write_report)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..curricula import get_curriculum
from ..files import atomic_write_text
from . import plots
from .gather import curricula_present, gather_runs, read_metrics  # noqa: F401  (read_metrics: also imported from here)

# What the study reports (500 neurons, N-parity), per curriculum, to print beside our numbers. A
# curriculum the study did not run has no entry here; the report then shows '-' for the study.
STUDY = {
    "multi": {"n_reached": "N = 100 (its head cap) within 1000 epochs", "tau_mean": "stays near 1.2-1.5",
              "tau_net": "about 2.5 (N = 5) to 6.6 (N = 30)", "ablation_long": 0.99, "ablation_short": 0.89,
              "perturb_weights": 0.96, "perturb_tau": 0.99},
    "single": {"n_reached": "stalls near N = 35", "tau_mean": "grows with N: about 1.4 (N = 15) to 1.7 (N = 32)",
               "tau_net": "2.5 (N = 5) to 7.1 (N = 30)", "ablation_long": 0.71, "ablation_short": 0.93,
               "perturb_weights": 0.74, "perturb_tau": 0.71},
}
STUDY_AT = {"ablation_N": 30, "perturb_weights_eps": 0.215, "perturb_tau_eps": 0.0464}
STUDY_TAU_POINTS = {"single": ([15, 32], [1.4, 1.7])}


def _study(kind: str, key: str):
    return STUDY.get(kind, {}).get(key, "-")


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def _eps_index(pert: dict, eps: float, target: str | None = None):
    """The index of the strength nearest eps (log scale) in target's grid (or the shared one)."""
    e = np.asarray((pert.get(target) or {}).get("eps", pert["eps"]), dtype=float)
    i = int(np.argmin(np.abs(np.log(np.where(e > 0, e, 1e-12)) - np.log(eps))))
    return i if e[i] > 0 else None


def run_markdown(summary: dict) -> str:
    """analysis.md for one analyze_run() result (the dict in analysis.json)."""
    s = summary["settings"]
    lines = [f"# Analysis of {summary['run_dir']}", "",
             f"source: {summary['source']}, task: {summary['task']}, curriculum: {summary['curriculum']}, "
             f"accuracy metric: {s['metric']}, device: {s['device']}, {summary['seconds']:.0f} s", "",
             f"tau_net: {s['trials']} trials x {s['steps']} steps after {s['burn_in']} burn-in, "
             f"lags 0..{s['max_lag']}; "
             f"evaluation: {s['eval_batches']} batches x {s['batch_size']}, seed {s['seed']}", "",
             "| checkpoint | N | acc(N) | tau mean +- std | tau_net median (ok/all) | population tau | PCs 90% | "
             "ablate short / long (rel.) | W / tau perturbed at eps 0.215 (rel.) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["checkpoints"]:
        tn = r["tau_net"]["neurons"]
        tau = f"{r['tau']['mean']:.3f} +- {r['tau']['std']:.3f}" if "tau" in r else "-"
        abl = (f"{_fmt(r['ablation']['short']['mean_relative'])} / {_fmt(r['ablation']['long']['mean_relative'])}"
               if "ablation" in r else "-")
        pert = "-"
        if "perturbation" in r and (i := _eps_index(r["perturbation"], 0.215, "weights")) is not None:
            p = r["perturbation"]
            pert = (f"{_fmt(_perturbed(r, 'perturbation', 'weights', 0.215))} / "
                    f"{_fmt(_perturbed(r, 'perturbation', 'tau', 0.215))} (eps {p['eps'][i]:.3g})")
        lines.append(f"| {r['label']} | {r['N']} | {_fmt(r['accuracy'].get(str(r['N'])))} | {tau} | "
                     f"{_fmt(tn['median'])} ({tn['n_ok']}/{tn['n']}) | {_fmt(r['tau_net']['population_tau'])} | "
                     f"{_fmt(r['dimensionality']['mean'])} | {abl} | {pert} |")
    lines += _study_measure_rows(summary["checkpoints"])
    lines += ["", "Fit failures (tau_net NaN) by reason: " + "; ".join(
        f"{r['label']}: {r['tau_net']['neurons']['failures'] or 'none'}" for r in summary["checkpoints"]), ""]
    lines += ["## Generalisation", "", "| checkpoint | T: accuracy | beyond N (newest head): accuracy |",
              "|---|---|---|"]
    for r in summary["checkpoints"]:
        g = r["generalisation"]
        lines.append(f"| {r['label']} | " + ", ".join(f"{t}: {_fmt(a)}" for t, a in zip(g["length"]["lengths"],
                                                                                       g["length"]["accuracy"]))
                     + " | " + ", ".join(f"{n}: {_fmt(a)}" for n, a in zip(g["N"]["Ns"], g["N"]["accuracy"])) + " |")
    lines += ["", "## Figures", "", f"![forgetting]({summary['forgetting']['figure']})", ""]
    for name in summary.get("figures", {}).values():
        lines += [f"![{name}]({name})", ""]
    for r in summary["checkpoints"]:
        lines += [f"### {r['label']}", ""] + [f"![{k}]({v})" for k, v in r["figures"].items()] + [""]
    return "\n".join(lines) + "\n"


def _study_measure_rows(checkpoints) -> list[str]:
    """analysis.md's table of the study's estimator and measures beside ours (where they were run)."""
    if not any("tau_net_study" in r or "ablation_study" in r for r in checkpoints):
        return []
    lines = ["", "The study's estimator of tau_net and its measures beside ours: tau_net as the study summarises "
             "it (mean over neurons with tau_net > 1); relative accuracy chance-corrected on in-time streams, "
             "head 0 ablated (the study's measure) against accuracy / baseline on the same sequences (ours).", "",
             "| checkpoint | tau_net: ours / study's estimator | ablate long / short: ours / study's measure | "
             "W / tau at eps 0.215: ours / study's measure |", "|---|---|---|---|"]
    for r in checkpoints:
        tau_net = f"{_fmt(_tau_net_above_1(r['tau_net']))} / {_fmt(_tau_net_above_1(r.get('tau_net_study')))}"
        abl = " / ".join(f"{_fmt(r.get(f, {}).get('long', {}).get('mean_relative'))}, "
                         f"{_fmt(r.get(f, {}).get('short', {}).get('mean_relative'))}"
                         for f in ("ablation", "ablation_study"))
        pert = " / ".join(f"{_fmt(_perturbed(r, f, 'weights', 0.215))}, {_fmt(_perturbed(r, f, 'tau', 0.215))}"
                          for f in ("perturbation", "perturbation_study"))
        lines.append(f"| {r['label']} | {tau_net} | {abl} | {pert} |")
    return lines


# -- several runs -----------------------------------------------------------------------------------

_MODEL_COLORS = {"leaky": "C0", "gru": "C1", "lstm": "C2"}
_CURRICULUM_STYLES = {"multi": "-", "single": "--"}


def _plot_models(runs: list[dict], path) -> Path:
    """N reached against the epoch, one step line per run: colour by model, line style by curriculum."""
    fig, ax = plots._new((5.5, 3.8))
    others = sorted({r["model"] for r in runs} - set(_MODEL_COLORS))
    colors = {**_MODEL_COLORS, **{m: f"C{3 + i}" for i, m in enumerate(others)}}
    labelled = set()
    for r in runs:
        epochs, reached = r["n_reached"]
        if not epochs:
            continue
        key = (r["model"], r["kind"])
        ax.step(epochs, reached, where="post", color=colors[r["model"]], ls=_CURRICULUM_STYLES.get(r["kind"], ":"),
                label=None if key in labelled else f"{r['model']}, {r['kind']}")
        labelled.add(key)
    ax.set(xlabel="epoch", ylabel="highest N passed", title="N reached by model and curriculum")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, frameon=False)
    return plots._save(fig, path)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _model_table(runs: list[dict]) -> list[str]:
    """Markdown rows: per (model, curriculum), the highest N passed over its runs and the fewest epochs
    (and that run's wall time) in which a run reached it."""
    lines = ["| model | curriculum | runs | highest N passed | epochs to reach it | wall time to reach it | "
             "N reached per run |", "|---|---|---|---|---|---|---|"]
    groups = {}
    for r in runs:
        groups.setdefault((r["model"], r["kind"]), []).append(r)
    for (model, kind), group in sorted(groups.items()):
        reaches = [r["reach"] for r in group if r["reach"]["N"] is not None]
        top = max((x["N"] for x in reaches), default=None)
        at_top = [x for x in reaches if x["N"] == top and x["epoch"] is not None]
        first = min(at_top, key=lambda x: x["epoch"]) if at_top else {"epoch": None, "wall_time": None}
        wall = _duration(first["wall_time"])
        per_run = ", ".join(f"{r['name']}: {_fmt(r['reach']['N'])}" for r in group)
        lines.append(f"| {model} | {kind} | {len(group)} | {_fmt(top)} | {_fmt(first['epoch'])} | {wall} | "
                     f"{per_run} |")
    return lines


def _by_N(runs, kind, value):
    """{N: [values over runs of this kind]} for value(checkpoint) not None."""
    out = {}
    for r in runs:
        if r["kind"] == kind:
            for c in r["summary"]["checkpoints"]:
                v = value(c)
                if v is not None:
                    out.setdefault(c["N"], []).append(v)
    return dict(sorted(out.items()))


def _mean_series(runs, value):
    series = {}
    for kind in sorted({r["kind"] for r in runs}):
        by = _by_N(runs, kind, value)
        if by:
            series[kind] = (list(by), [float(np.mean(v)) for v in by.values()], [float(np.std(v)) for v in by.values()])
    return series


def _nearest(runs, kind, N, value):
    """Mean over runs of kind of value(checkpoint) at the checkpoint whose N is closest to N."""
    vals, used = [], set()
    for r in runs:
        if r["kind"] != kind:
            continue
        cands = [c for c in r["summary"]["checkpoints"] if value(c) is not None]
        if cands:
            c = min(cands, key=lambda c: abs(c["N"] - N))
            vals.append(value(c))
            used.add(c["N"])
    return (float(np.mean(vals)), sorted(used)) if vals else (None, [])


def write_report(run_dirs, out_path) -> Path:
    """Gathers runs (every curriculum present, leaky against GRU/LSTM, several seeds) into one Markdown
    file with PNGs; each section has one row per curriculum present.

    Args:
        run_dirs: run directories (or analysis output folders) holding analysis.json (from analyze_run)
            and, where available, config.json ("model", "curriculum", "seed"), metrics.csv (epoch,
            N_reached, wall_time) and summary.json. A training run without analysis.json enters the run
            and model tables and the N-reached figures only.
        out_path: the Markdown file; its figures go to a folder beside it named <stem>_files.

    Returns:
        out_path.
    """
    out_path = Path(out_path)
    fig_dir = out_path.parent / f"{out_path.stem}_files"
    fig_dir.mkdir(parents=True, exist_ok=True)
    runs = gather_runs(run_dirs)
    analysed = [r for r in runs if r["summary"] is not None]  # the sections after the N-reached ones
    figures = _Figures(fig_dir)
    lines = (_header(analysed) + _runs_section(runs) + _curriculum_sections(runs) + _progress_section(runs, figures)
             + _model_section(runs, figures) + _timescale_section(analysed, figures)
             + _ablation_section(analysed, figures) + _perturbation_section(analysed, figures)
             + _forgetting_section(analysed, figures))
    atomic_write_text(out_path, "\n".join(lines) + "\n")
    return out_path


class _Figures:
    """Where the report's PNGs go, and the Markdown line that shows one."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / name

    def show(self, name: str, alt: str) -> str:
        return f"![{alt}]({self.folder.name}/{name})"


def _header(analysed) -> list[str]:
    metrics = sorted({r["summary"]["settings"].get("metric", "task") for r in analysed})
    scored = (f"these runs were scored with metric {', '.join(metrics)}." if metrics else
              "none of these runs has been analysed (timescale-kernels analyze RUN_DIR).")
    return ["# Timescales, curricula and memory: report", "",
            "Our runs beside the values reported by Khajehabdollahi, Zeraati et al., ICLR 2024 "
            "(500 neurons, N-parity). A '-' means the runs hold no data for that entry. The study scores "
            "ablation and perturbation with its in-time stream accuracy (metric \"stream\"); " + scored, ""]


def _runs_section(runs) -> list[str]:
    lines = ["## Runs", "", "| run | curriculum | seed | task | checkpoints | largest N | epochs |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        s, (ep, nr) = r["summary"], r["n_reached"]
        cks = s["checkpoints"] if s is not None else None
        top = max((c["N"] for c in cks or []), default=r["reach"]["N"])
        lines.append(f"| {r['name']} | {r['kind']} | {_fmt(r['seed'])} | {_fmt(r['task'])} | "
                     f"{len(cks) if cks is not None else r['checkpoint_files']} | {_fmt(max(nr) if nr else top)} | "
                     f"{_fmt(int(max(ep)) if ep else r['reach']['epochs'])} |")
    return lines + [""]


def _curriculum_sections(runs) -> list[str]:
    """One section per curriculum present: what it is, its runs, the N they reached, the study's figure."""
    lines = []
    for kind in curricula_present(runs):
        group = [r for r in runs if r["kind"] == kind]
        try:
            spec = get_curriculum(kind)
            title, what = f"{spec.label} ({kind})", spec.description
        except ValueError:
            title, what = kind, "not a registered curriculum"
        reached = [r["reach"]["N"] for r in group if r["reach"]["N"] is not None]
        spread = f"{np.mean(reached):.1f} +- {np.std(reached):.1f}" if reached else "-"
        lines += [f"## Curriculum: {title}", "", f"{what[:1].upper() + what[1:]}. Runs: " + ", ".join(
                      f"{r['name']} ({r['model']}, seed {_fmt(r['seed'])})" for r in group) + ".", "",
                  f"Highest N passed: {', '.join(map(str, reached)) or '-'} (mean +- std over runs {spread}); "
                  f"the study: {_study(kind, 'n_reached')}.", ""]
    return lines


def _progress_section(runs, figures: _Figures) -> list[str]:
    curves = {f"{r['name']} ({r['kind']})": r["n_reached"] for r in runs if r["n_reached"][0]}
    lines = ["## N reached vs epoch", ""]
    if curves:
        plots.lines(curves, figures.path("n_reached.png"), "epoch", "N reached", "curriculum progress")
        lines += [figures.show("n_reached.png", "N reached"), ""]
    for kind in curricula_present(runs):
        ours = [max(r["n_reached"][1]) for r in runs if r["kind"] == kind and r["n_reached"][1]]
        lines.append(f"- {kind}: ours {_fmt(max(ours)) if ours else '-'} "
                     f"(largest N reached over runs); study: {_study(kind, 'n_reached')}")
    return lines + [""]


def _model_section(runs, figures: _Figures) -> list[str]:
    """Leaky RNN against the GRU / LSTM baselines."""
    lines = ["## N reached by model and curriculum", "",
             "Highest N passed per (model, curriculum) over its runs, and the fewest epochs (with that run's "
             "training wall time) in which a run reached it.", ""] + _model_table(runs) + [""]
    if any(r["n_reached"][0] for r in runs):
        _plot_models(runs, figures.path("n_reached_by_model.png"))
        lines += [figures.show("n_reached_by_model.png", "N reached by model"), ""]
    return lines


def _tau_net_above_1(entry):
    """Mean tau_net over neurons with tau_net > 1 (the study's summary), or None."""
    values = [v for v in (entry or {}).get("values", []) if v is not None and v > 1]
    return float(np.mean(values)) if values else None


def _timescale_section(runs, figures: _Figures) -> list[str]:
    tau_series = _mean_series(runs, lambda c: c.get("tau", {}).get("mean"))
    net_series = _mean_series(runs, lambda c: c["tau_net"]["neurons"]["median"])
    lines = ["## Timescales vs N", ""]
    if tau_series:
        plots.lines(tau_series, figures.path("tau_vs_N.png"), "N", "mean trained tau",
                    "trained tau (mean +- sd over runs)", refs={"study, single-head": STUDY_TAU_POINTS["single"]})
        lines += [figures.show("tau_vs_N.png", "trained tau"), ""]
    if net_series:
        plots.lines(net_series, figures.path("tau_net_vs_N.png"), "N", "median tau_net (steps)",
                    "network-mediated timescale")
        lines += [figures.show("tau_net_vs_N.png", "tau_net"), ""]
    lines += ["| curriculum | mean trained tau at N (ours) | study |", "|---|---|---|"]
    for kind in curricula_present(runs):
        by = _by_N(runs, kind, lambda c: c.get("tau", {}).get("mean"))
        ours = ", ".join(f"N={n}: {np.mean(v):.2f}" for n, v in by.items()) or "-"
        lines.append(f"| {kind} | {ours} | {_study(kind, 'tau_mean')} |")
    lines += ["", "tau_net as the study summarises it (mean over neurons with tau_net > 1), by our estimator "
              "and by the study's (curve_fit from the middle of its bounds, which stops short of the better "
              "optimum for some neurons):", "",
              "| curriculum | our estimator at N | the study's estimator at N | study |", "|---|---|---|---|"]
    for kind in curricula_present(runs):
        cells = []
        for field in ("tau_net", "tau_net_study"):
            by = _by_N(runs, kind, lambda c, f=field: _tau_net_above_1(c.get(f)))
            cells.append(", ".join(f"N={n}: {np.mean(v):.2f}" for n, v in by.items()) or "-")
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} | {_study(kind, 'tau_net')} |")
    return lines + [""]


def _ablation_section(runs, figures: _Figures) -> list[str]:
    n_ab = STUDY_AT["ablation_N"]
    lines = ["## Ablation (one neuron at a time)", "",
             f"Mean relative accuracy after silencing one of the longest- or shortest-tau neurons, at the "
             f"checkpoint nearest N = {n_ab}. Ours: accuracy / baseline on the same sequences, the neuron "
             "removed from the head scored. The study's measure: in-time streams, chance-corrected "
             "(accuracy - 0.5) / (best baseline trial - 0.5), the neuron removed from head 0 only.", "",
             "| curriculum | ours: long / short | study's measure: long / short | at N | "
             f"study (N = {n_ab}): long / short |", "|---|---|---|---|---|"]
    for kind in curricula_present(runs):
        cells, used = [], []
        for field in ("ablation", "ablation_study"):
            pair = []
            for which in ("long", "short"):
                v, at = _nearest(runs, kind, n_ab, lambda c, f=field, w=which: c.get(f, {}).get(w, {}).get("mean_relative"))
                pair.append(_fmt(v))
                used = used or at
            cells.append(" / ".join(pair))
        study = f"{_study(kind, 'ablation_long')} / {_study(kind, 'ablation_short')}"
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} | {used or '-'} | {study} |")
    series = {}
    for which in ("long", "short"):
        got = _mean_series(runs, lambda c, w=which: c.get("ablation", {}).get(w, {}).get("mean_relative"))
        series.update({f"{kind} {which}": v for kind, v in got.items()})
    if series:
        plots.lines(series, figures.path("ablation_vs_N.png"), "N", "relative accuracy", "ablating one neuron")
        lines += ["", figures.show("ablation_vs_N.png", "ablation")]
    return lines + [""]


def _perturbed(c, field, target, eps):
    """relative_mean of c[field][target] at the eps nearest eps, or None."""
    p = c.get(field)
    i = _eps_index(p, eps, target) if p and target in p else None
    return p[target]["relative_mean"][i] if i is not None else None


def _perturbation_section(runs, figures: _Figures) -> list[str]:
    n_ab, eps_w, eps_t = STUDY_AT["ablation_N"], STUDY_AT["perturb_weights_eps"], STUDY_AT["perturb_tau_eps"]
    lines = ["## Perturbation", "",
             f"Mean relative accuracy with W perturbed at eps = {eps_w} and tau at eps = {eps_t}, at the "
             f"checkpoint nearest N = {n_ab}. Ours: accuracy / baseline on the same sequences. The study's "
             "measure: one fresh in-time stream per direction, chance-corrected.", "",
             "| curriculum | ours: W / tau | study's measure: W / tau | at N | study: W / tau |",
             "|---|---|---|---|---|"]
    curves = {}
    for kind in curricula_present(runs):
        cells, used = [], []
        for field in ("perturbation", "perturbation_study"):
            w, at = _nearest(runs, kind, n_ab, lambda c, f=field: _perturbed(c, f, "weights", eps_w))
            t, _ = _nearest(runs, kind, n_ab, lambda c, f=field: _perturbed(c, f, "tau", eps_t))
            cells.append(f"{_fmt(w)} / {_fmt(t)}")
            used = used or at
        study = f"{_study(kind, 'perturb_weights')} / {_study(kind, 'perturb_tau')}"
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} | {used or '-'} | {study} |")
        for r in runs:
            cks = [c for c in r["summary"]["checkpoints"] if "perturbation" in c and r["kind"] == kind]
            if cks:
                c = min(cks, key=lambda c: abs(c["N"] - n_ab))
                curves[f"{r['name']} N={c['N']}"] = c["perturbation"]
    if curves:
        plots.perturbation_curves(curves, figures.path("perturbation.png"), "relative accuracy vs eps")
        lines += ["", figures.show("perturbation.png", "perturbation")]
    return lines + [""]


def _forgetting_section(runs, figures: _Figures) -> list[str]:
    lines = ["## Forgetting (accuracy of every checkpoint on every N)", ""]
    for r in runs:
        name = f"forgetting_{r['name']}.png"
        plots.forgetting_heatmap(r["summary"]["forgetting"], figures.path(name), f"{r['name']} ({r['kind']})")
        lines += [figures.show(name, r["name"]), ""]
    return lines
