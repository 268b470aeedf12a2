"""The sweep's report: DIR/report/report.md with PNGs, and runs.csv (one row per run and N passed).

Per condition: N reached, epochs and wall time, mean and std over seeds. Then the study's results
(T1-T11) beside ours, each figure labelled with the estimator or definition it uses and with where our
scale (network size, epoch budget, test sequences, seeds) differs from the study's.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ...files import atomic_write_text
from .results import collect, fmt, rows_csv
from .study import study_table

STUDY_SCALE = {"hidden_size": 500, "max_epochs": 1000, "test sequences per head": 12800, "seeds": 4,
               "batch_size": 256, "steps_per_epoch": 600}


def scale_rows(spec: dict) -> list[tuple[str, object, object]]:
    """(setting, the study's, ours) for the settings that set the scale."""
    from .spec import SweepSpec
    s = SweepSpec.from_dict(spec)
    cfg = s.config_for(s.conditions()[0], s.seeds[0], device="cpu")
    ours = {"hidden_size": cfg.hidden_size, "max_epochs": cfg.max_epochs,
            "test sequences per head": cfg.test_batches * cfg.batch_size, "seeds": len(s.seeds),
            "batch_size": cfg.batch_size, "steps_per_epoch": cfg.steps_per_epoch}
    return [(k, STUDY_SCALE[k], ours[k]) for k in STUDY_SCALE]


def network_seconds(run: dict, group_sizes: dict) -> float | None:
    """A run's training wall time, divided among the networks of its ensemble (which trained in one
    process at once, each reporting the ensemble's time)."""
    wall = run.get("wall_time")
    if wall is None:
        return None
    return wall / max(1, group_sizes.get(run.get("group"), 1))


def condition_table(runs: dict) -> list[str]:
    by = defaultdict(list)
    group_sizes = defaultdict(int)
    for r in runs.values():
        by[r["condition"]].append(r)
        if r.get("group") is not None:
            group_sizes[r["group"]] += 1
    lines = ["| condition | runs done / failed / all | N reached (0: none passed) | epochs | training time per network "
             "(s; an ensemble's divided among its networks) | stopped by |",
             "| --- | --- | --- | --- | --- | --- |"]
    for cond, rs in by.items():
        done = [r for r in rs if r["status"] == "done"]
        failed = sum(r["status"] == "failed" for r in rs)
        reasons = sorted({str(r.get("stop_reason")) for r in done})
        lines.append(f"| {cond} | {len(done)} / {failed} / {len(rs)} | {fmt([r.get('N_reached') or 0 for r in done], 1)} | "
                     f"{fmt([r.get('epochs') for r in done], 0)} | {fmt([network_seconds(r, group_sizes) for r in done], 0)} | "
                     f"{', '.join(reasons) or '-'} |")
    return lines


def failures(runs: dict) -> list[str]:
    bad = [r for r in runs.values() if r["status"] == "failed"]
    if not bad:
        return []
    return ["", "## Failed runs", ""] + [f"- {r['condition']} seed {r['seed']}: {r.get('error')} "
                                          "(its traceback is in sweep.json)" for r in bad]


# plots ----------------------------------------------------------------------------------------------
def _curves(rows, runs, max_epochs):
    """{condition: (epochs, mean N reached over seeds)}: N reached after each epoch."""
    per_run = defaultdict(list)
    for row in rows:
        per_run[(row["condition"], row["seed"])].append((row["epoch_passed"], row["N"]))
    out = {}
    for cond in sorted({r["condition"] for r in runs.values()}):
        seeds = [r["seed"] for r in runs.values() if r["condition"] == cond and r["status"] == "done"]
        if not seeds:
            continue
        epochs = np.arange(1, max_epochs + 1)
        curves = []
        for seed in seeds:
            passes = sorted(per_run.get((cond, seed), []))
            curve = np.zeros(len(epochs))
            for e, n in passes:
                curve[epochs >= e] = np.maximum(curve[epochs >= e], n)
            curves.append(curve)
        out[cond] = (epochs, np.mean(curves, 0), np.std(curves, 0))
    return out


def write_plots(rows, runs, max_epochs, out_dir: Path) -> list[tuple[str, str]]:
    """(caption, file name) of each figure written."""
    from ...analysis import plots
    figs = []
    curves = _curves(rows, runs, max_epochs)
    for task in sorted({r["task"] for r in runs.values()}):
        series = {c: v for c, v in curves.items() if c.startswith(task + "-")}
        if series:
            path = plots.lines(series, out_dir / f"N_reached_{task}.png", "epoch", "N reached (mean over seeds)",
                               f"{task}: training speed")
            figs.append((f"{task}: N reached per epoch (mean ± std over seeds)", path.name))
    for key, label in (("tau_mean", "trained tau (mean over neurons)"), ("tau_net", "tau_net (ours)"),
                       ("tau_net_study", "tau_net (the study's estimator)")):
        series = {}
        for cond in sorted({r["condition"] for r in rows}):
            byN = defaultdict(list)
            for r in rows:
                if r["condition"] == cond and r.get(key) is not None:
                    byN[r["N"]].append(r[key])
            if len(byN) > 1:
                Ns = sorted(byN)
                series[cond] = (Ns, [np.mean(byN[n]) for n in Ns], [np.std(byN[n]) for n in Ns])
        if series:
            path = plots.lines(series, out_dir / f"{key}_vs_N.png", "N", label, f"{label} at each N passed")
            figs.append((f"{label} against N (mean ± std over seeds)", path.name))
    return figs


def write_report(sweep_dir, out_dir=None) -> Path:
    """Writes report.md, runs.csv and PNGs to out_dir (default sweep_dir/report); returns report.md."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = json.loads((sweep_dir / "spec.json").read_text())
    runs, rows = collect(sweep_dir)
    atomic_write_text(out_dir / "runs.csv", rows_csv(rows))
    scale = scale_rows(spec)
    max_epochs = dict((k, o) for k, _, o in scale)["max_epochs"]
    figs = write_plots(rows, runs, max_epochs, out_dir)
    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{len(runs)} runs ({sum(r['status'] == 'done' for r in runs.values())} done) of "
             f"{len({r['condition'] for r in runs.values()})} conditions; one row per run and N passed in "
             "[runs.csv](runs.csv). Figures are mean ± std over seeds (n = seeds with a value).", "",
             "## Scale: ours against the study's", "", "| setting | the study | ours |", "| --- | --- | --- |"]
    lines += [f"| {k} | {s} | {o} |" for k, s, o in scale]
    lines += ["", "## Per condition", ""] + condition_table(runs) + failures(runs)
    lines += ["", "## The study's results beside ours", ""] + study_table(runs, rows, dict((k, (s, o)) for k, s, o in scale))
    if figs:
        lines += ["", "## Figures", ""] + [f"![{cap}]({name})" + "\n" for cap, name in figs]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    return out_dir / "report.md"
