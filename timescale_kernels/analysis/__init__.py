"""Analysis of trained networks: trained tau, network-mediated timescales (tau_net), ablation,
perturbation, forgetting, generalisation, dimensionality, plots, and whole-run reports.

    from timescale_kernels.analysis import fit_timescales, analyze_run, write_report
    tau = fit_timescales(activity, max_lag=30)     # activity (trials, T, neurons) -> (neurons,)
    tau = fit_timescales(activity, estimator="study")   # the study's code: curve_fit from mid-bounds
    analyze_run("runs/multi-seed0")                 # -> runs/multi-seed0/analysis/analysis.{json,md}

analyze_run, find_checkpoints and write_report (which draw with matplotlib) load on first use, so that
the rest (simulate, the estimators) imports where matplotlib is not installed.
"""
from .ablation import ablate, ablation_study
from .accuracy import MEASURES, accuracy, chance_corrected, evaluate, head_for, stream_accuracy, stream_trials
from .dimensionality import components_for, dimensionality, explained_variance_ratio
from .forgetting import forgetting_matrix
from .generalisation import length_generalisation, n_generalisation
from .perturbation import STUDY_EPS, STUDY_EPS_TAU, perturb, perturbation_study
from .simulate import NetworkTimescales, Simulation, StreamMoments, fit_simulation, network_timescales, simulate
from .timescales import (ESTIMATORS, TimescaleFit, autocorrelation, double_exp, effective_tau, fit_autocorrelation,
                         fit_timescales, population_activity, single_exp, tau_stats)

__all__ = ["ablate", "ablation_study", "MEASURES", "accuracy", "chance_corrected", "evaluate", "head_for",
           "stream_accuracy", "stream_trials", "ESTIMATORS", "fit_simulation", "analyze_run",
           "find_checkpoints", "components_for", "dimensionality", "explained_variance_ratio", "forgetting_matrix",
           "length_generalisation", "n_generalisation", "STUDY_EPS", "STUDY_EPS_TAU", "perturb", "perturbation_study",
           "write_report", "NetworkTimescales", "Simulation", "StreamMoments", "network_timescales", "simulate",
           "TimescaleFit", "autocorrelation", "double_exp", "effective_tau", "fit_autocorrelation",
           "fit_timescales", "population_activity", "single_exp", "tau_stats"]

_ON_FIRST_USE = {"analyze_run": "analyze", "find_checkpoints": "analyze", "write_report": "report"}


def __getattr__(name: str):
    if name in _ON_FIRST_USE:
        import importlib
        return getattr(importlib.import_module(f".{_ON_FIRST_USE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
