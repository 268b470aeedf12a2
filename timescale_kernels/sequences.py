"""Variable-length batches for the recurrent modules: PackedSequence in and out through per-row
lengths (no sorting, one op call per layer and direction), and time reversal within each row's length."""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def unpack(sequence: PackedSequence) -> tuple[torch.Tensor, torch.Tensor]:
    """padded (T, B, *) in the caller's batch order (zeros past each length), lengths (B,) int64 on the CPU."""
    return pad_packed_sequence(sequence, batch_first=False)


def pack_like(padded: torch.Tensor, lengths: torch.Tensor, template: PackedSequence) -> PackedSequence:
    """padded (T, B, *) in the caller's batch order -> a PackedSequence with template's batch_sizes and
    sorted/unsorted indices, as torch.nn.RNN returns it."""
    order = template.sorted_indices
    if order is not None:
        padded = padded.index_select(1, order.to(padded.device))
        lengths = lengths.index_select(0, order.to(lengths.device))
    data = pack_padded_sequence(padded, lengths.cpu(), enforce_sorted=True).data
    return PackedSequence(data, template.batch_sizes, template.sorted_indices, template.unsorted_indices)


def reverse_in_time(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """x (T, B, F) with each row's first lengths[b] steps in reverse order (steps past a row's length
    stay where they are); the whole time axis reversed when lengths is None. Its own inverse."""
    if lengths is None:
        return x.flip(0)
    steps = x.shape[0]
    t = torch.arange(steps, device=x.device).unsqueeze(1)
    lengths = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(0, index.unsqueeze(2).expand(-1, -1, x.shape[2]))
