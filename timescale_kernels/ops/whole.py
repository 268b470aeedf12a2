"""The whole op on the cpu backend as one autograd node with one C++ call each way (csrc/whole_op.cpp).

The Python path (functional.py: the input projection, then eager._RecurrenceOfParams around the
serial core) makes about fifteen ATen calls and four autograd nodes around the loop; at 64 neurons
they cost more than the loop. Here alpha, the masked weight, the projection, the loop, the output
mask and h_n are one C++ call, and the backward loop with every gradient another, computed with the
same ATen calls as the Python path, so both give the same numbers. The operator `whole` holds its
autograd node in C++ (csrc/whole_autograd.cpp): the engine calls the backward without Python.

applies() says where it serves: the cpu backend in eager mode (not under torch.compile or a
torch.func transform, whose rules live on the Python path), float32 or float64 (half precision is
cast to float32 before), without drive noise, and not in reverse time order with lengths;
everything else takes the Python path.
"""
from __future__ import annotations

import torch

from . import cpu
from .choices import nonlinearity_code, placement_code
from .eager import _transforms_active

_DTYPES = (torch.float32, torch.float64)


def applies(backend: str, input: torch.Tensor, drive_noise, lengths, reverse: bool) -> bool:
    """True where run() serves a leaky_rnn call (see the module's docstring)."""
    return (backend == "cpu" and drive_noise is None and not (reverse and lengths is not None)
            and input.dtype in _DTYPES and input.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _transforms_active() and cpu.is_available())


def run(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity: str, placement: str,
        self_connections: bool, lengths, reverse: bool):
    """(output, h_n) of leaky_rnn where applies(): input (T, B, I) with hx (B, H), ... (one network),
    or every tensor with its leading K (K networks; lengths (K, B)); lengths int64 or None."""
    return torch.ops.timescale_kernels_cpu.whole(
        input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity_code(nonlinearity),
        placement_code(placement), bool(self_connections), lengths, bool(reverse))
