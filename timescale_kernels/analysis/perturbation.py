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
from tqdm.auto import tqdm

from .accuracy import evaluate

# The study's grid: 0 and 10 log-spaced strengths from 0.01 to 10 (0.215 is one of them).
STUDY_EPS = (0.0,) + tuple(float(e) for e in np.geomspace(1e-2, 1e1, 10))
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
                       targets=TARGETS, *, direction_seed: int = 0, metric: str = "task", progress: bool = False,
                       **eval_kwargs) -> dict:
    """Accuracy relative to the unperturbed network over a range of eps, several random D each.

    Every evaluation uses the same sequences, so eps = 0 gives relative accuracy 1 exactly.

    Args:
        eps: strengths (n_eps,). trials: random directions per strength. targets: "weights", "tau".
        direction_seed: seeds the directions. metric, eval_kwargs: as for ablation_study (eval_kwargs
            may hold seed, the evaluation's).

    Returns:
        JSON-able dict: baseline, eps (n_eps,), and per target: accuracy (n_eps, trials),
        relative (n_eps, trials), relative_mean (n_eps,), relative_std (n_eps,).
    """
    eps = [float(e) for e in eps]
    baseline = evaluate(model, task, N, head, metric, **eval_kwargs)
    out = {"N": N, "head": head, "metric": metric, "baseline": baseline, "eps": eps, "trials": trials}
    bar = tqdm(total=len(targets) * len(eps) * trials, desc="perturbation", disable=not progress, leave=False)
    for t_i, target in enumerate(targets):
        gen = torch.Generator().manual_seed(direction_seed * 1000 + t_i)
        acc = np.zeros((len(eps), trials))
        for i, e in enumerate(eps):
            for j in range(trials):
                acc[i, j] = evaluate(perturb(model, target, e, gen), task, N, head, metric, **eval_kwargs)
                bar.update()
        rel = acc / baseline if baseline > 0 else np.full_like(acc, np.nan)
        out[target] = {"accuracy": acc.tolist(), "relative": rel.tolist(), "relative_mean": rel.mean(1).tolist(),
                       "relative_std": rel.std(1).tolist()}
    bar.close()
    return out
