"""The serial recurrence as a torch.library custom op, with its autograd.

Every compiled backend (``cpu``, ``triton``) implements only the serial core:

    forward(u, h0, w, alpha, nonlinearity, placement, save_drive, precision)
        u (T, B, H): input projection plus both biases; h0 (B, H); w (H, H), already masked;
        alpha (H,). Returns h (T, B, H) = h_1..h_T and drive (T, B, H) (saved for the backward
        pass; an empty tensor when save_drive is False).
    backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, precision)
        grad_h (T, B, H): the gradient reaching each h_t from outside the recurrence.
        Returns d_drive (T, B, H), dh0 (B, H), d_alpha (H,).

The parallel parts stay here, as GEMMs over all T*B rows: dW = d_drive^T h_prev after the
reverse loop, and (through autograd of the caller) du -> dx, dW_ih, the biases.
"""
from __future__ import annotations

import importlib

import torch

from .choices import NONLINEARITIES, PLACEMENTS, PRECISIONS  # noqa: F401  (re-exported)

_BACKEND_MODULES = {"cpu": "timescale_kernels.ops.cpu", "triton": "timescale_kernels.ops.triton_recurrence"}


def backend_module(name: str):
    """The module that implements a compiled backend's serial core."""
    return importlib.import_module(_BACKEND_MODULES[name])


@torch.library.custom_op("timescale_kernels::recurrence", mutates_args=())
def recurrence(
    u: torch.Tensor,
    h0: torch.Tensor,
    w: torch.Tensor,
    alpha: torch.Tensor,
    nonlinearity: str,
    placement: str,
    backend: str,
    precision: str,
    save_drive: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h (T, B, H) and the saved drive (T, B, H) (empty when save_drive is False)."""
    mod = backend_module(backend)
    return mod.forward(
        u.contiguous(), h0.contiguous(), w.contiguous(), alpha.contiguous(),
        nonlinearity, placement, save_drive, precision,
    )


@recurrence.register_fake
def _recurrence_fake(u, h0, w, alpha, nonlinearity, placement, backend, precision, save_drive):
    h = u.new_empty(u.shape)
    drive = u.new_empty(u.shape) if save_drive else u.new_empty((0,))
    return h, drive


@torch.library.custom_op("timescale_kernels::recurrence_backward", mutates_args=())
def recurrence_backward(
    grad_h: torch.Tensor,
    h: torch.Tensor,
    h0: torch.Tensor,
    drive: torch.Tensor,
    w: torch.Tensor,
    alpha: torch.Tensor,
    nonlinearity: str,
    placement: str,
    backend: str,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d_drive (T, B, H), dh0 (B, H), d_alpha (H,)."""
    mod = backend_module(backend)
    # grad_h keeps its strides (e.g. the expanded gradient of output.sum()); each backend copies
    # what it needs.
    return mod.backward(
        grad_h, h, h0.contiguous(), drive, w.contiguous(), alpha.contiguous(),
        nonlinearity, placement, precision,
    )


@recurrence_backward.register_fake
def _recurrence_backward_fake(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend, precision):
    return grad_h.new_empty(grad_h.shape), h0.new_empty(h0.shape), alpha.new_empty(alpha.shape)


def _setup_context(ctx, inputs, output):
    u, h0, w, alpha, nonlinearity, placement, backend, precision, save_drive = inputs
    h, drive = output
    ctx.save_for_backward(h, h0, drive, w, alpha)
    ctx.args = (nonlinearity, placement, backend, precision)
    # The saved drive is an output only for autograd's bookkeeping: never build a zero gradient for it.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_h, grad_drive):
    h, h0, drive, w, alpha = ctx.saved_tensors
    if drive.numel() == 0:
        raise RuntimeError("leaky_rnn: backward through a forward that did not save its drive")
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    d_drive, dh0, d_alpha = recurrence_backward(grad_h, h, h0, drive, w, alpha, *ctx.args)
    hidden = h.shape[-1]
    # dW = d_drive^T h_prev over all T*B rows, without materialising h_prev = [h0, h_1..h_{T-1}].
    dw = d_drive[0].t() @ h0
    if h.shape[0] > 1:
        dw = dw.addmm(d_drive[1:].reshape(-1, hidden).t(), h[:-1].reshape(-1, hidden))
    return d_drive, dh0, dw, d_alpha, None, None, None, None, None


recurrence.register_autograd(_backward, setup_context=_setup_context)
