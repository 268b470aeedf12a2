"""Generalisation: accuracy on sequences longer than those trained on, and on N beyond the trained range."""
from __future__ import annotations

from ..tasks import sequence_length_range
from .accuracy import accuracy, head_for


def length_generalisation(model, task: str, N: int, head: int, factors=(1, 2, 4, 8), **eval_kwargs) -> dict:
    """Accuracy at T = factor * (4N + 1) (4N + 1 is the longest training sequence for N).

    Returns: JSON-able {"N", "head", "lengths": [...], "accuracy": [...]} (one entry per factor).
    """
    longest = sequence_length_range([N])[1]
    lengths = [int(f * longest) for f in factors]
    acc = [accuracy(model, task, N, head, length=t, **eval_kwargs) for t in lengths]
    return {"N": N, "head": head, "lengths": lengths, "accuracy": acc}


def n_generalisation(model, task: str, head_for_N: dict, extra: int = 3, **eval_kwargs) -> dict:
    """Accuracy on N = max trained N + 1 .. + extra, read out by the newest head.

    Returns: JSON-able {"head", "Ns": [...], "accuracy": [...]}.
    """
    top = max(head_for_N) if head_for_N else 1
    head = head_for(head_for_N, top)
    Ns = list(range(top + 1, top + 1 + extra))
    return {"head": head, "Ns": Ns, "accuracy": [accuracy(model, task, n, head, **eval_kwargs) for n in Ns]}
