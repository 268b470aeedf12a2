"""Perturbation: how far the accuracy falls when the recurrent weights or the taus are pushed.

Normalised random perturbations of strength eps, as the study applies them:
    weights: W   <- W   + eps * ||W||_F * D / ||D||_F,       D ~ N(0, 1) of W's shape
    tau:     tau <- tau + eps * ||tau||   * |D| / ||D||,      D ~ N(0, 1) of tau's shape
(tau only grows: |D|). W is weight_hh as stored; tau is the raw parameter.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..progress import tqdm
from ..tasks import make_generator
from .accuracy import MEASURES, chance_corrected, evaluate, stream_trials

# The study's grids (LevinaLab/rnn_timescale_public): for the weights 0 and 10 log-spaced strengths
# from 0.01 to 10 (compute_perturb_rnn_normalized.py; 0.215 is one of them), for tau 0 and 13 from
# 0.001 to 10 (compute_perturb_tau_normalized_abs.py; 0.0464 is one). perturbation_study takes one
# grid or a grid per target; analyze_run's study measure runs these two, its own DEFAULT_EPS.
STUDY_EPS = (0.0,) + tuple(float(e) for e in np.geomspace(1e-2, 1e1, 10))
STUDY_EPS_TAU = (0.0,) + tuple(float(e) for e in np.geomspace(1e-3, 1e1, 13))
TARGETS = ("weights", "tau")


def _direction(shape, generator, device):
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device)


def perturb(model, target: str, eps: float, generator: torch.Generator | None = None):
    """A copy of model with weight_hh (target "weights") or tau (target "tau") perturbed by eps
    (see the module docstring); the direction D comes from generator (a CPU torch.Generator).
    model itself is left untouched; eps = 0 returns an exact copy."""
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {TARGETS}; got {target!r}")
    if getattr(model, "core", None) != "leaky":
        raise ValueError(f"model: perturbation needs a leaky core; got core={getattr(model, 'core', None)!r}")
    out = copy.deepcopy(model)
    if eps == 0:
        return out
    p = out.rnn.weight_hh if target == "weights" else out.rnn.tau
    with torch.no_grad():
        d = _direction(p.shape, generator, p.device)
        if target == "tau":
            d = d.abs()
        step = eps * torch.linalg.norm(p.double()) * d / torch.linalg.norm(d)
        p.add_(step.to(p.dtype))
    return out


def perturbation_study(model, task: str, N: int, head: int, eps=STUDY_EPS, trials: int = 5,
                       targets=TARGETS, *, direction_seed: int = 0, metric: str = "task", measure: str = "ours",
                       progress: bool = False, **eval_kwargs) -> dict:
    """Accuracy relative to the unperturbed network over a range of eps, several random D each.

    Two measures (the "measure" and "relative_definition" entries of the result say which):
    - "ours" (the default): every evaluation uses the same sequences (`metric` "task" or "stream", as
      for ablation_study), so eps = 0 gives relative accuracy 1 exactly and the differences are the
      perturbation's; relative = accuracy / baseline.
    - "study": as the study's code measures it: each trial draws a fresh direction and scores it on
      one fresh in-time stream (stream_trials: 100 + 1,000 fair bits), and relative is chance-corrected,
      (accuracy - 0.5) / (max over the target's eps = 0 trials - 0.5) (a separate set of `trials`
      unperturbed streams when eps holds no 0). One stream per trial mixes the stream's noise into the spread.
    Ours is the default for its paired comparison; the study's sets our figures beside its own.

    Args:
        eps: strengths (n_eps,), or {target: strengths} for a grid per target (the study's:
            {"weights": STUDY_EPS, "tau": STUDY_EPS_TAU}). trials: random directions per strength.
            targets: "weights", "tau".
        direction_seed: seeds the directions. eval_kwargs: the evaluation's settings (for "study" only
            seed is read: it seeds the streams).

    Returns:
        JSON-able dict: measure, metric, relative_definition, baseline, eps (the first target's), and per
        target: eps (n_eps,), accuracy (n_eps, trials), relative (n_eps, trials), relative_mean (n_eps,),
        relative_std (n_eps,) (over trials); "study" adds per target its baseline and baseline_trials
        (trials,) (the top-level baseline is the first target's).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure: expected one of {MEASURES}; got {measure!r}")
    if isinstance(eps, dict) and set(targets) - set(eps):
        raise ValueError(f"eps: expected a grid for every target {list(targets)}; got one for {list(eps)}")
    grids = {t: [float(e) for e in (eps[t] if isinstance(eps, dict) else eps)] for t in targets}
    out = {"N": N, "head": head, "measure": measure, "metric": "stream" if measure == "study" else metric,
           "eps": grids[targets[0]] if targets else [], "trials": trials}
    bar = tqdm(total=sum(map(len, grids.values())) * trials, desc="perturbation", disable=not progress, leave=False)
    if measure == "study":
        gen = make_generator(eval_kwargs.get("seed", 0), next(model.parameters()).device)
        score = lambda m, n=1: stream_trials(m, task, N, head, n, generator=gen)  # noqa: E731
    else:
        out["baseline"] = evaluate(model, task, N, head, metric, **eval_kwargs)
        score = lambda m: evaluate(m, task, N, head, metric, **eval_kwargs)  # noqa: E731
    for t_i, target in enumerate(targets):
        eps = grids[target]
        directions = torch.Generator().manual_seed(direction_seed * 1000 + t_i)
        acc = np.zeros((len(eps), trials))
        for i, e in enumerate(eps):
            for j in range(trials):
                acc[i, j] = float(np.squeeze(score(perturb(model, target, e, directions))))
                bar.update()
        if measure == "study":   # the baseline of each target: its eps = 0 row, as the study's plots take it
            base = acc[eps.index(0.0)] if 0.0 in eps else score(model, trials)
            out[target] = {"baseline": float(base.max()), "baseline_trials": base.tolist()}
            rel = chance_corrected(acc, out[target]["baseline"])
        else:
            rel = acc / out["baseline"] if out["baseline"] > 0 else np.full_like(acc, np.nan)
        out[target] = {**out.get(target, {}), "eps": eps, "accuracy": acc.tolist(), "relative": rel.tolist(),
                       "relative_mean": rel.mean(1).tolist(), "relative_std": rel.std(1).tolist()}
    bar.close()
    if measure == "study":
        out["baseline"] = out[targets[0]]["baseline"] if targets else None
    out["relative_definition"] = ("(accuracy - 0.5) / (max baseline trial - 0.5)" if measure == "study"
                                  else "accuracy / baseline")
    return out
