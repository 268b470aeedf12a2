"""Accuracy of a trained network, evaluated without gradients.

Two measures:
- accuracy(): the training task itself (tasks.make_batch: T drawn from [N + 2, 4N + 1], one label at
  the last step, parity streams with a per-sequence bit rate p ~ U(0, 1)).
- stream_accuracy(): the study's measure for its ablation and perturbation figures: one long stream
  of fair bits (p = 0.5), the head read out at every step after a warm-up, each step labelled by the
  parity (or match) of the N bits that end there.
"""
from __future__ import annotations

import torch

from ..tasks import make_batch, make_generator
from .simulate import model_device

METRICS = ("task", "stream")


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


def stream_labels(task: str, bits: torch.Tensor, N: int) -> torch.Tensor:
    """bits (T, B) of 0/1 -> labels (T - N + 1, B) for the N-bit windows ending at steps N-1..T-1."""
    b = bits.to(torch.int64)
    if task == "parity":
        csum = torch.cat([torch.zeros_like(b[:1]), b.cumsum(0)])   # (T + 1, B)
        return (csum[N:] - csum[:-N]) % 2
    if task == "dms":
        return (b[N - 1:] == b[:b.shape[0] - N + 1]).to(torch.int64)
    raise ValueError(f"task: expected 'parity' or 'dms'; got {task!r}")


@torch.no_grad()
def stream_accuracy(model, task: str, N: int, head: int, batches: int = 10, batch_size: int = 16,
                    length: int = 1000, warmup: int = 100, rate: float = 0.5,
                    generator: torch.Generator | None = None, device=None, seed: int = 0) -> float:
    """The study's in-time accuracy: streams of warmup + length fair bits (batch_size per batch), the
    head read out at each of the last `length` steps (shapes: x (warmup + length, B, 1), logits
    (length, B, 2)); warmup must be >= N - 1 so that every scored window is complete."""
    if warmup < N - 1:
        raise ValueError(f"warmup: expected >= N - 1 = {N - 1}; got {warmup}")
    device = _check_device(model, device)
    gen = _generator(generator, seed, device)
    weight, bias = model.readout.heads[head].weight, model.readout.heads[head].bias
    correct = total = 0
    for _ in range(batches):
        bits = torch.rand(warmup + length, batch_size, generator=gen, device=device) < rate
        h = model.states(bits.to(torch.float32).unsqueeze(-1), generator=gen)[warmup:]   # (length, B, H)
        predicted = (h @ weight.t() + bias).argmax(-1)
        labels = stream_labels(task, bits, N)[warmup - N + 1:]
        correct += int((predicted == labels).sum())
        total += labels.numel()
    return correct / total


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
