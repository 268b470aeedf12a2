"""Variable-length batches for the recurrent modules: PackedSequence in and out through per-row
lengths (no sorting, one op call per layer and direction). Time reversal within each row's length is
the op's own (leaky_rnn(..., reverse=True); ops.core.reverse_in_time)."""
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
