"""Driving a trained network with long random bit streams, without gradients, in chunks.

The study records every neuron's activity for 10 trials of 100,000 steps (2 GB for 500 neurons) and
then computes autocorrelations by FFT. Here the network runs in chunks of a few thousand steps,
carrying its state, and each chunk is folded into running sums from which the same autocorrelations
(mean removed per trial, lag k divided by T - k) and per-trial covariances follow exactly, so memory
stays bounded whatever the length. The activity itself is kept only on request (record=True).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..ops import leaky_rnn
from ..progress import tqdm
from .timescales import TimescaleFit, fit_autocorrelation, study_normalisation, warn_failures


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def random_bit_stream(steps: int, trials: int, rate: torch.Tensor, generator=None) -> torch.Tensor:
    """Bits (steps, trials, 1) float32; trial b is 1 with probability rate[b] (rate: (trials,))."""
    u = torch.rand(steps, trials, generator=generator, device=rate.device)
    return (u < rate).to(torch.float32).unsqueeze(-1)


class StreamMoments:
    """Running lag products of many series, enough for their exact autocovariances.

    update(chunk) with chunk (C, S): C more steps of S series (time-major, any device). Memory is
    O(S * max_lag), independent of the length. Values are centred on the first chunk's mean before any
    product (so float32 products do not cancel) and the sums are kept in float64.
    engine: "numpy" (cache-blocked products, the fastest on a CPU), "torch" (on the chunk's device) or
    "auto" (torch for CUDA chunks, numpy otherwise).
    """

    def __init__(self, series: int, max_lag: int, engine: str = "auto"):
        if engine not in ("auto", "numpy", "torch"):
            raise ValueError(f"engine: expected 'auto', 'numpy' or 'torch'; got {engine!r}")
        self.S, self.L, self.engine = series, max_lag, engine
        self.n = 0
        self.shift = None                           # (S,) float32, the first chunk's mean
        self.tail = np.zeros((series, max_lag), np.float32)   # the last L centred values
        self.head = np.zeros((series, 0), np.float32)         # the first L centred values
        self.total = np.zeros(series)               # sum of centred values
        self.lag_sums = np.zeros((max_lag + 1, series))       # sum_t y_t y_{t-k}
        self.low = np.full(series, np.inf)
        self.high = np.full(series, -np.inf)

    def update(self, chunk: torch.Tensor) -> None:
        steps, L = chunk.shape[0], self.L
        chunk = chunk.float()
        if self.shift is None:
            self.shift = chunk.mean(0)
        y = chunk - self.shift                                 # (C, S), time-major
        # Reductions over time run along contiguous rows; the float32 chunk sums are accurate enough
        # (values are centred) and the running totals are float64.
        self.low = np.minimum(self.low, y.amin(0).double().cpu().numpy())
        self.high = np.maximum(self.high, y.amax(0).double().cpu().numpy())
        self.total += y.sum(0).double().cpu().numpy()
        if self.engine == "torch" or (self.engine == "auto" and y.is_cuda):
            z = torch.cat([torch.as_tensor(self.tail, device=y.device).t(), y], 0)   # (L + C, S)
            cur = z[L:]
            sums = torch.stack([(cur * z[L - k:L - k + steps]).sum(0) for k in range(L + 1)])
            self.lag_sums += sums.double().cpu().numpy()
            first, last = z[L:2 * L].t().cpu().numpy(), z[steps:].t().cpu().numpy()
        else:
            z = np.empty((self.S, L + steps), np.float32)      # (S, L + C): each series contiguous
            z[:, :L] = self.tail
            z[:, L:] = y.cpu().numpy().T
            # Row blocks small enough to stay in cache while every lag is taken: several times faster
            # than whole-array products, which are memory bound.
            for lo in range(0, self.S, 64):
                zb = z[lo:lo + 64]
                cur = zb[:, L:]
                for k in range(L + 1):
                    self.lag_sums[k, lo:lo + 64] += np.einsum("ij,ij->i", cur, zb[:, L - k:L - k + steps])
            first, last = z[:, L:2 * L], z[:, steps:].copy()
        if self.head.shape[1] < L:
            self.head = np.concatenate([self.head, first[:, :L - self.head.shape[1]]], 1)
        self.tail = last                                       # the last L values (older ones if C < L)
        self.n += steps

    def autocovariance(self) -> np.ndarray:
        """(S, max_lag + 1): per series, sum_{t} (x_t - m)(x_{t+k} - m) / (T - k), m its mean.
        Constant series give exactly 0."""
        n, L = self.n, self.L
        if n <= L:
            raise ValueError(f"steps: expected more than max_lag = {L} recorded steps; got {n}")
        m = self.total / n
        first = np.concatenate([np.zeros((self.S, 1)), np.cumsum(self.head[:, :L], 1, dtype=np.float64)], 1)
        last = np.concatenate([np.zeros((self.S, 1)), np.cumsum(self.tail[:, ::-1], 1, dtype=np.float64)], 1)
        out = np.empty((self.S, L + 1))
        for k in range(L + 1):
            a_k = self.total - last[:, k]   # sum over t < n - k
            b_k = self.total - first[:, k]  # sum over t >= k
            out[:, k] = (self.lag_sums[k] - m * (a_k + b_k) + (n - k) * m * m) / (n - k)
        out[self.high - self.low == 0] = 0.0
        return out


@dataclass
class Simulation:
    """What simulate() measured. Shapes: H neurons, L = max_lag.

    ac: (H, L + 1) autocovariance per neuron, averaged over trials (not normalised).
    ac_population: (L + 1,) the same for the summed activity of all neurons.
    mean, variance: (H,) per neuron, averaged over trials.
    covariance: (trials, H, H) per-trial covariance of the activity, or None.
    activity: (trials, steps, H) float32, only with record=True.
    """
    ac: np.ndarray
    ac_population: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    covariance: np.ndarray | None
    activity: np.ndarray | None
    trials: int
    steps: int
    burn_in: int
    max_lag: int
    seconds: float


def _core_runner(model, backend: str | None):
    """(x (C, B, I), state) -> (h (C, B, H), state) for the model's core; state is h (B, H), or (h, c)."""
    rnn = model.rnn

    def run_module(x, h):
        out, h_n = rnn(x, h.unsqueeze(0))
        return out, h_n[0]

    def run_op(x, h):
        # the tensors the module itself runs with: mask and Dale's signs applied, tau parameterised
        return leaky_rnn(x, h, *rnn.layer_tensors(),
                         nonlinearity=rnn.nonlinearity, placement=rnn.placement,
                         self_connections=rnn.self_connections, backend=backend)

    def run_lstm(x, state):
        out, (h, c) = rnn(x, (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        return out, (h[0], c[0])

    if model.core == "lstm":
        return run_lstm
    return run_op if model.core == "leaky" and backend is not None else run_module


@torch.no_grad()
def simulate(model, *, trials: int = 10, steps: int = 100_000, burn_in: int = 500, chunk: int = 2048,
             max_lag: int = 30, rate: float | None = None, generator: torch.Generator | None = None,
             backend: str | None = None, covariance: bool = True, record: bool = False,
             progress: bool = False) -> Simulation:
    """Drives model with random bit streams, the trials as the batch, and measures its activity.

    Args:
        model: a MemoryNet (its core only is run; the readout is not used).
        trials: independent streams (the batch dimension B).
        steps: steps measured after burn_in steps that are run and discarded.
        chunk: steps per call of the core (memory is O(chunk * trials * H)).
        max_lag: the largest autocorrelation lag kept.
        rate: probability of a 1; None draws one rate per trial from U(0, 1), as the study does.
        generator: a torch.Generator on the model's device (default: seeded with 0).
        backend: run the leaky core with this backend of the op ("auto", "cpu", "triton", "reference")
            instead of the module's own setting.
        covariance: also accumulate each trial's (H, H) covariance (for dimensionality).
        record: also return the activity (trials, steps, H) as float32 (steps * trials * H * 4 bytes).
        progress: show a tqdm bar.

    The initial state is model.initial_state (the study's 0.1 * U(0, 1) for the leaky core).
    """
    if trials < 1 or steps <= max_lag or burn_in < 0 or chunk < 1:
        raise ValueError(f"simulate: expected trials >= 1, steps > max_lag, burn_in >= 0, chunk >= 1; got "
                         f"trials={trials}, steps={steps}, max_lag={max_lag}, burn_in={burn_in}, chunk={chunk}")
    device = model_device(model)
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(0)
    h0 = model.initial_state(trials, generator)
    state = (h0, torch.zeros_like(h0)) if model.core == "lstm" else h0
    if rate is None:
        p = torch.rand(trials, generator=generator, device=device)
    else:
        p = torch.full((trials,), float(rate), device=device)
    acc = _Accumulator(trials, model.hidden_size, max_lag, covariance, record, device)
    run = _core_runner(model, backend)
    start = time.perf_counter()
    bar = tqdm(total=burn_in + steps, desc="simulate", unit="step", disable=not progress, leave=False)
    done = -burn_in
    while done < steps:
        # Burn-in chunks end exactly at step 0 so that measured chunks start clean.
        size = min(chunk, -done) if done < 0 else min(chunk, steps - done)
        h, state = run(random_bit_stream(size, trials, p, generator), state)
        if done >= 0:
            acc.add(h)
        done += size
        bar.update(size)
    bar.close()
    return acc.result(steps, burn_in, time.perf_counter() - start)


class _Accumulator:
    """What simulate() keeps of each measured chunk h (C, trials, H): lag sums of every neuron and of
    their sum (StreamMoments), per-trial covariances, and the activity itself when recording."""

    def __init__(self, trials, hidden, max_lag, covariance, record, device):
        self.trials, self.hidden, self.max_lag = trials, hidden, max_lag
        self.moments = StreamMoments(trials * (hidden + 1), max_lag)
        self.cov_sum = (torch.zeros(trials, hidden, hidden, dtype=torch.float64, device=device)
                        if covariance else None)
        self.recorded = [] if record else None

    def add(self, h: torch.Tensor) -> None:
        size = h.shape[0]
        pop = h.sum(-1, keepdim=True)
        self.moments.update(torch.cat([h, pop], -1).reshape(size, -1))
        if self.cov_sum is not None:
            # Centred on the same first-chunk mean as the lag sums, so moments.total serves both.
            shift = self.moments.shift.view(self.trials, self.hidden + 1)[:, :self.hidden]
            y = (h - shift).permute(1, 2, 0)              # (trials, H, C)
            self.cov_sum += torch.bmm(y, y.transpose(1, 2)).double()
        if self.recorded is not None:
            self.recorded.append(h.float().cpu().numpy())

    def result(self, steps, burn_in, seconds) -> Simulation:
        trials, hidden, moments = self.trials, self.hidden, self.moments
        ac = moments.autocovariance().reshape(trials, hidden + 1, self.max_lag + 1)
        mean = (moments.shift.double().cpu().numpy() + moments.total / moments.n).reshape(trials, hidden + 1)
        cov = None
        if self.cov_sum is not None:
            centred = moments.total.reshape(trials, hidden + 1)[:, :hidden] / steps  # mean of (h - shift)
            cov = self.cov_sum.cpu().numpy() / steps - centred[:, :, None] * centred[:, None, :]
            cov *= steps / (steps - 1)
        activity = None
        if self.recorded is not None:
            activity = np.concatenate(self.recorded, 0).transpose(1, 0, 2)
        return Simulation(ac=ac[:, :hidden].mean(0), ac_population=ac[:, hidden].mean(0),
                          mean=mean[:, :hidden].mean(0), variance=ac[:, :hidden, 0].mean(0), covariance=cov,
                          activity=activity, trials=trials, steps=steps, burn_in=burn_in,
                          max_lag=self.max_lag, seconds=seconds)


@dataclass
class NetworkTimescales:
    """tau_net (H,) per neuron in steps (NaN where the fit failed: see fit.reason), the fits of the
    neurons and of the population activity, and the simulation they come from."""
    tau_net: np.ndarray
    fit: TimescaleFit
    population: TimescaleFit
    sim: Simulation

    def summary(self) -> dict:
        pop = float(self.population.tau[0])
        return {"neurons": self.fit.summary(), "population_tau": pop if np.isfinite(pop) else None,
                "population_reason": str(self.population.reason[0]), "trials": self.sim.trials,
                "steps": self.sim.steps, "burn_in": self.sim.burn_in, "seconds": self.sim.seconds}


def network_timescales(model, *, max_lag: int = 30, tau_max: float = 100.0, warn: bool = True,
                       estimator: str = "ours", **simulate_kwargs) -> NetworkTimescales:
    """The study's network-mediated timescales: simulate() (trials=10, steps=100_000, burn_in=500 by
    default; any of its arguments may be given) then fit every neuron's autocorrelation on lags
    0..max_lag (fit_autocorrelation with this estimator, "ours" or "study"), and the population
    activity's."""
    sim = simulate(model, max_lag=max_lag, **simulate_kwargs)
    return fit_simulation(sim, tau_max=tau_max, warn=warn, estimator=estimator)


def fit_simulation(sim: Simulation, *, tau_max: float = 100.0, warn: bool = True,
                   estimator: str = "ours") -> NetworkTimescales:
    """tau_net of every neuron and of the population from a simulation, with either estimator (the
    study's sees the autocorrelations with its own divisor, study_normalisation)."""
    ac, pop = sim.ac, sim.ac_population[None]
    if estimator == "study":
        ac, pop = study_normalisation(ac, sim.steps), study_normalisation(pop, sim.steps)
    fit = fit_autocorrelation(ac, sim.max_lag, tau_max, estimator=estimator)
    population = fit_autocorrelation(pop, sim.max_lag, tau_max, estimator=estimator)
    if warn:
        warn_failures(fit)
    return NetworkTimescales(tau_net=fit.tau, fit=fit, population=population, sim=sim)
