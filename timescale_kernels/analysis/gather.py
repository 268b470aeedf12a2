"""Reading run directories for the report: each run's analysis (analysis.json), settings (config.json),
training log (metrics.csv) and summary (summary.json), whichever of them it holds."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..curricula import CURRICULA, get_curriculum


def _find_analysis(d: Path, required: bool = True) -> Path | None:
    for p in (d / "analysis.json", d / "analysis" / "analysis.json"):
        if p.is_file():
            return p
    if not required:
        return None
    raise FileNotFoundError(f"run_dirs: no analysis.json in {d} or {d / 'analysis'} (run analyze_run first) "
                            "and no training run there (config.json, metrics.csv or summary.json)")


def _read_json(path: Path) -> dict:
    """A JSON object from path, or {} when it is missing, damaged or not an object."""
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return blob if isinstance(blob, dict) else {}


def _model(config: dict, summary: dict | None, training: dict) -> str:
    """The recurrent core: config.json's (or summary.json's) "model"; the study's files and analyses
    with trained tau are leaky; else "unknown"."""
    model = config.get("model") or training.get("model")
    if model:
        return str(model)
    if summary and (summary.get("source") == "study" or any("tau" in c for c in summary.get("checkpoints", []))):
        return "leaky"
    return "unknown"


def _kind(curriculum) -> str:
    """The registered curriculum's name for curriculum or one of its aliases; else the text itself."""
    if not curriculum:
        return "unknown"
    try:
        return get_curriculum(curriculum).name
    except ValueError:
        return str(curriculum).lower()


def curricula_present(runs) -> list[str]:
    """The curricula present in runs: registered ones in REGISTRY's order, then any other, sorted."""
    present = {r["kind"] for r in runs}
    return [k for k in CURRICULA if k in present] + sorted(present - set(CURRICULA))


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv rows as dicts of floats where they parse (other cells kept as text)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for k, v in raw.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    row[k] = v
            rows.append(row)
    return rows


def _n_reached(rows: list[dict]):
    """(epochs, N reached) from metrics rows: the N_reached column where the log has one (rows before
    the first pass are skipped), else N_high / N_max, else the largest int in an "Ns" column."""
    keys = [k for k in ("N_reached", "N_high", "N_max", "max_N") if rows and k in rows[0]]
    epochs, reached = [], []
    for i, row in enumerate(rows):
        n = row.get(keys[0]) if keys else None
        if not keys and isinstance(row.get("Ns"), str) and (ints := re.findall(r"\d+", row["Ns"])):
            n = float(max(map(int, ints)))
        if not isinstance(n, float):
            continue
        epochs.append(row["epoch"] if isinstance(row.get("epoch"), float) else float(i + 1))
        reached.append(n)
    return epochs, reached


def _first_reach(rows: list[dict], training: dict, summary: dict | None) -> dict:
    """{"N": highest N passed, "epoch" and "wall_time" (s) when it first passed, "epochs": epochs run}
    from metrics.csv rows (N_reached, epoch, wall_time), else summary.json, else the largest checkpoint N
    of the analysis; None where unknown."""
    best = None
    for i, row in enumerate(rows):
        n = row.get("N_reached")
        if isinstance(n, float) and (best is None or n > best["N"]):  # the first row at a new maximum
            best = {"N": int(n), "epoch": int(row["epoch"]) if isinstance(row.get("epoch"), float) else i + 1,
                    "wall_time": row.get("wall_time") if isinstance(row.get("wall_time"), float) else None}
    if best is None and (reached := _n_reached(rows))[1]:  # logs of another layout: no wall time
        i = reached[1].index(max(reached[1]))
        best = {"N": int(reached[1][i]), "epoch": int(reached[0][i]), "wall_time": None}
    if best is None:
        n = training.get("N_reached")
        if n is None and summary and summary.get("checkpoints"):
            n = max(c["N"] for c in summary["checkpoints"])
        best = {"N": int(n) if isinstance(n, (int, float)) else None, "epoch": None, "wall_time": None}
    last = rows[-1].get("epoch") if rows else None
    best["epochs"] = int(last) if isinstance(last, float) else training.get("epochs")
    return best


def gather_runs(run_dirs) -> list[dict]:
    """One dict per run directory. A directory with an analysis.json is "analysed" (summary holds it);
    a training run without one (config.json, metrics.csv, summary.json) has summary None and enters
    only the tables that need no analysis."""
    runs = []
    for d in map(Path, run_dirs):
        found = _find_analysis(d, required=False)
        if found is None and not any((d / f).is_file() for f in ("config.json", "metrics.csv", "summary.json")):
            _find_analysis(d)  # raises, naming what is missing
        summary = json.loads(found.read_text()) if found is not None else None
        src = Path(summary.get("run_dir", d)) if summary else d
        config = _read_json(src / "config.json") or _read_json(d / "config.json")
        training = _read_json(src / "summary.json") or _read_json(d / "summary.json")
        rows = read_metrics(src / "metrics.csv") or read_metrics(d / "metrics.csv")
        kind = _kind(config.get("curriculum") or (summary or {}).get("curriculum") or training.get("curriculum"))
        name = d.name if d.name != "analysis" else d.parent.name
        if any(r["name"] == name for r in runs):  # figure files are named after runs: keep them apart
            name = f"{name}-{len(runs)}"
        runs.append({"name": name, "kind": kind, "model": _model(config, summary, training),
                     "seed": config.get("seed", (summary or {}).get("seed_of_run")), "summary": summary,
                     "task": (summary or {}).get("task") or config.get("task") or training.get("task"),
                     "n_reached": _n_reached(rows), "reach": _first_reach(rows, training, summary),
                     "checkpoint_files": len(list((src / "checkpoints").glob("N*-N*.pt"))),
                     "analysis_dir": found.parent if found is not None else None})
    return runs
