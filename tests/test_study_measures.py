"""The study's own estimator of tau_net and its measures of ablation and perturbation, offered beside ours:
checked against their definitions (scipy's curve_fit from the middle of the bounds; chance-corrected
relative accuracy; the in-time stream probe; head 0 ablated) on synthetic data and on the study's networks."""
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import curve_fit
from scipy.signal import lfilter

from conftest import STUDY_CHECKPOINTS as STUDY
from timescale_kernels.analysis import (ablate, ablation_study, autocorrelation, fit_autocorrelation, fit_timescales,
                                        perturbation_study, simulate, stream_accuracy)
from timescale_kernels.analysis.accuracy import chance_corrected, stream_trials
from timescale_kernels.analysis.timescales import double_exp, single_exp, study_normalisation
from timescale_kernels.tasks import make_generator


pytestmark = pytest.mark.usefixtures("one_thread")


def study_network(name):
    if not STUDY.is_dir():
        pytest.skip(f"the study's checkpoints are not at {STUDY}")
    from timescale_kernels.checkpoints import load_study_checkpoint
    return load_study_checkpoint(STUDY / name)


def ar1(a, trials=3, steps=5000, seed=0):
    noise = np.random.default_rng(seed).standard_normal((trials, steps, len(a)))
    return np.stack([lfilter([1.0], [1.0, -c], noise[:, :, j], axis=1) for j, c in enumerate(a)], axis=2)


# -- tau_net ----------------------------------------------------------------------------------------

def test_study_estimator_is_curve_fit_from_the_middle_of_the_bounds():
    x = ar1([0.3, 0.8, 0.95])
    steps, k = x.shape[1], np.arange(31)
    # The study's autocorrelation: mean removed per trial, lag k summed and divided by T - 1 - k.
    xc = x - x.mean(1, keepdims=True)
    direct = np.stack([(xc[:, j:] * xc[:, :steps - j]).sum(1).mean(0) for j in k], 1) / (steps - 1 - k)
    ac = study_normalisation(autocorrelation(x, 30), steps)
    np.testing.assert_allclose(ac, direct, rtol=1e-9)
    fit = fit_timescales(x, max_lag=30, full=True, estimator="study", warn=False)
    np.testing.assert_allclose(fit.ac, ac / ac[:, :1], rtol=1e-12)
    lags = k.astype(float)
    for i in range(3):
        y = fit.ac[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p1, _ = curve_fit(single_exp, lags, y, maxfev=2000, bounds=((0, 0), (1.0, 100)))
            p2, _ = curve_fit(double_exp, lags, y, maxfev=2000, bounds=((0, 0, 0, 0), (1.0, 100, 100, 1.0)))
        np.testing.assert_array_equal(fit.single_params[i], p1)
        np.testing.assert_array_equal(fit.double_params[i], p2)
        aic1 = 4 + 31 * np.log(((single_exp(lags, *p1) - y) ** 2).sum() / 31)
        aic2 = 8 + 31 * np.log(((double_exp(lags, *p2) - y) ** 2).sum() / 31)
        expected = p1[1] if aic1 < aic2 else max(p2[1], p2[2])
        assert fit.model[i] == (1 if aic1 < aic2 else 2) and fit.tau[i] == expected


def test_study_estimator_ties_and_failures_give_nan():
    y = np.exp(-np.arange(11) / 2.0)
    flat = np.zeros(11)
    fit = fit_autocorrelation(np.stack([y, flat]), 10, estimator="study")
    assert fit.reason.tolist() == ["ok", "silent"] and np.isnan(fit.tau[1])
    with pytest.raises(ValueError, match="estimator"):
        fit_autocorrelation(y, 10, estimator="scipy")


def test_ours_finds_an_equal_or_better_optimum_than_the_study_s_code():
    """On the study's multi-head N2-N11 network (a subset of neurons, shorter streams), for every neuron
    our fits reach the study's own AIC optimum or a better one, and for some strictly better."""
    model = study_network("multi_head_parity/rnn_N2_N11.pt")
    sim = simulate(model, trials=4, steps=5000, burn_in=200, max_lag=30, covariance=False,
                   generator=make_generator(0))
    ac = sim.ac[:120]
    ours = fit_autocorrelation(ac, 30)
    study = fit_autocorrelation(ac, 30, estimator="study")
    best_ours, best_study = np.fmin(ours.aic_single, ours.aic_double), np.fmin(study.aic_single, study.aic_double)
    assert np.isfinite(best_ours).all() and np.isfinite(best_study).all()
    assert (best_ours <= best_study + 1e-3).all(), np.max(best_ours - best_study)
    assert (ours.aic_single <= study.aic_single + 1e-3).all()    # a double fit may stop elsewhere, at a bound
    assert (best_ours < best_study - 0.1).sum() >= 3


# -- ablation and perturbation ----------------------------------------------------------------------

def test_in_time_probe_is_one_accuracy_per_stream():
    model = study_network("single_head_parity/rnn_N11_N11.pt")
    per_stream = stream_trials(model, "parity", 11, 0, trials=3, seed=5)
    assert per_stream.shape == (3,) and (per_stream > 0.9).all()
    pooled = stream_accuracy(model, "parity", 11, 0, batches=1, batch_size=3, length=1000, warmup=100, seed=5)
    assert pooled == pytest.approx(per_stream.mean(), rel=1e-12)
    one = stream_trials(model, "parity", 11, 0, trials=1, seed=5, length=50, warmup=10)
    assert one.shape == (1,) and (one * 50) % 1 == pytest.approx(0.0)


def test_study_perturbation_is_chance_corrected_against_the_best_baseline_trial():
    model = study_network("single_head_parity/rnn_N11_N11.pt")
    res = perturbation_study(model, "parity", 11, 0, eps=(0.0, 0.215), trials=3, measure="study", seed=1)
    assert res["measure"] == "study" and res["metric"] == "stream"
    for target in ("weights", "tau"):
        acc = np.asarray(res[target]["accuracy"])
        base = acc[0].max()
        assert res[target]["baseline_trials"] == acc[0].tolist() and res[target]["baseline"] == base
        np.testing.assert_allclose(res[target]["relative"], (acc - 0.5) / (base - 0.5), rtol=1e-12)
        np.testing.assert_allclose(res[target]["relative_mean"], ((acc - 0.5) / (base - 0.5)).mean(1), rtol=1e-12)
    ours = perturbation_study(model, "parity", 11, 0, eps=(0.0, 0.215), trials=1, batches=1, batch_size=64)
    assert ours["measure"] == "ours" and ours["tau"]["relative"][0] == [1.0]
    acc = np.asarray(ours["tau"]["accuracy"])
    np.testing.assert_allclose(ours["tau"]["relative"], acc / ours["baseline"], rtol=1e-12)


def test_study_ablation_zeroes_head_0_while_scoring_head_N_minus_2():
    model = study_network("multi_head_parity/rnn_N2_N11.pt")
    res = ablation_study(model, "parity", 11, 9, k=1, measure="study", trials=2, seed=3)
    assert res["ablated_head"] == 0 and res["head"] == 9 and res["metric"] == "stream"
    # The same streams, drawn in the same order, through models ablated in head 0 only.
    gen = make_generator(3)
    base = stream_trials(model, "parity", 11, 9, 2, generator=gen)
    assert res["baseline_trials"] == base.tolist() and res["baseline"] == base.max()
    for which in ("short", "long"):
        (neuron,) = res[which]["neurons"]
        acc = stream_trials(ablate(model, neuron, heads=0), "parity", 11, 9, 2, generator=gen)
        assert res[which]["accuracy_trials"] == [acc.tolist()]
        np.testing.assert_allclose(res[which]["relative_trials"], [chance_corrected(acc, base.max())], rtol=1e-12)
        assert res[which]["mean_relative"] == pytest.approx(float(chance_corrected(acc, base.max()).mean()))
    assert torch.equal(ablate(model, 0, heads=0).readout.heads[9].weight, model.readout.heads[9].weight)
    with pytest.raises(ValueError, match="measure"):
        ablation_study(model, "parity", 11, 9, k=1, measure="paper")


def test_chance_corrected():
    np.testing.assert_allclose(chance_corrected([0.5, 0.75, 1.0], 1.0), [0.0, 0.5, 1.0])
    assert np.isnan(chance_corrected([0.7], 0.5)).all()
