"""The recurrence in eager mode: the same forward and backward as core.py's torch.library op, through a
torch.autograd.Function (on the cpu backend, functional.py first offers the call to whole.py, which
runs the whole op in one C++ call each way with the same numbers; what it does not serve comes here), which costs about 140 us less per forward+backward than the op's dispatch
(benchmarks/NOTES.md): a tenth of a call at the quick preset's size (T, B, H) = (20, 64, 64).

run_recurrence_of_params picks the path: under torch.compile the op (which the compiler traces),
without a gradient to build the backend's forward alone, and otherwise the Function. All three compute with
the same backend calls, so they give the same numbers. Differentiating the gradients again raises
the error that names the reference backend. Under a torch.func transform a second Function, with
forward and setup_context apart, carries the op (torch.func.grad runs through the cpu backend).
Under torch.func.vmap the transform Function's vmap rule (and the backward kernels' Function's, for
vmap(grad(f))) runs all mapped networks as one ensemble call of the core (core.as_ensemble).
In eager mode with gradients, each row's last state h_n is an output of its own, whose gradient
reaches the backward kernels apart (no (T, B, H) gradient for a loss on h_n alone).

Also here, for the cpu backend in eager mode: the input projection u and a stacked layer's
concatenated directions written into blocks of the C++ kernels' output pool (recycled memory, no
fresh pages per call), with their autograd.
"""
from __future__ import annotations

import torch

from .core import (_rate_of, as_ensemble, last_state, native_rates, rates, recurrence, second_derivative_error,
                   serial_backward, serial_forward, serial_forward_rates, weight_gradient)
from .reference import activation, masked_recurrent_weight


class _BackwardKernels(torch.autograd.Function):
    """(d_drive, dh0, d_alpha) = core.serial_backward(...) where autograd or a torch.func transform
    watches: first order only (differentiating them again raises the error that names the backend with
    second derivatives), and under torch.func.vmap one ensemble call for all mapped networks (e.g.
    vmap(grad(f)), whose backward runs on batched tensors)."""

    @staticmethod
    def forward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend, precision, lengths, reverse,
                grad_last, rates=False):
        return serial_backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend, precision, lengths,
                               reverse, grad_last, rates)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.backend = inputs[8]

    @staticmethod
    def backward(ctx, *grads):
        raise second_derivative_error(ctx.backend)

    @staticmethod
    def vmap(info, in_dims, grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend, precision, lengths,
             reverse, grad_last, rates=False):
        dims = in_dims[:6] + (in_dims[10], in_dims[12])
        tensors, unflatten = as_ensemble(info.batch_size, dims, (grad_h, h, h0, drive, w, alpha, lengths, grad_last))
        results = _BackwardKernels.apply(*tensors[:6], nonlinearity, placement, backend, precision, tensors[6],
                                         reverse, tensors[7], rates)
        return tuple(unflatten(r) for r in results), (0, 0, 0)


def _gradients(ctx, grad_h, grad_last=None, need_dw=True, rate_out=None):
    """(du, dh0, dW, dalpha) from the saved (h, h0, drive, w, alpha, lengths): the backward kernels,
    then dW as GEMMs. grad_h None: no gradient reaches h from outside (one zero row stands for all
    of it, no (T, B, H) tensor); grad_last: the gradient of each row's last state, or None; dW None
    when not need_dw (a frozen weight_hh: no GEMM). rate_out: the saved output r = f(h) of
    serial_forward_rates ("voltage" where native_rates), grad_h then being r's gradient, or None."""
    h, h0, drive, w, alpha, lengths = ctx.saved_tensors[:6]
    of_rates = rate_out is not None
    if grad_h is None:
        grad_h = h.new_zeros((1,) * (h.dim() - 1) + (h.shape[-1],)).expand(h.shape)
    if torch.is_grad_enabled() or _transforms_active():  # create_graph=True, or a torch.func transform
        d_drive, dh0, d_alpha = _BackwardKernels.apply(grad_h, h, h0, drive, w, alpha, *ctx.args, lengths,
                                                       ctx.reverse, grad_last, of_rates)
    else:
        d_drive, dh0, d_alpha = serial_backward(grad_h, h, h0, drive, w, alpha, *ctx.args, lengths, ctx.reverse,
                                                grad_last, of_rates)
    if not need_dw:
        dw = None
    elif of_rates:  # the step's operand f(v_prev): the saved rates, and f(v_0) for the first step
        dw = weight_gradient(d_drive, rate_out, activation(ctx.args[0])(h0), lengths, ctx.reverse)
    else:
        dw = weight_gradient(d_drive, h, h0, lengths, ctx.reverse, rate=_rate_of(ctx.args))
    return d_drive, dh0, dw, d_alpha


class _RecurrenceOfParams(torch.autograd.Function):
    """(h, h_n) = recurrence(u, h0, W, alpha, ...)[0] and each row's last state (core.last_state, a
    tensor of its own), the drive kept for the backward pass; h_n's gradient reaches the backward
    kernels apart (a loss on h_n alone builds no (T, B, H) gradient). It takes weight_hh and tau
    themselves: W (the diagonal masked unless self_connections) and alpha = 1 / clamp(tau, min=1) are
    formed in forward and their gradients returned from backward, the same arithmetic autograd's
    masked_fill, clamp and reciprocal nodes would do, without those nodes (a dozen ATen calls and three graph nodes fewer per call).
    weight_hh (H, H) or (K, H, H); tau (H,), 0-dim, (K, H) or (K, 1). "voltage" where
    core.native_rates: the first result is the output r = f(v) written by the kernels (v saved for the
    backward, h_n = v_T), its gradient taken by the backward kernels; otherwise the state v, whose
    rate the caller forms (run_recurrence_of_params)."""

    @staticmethod
    def forward(ctx, u, h0, weight_hh, tau, self_connections, nonlinearity, placement, backend, precision, lengths,
                reverse):
        w = weight_hh if self_connections else _zero_diagonal(weight_hh.clone())
        recip = torch.clamp(tau, min=1.0).reciprocal()  # 1 / clamp(tau): the same bits
        alpha = recip.expand(*weight_hh.shape[:-2], weight_hh.shape[-1]).contiguous()
        ctx.rates = native_rates(backend, placement, lengths, reverse)
        if ctx.rates:
            h, drive, out = serial_forward_rates(u, h0, w, alpha, nonlinearity, backend, precision, lengths, reverse)
        else:
            h, drive = serial_forward(u, h0, w, alpha, nonlinearity, placement, backend, precision, True, lengths,
                                      reverse)
            out = h
        ctx.save_for_backward(h, h0, drive, w, alpha, lengths, tau, recip, out if ctx.rates else None)
        ctx.args, ctx.reverse = (nonlinearity, placement, backend, precision), reverse
        ctx.self_connections = self_connections
        ctx.set_materialize_grads(False)
        last = last_state(h, lengths, reverse)
        return out, (last.clone() if ctx.rates or last._base is h else last)

    @staticmethod
    def backward(ctx, grad_h, grad_last):
        if grad_h is None and grad_last is None:
            return (None,) * 11
        du, dh0, dw, d_alpha = _gradients(ctx, grad_h, grad_last, need_dw=ctx.needs_input_grad[2],
                                          rate_out=ctx.saved_tensors[8] if ctx.rates else None)
        if dw is not None and not ctx.self_connections:
            _zero_diagonal(dw)  # dw is a fresh GEMM result
        d_tau = None
        if ctx.needs_input_grad[3]:
            tau, recip = ctx.saved_tensors[6:8]
            d_recip = d_alpha.sum_to_size(recip.shape)  # expand's gradient: a shared tau sums over H
            d_tau = torch.where(tau >= 1.0, -d_recip * (recip * recip), 0.0)  # reciprocal', then clamp's mask
        return du, dh0, dw, d_tau, None, None, None, None, None, None, None


def _zero_diagonal(w: torch.Tensor) -> torch.Tensor:
    """w (H, H) or (K, H, H) with its (each network's) diagonal set to 0.0, in place; returns w."""
    w.diagonal(dim1=-2, dim2=-1).zero_()
    return w


class _RecurrenceForTransforms(torch.autograd.Function):
    """The recurrence from W and alpha with forward and setup_context apart, as torch.func's transforms
    (grad, ...) need:
    (h, drive), the drive not differentiable."""

    @staticmethod
    def forward(u, h0, w, alpha, nonlinearity, placement, backend, precision, lengths, reverse):
        return serial_forward(u, h0, w, alpha, nonlinearity, placement, backend, precision, True, lengths, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, h0, w, alpha, nonlinearity, placement, backend, precision, lengths, reverse = inputs
        h, drive = output
        ctx.save_for_backward(h, h0, drive, w, alpha, lengths)
        ctx.mark_non_differentiable(drive)
        ctx.set_materialize_grads(False)
        ctx.args, ctx.reverse = (nonlinearity, placement, backend, precision), reverse

    @staticmethod
    def backward(ctx, grad_h, grad_drive):
        return *_gradients(ctx, grad_h), None, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, u, h0, w, alpha, nonlinearity, placement, backend, precision, lengths, reverse):
        """torch.func.vmap's rule: the mapped networks (times any K of their own) as one ensemble call."""
        tensors, unflatten = as_ensemble(info.batch_size, in_dims[:4] + in_dims[8:9], (u, h0, w, alpha, lengths))
        h, drive = _RecurrenceForTransforms.apply(*tensors[:4], nonlinearity, placement, backend, precision,
                                                  tensors[4], reverse)
        return (unflatten(h), unflatten(drive)), (0, 0)


# torch's own test for whether a torch.func transform is active (assumed active if it is missing).
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def run_recurrence_of_params(u, h0, weight_hh, tau, self_connections: bool, nonlinearity: str, placement: str,
                             backend: str, precision: str, needs_grad: bool, lengths: torch.Tensor | None = None,
                             reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's output (T, B, H) (zero past each row's length) and each row's last state h_n (B, H)
    (core.last_state), differentiable when needs_grad; from weight_hh (H, H) or (K, H, H) and tau
    (H,), 0-dim, (K, H) or (K, 1), not from the masked W and alpha. The output is the state h, or
    for "voltage" the rate f(v) (h_n stays v_T). In eager mode with gradients: one autograd node
    (_RecurrenceOfParams). Otherwise the mask and alpha as plain ops, then the op under
    torch.compile (which traces it), the transforms' Function under a torch.func transform, or the
    backend's forward alone without gradients."""
    compiling = torch.compiler.is_compiling()
    if needs_grad and not compiling and not _transforms_active():
        out, h_n = _RecurrenceOfParams.apply(u, h0, weight_hh, tau, self_connections, nonlinearity, placement,
                                             backend, precision, lengths, reverse)
        if placement == "voltage" and not native_rates(backend, placement, lengths, reverse):
            out = rates(out, nonlinearity, lengths)  # the Function's output is v there
        return out, h_n
    w = masked_recurrent_weight(weight_hh, self_connections)
    alpha = (1.0 / torch.clamp(tau, min=1.0)).expand(*weight_hh.shape[:-2], weight_hh.shape[-1]).contiguous()
    args = (u, h0, w, alpha, nonlinearity, placement, backend, precision)
    if compiling:
        h = recurrence(*args, needs_grad, lengths, reverse)[0]
    elif _transforms_active():  # its vmap rule runs a mapped call as one ensemble
        h = _RecurrenceForTransforms.apply(*args, lengths, reverse)[0]
    elif native_rates(backend, placement, lengths, reverse):  # the kernel writes f(v): no pass over it here
        h, _, out = serial_forward_rates(u, h0, w, alpha, nonlinearity, backend, precision, lengths, reverse,
                                         save_drive=False)
        return out, last_state(h, lengths, reverse).clone()
    else:
        h = serial_forward(*args, False, lengths, reverse)[0]
    out = rates(h, nonlinearity, lengths) if placement == "voltage" else h
    return out, last_state(h, lengths, reverse)


# The cpu backend's output pool serves blocks of at least this many bytes (csrc/output_pool.h).
_POOL_MIN_BYTES = 8 << 20


class _PooledProjection(torch.autograd.Function):
    """u = flat weight_ih^T (+ bias): (T*B, I), (H, I), (H,) or None -> (T*B, H), written into a block of
    the cpu backend's output pool. A fresh block from the system allocator costs a page fault per 4 KiB
    and the kernel's zeroing of every page on first touch, about as much as the projection itself;
    a recycled one costs neither. With I = 1 the projection is an outer product: one element-wise
    pass instead of a GEMM."""

    @staticmethod
    def forward(ctx, flat, weight_ih, bias):
        out = torch.ops.timescale_kernels_cpu.empty_pooled([flat.shape[0], weight_ih.shape[0]], flat.dtype)
        wt = weight_ih.t()
        if flat.shape[1] == 1:
            torch.mul(flat, wt, out=out) if bias is None else torch.addcmul(bias, flat, wt, out=out)
        else:
            torch.mm(flat, wt, out=out) if bias is None else torch.addmm(bias, flat, wt, out=out)
        ctx.save_for_backward(flat, weight_ih)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        flat, weight_ih = ctx.saved_tensors
        d_flat = None
        if ctx.needs_input_grad[0]:  # (T*B, I): pooled too when large (a stacked layer's input)
            d_flat = _pooled_or_empty(flat.shape, flat.dtype)
            torch.mm(grad, weight_ih, out=d_flat)
        d_weight = grad.t() @ flat if ctx.needs_input_grad[1] else None
        d_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return d_flat, d_weight, d_bias


def _pool_applies(backend: str, device: torch.device, nbytes: int) -> bool:
    """True where a result of nbytes goes into the output pool: the cpu backend in eager mode (not
    traced by torch.compile, no torch.func transform), at _POOL_MIN_BYTES and more."""
    return (backend == "cpu" and device.type == "cpu" and nbytes >= _POOL_MIN_BYTES
            and not torch.compiler.is_compiling() and not _transforms_active())


def _pooled_or_empty(shape, dtype) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor: from the output pool at _POOL_MIN_BYTES and more."""
    if shape.numel() * dtype.itemsize >= _POOL_MIN_BYTES:
        return torch.ops.timescale_kernels_cpu.empty_pooled(list(shape), dtype)
    return torch.empty(shape, dtype=dtype)


class _PooledCat(torch.autograd.Function):
    """torch.cat(tensors, -1) into a block of the output pool: a stacked layer's directions (T, B, H)
    each -> (T, B, D * H), the next layer's input. Its gradient is split into views."""

    @staticmethod
    def forward(ctx, *tensors):
        shape = (*tensors[0].shape[:-1], sum(t.shape[-1] for t in tensors))
        out = _pooled_or_empty(torch.Size(shape), tensors[0].dtype)
        torch.cat(tensors, -1, out=out)
        ctx.widths = [t.shape[-1] for t in tensors]
        return out

    @staticmethod
    def backward(ctx, grad):
        return tuple(grad.split(ctx.widths, -1))


def concat_features(tensors: list[torch.Tensor], backend: str) -> torch.Tensor:
    """torch.cat(tensors, -1): the directions of a stacked layer, (T, B, H) each -> (T, B, D * H).
    On the cpu backend in eager mode a large result goes into the kernels' output pool."""
    t = tensors[0]
    if (_pool_applies(backend, t.device, t.numel() * len(tensors) * t.element_size())
            and all(x.dtype == t.dtype and x.device == t.device for x in tensors)):
        return _PooledCat.apply(*tensors)
    return torch.cat(tensors, -1)


def input_projection(flat: torch.Tensor, weight_ih: torch.Tensor, bias: torch.Tensor | None,
                     backend: str) -> torch.Tensor:
    """u = flat weight_ih^T + bias: (T*B, I), (H, I), (H,) or None -> (T*B, H). On the cpu backend in
    eager mode a large u goes into the kernels' output pool (_PooledProjection); otherwise one GEMM."""
    if _pool_applies(backend, flat.device, flat.shape[0] * weight_ih.shape[0] * flat.element_size()):
        return _PooledProjection.apply(flat, weight_ih, bias)
    if bias is None:
        return flat @ weight_ih.t()
    return torch.addmm(bias, flat, weight_ih.t())
