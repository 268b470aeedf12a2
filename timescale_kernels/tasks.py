"""The study's memory tasks, one table of them, and batches generated on the device in a few vectorised ops.

A task is one Task object in REGISTRY: its name, its bit rate, its label at the end of a batch of
sequences and its labels along a stream. make_batch, the accuracy probes (analysis/accuracy.py) and the
command line's choices all read REGISTRY, so a new task is one more entry here (and its tests).

    parity: each sequence draws its own bit rate p ~ U(0, 1); the label is the parity of its last N bits.
    dms (delayed match to sample): p = 0.5; the label is 1 when x[T-N] == x[T-1].

T is drawn once per batch, uniformly from max(Ns) + 2 to 4 * max(Ns) + 1 inclusive.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

PER_SEQUENCE = "per_sequence"  # Task.bit_rate: each sequence draws its own p ~ U(0, 1)


@dataclass(frozen=True)
class Task:
    """One memory task. Every field is required, so a task cannot inherit another's bit rate or labels.

    Attributes:
        name: what the command line and config.json call it.
        description: one line for --help.
        bit_rate: the probability of a 1 in a training sequence, a float in [0, 1], or PER_SEQUENCE
            (each sequence draws its own p ~ U(0, 1), as the study's parity does).
        labels: (bits (T, B) int64 of 0/1, N) -> (B,) int64, the label of each sequence at its last step.
        stream_labels: (bits (T, B) int64 of 0/1, N) -> (T - N + 1, B) int64, the label of every
            N-bit window, at steps N-1..T-1 (the in-time probe's labels); its last row equals labels.
        labels_between: optional (bits (T, B) int64, lo, hi) -> (hi - lo + 1, B) int64, the labels for
            N = lo..hi in a few vectorised ops (what a training step uses, so that its cost does not grow
            with the number of heads); it must equal stacking labels(bits, N) for N = lo..hi.
    """
    name: str
    description: str
    bit_rate: float | str
    labels: Callable[[torch.Tensor, int], torch.Tensor]
    stream_labels: Callable[[torch.Tensor, int], torch.Tensor]
    labels_between: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None

    def __post_init__(self):
        rate = self.bit_rate
        if rate != PER_SEQUENCE and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                     or not 0.0 <= rate <= 1.0):
            raise ValueError(f"bit_rate: expected a probability in [0, 1] or {PER_SEQUENCE!r}; got {rate!r} "
                             f"(task {self.name!r})")
        for field in ("labels", "stream_labels"):
            if not callable(getattr(self, field)):
                raise TypeError(f"{field}: expected a function of (bits, N); got {getattr(self, field)!r} "
                                f"(task {self.name!r})")

    def rates(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """(1, batch_size) float32: the bit rate of each sequence of a batch."""
        if self.bit_rate == PER_SEQUENCE:
            return torch.rand(1, batch_size, generator=generator, device=device)
        return torch.full((1, batch_size), float(self.bit_rate), device=device)


# -- the tasks --------------------------------------------------------------------------------------

def _parity_last(bits: torch.Tensor, N: int) -> torch.Tensor:
    return bits[bits.shape[0] - N:].sum(0) % 2


def _parity_stream(bits: torch.Tensor, N: int) -> torch.Tensor:
    csum = torch.cat([torch.zeros_like(bits[:1]), bits.cumsum(0)])   # (T + 1, B)
    return (csum[N:] - csum[:-N]) % 2


def _dms_last(bits: torch.Tensor, N: int) -> torch.Tensor:
    return (bits[bits.shape[0] - N] == bits[-1]).to(torch.int64)


def _dms_stream(bits: torch.Tensor, N: int) -> torch.Tensor:
    return (bits[N - 1:] == bits[:bits.shape[0] - N + 1]).to(torch.int64)


def _parity_between(bits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    suffix_sums = bits[bits.shape[0] - hi:].flip(0).cumsum(0)   # row n - 1: the sum of the last n bits
    return suffix_sums[lo - 1:] % 2


def _dms_between(bits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    back = bits[bits.shape[0] - hi:bits.shape[0] - lo + 1].flip(0)   # row k: the bit lo + k - 1 steps back
    return (back == bits[-1]).to(torch.int64)


REGISTRY: dict[str, Task] = {task.name: task for task in (
    Task("parity", "the parity of the last N bits; each sequence has its own bit rate p ~ U(0, 1)",
         PER_SEQUENCE, _parity_last, _parity_stream, _parity_between),
    Task("dms", "delayed match to sample: 1 when the bit N - 1 steps back equals the last one; fair bits",
         0.5, _dms_last, _dms_stream, _dms_between),
)}
TASKS = tuple(REGISTRY)  # the names, in the table's order


def get_task(task) -> Task:
    """The Task named task (a Task passes through), or a ValueError naming the known ones."""
    if isinstance(task, Task):
        return task
    if task not in REGISTRY:
        raise ValueError(f"task: expected one of {', '.join(map(repr, TASKS))}; got {task!r}")
    return REGISTRY[task]


# -- batches ----------------------------------------------------------------------------------------

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


def labels_for(task, bits: torch.Tensor, Ns: list[int]) -> torch.Tensor:
    """bits (T, B) of 0/1 -> labels (len(Ns), B) int64, one row per N."""
    spec = get_task(task)
    b = bits.to(torch.int64)
    Ns = list(Ns)
    consecutive = len(Ns) > 1 and all(later == earlier + 1 for earlier, later in zip(Ns, Ns[1:]))
    if consecutive and spec.labels_between is not None:
        return spec.labels_between(b, Ns[0], Ns[-1])
    return torch.stack([spec.labels(b, n) for n in Ns])


def stream_labels(task, bits: torch.Tensor, N: int) -> torch.Tensor:
    """bits (T, B) of 0/1 -> labels (T - N + 1, B) int64 for the N-bit windows ending at steps N-1..T-1."""
    return get_task(task).stream_labels(bits.to(torch.int64), N)


def make_batch(task, Ns, batch_size: int, *, generator: torch.Generator | None = None,
               device=None, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of a memory task.

    Args:
        task: a name in TASKS ("parity", "dms") or a Task.
        Ns: the memory lengths to label, e.g. [2, 3, 4] (one label row per N).
        batch_size: B >= 1.
        generator: a torch.Generator on `device` for reproducible batches.
        device: where to build the batch (default: the generator's device, else the CPU).
        length: force T (default: drawn uniformly from [max(Ns) + 2, 4 max(Ns) + 1]).

    Returns:
        inputs (T, B, 1) float32 of 0/1 bits, labels (len(Ns), B) int64.
    """
    spec = get_task(task)
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
    rate = spec.rates(batch_size, generator, device)
    bits = torch.rand(length, batch_size, generator=generator, device=device) < rate
    labels = labels_for(spec, bits, Ns)
    return bits.to(torch.float32).unsqueeze(-1), labels


def make_generator(seed: int, device=None) -> torch.Generator:
    """A torch.Generator on device seeded with seed."""
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    gen.manual_seed(int(seed))
    return gen
