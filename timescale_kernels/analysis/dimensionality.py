"""Dimensionality: how many principal components carry a given share of the activity's variance."""
from __future__ import annotations

import numpy as np
import torch


def explained_variance_ratio(covariance) -> np.ndarray:
    """covariance (..., H, H) -> the eigenvalues' shares of the total (..., H), largest first."""
    c = np.asarray(covariance, dtype=np.float64)
    ev = np.clip(np.linalg.eigvalsh(c)[..., ::-1], 0.0, None)
    total = ev.sum(-1, keepdims=True)
    return np.divide(ev, total, out=np.zeros_like(ev), where=total > 0)


def components_for(ratios, threshold: float = 0.9) -> np.ndarray:
    """ratios (..., H) largest first -> the smallest number of components whose shares reach
    threshold (...,). (The study's code reports this number minus one.)"""
    cum = np.cumsum(np.asarray(ratios), -1)
    # The tolerance keeps exact answers (e.g. 9 of 10 equal components for 0.9) from rounding up.
    return (cum < threshold - 1e-9).sum(-1) + 1


def dimensionality(activity=None, *, covariance=None, threshold: float = 0.9) -> dict:
    """Principal components needed for threshold of the variance, per trial (the study's code
    reports one less: the first index whose cumulative share exceeds threshold; see components_for).

    Args:
        activity: (trials, T, H) or (T, H), numpy or torch; or
        covariance: (trials, H, H) or (H, H), e.g. Simulation.covariance.
        threshold: the share of variance to explain.

    Returns:
        JSON-able dict: per_trial (trials,) counts, mean, threshold, and explained (H,) the
        trial-averaged explained-variance ratios (largest first).
    """
    if (activity is None) == (covariance is None):
        raise ValueError("dimensionality: give exactly one of activity or covariance")
    if covariance is None:
        a = activity.detach().cpu().numpy() if isinstance(activity, torch.Tensor) else np.asarray(activity)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"activity: expected (trials, T, H) or (T, H); got shape {a.shape}")
        covariance = np.stack([np.atleast_2d(np.cov(t.astype(np.float64), rowvar=False)) for t in a])
    c = np.asarray(covariance, dtype=np.float64)
    if c.ndim == 2:
        c = c[None]
    ratios = explained_variance_ratio(c)
    counts = components_for(ratios, threshold)
    return {"per_trial": counts.tolist(), "mean": float(counts.mean()), "threshold": threshold,
            "explained": ratios.mean(0).tolist()}
