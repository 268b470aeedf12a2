"""analyze_run: every analysis for every checkpoint of a run, written as JSON, Markdown and PNGs."""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..checkpoints import load_checkpoint, load_study_checkpoint
from ..curricula import curriculum_of
from ..files import atomic_write_json, atomic_write_text
from ..progress import tqdm
from ..tasks import get_task
from . import plots
from .ablation import ablation_study
from .dimensionality import dimensionality
from .forgetting import forgetting_matrix
from .generalisation import length_generalisation, n_generalisation
from .perturbation import STUDY_EPS, STUDY_EPS_TAU, perturbation_study
from .simulate import fit_simulation, network_timescales
from .timescales import effective_tau, tau_stats

DEFAULT_EPS = (0.0, 0.01, 0.0215, 0.0464, 0.1, 0.215, 0.464, 1.0)  # the study's grid up to 1
_OURS = re.compile(r"N(\d+)-N(\d+)\.pt")
_STUDY = re.compile(r"rnn_N(\d+)_N(\d+)\.pt")


_INT_SETTINGS = {"trials": 1, "steps": 2, "burn_in": 0, "max_lag": 1, "ablate_k": 0, "perturb_trials": 1,
                 "eval_batches": 1, "batch_size": 1, "seed": 0, "chunk": 1, "extra_N": 0, "study_trials": 1,
                 "study_ablate_k": 0}
_BOOL_SETTINGS = ("study_tau_net", "study_measures", "progress")


def check_settings(**settings) -> None:
    """ValueError naming the first of analyze_run's settings out of range (each as its keyword), so
    that a bad value fails before any work (a sweep checks its analyze table before training)."""
    for name, value in settings.items():
        if name in _INT_SETTINGS:
            low = _INT_SETTINGS[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}; got {value!r}")
        elif name in _BOOL_SETTINGS:
            if not isinstance(value, bool):
                raise ValueError(f"{name}: expected true or false; got {value!r}")
        elif name == "eps" or (name == "study_eps" and value is not None):
            if not _list_of(value, lambda e: isinstance(e, (int, float)) and math.isfinite(e) and e >= 0):
                raise ValueError(f"{name}: expected a non-empty list of finite numbers >= 0; got {value!r}")
        elif name == "length_factors":
            if not _list_of(value, lambda f: isinstance(f, int) and f >= 1):
                raise ValueError(f"length_factors: expected a non-empty list of integers >= 1; got {value!r}")
        elif name == "metric":
            if value not in ("task", "stream"):
                raise ValueError(f"metric: expected 'task' or 'stream'; got {value!r}")
        elif name == "backend":
            from ..ops import BACKENDS
            if value is not None and value not in BACKENDS:
                raise ValueError(f"backend: expected one of {list(BACKENDS)}; got {value!r}")
    steps, max_lag = settings.get("steps"), settings.get("max_lag")
    if isinstance(steps, int) and isinstance(max_lag, int) and steps <= max_lag:  # measured after the burn-in
        raise ValueError(f"steps: expected more than max_lag ({max_lag}) measured steps; got {steps}")


def _list_of(value, ok) -> bool:
    """value is a non-empty list (or tuple) of non-bool items each passing ok."""
    return (isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0
            and all(not isinstance(v, bool) and ok(v) for v in value))


@dataclass
class Checkpoint:
    label: str           # "N2-N11"
    path: Path
    Ns: list             # the N's it was trained on together
    head_for_N: dict     # {N: head index}


def find_checkpoints(run_dir) -> tuple[str, dict, list[Checkpoint]]:
    """(source, config, checkpoints) of a run directory ("run": config.json and checkpoints/N*-N*.pt)
    or of a folder of the study's files ("study": rnn_N*_N*.pt); checkpoints ordered by largest, then
    smallest N. Ns and head_for_N are filled in by load()."""
    run_dir = Path(run_dir)
    if (run_dir / "config.json").is_file():
        config = json.loads((run_dir / "config.json").read_text())
        found = [(int(m.group(2)), int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("*.pt")
                 if (m := _OURS.fullmatch(p.name))]
        return "run", config, [Checkpoint(f"N{lo}-N{hi}", p, [], {}) for hi, lo, p in sorted(found)]
    found = [(int(m.group(2)), int(m.group(1)), p) for p in run_dir.glob("*.pt") if (m := _STUDY.fullmatch(p.name))]
    if not found:
        raise FileNotFoundError(f"run_dir: {run_dir} holds neither config.json (a run directory) nor the "
                                "study's rnn_N*_N*.pt files")
    config = {"task": "parity", "curriculum": curriculum_of((lo, hi) for hi, lo, _ in found), "source": "study"}
    return "study", config, [Checkpoint(f"N{lo}-N{hi}", p, [], {}) for hi, lo, p in sorted(found)]


def load(source: str, ckpt: Checkpoint, device):
    """The checkpoint's model on device; fills ckpt.Ns and ckpt.head_for_N."""
    if source == "study":
        model = load_study_checkpoint(ckpt.path, device=device)
        ckpt.Ns, ckpt.head_for_N = list(model.trained_Ns), dict(model.head_for_N)
    else:
        model, meta = load_checkpoint(ckpt.path, device=device)
        ckpt.Ns = [int(n) for n in meta.get("Ns", [])]
        # JSON round trips turn int keys into strings; accept both.
        ckpt.head_for_N = {int(n): int(h) for n, h in dict(meta.get("head_for_N", {})).items()}
        if not ckpt.Ns:
            m = _OURS.fullmatch(ckpt.path.name)
            ckpt.Ns = list(range(int(m.group(1)), int(m.group(2)) + 1))
        for n in ckpt.Ns:  # a single-head checkpoint may omit its map: its one head serves
            ckpt.head_for_N.setdefault(n, model.num_heads - 1 if model.num_heads else 0)
    model.eval()
    return model


def jsonable(x):
    """Numbers, lists and dicts with NaN/inf as None and numpy types as Python ones."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _tau_net_entry(nt, estimator: str) -> dict:
    return {"estimator": estimator, **nt.summary(), "values": nt.tau_net.tolist(), "model": nt.fit.model.tolist(),
            "reasons": nt.fit.reason.tolist(), "aic_single": nt.fit.aic_single.tolist(),
            "aic_double": nt.fit.aic_double.tolist()}


def _timescales(model, ckpt: Checkpoint, out_dir: Path, s: dict, res: dict) -> None:
    """Trained tau (leaky cores), tau_net by our estimator (and the study's), dimensionality, into res."""
    figs = res["figures"]
    if model.core == "leaky":
        res["tau"] = tau_stats(model)
        res["tau_values"] = effective_tau(model).tolist()
        figs["tau_hist"] = plots.tau_histogram(res["tau"], out_dir / f"tau_hist_{ckpt.label}.png",
                                               f"{ckpt.label}: trained tau").name
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(s["seed"])
    nt = network_timescales(model, trials=s["trials"], steps=s["steps"], burn_in=s["burn_in"],
                            max_lag=s["max_lag"], generator=gen, chunk=s["chunk"], backend=s["backend"],
                            progress=s["progress"], warn=False)
    res["tau_net"] = {**_tau_net_entry(nt, "ours"), "ac_population": nt.sim.ac_population.tolist()}
    if s["study_tau_net"]:
        res["tau_net_study"] = _tau_net_entry(fit_simulation(nt.sim, warn=False, estimator="study"), "study")
    res["dimensionality"] = dimensionality(covariance=nt.sim.covariance)
    figs["ac_fits"] = plots.autocorrelation_fits(nt.fit, out_dir / f"ac_fits_{ckpt.label}.png",
                                                 title=f"{ckpt.label}: autocorrelations").name
    if model.core == "leaky":
        figs["tau_scatter"] = plots.tau_scatter(res["tau_values"], res["tau_net"]["values"],
                                                out_dir / f"tau_scatter_{ckpt.label}.png", ckpt.label).name


def _robustness(model, ckpt: Checkpoint, task, out_dir: Path, s: dict, eval_kwargs: dict, res: dict) -> None:
    """Ablation and perturbation by our measure (and the study's), into res (leaky cores only)."""
    N, head, figs = res["N"], res["head"], res["figures"]
    res["ablation"] = ablation_study(model, task, N, head, s["ablate_k"], metric=s["metric"],
                                     progress=s["progress"], **eval_kwargs)
    figs["ablation"] = plots.ablation_bars(res["ablation"], out_dir / f"ablation_{ckpt.label}.png",
                                           f"{ckpt.label}: ablation at N = {N}").name
    res["perturbation"] = perturbation_study(model, task, N, head, s["eps"], s["perturb_trials"],
                                             direction_seed=s["seed"], metric=s["metric"],
                                             progress=s["progress"], **eval_kwargs)
    figs["perturbation"] = plots.perturbation_curves(
        res["perturbation"], out_dir / f"perturbation_{ckpt.label}.png", f"{ckpt.label}: perturbation at N = {N}").name
    if s["study_measures"]:
        res["ablation_study"] = ablation_study(model, task, N, head, s["study_ablate_k"], measure="study",
                                               trials=s["study_trials"], progress=s["progress"], seed=s["seed"])
        study_eps = s["study_eps"] or {"weights": STUDY_EPS, "tau": STUDY_EPS_TAU}
        res["perturbation_study"] = perturbation_study(model, task, N, head, study_eps, s["study_trials"],
                                                       direction_seed=s["seed"], measure="study",
                                                       progress=s["progress"], seed=s["seed"])


def _analyze_checkpoint(model, ckpt: Checkpoint, task, out_dir: Path, s: dict, eval_kwargs: dict) -> dict:
    N = max(ckpt.Ns)
    res = {"label": ckpt.label, "file": str(ckpt.path), "Ns": ckpt.Ns, "N": N, "head": ckpt.head_for_N[N],
           "head_for_N": {str(n): h for n, h in sorted(ckpt.head_for_N.items())}, "figures": {}}
    t0 = time.perf_counter()
    _timescales(model, ckpt, out_dir, s, res)
    if model.core == "leaky":
        _robustness(model, ckpt, task, out_dir, s, eval_kwargs, res)
    task_kwargs = {k: v for k, v in eval_kwargs.items() if k in ("batches", "batch_size", "seed")}
    res["generalisation"] = {"length": length_generalisation(model, task, N, res["head"], s["length_factors"],
                                                             **task_kwargs),
                             "N": n_generalisation(model, task, ckpt.head_for_N, s["extra_N"], **task_kwargs)}
    res["seconds"] = time.perf_counter() - t0
    return res


def analyze_run(run_dir, out_dir=None, *, task=None, trials=10, steps=100_000, burn_in=500, max_lag=30,
                ablate_k=10, eps=DEFAULT_EPS, perturb_trials=5, eval_batches=10, batch_size=256, seed=0,
                device=None, metric="task", only=None, chunk=2048, backend=None, length_factors=(1, 2, 4),
                extra_N=3, study_tau_net=True, study_measures=True, study_trials=10, study_ablate_k=20, study_eps=None,
                progress=True, log=None) -> dict:
    """Every analysis of every checkpoint of a run; writes out_dir/analysis.json, analysis.md, PNGs.

    Args:
        run_dir: a run directory (config.json with "task"; checkpoints/N{lo}-N{hi}.pt) or a folder of
            the study's files (rnn_N{lo}_N{hi}.pt; task parity; its curriculum told by the N ranges).
        out_dir: where to write (default run_dir/analysis). task: override the task (a name in TASKS).
        trials, steps, burn_in, max_lag: the tau_net simulation and fit (simulate, fit_autocorrelation).
        ablate_k: neurons silenced from each end of the tau order. eps, perturb_trials: perturbation grid.
        eval_batches, batch_size: every accuracy evaluation (same sequences for all, from seed).
        seed: seeds the evaluation sequences, the simulation and the perturbation directions.
        device: "cpu", "cuda", ... (default: CUDA when available).
        metric: "task" (the training task, accuracy()) or "stream" (the study's in-time measure) for
            ablation, perturbation and the forgetting matrix.
        only: labels ("N2-N11") or largest N's of the checkpoints to analyse in depth (default all);
            the forgetting matrix always covers every checkpoint.
        chunk, backend: simulation chunk length and op backend (default: the model's own).
        length_factors: generalisation to T = factor * (4N + 1). extra_N: N's beyond the trained range.
        study_tau_net: also fit tau_net with the study's estimator (tau_net_study).
        study_measures: also measure ablation and perturbation as the study does (ablation_study,
            perturbation_study: in-time streams, chance-corrected), with study_trials streams each;
            the study's ablation silences study_ablate_k neurons from each end (its code: 20), and its
            perturbation runs study_eps (None: the study's grids, STUDY_EPS for W, STUDY_EPS_TAU for tau).
        progress: tqdm bars. log: a callable given one line per checkpoint analysed (for logs that are
            not a terminal, where the bars are off), or None.

    Returns:
        The dict written to analysis.json: source, task, curriculum, settings, forgetting matrix, and
        per checkpoint: tau stats and values, tau_net (estimator "ours": summary, values, fit model,
        reasons, AICs, population autocorrelation) and tau_net_study (the study's estimator), dimensionality,
        accuracy per trained N, ablation and perturbation (ours) and ablation_study and perturbation_study
        (the study's measures; each says which in "measure"), generalisation.
    """
    check_settings(trials=trials, steps=steps, burn_in=burn_in, max_lag=max_lag, ablate_k=ablate_k, eps=eps,
                   perturb_trials=perturb_trials, eval_batches=eval_batches, batch_size=batch_size, seed=seed,
                   metric=metric, chunk=chunk, backend=backend, length_factors=length_factors, extra_N=extra_N,
                   study_tau_net=study_tau_net, study_measures=study_measures, study_trials=study_trials,
                   study_ablate_k=study_ablate_k, study_eps=study_eps, progress=progress)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "analysis"
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    source, config, ckpts = find_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"run_dir: {run_dir} has no checkpoints")
    task = task or config.get("task")
    if task is None:
        raise ValueError(f"task: {run_dir}/config.json names no task; pass task=")
    get_task(task)
    _check_only(only, ckpts)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once there is something to analyse
    s = {"trials": trials, "steps": steps, "burn_in": burn_in, "max_lag": max_lag, "ablate_k": ablate_k,
         "eps": [float(e) for e in eps], "perturb_trials": perturb_trials, "eval_batches": eval_batches,
         "batch_size": batch_size, "seed": seed, "device": str(device), "metric": metric, "chunk": chunk,
         "backend": backend, "length_factors": list(length_factors), "extra_N": extra_N,
         "study_tau_net": bool(study_tau_net), "study_measures": bool(study_measures),
         "study_trials": study_trials, "study_ablate_k": study_ablate_k,
         "study_eps": None if study_eps is None else [float(e) for e in study_eps], "progress": progress}
    summary = _analyze(run_dir, out_dir, source, config, ckpts, task, only, device, s, log)
    atomic_write_json(out_dir / "analysis.json", summary)
    from .report import run_markdown
    atomic_write_text(out_dir / "analysis.md", run_markdown(summary))
    return summary


def _check_only(only, ckpts) -> None:
    """ValueError for a label ("N2-N11") that names no checkpoint, or an `only` that picks none. A
    largest N without a checkpoint of its own is passed over (a sweep asks for the same N's of every
    run, and each run reaches its own)."""
    if only is None:
        return
    labels = [c.label for c in ckpts]
    missing = [o for o in only if isinstance(o, str) and not o.isdigit() and o not in labels]
    asked = {str(o) for o in only}
    picked = [c for c in ckpts if c.label in asked or c.label.rpartition("-N")[2] in asked]  # "N2-N11": 11
    if missing or not picked:
        raise ValueError(f"only: {missing or list(only)} names no checkpoint of this run; its checkpoints are "
                         f"{', '.join(labels)} (a label, or the largest N of one)")


def _analyze(run_dir, out_dir, source, config, ckpts, task, only, device, s, log=None) -> dict:
    """The forgetting matrix over every checkpoint, then every chosen checkpoint in depth."""
    eval_kwargs = {"batches": s["eval_batches"], "batch_size": s["batch_size"], "seed": s["seed"]}
    start = time.perf_counter()
    models = [load(source, c, device) for c in ckpts]
    all_Ns = sorted({n for c in ckpts for n in c.Ns})
    forgetting = forgetting_matrix([(c.label, m, c.head_for_N) for c, m in zip(ckpts, models)], task, all_Ns,
                                   metric=s["metric"], progress=s["progress"], **eval_kwargs)
    forgetting["figure"] = plots.forgetting_heatmap(forgetting, out_dir / "forgetting.png",
                                                    f"{run_dir.name}: accuracy ({s['metric']})").name
    wanted = None if only is None else {str(o) for o in only}
    results = []
    chosen = [(c, m, i) for i, (c, m) in enumerate(zip(ckpts, models))
              if wanted is None or c.label in wanted or str(max(c.Ns)) in wanted]
    for c, m, i in tqdm(chosen, desc=f"analyze {run_dir.name}", disable=not s["progress"]):
        res = _analyze_checkpoint(m, c, task, out_dir, s, eval_kwargs)
        row = forgetting["accuracy"][i]
        res["accuracy"] = {str(n): row[all_Ns.index(n)] for n in c.Ns}
        results.append(res)
        if log:
            log(f"analyze {run_dir.name}: {c.label} done ({len(results)} of {len(chosen)}, "
                f"{time.perf_counter() - start:.0f} s)")
    summary = {"run_dir": str(run_dir), "source": source, "task": task, "curriculum": config.get("curriculum"),
               "seed_of_run": config.get("seed"), "settings": s, "forgetting": forgetting, "checkpoints": results,
               "seconds": time.perf_counter() - start, "version": __version__}
    if len(results) > 1:
        summary["figures"] = {"tau_vs_N": _tau_vs_N(results, out_dir / "tau_vs_N.png", run_dir.name).name}
    return jsonable(summary)


def _tau_vs_N(results, path, title):
    Ns = [r["N"] for r in results]
    series = {"tau_net median": (Ns, [r["tau_net"]["neurons"]["median"] for r in results])}
    if all("tau" in r for r in results):
        series["trained tau mean"] = (Ns, [r["tau"]["mean"] for r in results], [r["tau"]["std"] for r in results])
    return plots.lines(series, path, "N", "timescale (steps)", title)
