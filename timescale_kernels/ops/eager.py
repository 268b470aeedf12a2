"""The recurrence in eager mode: the same forward and backward as core.py's torch.library op, through a
torch.autograd.Function, which costs about 140 us less per forward+backward than the op's dispatch
(benchmarks/NOTES.md): a tenth of a call at the quick preset's size (T, B, H) = (20, 64, 64).

run_recurrence picks the path: under torch.compile the op (which the compiler traces), without a
gradient to build the backend's forward alone, and otherwise the Function. All three compute with
the same backend calls, so they give the same numbers. Gradients of gradients go through the op's
backward, which raises the error that names the reference backend.
"""
from __future__ import annotations

import torch

from .core import recurrence, recurrence_backward, serial_backward, serial_forward, weight_gradient


class _Recurrence(torch.autograd.Function):
    """h = recurrence(u, h0, w, alpha, ...)[0], with the drive kept for the backward pass."""

    @staticmethod
    def forward(ctx, u, h0, w, alpha, nonlinearity, placement, backend, precision, lengths, reverse):
        h, drive = serial_forward(u, h0, w, alpha, nonlinearity, placement, backend, precision, True, lengths,
                                  reverse)
        ctx.save_for_backward(h, h0, drive, w, alpha, lengths)
        ctx.args = (nonlinearity, placement, backend, precision)
        ctx.reverse = reverse
        return h

    @staticmethod
    def backward(ctx, grad_h):
        h, h0, drive, w, alpha, lengths = ctx.saved_tensors
        # create_graph=True: through the op, whose own backward raises the error naming the reference.
        backward = recurrence_backward if torch.is_grad_enabled() else serial_backward
        d_drive, dh0, d_alpha = backward(grad_h, h, h0, drive, w, alpha, *ctx.args, lengths, ctx.reverse)
        dw = weight_gradient(d_drive, h, h0, lengths, ctx.reverse)
        return d_drive, dh0, dw, d_alpha, None, None, None, None, None, None


def run_recurrence(u, h0, w, alpha, nonlinearity: str, placement: str, backend: str, precision: str,
                   needs_grad: bool, lengths: torch.Tensor | None = None, reverse: bool = False) -> torch.Tensor:
    """h (T, B, H) of core.recurrence (zero past each row's length), differentiable when needs_grad."""
    if torch.compiler.is_compiling():
        return recurrence(u, h0, w, alpha, nonlinearity, placement, backend, precision, needs_grad, lengths,
                          reverse)[0]
    if not needs_grad:
        return serial_forward(u, h0, w, alpha, nonlinearity, placement, backend, precision, False, lengths,
                              reverse)[0]
    return _Recurrence.apply(u, h0, w, alpha, nonlinearity, placement, backend, precision, lengths, reverse)
