"""The whole op on the cpu backend as one autograd node with one C++ call each way (csrc/whole_op.cpp).

The Python path (functional.py: the input projection, then eager._RecurrenceOfParams around the
serial core) makes about fifteen ATen calls and four autograd nodes around the loop; at 64 neurons
they cost more than the loop. Here alpha, the masked weight, the projection, the loop, the output
mask and h_n are one C++ call, and the backward loop with every gradient another, computed with the
same ATen calls as the Python path, so both give the same numbers.

applies() says where it serves: the cpu backend in eager mode (not under torch.compile or a
torch.func transform, whose rules live on the Python path), float32 or float64 (half precision is
cast to float32 before), without drive noise, and not in reverse time order with lengths;
everything else takes the Python path.
"""
from __future__ import annotations

import torch

from . import cpu
from .choices import nonlinearity_code, placement_code
from .core import second_derivative_error
from .eager import _transforms_active

_DTYPES = (torch.float32, torch.float64)


def applies(backend: str, input: torch.Tensor, drive_noise, lengths, reverse: bool) -> bool:
    """True where run() serves a leaky_rnn call (see the module's docstring)."""
    return (backend == "cpu" and drive_noise is None and not (reverse and lengths is not None)
            and input.dtype in _DTYPES and input.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _transforms_active() and cpu.is_available())


class _Whole(torch.autograd.Function):
    """(output, h_n) of leaky_rnn from its tensors, one node: x, h0, weight_ih, weight_hh, bias_ih,
    bias_hh, tau (per network with a leading K, or one network), then the options."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement, self_connections, lengths,
                reverse):
        out, h_n, h, drive, w, alpha, rate = torch.ops.timescale_kernels_cpu.whole_forward(
            x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity, placement, self_connections, lengths, reverse, True)
        ctx.save_for_backward(x, h0, w_ih, w, h, drive, rate, alpha, tau, lengths, w_hh, b_ih, b_hh)
        ctx.options = (nonlinearity, placement, self_connections, reverse)
        ctx.set_materialize_grads(False)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_h_n):
        needs = list(ctx.needs_input_grad[:7])
        if (grad_out is None and grad_h_n is None) or not any(needs):
            return (None,) * 12
        saved = ctx.saved_tensors
        args = (grad_out, grad_h_n, *saved[:10], *ctx.options, needs)
        if torch.is_grad_enabled():  # create_graph=True: gradients whose node refuses a second derivative,
            grads = _SecondOrderGuard.apply(len(args), *args, *saved[10:])  # reached from every input
        else:
            grads = _whole_backward(*args)
        return *(g if need else None for g, need in zip(grads, needs)), None, None, None, None, None


def _whole_backward(grad_out, grad_h_n, x, h0, w_ih, w, h, drive, rate, alpha, tau, lengths, nonlinearity,
                    placement, self_connections, reverse, needs):
    return tuple(torch.ops.timescale_kernels_cpu.whole_backward(
        grad_out, grad_h_n, x, h0, w_ih, w, h, drive, rate, alpha, tau, lengths, nonlinearity, placement,
        self_connections, reverse, needs))


class _SecondOrderGuard(torch.autograd.Function):
    """The backward kernels where autograd watches (create_graph=True): first order only."""

    @staticmethod
    def forward(ctx, count, *args):
        return _whole_backward(*args[:count])  # the rest: inputs for the graph's connections only

    @staticmethod
    def backward(ctx, *grads):
        raise second_derivative_error("cpu")


def run(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity: str, placement: str,
        self_connections: bool, lengths, reverse: bool):
    """(output, h_n) of leaky_rnn where applies(): input (T, B, I) with hx (B, H), ... (one network),
    or every tensor with its leading K (K networks; lengths (K, B)); lengths int64 or None."""
    codes = (nonlinearity_code(nonlinearity), placement_code(placement), bool(self_connections))
    tensors = (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _Whole.apply(*tensors, *codes, lengths, bool(reverse))
    out, h_n = torch.ops.timescale_kernels_cpu.whole_forward(*tensors, *codes, lengths, bool(reverse), False)[:2]
    return out, h_n
