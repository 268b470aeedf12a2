"""Accuracy of a trained network, evaluated without gradients.

Two probes:
- accuracy(): the training task itself (tasks.make_batch: T drawn from [N + 2, 4N + 1], one label at
  the last step, the task's own bit rate, e.g. parity's per-sequence p ~ U(0, 1)).
- stream_accuracy() and stream_trials(): the study's probe for its ablation and perturbation figures:
  long streams of fair bits (p = 0.5), the head read out at every step after a warm-up, each step
  labelled by the task's stream labels (the N bits that end there). stream_accuracy pools the steps of
  all streams; stream_trials gives one accuracy per stream, as the study's code records them.
Labels come from the task table (tasks.REGISTRY), so a new task needs nothing here.
"""
from __future__ import annotations

import numpy as np
import torch

from ..tasks import make_batch, make_generator, stream_labels
from .simulate import model_device

METRICS = ("task", "stream")
MEASURES = ("ours", "study")  # how ablation and perturbation are measured (see ablation_study)


def _generator(generator, seed, device):
    if generator is not None:
        return generator
    return make_generator(seed, device)


def _check_device(model, device):
    own = model_device(model)
    if device is not None and torch.device(device) != own:
        raise ValueError(f"device: the model is on {own}; got device={device} (move the model first)")
    return own


@torch.no_grad()
def accuracy(model, task: str, N: int, head: int, batches: int = 10, batch_size: int = 256,
             generator: torch.Generator | None = None, device=None, length: int | None = None,
             seed: int = 0) -> float:
    """The fraction of correct answers of one readout head on one N of a task.

    Args:
        model: a MemoryNet; N: the memory length to label; head: the readout head's index.
        batches, batch_size: how many sequences (batches * batch_size in all).
        generator: a torch.Generator on the model's device for the batches and the initial states
            (default: a fresh one seeded with seed, so repeated calls see the same sequences).
        device: must be the model's device if given (default: the model's device).
        length: force the sequence length T (default: make_batch's draw from [N + 2, 4N + 1]).

    Returns:
        accuracy in [0, 1].
    """
    device = _check_device(model, device)
    gen = _generator(generator, seed, device)
    correct = total = 0
    for _ in range(batches):
        x, labels = make_batch(task, [N], batch_size, generator=gen, device=device, length=length)
        logits = model(x, heads=[head], generator=gen)        # (1, B, 2)
        correct += int((logits[0].argmax(-1) == labels[0]).sum())
        total += labels.shape[1]
    return correct / total


def _stream_correct(model, task, N: int, head: int, bits: torch.Tensor, warmup: int, generator) -> torch.Tensor:
    """bits (warmup + length, B) bool -> (length, B) bool: the head's answer right at each scored step."""
    weight, bias = model.readout.heads[head].weight, model.readout.heads[head].bias
    h = model.states(bits.to(torch.float32).unsqueeze(-1), generator=generator)[warmup:]   # (length, B, H)
    predicted = (h @ weight.t() + bias).argmax(-1)
    return predicted == stream_labels(task, bits, N)[warmup - N + 1:]


def _check_warmup(warmup: int, N: int) -> None:
    if warmup < N - 1:
        raise ValueError(f"warmup: expected >= N - 1 = {N - 1}; got {warmup}")


@torch.no_grad()
def stream_accuracy(model, task: str, N: int, head: int, batches: int = 10, batch_size: int = 16,
                    length: int = 1000, warmup: int = 100, rate: float = 0.5,
                    generator: torch.Generator | None = None, device=None, seed: int = 0) -> float:
    """The study's in-time accuracy: streams of warmup + length fair bits (batch_size per batch), the
    head read out at each of the last `length` steps (shapes: x (warmup + length, B, 1), logits
    (length, B, 2)); warmup must be >= N - 1 so that every scored window is complete."""
    _check_warmup(warmup, N)
    device = _check_device(model, device)
    gen = _generator(generator, seed, device)
    correct = total = 0
    for _ in range(batches):
        bits = torch.rand(warmup + length, batch_size, generator=gen, device=device) < rate
        right = _stream_correct(model, task, N, head, bits, warmup, gen)
        correct += int(right.sum())
        total += right.numel()
    return correct / total


@torch.no_grad()
def stream_trials(model, task: str, N: int, head: int, trials: int = 10, length: int = 1000, warmup: int = 100,
                  rate: float = 0.5, generator: torch.Generator | None = None, device=None,
                  seed: int = 0) -> np.ndarray:
    """The study's probe as its code runs it: `trials` streams of warmup + length bits, one sequence
    each (run together as one batch of `trials`), and the accuracy of each: float64 (trials,).
    Its defaults are the study's (10 trials of 100 + 1,000 fair bits)."""
    _check_warmup(warmup, N)
    device = _check_device(model, device)
    gen = _generator(generator, seed, device)
    bits = torch.rand(warmup + length, trials, generator=gen, device=device) < rate
    right = _stream_correct(model, task, N, head, bits, warmup, gen)         # (length, trials)
    return right.double().mean(0).cpu().numpy()


def chance_corrected(acc, baseline):
    """The study's relative accuracy, (acc - 0.5) / (baseline - 0.5): 1 at the baseline, 0 at chance
    (two classes); acc any shape, baseline a number (NaN where baseline == 0.5)."""
    acc = np.asarray(acc, dtype=np.float64)
    if baseline == 0.5:
        return np.full_like(acc, np.nan)
    return (acc - 0.5) / (baseline - 0.5)


def evaluate(model, task: str, N: int, head: int, metric: str = "task", **kwargs) -> float:
    """accuracy() for metric "task", stream_accuracy() for "stream"; kwargs go to that function."""
    if metric == "task":
        return accuracy(model, task, N, head, **kwargs)
    if metric == "stream":
        return stream_accuracy(model, task, N, head, **kwargs)
    raise ValueError(f"metric: expected one of {METRICS}; got {metric!r}")


def head_for(head_for_N: dict, N: int) -> int:
    """The head trained for N, else the newest head (the one of the largest trained N)."""
    if N in head_for_N:
        return head_for_N[N]
    if not head_for_N:
        return 0
    return head_for_N[max(head_for_N)]
