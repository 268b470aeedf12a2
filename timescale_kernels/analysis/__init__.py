"""Analysis of trained networks: trained tau, network-mediated timescales (tau_net), ablation,
perturbation, forgetting, generalisation, dimensionality, plots, and whole-run reports.

    from timescale_kernels.analysis import fit_timescales, analyze_run, write_report
    tau = fit_timescales(activity, max_lag=30)     # activity (trials, T, neurons) -> (neurons,)
    analyze_run("runs/multi-seed0")                 # -> runs/multi-seed0/analysis/analysis.{json,md}
"""
from .ablation import ablate, ablation_study
from .accuracy import accuracy, evaluate, head_for, stream_accuracy
from .analyze import analyze_run, find_checkpoints
from .dimensionality import components_for, dimensionality, explained_variance_ratio
from .forgetting import forgetting_matrix
from .generalisation import length_generalisation, n_generalisation
from .perturbation import STUDY_EPS, perturb, perturbation_study
from .report import write_report
from .simulate import NetworkTimescales, Simulation, StreamMoments, network_timescales, simulate
from .timescales import (TimescaleFit, autocorrelation, double_exp, effective_tau, fit_autocorrelation,
                         fit_timescales, population_activity, single_exp, tau_stats)

__all__ = ["ablate", "ablation_study", "accuracy", "evaluate", "head_for", "stream_accuracy", "analyze_run",
           "find_checkpoints", "components_for", "dimensionality", "explained_variance_ratio", "forgetting_matrix",
           "length_generalisation", "n_generalisation", "STUDY_EPS", "perturb", "perturbation_study",
           "write_report", "NetworkTimescales", "Simulation", "StreamMoments", "network_timescales", "simulate",
           "TimescaleFit", "autocorrelation", "double_exp", "effective_tau", "fit_autocorrelation",
           "fit_timescales", "population_activity", "single_exp", "tau_stats"]
