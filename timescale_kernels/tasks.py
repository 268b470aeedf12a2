"""The study's memory tasks as batches generated on the device in a few vectorised ops.

parity: each sequence draws its own bit rate p ~ U(0, 1); the label is the parity of its last N bits.
dms (delayed match to sample): p = 0.5; the label is 1 when x[T-N] == x[T-1].
T is drawn once per batch, uniformly from max(Ns) + 2 to 4 * max(Ns) + 1 inclusive.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

TASKS = ("parity", "dms")


def check_Ns(Ns) -> list[int]:
    """Ns as a list of ints >= 1, or a ValueError naming what came."""
    if isinstance(Ns, int):
        Ns = [Ns]
    if not isinstance(Ns, Sequence) or len(Ns) == 0:
        raise ValueError(f"Ns: expected a non-empty list of ints >= 1; got {Ns!r}")
    out = []
    for n in Ns:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Ns: expected ints >= 1; got {n!r} in {list(Ns)!r}")
        out.append(int(n))
    return out


def sequence_length_range(Ns) -> tuple[int, int]:
    """(shortest, longest) T for these Ns, inclusive."""
    n = max(check_Ns(Ns))
    return n + 2, 4 * n + 1


def labels_for(task: str, bits: torch.Tensor, Ns: list[int]) -> torch.Tensor:
    """bits (T, B) of 0/1 -> labels (len(Ns), B) int64."""
    steps = bits.shape[0]
    b = bits.to(torch.int64)
    if task == "parity":
        # The parity of the last N bits from a reverse cumulative sum.
        suffix = b.flip(0).cumsum(0)  # suffix[k - 1] = sum of the last k bits
        return torch.stack([suffix[n - 1] for n in Ns]) % 2
    if task == "dms":
        return torch.stack([(b[steps - n] == b[steps - 1]).to(torch.int64) for n in Ns])
    raise ValueError(f"task: expected one of {TASKS}; got {task!r}")


def make_batch(task: str, Ns, batch_size: int, *, generator: torch.Generator | None = None,
               device=None, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of a memory task.

    Args:
        task: "parity" or "dms".
        Ns: the memory lengths to label, e.g. [2, 3, 4] (one label row per N).
        batch_size: B >= 1.
        generator: a torch.Generator on `device` for reproducible batches.
        device: where to build the batch (default: the generator's device, else the CPU).
        length: force T (default: drawn uniformly from [max(Ns) + 2, 4 max(Ns) + 1]).

    Returns:
        inputs (T, B, 1) float32 of 0/1 bits, labels (len(Ns), B) int64.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}; got {task!r}")
    Ns = check_Ns(Ns)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1; got {batch_size!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    low, high = sequence_length_range(Ns)
    if length is None:
        length = int(torch.randint(low, high + 1, (1,), generator=generator, device=device).item())
    elif length < max(Ns):
        raise ValueError(f"length: expected at least max(Ns) = {max(Ns)}; got {length}")
    if task == "parity":
        rate = torch.rand(1, batch_size, generator=generator, device=device)
    else:
        rate = torch.full((1, batch_size), 0.5, device=device)
    bits = torch.rand(length, batch_size, generator=generator, device=device) < rate
    labels = labels_for(task, bits, Ns)
    return bits.to(torch.float32).unsqueeze(-1), labels


def make_generator(seed: int, device=None) -> torch.Generator:
    """A torch.Generator on device seeded with seed."""
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    gen.manual_seed(int(seed))
    return gen
