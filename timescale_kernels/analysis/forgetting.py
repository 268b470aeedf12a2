"""Forgetting: the accuracy of every checkpoint on every N, as a matrix."""
from __future__ import annotations

import numpy as np

from ..progress import tqdm
from .accuracy import evaluate, head_for


def forgetting_matrix(networks, task: str, Ns, *, metric: str = "task", progress: bool = False,
                      **eval_kwargs) -> dict:
    """Accuracy of each network on each N.

    Args:
        networks: a list of (label, model, head_for_N) with head_for_N {N: head index}; an N without
            its own head is read out by the newest head (that of the largest trained N).
        Ns: the N's to score (columns).
        metric, eval_kwargs: as for accuracy.evaluate (batches, batch_size, seed, ...).

    Returns:
        JSON-able dict: labels (rows,), Ns (columns,), accuracy (rows, columns),
        trained (rows, columns) True where the network had a head trained for that N.
    """
    Ns = [int(n) for n in Ns]
    acc = np.zeros((len(networks), len(Ns)))
    trained = np.zeros_like(acc, dtype=bool)
    bar = tqdm(total=acc.size, desc="forgetting", disable=not progress, leave=False)
    for i, (_, model, heads) in enumerate(networks):
        for j, n in enumerate(Ns):
            acc[i, j] = evaluate(model, task, n, head_for(heads, n), metric, **eval_kwargs)
            trained[i, j] = n in heads
            bar.update()
    bar.close()
    return {"labels": [str(label) for label, _, _ in networks], "Ns": Ns, "accuracy": acc.tolist(),
            "trained": trained.tolist()}
