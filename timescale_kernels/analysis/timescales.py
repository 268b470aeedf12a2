"""Timescales: trained tau statistics, autocorrelations, and exponential fits chosen by AIC.

The study's estimator (network-mediated timescale, tau_net): each neuron's autocorrelation
(mean removed per trial, lag k divided by T - k, averaged over trials, normalised by lag 0; the study's
code divides by T - 1 - k, a difference of order 1/T) is fitted on lags 0..max_lag with

    single:  a exp(-k / tau)                                    (a in [0, 1], tau in (0, tau_max])
    double:  a c exp(-k / tau1) + a (1 - c) exp(-k / tau2)      (c in [0, 1])

the model with the lower AIC = 2 n_params + n_lags log(RSS) is kept, and its slower time constant is
the neuron's timescale. Every fit starts from the best point of a vectorised grid search (variable
projection: the amplitudes are linear), so curve_fit only polishes and 500 neurons take seconds.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

REASONS = ("ok", "silent", "nonfinite", "fit_failed", "at_bound")  # TimescaleFit.reason values
ESTIMATORS = ("ours", "study")  # how fit_autocorrelation finds each fit
TAU_MIN = 1e-3  # lower bound of every fitted tau; exp(-k / 0) is undefined


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# -- trained tau ------------------------------------------------------------------------------------

def effective_tau(model_or_tau) -> np.ndarray:
    """clamp(tau, 1) as float64 (H,), from a MemoryNet, a LeakyRNN (the time constants its first layer
    runs with, through its tau parameterisation), or a tensor/array of raw tau."""
    tau = model_or_tau
    if hasattr(tau, "rnn"):
        tau = tau.rnn
    if callable(getattr(tau, "time_constants", None)):
        tau = tau.time_constants().detach()
    elif hasattr(tau, "tau"):
        tau = tau.tau
    tau = _as_numpy(tau).astype(np.float64).reshape(-1)
    return np.maximum(tau, 1.0)


def tau_stats(model_or_tau, bins=None, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
    """The distribution of clamp(tau, 1) (the time constant the model actually uses).

    Returns a JSON-able dict: n, mean, std, min, max, q05..q95, fraction_at_1 (share of neurons whose
    raw tau is <= 1, i.e. no leak), and hist = {"edges": (bins + 1,), "counts": (bins,)}.
    bins: edges or a count (default: 40 bins from 1 to max(2, max tau)).
    """
    tau = effective_tau(model_or_tau)
    if bins is None:
        bins = np.linspace(1.0, max(2.0, float(tau.max())), 41)
    counts, edges = np.histogram(tau, bins=bins)
    out = {"n": int(tau.size), "mean": float(tau.mean()), "std": float(tau.std()), "min": float(tau.min()),
           "max": float(tau.max()), "fraction_at_1": float(np.mean(tau <= 1.0))}
    for q in quantiles:
        out[f"q{int(round(q * 100)):02d}"] = float(np.quantile(tau, q))
    out["hist"] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return out


# -- autocorrelation --------------------------------------------------------------------------------

def _as_trials(activity) -> np.ndarray:
    """activity (trials, T, n) or (T, n) -> float64 (trials, T, n)."""
    a = _as_numpy(activity)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"activity: expected (trials, T, neurons) or (T, neurons); got shape {a.shape}")
    return a


def autocorrelation(activity, max_lag: int = 30, memory: int = 2 ** 28) -> np.ndarray:
    """Each neuron's autocorrelation by FFT, the study's estimator.

    Args:
        activity: (trials, T, neurons) or (T, neurons), numpy or torch.
        max_lag: the largest lag kept (needs T > max_lag).
        memory: about the most bytes of FFT work arrays at once (neurons are transformed in blocks).

    Returns:
        ac (neurons, max_lag + 1), float64: per trial, mean removed and lag k summed over the T - k
        pairs and divided by T - k; then averaged over trials. Not normalised (ac[:, 0] is the variance).
        Neurons that are constant in every trial get exactly 0 (fit_autocorrelation calls them silent).
    """
    from scipy import fft as sfft  # here, so that importing the analyses (simulate) needs no scipy

    a = _as_trials(activity)
    trials, steps, neurons = a.shape
    if not 0 <= max_lag < steps:
        raise ValueError(f"max_lag: expected 0 <= max_lag < T = {steps}; got {max_lag}")
    size = sfft.next_fast_len(2 * steps, real=True)
    ac = np.empty((neurons, max_lag + 1))
    pairs = steps - np.arange(max_lag + 1)
    block = max(1, memory // (trials * size * 24))  # float64 input + complex128 spectrum per point
    for lo in range(0, neurons, block):
        # (trials, block, T), time contiguous: FFTs along the last axis are several times faster.
        x = np.ascontiguousarray(a[:, :, lo:lo + block].transpose(0, 2, 1), dtype=np.float64)
        x -= x.mean(axis=2, keepdims=True)
        spec = sfft.rfft(x, n=size, axis=2, workers=-1)
        power = np.square(spec.real) + np.square(spec.imag)
        lagged = sfft.irfft(power, n=size, axis=2, workers=-1)[:, :, :max_lag + 1]
        ac[lo:lo + block] = (lagged / pairs).mean(axis=0)
    ac[_constant(a)] = 0.0
    return ac


def _constant(a: np.ndarray) -> np.ndarray:
    """(neurons,) True where a (trials, T, n) never changes within any trial."""
    return np.all(np.ptp(a, axis=1) == 0, axis=0)


def population_activity(activity) -> np.ndarray:
    """The summed activity of all neurons: (trials, T, n) or (T, n) -> (trials, T, 1)."""
    return _as_trials(activity).sum(axis=2, keepdims=True)


# -- exponential models ---------------------------------------------------------------------------

def single_exp(lag, a, tau):
    """a exp(-lag / tau)."""
    return a * np.exp(-lag / tau)


def double_exp(lag, a, tau1, tau2, c):
    """a c exp(-lag / tau1) + a (1 - c) exp(-lag / tau2)."""
    return a * c * np.exp(-lag / tau1) + a * (1.0 - c) * np.exp(-lag / tau2)


def _single_jac(lag, a, tau):
    e = np.exp(-lag / tau)
    return np.stack([e, a * e * lag / tau ** 2], axis=1)


def _double_jac(lag, a, tau1, tau2, c):
    e1, e2 = np.exp(-lag / tau1), np.exp(-lag / tau2)
    return np.stack([c * e1 + (1 - c) * e2, a * c * e1 * lag / tau1 ** 2,
                     a * (1 - c) * e2 * lag / tau2 ** 2, a * (e1 - e2)], axis=1)


def _aic(rss: np.ndarray, n: int, k: int) -> np.ndarray:
    # A perfect fit (RSS = 0) would give -inf for both models; the floor lets the parameter count decide.
    return 2 * k + n * np.log(np.maximum(rss, 1e-300))


def _grid_single(y, lags, taus):
    """Best (a, tau) on a tau grid for every row of y (n, L): the amplitude is linear, so exact."""
    e = np.exp(-lags[None, :] / taus[:, None])                 # (G, L)
    g, r = (e * e).sum(1), y @ e.T                             # (G,), (n, G)
    a = np.clip(r / g, 0.0, 1.0)
    rss = (y * y).sum(1, keepdims=True) - 2 * a * r + a * a * g  # expanded, so no (n, G, L) array
    best = rss.argmin(1)
    rows = np.arange(len(y))
    return np.stack([a[rows, best], taus[best]], 1)


def _grid_double(y, lags, taus):
    """Best (a, tau1, tau2, c) over pairs tau1 < tau2 of a grid: 2x2 least squares per pair."""
    i, j = np.triu_indices(len(taus), 1)
    e1, e2 = np.exp(-lags[None, :] / taus[i, None]), np.exp(-lags[None, :] / taus[j, None])  # (P, L)
    g11, g12, g22 = (e1 * e1).sum(1), (e1 * e2).sum(1), (e2 * e2).sum(1)
    r1, r2 = y @ e1.T, y @ e2.T                                # (n, P)
    det = g11 * g22 - g12 ** 2
    b1 = np.clip((g22 * r1 - g12 * r2) / det, 0.0, None)
    b2 = np.clip((g11 * r2 - g12 * r1) / det, 0.0, None)
    scale = np.maximum(b1 + b2, 1.0)                           # the study's bound a = b1 + b2 <= 1
    b1, b2 = b1 / scale, b2 / scale
    rss = ((y * y).sum(1, keepdims=True) - 2 * (b1 * r1 + b2 * r2)
           + b1 * b1 * g11 + 2 * b1 * b2 * g12 + b2 * b2 * g22)
    best = rss.argmin(1)
    rows = np.arange(len(y))
    bb1, bb2 = b1[rows, best], b2[rows, best]
    amp = bb1 + bb2
    c = np.where(amp > 0, bb1 / np.where(amp > 0, amp, 1.0), 0.5)
    return np.stack([amp, taus[i][best], taus[j][best], c], 1)


@dataclass
class TimescaleFit:
    """Per-neuron fit results; every array has one entry per neuron (n,).

    tau: the slower time constant of the AIC-selected model, in steps; NaN where reason != "ok".
    A curve already at (or below) zero at lag 1 has no resolvable decay and fits tau near TAU_MIN;
    summary() counts such neurons in fraction_below_1 (the study's code keeps them as they are).
    model: 1 (single), 2 (double) or 0 (no fit). reason: "ok", "silent" (zero variance), "nonfinite"
    (NaN/inf in the data), "fit_failed" (neither model converged) or "at_bound" (the timescale reached
    tau_max: longer than the lags can resolve). tau_single: the single fit's tau; tau_fast, tau_slow,
    weight_slow: the double fit's time constants and the slow one's share of the amplitude.
    aic_single, aic_double: NaN where that fit failed. double_at_bound: the double fit put a time
    constant at tau_max and was set aside (see fit_autocorrelation). single_params (n, 2) = (a, tau),
    double_params (n, 4) = (a, tau1, tau2, c): the fitted parameters (NaN where that fit failed).
    ac: (n, max_lag + 1) the normalised autocorrelation that was fitted (NaN rows where not fitted).
    """
    tau: np.ndarray
    model: np.ndarray
    reason: np.ndarray
    tau_single: np.ndarray
    tau_fast: np.ndarray
    tau_slow: np.ndarray
    weight_slow: np.ndarray
    aic_single: np.ndarray
    aic_double: np.ndarray
    double_at_bound: np.ndarray
    ac: np.ndarray
    single_params: np.ndarray
    double_params: np.ndarray
    max_lag: int
    tau_max: float

    def curve(self, i: int, lags=None) -> np.ndarray:
        """The selected model's fitted curve for neuron i at lags (default 0..max_lag); NaN if none."""
        lags = np.arange(self.max_lag + 1.0) if lags is None else np.asarray(lags, dtype=np.float64)
        if self.model[i] == 2:
            return double_exp(lags, *self.double_params[i])
        if self.model[i] == 1:
            return single_exp(lags, *self.single_params[i])
        return np.full(lags.shape, np.nan)

    def failures(self) -> dict:
        """{reason: count} for every reason other than "ok" that occurs."""
        names, counts = np.unique(self.reason[self.reason != "ok"], return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    def summary(self) -> dict:
        """JSON-able summary: counts, mean/median/std of the finite taus, share of double fits."""
        ok = np.isfinite(self.tau)
        t = self.tau[ok]
        return {"n": int(self.tau.size), "n_ok": int(ok.sum()), "failures": self.failures(),
                "mean": float(t.mean()) if t.size else None, "median": float(np.median(t)) if t.size else None,
                "std": float(t.std()) if t.size else None,
                "fraction_double": float(np.mean(self.model[ok] == 2)) if t.size else None,
                "fraction_below_1": float(np.mean(t < 1.0)) if t.size else None,
                "double_at_bound": int(self.double_at_bound.sum()),
                "max_lag": self.max_lag, "tau_max": self.tau_max}


def _prepare(ac, max_lag):
    """(y (n, max_lag + 1) normalised by lag 0 where fittable, max_lag, reason (n,), good (n,))."""
    ac = np.atleast_2d(_as_numpy(ac).astype(np.float64))
    max_lag = ac.shape[1] - 1 if max_lag is None else int(max_lag)
    if not 1 <= max_lag < ac.shape[1]:
        raise ValueError(f"max_lag: expected 1 <= max_lag < {ac.shape[1]} (the lags given); got {max_lag}")
    n = ac.shape[0]
    reason = np.full(n, "ok", dtype=object)
    finite = np.all(np.isfinite(ac[:, :max_lag + 1]), axis=1)
    reason[~finite] = "nonfinite"
    reason[finite & (ac[:, 0] <= 0)] = "silent"
    good = reason == "ok"
    y = np.zeros((n, max_lag + 1))
    y[good] = ac[good, :max_lag + 1] / ac[good, :1]
    return y, max_lag, reason, good


def _curve_fit(model, lags, y, k, **kwargs):
    """(parameters, AIC) of one curve_fit, or (NaNs, NaN) where it fails."""
    from scipy.optimize import curve_fit  # here, so that importing the analyses needs no scipy

    try:
        p, _ = curve_fit(model, lags, y, maxfev=2000, **kwargs)
    except (RuntimeError, ValueError):
        return np.full(k, np.nan), np.nan
    return p, float(_aic(((model(lags, *p) - y) ** 2).sum(), lags.size, k))


def _fit_both(y, good, lags, tau_max, grid, estimator):
    """Single and double fits of every good row: (params1 (n, 2), params2 (n, 4), aic1, aic2 (n,)).
    "ours" starts each fit from the best point of a grid search and gives curve_fit the Jacobian;
    "study" calls curve_fit as the study's code does (no start: the middle of the bounds, whose
    lower ends are 0; finite-difference Jacobian)."""
    n = len(y)
    params1, params2 = np.full((n, 2), np.nan), np.full((n, 4), np.nan)
    aic1, aic2 = np.full(n, np.nan), np.full(n, np.nan)
    idx = np.flatnonzero(good)
    low = TAU_MIN if estimator == "ours" else 0.0
    b1, b2 = ((0.0, low), (1.0, tau_max)), ((0.0, low, low, 0.0), (1.0, tau_max, tau_max, 1.0))
    if estimator == "ours" and idx.size:
        taus = np.geomspace(0.1, tau_max, grid)
        start1, start2 = _grid_single(y[idx], lags, taus), _grid_double(y[idx], lags, taus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OptimizeWarning on flat curves: judged by the AIC instead
        for i, row in enumerate(idx):
            one, two = {"bounds": b1}, {"bounds": b2}
            if estimator == "ours":
                one.update(p0=np.clip(start1[i], *b1), jac=_single_jac)
                two.update(p0=np.clip(start2[i], *b2), jac=_double_jac)
            params1[row], aic1[row] = _curve_fit(single_exp, lags, y[row], 2, **one)
            params2[row], aic2[row] = _curve_fit(double_exp, lags, y[row], 4, **two)
    return params1, params2, aic1, aic2


def _select_ours(good, aic1, aic2, tau_single, tau_slow, tau_max, reason):
    """(model, tau, double_at_bound) by our rule; marks fit_failed and at_bound in reason."""
    # A double fit with a time constant at tau_max is degenerate: its "slow" part is a flat offset over
    # the fitted lags (from estimation noise or a timescale the lags cannot resolve), and AIC would
    # otherwise often prefer it to an exact single exponential. It is set aside (flagged in
    # double_at_bound); the study's code keeps it and reports tau_max.
    at_max = lambda t: t >= tau_max * (1 - 1e-6)  # noqa: E731
    double_at_bound = np.isfinite(aic2) & at_max(tau_slow)
    # The double model must beat the single one strictly; a tie (or a failed fit: NaN) keeps the simpler.
    use2 = good & np.isfinite(aic2) & ~double_at_bound & ~(aic1 <= aic2)
    use1 = good & np.isfinite(aic1) & ~use2
    model = np.where(use2, 2, np.where(use1, 1, 0))
    tau = np.where(use2, tau_slow, np.where(use1, tau_single, np.nan))
    reason[good & (model == 0) & ~double_at_bound] = "fit_failed"
    at_bound = good & ((model > 0) & at_max(tau) | (model == 0) & double_at_bound)
    reason[at_bound] = "at_bound"
    tau[at_bound] = np.nan
    return model, tau, double_at_bound


def _select_study(good, aic1, aic2, tau_single, tau_slow, reason):
    """(model, tau) by the study's rule: a failed fit scores AIC 1e5, the strictly lower AIC wins, and
    a tie (both failed included) gives no timescale; a time constant at the bound is kept."""
    a1, a2 = np.where(np.isnan(aic1), np.inf, aic1), np.where(np.isnan(aic2), np.inf, aic2)
    use1, use2 = good & (a1 < a2), good & (a2 < a1)
    model = np.where(use2, 2, np.where(use1, 1, 0))
    reason[good & (model == 0)] = "fit_failed"
    return model, np.where(use2, tau_slow, np.where(use1, tau_single, np.nan))


def fit_autocorrelation(ac, max_lag: int | None = None, tau_max: float = 100.0, grid: int = 48,
                        estimator: str = "ours") -> TimescaleFit:
    """Fits single and double exponentials to autocorrelations and keeps the better by AIC.

    Args:
        ac: (n, L) or (L,) unnormalised autocorrelations (lag 0 first), e.g. from autocorrelation().
        max_lag: fit lags 0..max_lag (default: all L).
        tau_max: upper bound of every time constant (the study's 100 steps).
        grid: time constants in the starting grid (log-spaced from 0.1 to tau_max; "ours" only).
        estimator: "ours" (the default: each fit starts from a grid search, so it finds the better
            optimum; degenerate double fits and timescales at tau_max are set aside as NaN) or "study"
            (the study's code: curve_fit started at the middle of the bounds, which often stops in a
            worse local optimum; ties give NaN and timescales at tau_max are kept). Both select by
            the same AIC; aic_single and aic_double are comparable between them.

    Returns:
        TimescaleFit with one entry per row of ac.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: expected one of {ESTIMATORS}; got {estimator!r}")
    y, max_lag, reason, good = _prepare(ac, max_lag)
    lags = np.arange(max_lag + 1, dtype=np.float64)
    params1, params2, aic1, aic2 = _fit_both(y, good, lags, tau_max, grid, estimator)
    tau_single = params1[:, 1]
    tau_fast, tau_slow = np.fmin(params2[:, 1], params2[:, 2]), np.fmax(params2[:, 1], params2[:, 2])
    w_slow = np.where(params2[:, 1] >= params2[:, 2], params2[:, 3], 1.0 - params2[:, 3])
    if estimator == "ours":
        model, tau, double_at_bound = _select_ours(good, aic1, aic2, tau_single, tau_slow, tau_max, reason)
    else:
        model, tau = _select_study(good, aic1, aic2, tau_single, tau_slow, reason)
        double_at_bound = np.zeros(len(y), dtype=bool)
    return TimescaleFit(tau=tau, model=model, reason=reason.astype(str), tau_single=tau_single, tau_fast=tau_fast,
                        tau_slow=tau_slow, weight_slow=w_slow, aic_single=aic1, aic_double=aic2,
                        double_at_bound=double_at_bound, single_params=params1, double_params=params2,
                        ac=np.where(good[:, None], y, np.nan), max_lag=max_lag, tau_max=float(tau_max))


def study_normalisation(ac, steps: int) -> np.ndarray:
    """ac (..., L) from autocorrelation() (lag k divided by the T - k pairs) rescaled to the study's
    divisor T - 1 - k, for recordings of `steps` = T steps. A difference of order 1/T, kept so that
    estimator="study" sees the numbers the study's code fits."""
    ac = np.asarray(ac, dtype=np.float64)
    k = np.arange(ac.shape[-1])
    if steps <= ac.shape[-1]:
        raise ValueError(f"steps: expected more than {ac.shape[-1]} (the lags); got {steps}")
    return ac * (steps - k) / (steps - 1 - k)


def warn_failures(fit: TimescaleFit, what: str = "neurons") -> None:
    """One RuntimeWarning naming how many fits failed and why (nothing when all succeeded)."""
    failed = fit.failures()
    if failed:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        warnings.warn(f"timescale fits: {sum(failed.values())} of {fit.tau.size} {what} have no timescale "
                      f"({detail}); their tau is NaN", RuntimeWarning, stacklevel=3)


def fit_timescales(activity, max_lag: int = 30, *, tau_max: float = 100.0, full: bool = False, warn: bool = True,
                   estimator: str = "ours"):
    """Each neuron's timescale (in steps) from its activity, as the study measures tau_net.

    Args:
        activity: (trials, T, neurons) or (T, neurons), numpy or torch, T > max_lag.
        max_lag: fit lags 0..max_lag (the study: 30).
        tau_max: the largest time constant a fit may return; reaching it gives NaN ("at_bound") with
            the estimator "ours" (the study's keeps it).
        full: return the whole TimescaleFit instead of the tau array.
        warn: warn once, with counts per reason, when some neurons get NaN.
        estimator: "ours" or "study" (the study's code exactly, its autocorrelation divisor T - 1 - k
            included); see fit_autocorrelation.

    Returns:
        tau (neurons,) float64, NaN where no timescale could be estimated (see TimescaleFit.reason:
        "silent" for a constant neuron, "nonfinite", "fit_failed", "at_bound"); or the TimescaleFit.

    The choice between one and two exponentials is the study's plain AIC over the fitted lags. The
    lags of an estimated autocorrelation are not independent, so with short recordings (one trial of
    some 10^4 steps) AIC can pick a double exponential whose slow part carries a few percent of the
    weight and report that slow constant for a fast neuron (seen: an AR(1) with tau 1.4 reported as
    9.7, slow weight 0.03); at the study's 10 x 100,000 steps AR(1) timescales from 0.8 to 19.5 come
    back within 2%. full=True gives weight_slow and both AICs to judge such fits.
    """
    ac = autocorrelation(activity, max_lag)
    if estimator == "study":
        ac = study_normalisation(ac, _as_trials(activity).shape[1])
    fit = fit_autocorrelation(ac, max_lag, tau_max, estimator=estimator)
    if warn:
        warn_failures(fit)
    return fit if full else fit.tau
