"""A sweep's results as tidy rows: one per run and N passed, read from the run directories.

Per row: the condition (task, curriculum, model, tau), the seed, N, the epoch and training wall time at
which N passed, the trained tau's mean and std then (leaky only), and, where that N's checkpoint was
analysed: tau_net (mean over neurons with tau_net > 1, as the study averages), the accuracy on N after
the whole run (the last checkpoint's; forgetting), ablation and perturbation relative accuracies. Each
measure is read in our definition and, where analysis.json holds it, in the study's ("_study").
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..rundir import RunDir

EPS_W, EPS_TAU = 0.215, 0.0464   # the study's perturbation strengths for T9 (0.046 in its text)
COLUMNS = ("condition", "task", "curriculum", "model", "tau", "seed", "status", "N_reached", "N", "epoch_passed",
           "wall_time_passed", "tau_mean", "tau_std", "tau_net", "tau_net_study", "acc_final", "ablation_short",
           "ablation_long", "ablation_short_study", "ablation_long_study", "perturb_W", "perturb_tau",
           "perturb_W_study", "perturb_tau_study", "analysis_metric")


def read_record(sweep_dir) -> dict:
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"sweep_dir: {sweep_dir} holds no sweep.json")
    return json.loads(path.read_text())["runs"]


def tau_net_mean(block) -> float | None:
    """Mean of the fitted tau_net over neurons with tau_net > 1 (the study's average), or None."""
    if not isinstance(block, dict) or not block.get("values"):
        return None
    vals = np.array([v for v in block["values"] if v is not None], dtype=float)
    vals = vals[np.isfinite(vals) & (vals > 1.0)]
    return float(vals.mean()) if vals.size else None


def _study(res: dict, name: str):
    """The study-definition variant of measure `name` in a checkpoint's analysis, if present: either
    res[name + "_study"] or res[name]["study"]."""
    if isinstance(res.get(name + "_study"), dict):
        return res[name + "_study"]
    inner = res.get(name)
    return inner.get("study") if isinstance(inner, dict) and isinstance(inner.get("study"), dict) else None


def _ablation(block, which):
    return block.get(which, {}).get("mean_relative") if isinstance(block, dict) else None


def _perturb(block, target, eps):
    """relative_mean at the eps closest to `eps` (within 10%), or None."""
    if not isinstance(block, dict) or target not in block or "eps" not in block:
        return None
    eps_list = [float(e) for e in block[target].get("eps", block["eps"])]  # a grid per target, or one
    best = min(range(len(eps_list)), key=lambda i: abs(eps_list[i] - eps))
    if abs(eps_list[best] - eps) > 0.1 * eps:
        return None
    return block[target]["relative_mean"][best]


def checkpoint_measures(res: dict) -> dict:
    """The report's measures of one checkpoint's analysis (None where absent)."""
    return {"tau_net": tau_net_mean(res.get("tau_net")), "tau_net_study": tau_net_mean(_study(res, "tau_net")),
            "ablation_short": _ablation(res.get("ablation"), "short"),
            "ablation_long": _ablation(res.get("ablation"), "long"),
            "ablation_short_study": _ablation(_study(res, "ablation"), "short"),
            "ablation_long_study": _ablation(_study(res, "ablation"), "long"),
            "perturb_W": _perturb(res.get("perturbation"), "weights", EPS_W),
            "perturb_tau": _perturb(res.get("perturbation"), "tau", EPS_TAU),
            "perturb_W_study": _perturb(_study(res, "perturbation"), "weights", EPS_W),
            "perturb_tau_study": _perturb(_study(res, "perturbation"), "tau", EPS_TAU)}


def run_rows(sweep_dir, run: dict) -> list[dict]:
    """The tidy rows of one run (none when it trained no epoch)."""
    path = Path(sweep_dir) / run["dir"]
    metrics = RunDir(path).read_metrics()
    base = {k: run.get(k) for k in ("condition", "task", "curriculum", "model", "tau", "seed", "status")}
    passes = {}
    for row in metrics:
        if row["passed"]:
            passes.setdefault(row["N_high"], row)
    analysis = {}
    final_acc = {}
    a_path = path / "analysis" / "analysis.json"
    if a_path.is_file():
        blob = json.loads(a_path.read_text())
        analysis = {int(r["N"]): r for r in blob.get("checkpoints", [])}
        forgetting = blob.get("forgetting", {})
        if forgetting.get("accuracy"):
            final_acc = dict(zip(forgetting["Ns"], forgetting["accuracy"][-1]))
        base["analysis_metric"] = blob.get("settings", {}).get("metric")
    n_reached = max(passes) if passes else None
    rows = []
    for N, row in sorted(passes.items()):
        measures = checkpoint_measures(analysis[N]) if N in analysis else {}
        rows.append({**base, "N_reached": n_reached, "N": N, "epoch_passed": row["epoch"],
                     "wall_time_passed": row["wall_time"], "tau_mean": _finite(row.get("tau_mean")),
                     "tau_std": _finite(row.get("tau_std")), "acc_final": final_acc.get(N), **measures})
    return rows


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def collect(sweep_dir) -> tuple[dict, list[dict]]:
    """(record runs, tidy rows of every run)."""
    runs = read_record(sweep_dir)
    rows = []
    for run in runs.values():
        if (Path(sweep_dir) / run["dir"]).is_dir():
            rows.extend(run_rows(sweep_dir, run))
    return runs, rows


def rows_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]))
                         for k in COLUMNS})
    return buffer.getvalue()


def mean_std(values) -> tuple[float | None, float | None, int]:
    """(mean, std over seeds (ddof 0), count) of the values that are not None."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


def fmt(values, digits=2) -> str:
    """'mean ± std (n)' of the values, or 'n/a'."""
    m, s, n = mean_std(values)
    if m is None:
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={n})"
