"""Scoring a trained network (ours or the study's) on fresh task batches."""
from __future__ import annotations

import torch

from ..checkpoints import CheckpointError, load_checkpoint, load_study_checkpoint
from ..models import MemoryNet
from ..tasks import check_Ns, make_batch, make_generator


@torch.no_grad()
def score(model: MemoryNet, task: str, head_for_N: dict, *, batch_size: int = 256, batches: int = 1,
          seed: int = 0, device=None, together: bool = False) -> dict[int, float]:
    """Test accuracy per N: {N: fraction correct} over batches * batch_size fresh sequences of the
    study's task, N read by head head_for_N[N].

    together=False: each N gets its own batches (T drawn for that N alone).
    together=True: all N's share batches (T drawn for the largest N), one forward pass per batch,
    as the study tests a multi-head network.
    h0 and the bits come from one generator seeded with seed, on the model's device."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    gen = make_generator(seed, device)
    model.eval()
    Ns = check_Ns(sorted(head_for_N))
    groups = [Ns] if together else [[n] for n in Ns]
    out = {}
    for group in groups:
        heads = [head_for_N[n] for n in group]
        correct = torch.zeros(len(group), dtype=torch.int64, device=device)
        for _ in range(batches):
            x, labels = make_batch(task, group, batch_size, generator=gen)
            logits = model(x, heads=heads, h0=model.initial_state(batch_size, gen))
            correct += (logits.argmax(-1) == labels).sum(1)
        out.update(zip(group, (correct.double() / (batches * batch_size)).tolist()))
    return out


def load_any_checkpoint(path, backend: str = "auto") -> tuple[MemoryNet, dict]:
    """(model, meta) from our checkpoint format or the study's; meta has Ns, head_for_N and task
    ("parity" for the study's files, whose names do not say)."""
    try:
        model, meta = load_checkpoint(path, backend=backend)
        meta.setdefault("head_for_N", {})
        meta["head_for_N"] = {int(n): int(h) for n, h in meta["head_for_N"].items()}
        meta.setdefault("Ns", sorted(meta["head_for_N"]))
        return model, meta
    except CheckpointError as ours:
        if "is not a timescale_kernels checkpoint" not in str(ours):
            raise
        try:
            model = load_study_checkpoint(path, backend=backend)
        except CheckpointError:
            raise CheckpointError(f"checkpoint: {path} is neither a timescale_kernels checkpoint nor one of the "
                                  "study's") from None
        return model, {"Ns": list(model.trained_Ns), "head_for_N": dict(model.head_for_N), "task": "parity",
                       "source": "study"}
