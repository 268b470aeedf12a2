"""K independent networks in one call on a compiled backend: the input projection as one batched
GEMM (baddbmm over the networks), then the serial core with a leading network dimension on every
tensor (core.py), one call for all K.

functional.leaky_rnn routes here when any argument carries a leading K (checks.network_count);
every tensor arrives with its K (checks.per_network: shared tensors expanded, so that autograd sums
their gradients over the networks).
"""
from __future__ import annotations

import torch

from . import whole
from .eager import _transforms_active, run_recurrence_of_params

_LOW_PRECISION = (torch.float16, torch.bfloat16)
ARG_NAMES = ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau", "drive_noise")


class _Projection(torch.autograd.Function):
    """u (K, N, H) = flat (K, N, I) weight_ih^T (K, I, H) + bias_ih + bias_hh ((K, H) each, or None), with
    its gradients as batched GEMMs: autograd's own backward of addcmul (the I = 1 outer product)
    reduces the broadcast operands element-wise, 0.75 ms against 0.1 ms for these at K = 8 of
    (20, 64, 64). The biases' sum is formed here too (one autograd node fewer); both get its
    gradient, the sum of u's over the rows."""

    @staticmethod
    def forward(ctx, flat, weight_ih, bias_ih, bias_hh):
        ctx.save_for_backward(flat, weight_ih)
        return _project(flat, weight_ih, _bias_sum(bias_ih, bias_hh))

    @staticmethod
    def backward(ctx, grad):
        flat, weight_ih = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_flat = torch.bmm(grad, weight_ih) if need[0] else None
        d_weight = torch.bmm(flat.transpose(1, 2), grad).transpose(1, 2) if need[1] else None
        d_bias = grad.sum(1) if need[2] or need[3] else None
        return d_flat, d_weight, d_bias if need[2] else None, d_bias if need[3] else None


def _bias_sum(bias_ih, bias_hh):
    """bias_ih + bias_hh ((K, H) each, or None) as (K, 1, H), or None."""
    if bias_ih is not None and bias_hh is not None:
        bias = bias_ih + bias_hh
    else:
        bias = bias_ih if bias_ih is not None else bias_hh
    return None if bias is None else bias.unsqueeze(1)


def _project(flat, weight_ih, bias):
    """flat (K, N, I) weight_ih^T + bias (K, 1, H) or None -> (K, N, H)."""
    w_t = weight_ih.transpose(1, 2)
    if flat.shape[2] == 1:  # an outer product per network: one element-wise pass (MKL's batched k = 1 GEMM
        # costs 10x more: 0.8 against 0.08 ms at K = 8 of (20, 64, 64))
        return flat * w_t if bias is None else torch.addcmul(bias, flat, w_t)
    return torch.bmm(flat, w_t) if bias is None else torch.baddbmm(bias, flat, w_t)


def ensemble_projection(input, weight_ih, bias_ih, bias_hh, drive_noise) -> torch.Tensor:
    """u (K, T, B, H) = x weight_ih^T + bias_ih + bias_hh (+ drive_noise) for every network, one
    baddbmm over the K networks' T*B rows: input (K, T, B, I), weight_ih (K, H, I), biases (K, H)."""
    count, steps, batch, in_size = input.shape
    hidden = weight_ih.shape[1]
    flat = input.reshape(count, steps * batch, in_size)
    if _transforms_active() or torch.compiler.is_compiling():  # plain ops: torch.func and dynamo see through them
        u = _project(flat, weight_ih, _bias_sum(bias_ih, bias_hh))
    else:
        u = _Projection.apply(flat, weight_ih, bias_ih, bias_hh)
    u = u.view(count, steps, batch, hidden)
    return u if drive_noise is None else u + drive_noise


def run_compiled_ensemble(backend: str, tensors: dict, nonlinearity: str, placement: str, self_connections: bool,
                          precision: str, lengths: torch.Tensor | None, reverse: bool):
    """(output (K, T, B, H), h_n (K, B, H)) of K networks on a compiled backend; tensors by name
    (ARG_NAMES), each with its leading K; lengths (K, B) int64 or None. On the cpu backend in eager
    mode: one C++ call each way (whole.py)."""
    out_dtype = tensors["input"].dtype
    if out_dtype in _LOW_PRECISION:
        tensors = {k: None if v is None else v.float() for k, v in tensors.items()}
    t = tensors
    if whole.applies(backend, t["input"], t["drive_noise"], lengths, reverse):
        output, h_n = whole.run(t["input"], t["hx"], t["weight_ih"], t["weight_hh"], t["bias_ih"], t["bias_hh"],
                                t["tau"], nonlinearity, placement, self_connections, lengths, reverse)
    else:
        u = ensemble_projection(t["input"], t["weight_ih"], t["bias_ih"], t["bias_hh"], t["drive_noise"])
        needs_grad = torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in t.values())
        output, h_n = run_recurrence_of_params(u, t["hx"], t["weight_hh"], t["tau"], self_connections, nonlinearity,
                                               placement, backend, precision, needs_grad, lengths, reverse)
    if out_dtype != output.dtype:
        output, h_n = output.to(out_dtype), h_n.to(out_dtype)
    return output, h_n
