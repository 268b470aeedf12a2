"""Ablation: silence one neuron at a time and measure what the network loses.

As in the study, a silenced neuron loses its incoming and outgoing recurrent weights, its input weight
and its weight in the readout head; its biases stay, but with no outgoing weights it can no longer
affect anything. Neurons are picked by their trained tau (raw, as the study sorts them).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..progress import tqdm
from ..tasks import make_generator
from .accuracy import MEASURES, chance_corrected, evaluate, stream_trials
from .timescales import effective_tau


def _leaky(model):
    if getattr(model, "core", None) != "leaky":
        raise ValueError(f"model: ablation needs a leaky core with tau; got core={getattr(model, 'core', None)!r}")


def ablate(model, neurons, heads=None):
    """A copy of model with the given neurons silenced; model itself is left untouched.

    Args:
        model: a MemoryNet with a leaky core (hidden size H).
        neurons: an index or a list of indices in [0, H).
        heads: readout heads whose weights from these neurons are zeroed (an index, a list, or None for
            every head).

    Zeroes weight_hh rows and columns, weight_ih rows, and the heads' weight columns of those neurons.
    """
    _leaky(model)
    idx = torch.as_tensor(np.atleast_1d(np.asarray(neurons, dtype=np.int64)))
    hidden = model.hidden_size
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= hidden):
        raise ValueError(f"neurons: expected indices in [0, {hidden}); got {idx.tolist()}")
    out = copy.deepcopy(model)
    chosen = range(out.num_heads) if heads is None else np.atleast_1d(heads).tolist()
    with torch.no_grad():
        idx = idx.to(out.rnn.weight_hh.device)
        out.rnn.weight_hh[idx, :] = 0.0
        out.rnn.weight_hh[:, idx] = 0.0
        out.rnn.weight_ih[idx, :] = 0.0
        for k in chosen:
            out.readout.heads[k].weight[:, idx] = 0.0
    return out


def _order(model, k):
    """(time constants (H,), k, {"short": k neurons of the smallest raw tau, "long": of the largest}).
    Ordered by the raw parameter, as the study orders them (every tau parameterisation is monotone,
    so this is also the order of the time constants, ties below 1 under "clamp" kept apart)."""
    raw = model.rnn.tau.detach().cpu().numpy()
    order = np.argsort(raw, kind="stable")
    k = min(k, raw.size)
    return effective_tau(model), k, {"short": order[:k], "long": order[::-1][:k]}


def ablation_study(model, task: str, N: int, head: int, k: int = 10, *, metric: str = "task",
                   measure: str = "ours", trials: int = 10, progress: bool = False, **eval_kwargs) -> dict:
    """Accuracy after silencing each of the k shortest- and k longest-tau neurons, one at a time.

    Two measures (the "measure" and "relative_definition" entries of the result say which):
    - "ours" (the default): the silenced neuron leaves the head that is scored, every evaluation uses
      the same sequences (a paired comparison: the differences come from the ablation alone), and
      relative = accuracy / baseline. Scored with `metric` ("task": the training task, accuracy();
      "stream": stream_accuracy()); eval_kwargs go to it (batches, batch_size, seed, ...).
    - "study": as the study's code measures it: the in-time stream probe (stream_trials: `trials`
      fresh streams of 100 + 1,000 fair bits per network), the neuron's readout weights zeroed in head
      0 only (for a multi-head network that is not the head scored, which keeps its weights from the
      silenced neuron), and the chance-corrected relative accuracy
      (accuracy - 0.5) / (max over the baseline's trials - 0.5). eval_kwargs may hold seed.
    Ours is the default because it removes the neuron from the head it scores and compares on the same
    sequences, so its differences are the ablation's and not the noise of 10 streams; the study's is
    there to set our figures beside its own.

    Args:
        model, task, N, head: the network and what it is scored on (its trained task, N, and head).
        k: neurons from each end of the tau order (raw tau, as the study sorts them).

    Returns:
        JSON-able dict: measure, metric, relative_definition, baseline (the intact network's accuracy;
        for "study" the best of its trials, with baseline_trials (trials,)), and for "short" and "long":
        neurons (k,), tau (k,) (clamp(tau, 1)), accuracy (k,), relative (k,), mean_relative; for
        "study" also accuracy_trials and relative_trials (k, trials); relative is their mean over trials.
    """
    _leaky(model)
    if measure not in MEASURES:
        raise ValueError(f"measure: expected one of {MEASURES}; got {measure!r}")
    if measure == "study":
        return _study_ablation(model, task, N, head, k, trials, progress, eval_kwargs.get("seed", 0))
    tau, k, groups = _order(model, k)
    baseline = evaluate(model, task, N, head, metric, **eval_kwargs)
    out = {"N": N, "head": head, "k": k, "measure": "ours", "metric": metric, "baseline": baseline,
           "relative_definition": "accuracy / baseline"}
    bar = tqdm(total=2 * k, desc="ablation", disable=not progress, leave=False)
    for name, ids in groups.items():
        acc = []
        for i in ids:
            acc.append(evaluate(ablate(model, int(i), head), task, N, head, metric, **eval_kwargs))
            bar.update()
        rel = [a / baseline if baseline > 0 else float("nan") for a in acc]
        out[name] = {"neurons": ids.tolist(), "tau": tau[ids].tolist(), "accuracy": acc,
                     "relative": rel, "mean_relative": float(np.mean(rel)) if rel else None}
    bar.close()
    return out


def _study_ablation(model, task, N, head, k, trials, progress, seed) -> dict:
    """ablation_study(measure="study"): fresh streams for every network from one generator."""
    tau, k, groups = _order(model, k)
    gen = make_generator(seed, next(model.parameters()).device)
    base_trials = stream_trials(model, task, N, head, trials, generator=gen)
    baseline = float(base_trials.max())
    out = {"N": N, "head": head, "k": k, "measure": "study", "metric": "stream", "ablated_head": 0,
           "trials": trials, "baseline": baseline, "baseline_trials": base_trials.tolist(),
           "relative_definition": "(accuracy - 0.5) / (max baseline trial - 0.5)"}
    bar = tqdm(total=2 * k, desc="ablation (study)", disable=not progress, leave=False)
    for name, ids in groups.items():
        acc = np.zeros((len(ids), trials))
        for row, i in enumerate(ids):
            acc[row] = stream_trials(ablate(model, int(i), 0), task, N, head, trials, generator=gen)
            bar.update()
        rel = chance_corrected(acc, baseline)
        out[name] = {"neurons": ids.tolist(), "tau": tau[ids].tolist(),
                     "accuracy": acc.mean(1).tolist(), "relative": rel.mean(1).tolist(),
                     "accuracy_trials": acc.tolist(), "relative_trials": rel.tolist(),
                     "mean_relative": float(rel.mean()) if rel.size else None}
    bar.close()
    return out
