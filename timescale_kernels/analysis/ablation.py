"""Ablation: silence one neuron at a time and measure what the network loses.

As in the study, a silenced neuron loses its incoming and outgoing recurrent weights, its input weight
and its weight in the readout head; its biases stay, but with no outgoing weights it can no longer
affect anything. Neurons are picked by their trained tau (raw, as the study sorts them).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from .accuracy import evaluate


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


def ablation_study(model, task: str, N: int, head: int, k: int = 10, *, metric: str = "task",
                   progress: bool = False, **eval_kwargs) -> dict:
    """Accuracy after silencing each of the k shortest- and k longest-tau neurons, one at a time.

    Every evaluation uses the same sequences (the same seed), so differences come from the ablation.

    Args:
        model, task, N, head: the network and what it is scored on (its trained task, N, and head).
        k: neurons from each end of the tau order.
        metric: "task" (accuracy) or "stream" (stream_accuracy); eval_kwargs go to it (batches,
            batch_size, seed, ...).

    Returns:
        JSON-able dict: baseline (accuracy of the intact network), and for "short" and "long":
        neurons (k,), tau (k,) (clamp(tau, 1)), accuracy (k,), relative (k,) = accuracy / baseline,
        mean_relative.
    """
    _leaky(model)
    tau = model.rnn.tau.detach().cpu().numpy()
    order = np.argsort(tau, kind="stable")
    k = min(k, tau.size)
    groups = {"short": order[:k], "long": order[::-1][:k]}
    baseline = evaluate(model, task, N, head, metric, **eval_kwargs)
    out = {"N": N, "head": head, "k": k, "metric": metric, "baseline": baseline}
    bar = tqdm(total=2 * k, desc="ablation", disable=not progress, leave=False)
    for name, ids in groups.items():
        acc = []
        for i in ids:
            acc.append(evaluate(ablate(model, int(i), head), task, N, head, metric, **eval_kwargs))
            bar.update()
        rel = [a / baseline if baseline > 0 else float("nan") for a in acc]
        out[name] = {"neurons": ids.tolist(), "tau": np.maximum(tau[ids], 1.0).tolist(), "accuracy": acc,
                     "relative": rel, "mean_relative": float(np.mean(rel)) if rel else None}
    bar.close()
    return out
