"""The serial recurrence as a torch.library custom op, with its autograd.

Every compiled backend (``cpu``, ``triton``: the modules in backends.COMPILED) implements only
the serial core:

    forward(u, h0, w, alpha, nonlinearity, placement, save_drive, precision, lengths)
        u (T, B, H): input projection plus both biases (plus any drive noise); h0 (B, H);
        w (H, H), already masked; alpha (H,); lengths None or int64 (B,) on u's device, values in
        1..T, in any order. Returns h (T, B, H) = h_1..h_T and drive (T, B, H) (saved for the
        backward pass; an empty tensor when save_drive is False). With lengths, row b holds its
        state from step lengths[b] on: h[t, b] = h[t - 1, b], so h[T-1] is each row's last
        valid state; drive there is unspecified.
    backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, precision, lengths)
        grad_h (T, B, H), any strides: the gradient reaching each h_t from outside the recurrence.
        Returns d_drive (T, B, H), dh0 (B, H), d_alpha (H,). With lengths, for t >= lengths[b]
        grad_h[t, b] is ignored (the op's h is a constant zero there), d_drive[t, b] = 0, and the
        carried gradient passes through those steps to h_{t-1} unchanged.

Ensembles: every tensor may carry a leading network dimension K (u (K, T, B, H), h0 (K, B, H), w
(K, H, H), alpha (K, H), lengths (K, B); results likewise, d_alpha (K, H)): K independent networks in
one call. A backend whose module sets ENSEMBLE takes them as they are; for the others this module
runs the networks one after another. dW is then (K, H, H), from batched GEMMs. torch.func.vmap of
either op merges its mapped networks (times any K of the call's own) into one ensemble call
(as_ensemble), as eager.py's Functions do.

reverse=True runs the steps from time index T-1 down to 0 (with lengths, each row's from
lengths[b]-1 down to 0; held steps stay where they are): h[t] is the state after reading u[t] and
h[0] the last; a backend whose module sets NATIVE_REVERSE takes a `reverse` keyword and runs that
order in place, for the others the op reverses u before and h, drive after the forward (grad_h, h,
drive before and d_drive after the backward) with reverse_in_time.

nonlinearity and placement arrive as names already validated at the public boundary; their
integer codes are their positions in choices.py. The parallel parts stay here, as GEMMs over all
T*B rows: dW = d_drive^T h_prev after the reverse loop, and (through autograd of the caller)
du -> dx, dW_ih, the biases.

placement "voltage": the core's h is the state v (the pre-activation; h_n = v_T comes out of it as
for the other placements), and its output r = f(v) is made from it by the caller (rates(), one
element-wise pass, zero past each row's length), so that the core's contract (two (T, B, H)
results, the state sequence and the drive) is the same for every placement: the forward's step
needs f(v_{t-1}) only as its matmul operand, which the kernels form on the fly. The backward
receives the gradient of v (the caller's autograd multiplies the output's gradient by f'(v) and
adds h_n's), and the weight gradient reads the rates: dW = d_drive^T f(v_prev) (weight_gradient's
`rate`). A backend whose module sets VOLTAGE_RATES (cpu) also offers the voltage form without
those three passes over (T, B, H) (native_rates, used by eager.py's Function): its forward writes r
beside v from inside its loop (serial_forward_rates) and its backward takes r's gradient, applying
f'(v) in the loop (serial_backward's `rates`); dW then reads the saved r. The gradient, reverse time, carrying
dv (the adjoint of v_t; grad_v[t] added as it arrives):

    d_drive_t = alpha dv_t
    d_alpha  += sum_b dv_t (drive_t - v_{t-1})
    dv_{t-1}  = (1 - alpha) dv_t + grad_v[t-1] + f'(v_{t-1}) * (d_drive_t W)

since v_t = (1 - alpha) v_{t-1} + alpha drive_t and drive_t = f(v_{t-1}) W^T + u_t; the input
projection's and biases' gradients are d_drive's, as for the other placements, and dv_0 is dh0.

With lengths, the op's h is the output the caller returns: zero where t >= lengths[b] (as in
torch.nn.RNN's padded packed output). The backend's held states are zeroed in place after its
forward (no second (T, B, H) tensor), which its backward never reads: they lie past each row's
length, where it only passes the gradient through. The gradient reaching those zeros from outside
is dropped by the backend's backward itself (no mask pass over grad_h). Each row's last valid
state is h[lengths[b] - 1, b].
"""
from __future__ import annotations

from typing import Optional

import torch

from .backends import COMPILED, backward_or_reference, kernel_key
from .reference import activation


def reverse_in_time(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """x (T, B, F) with each row's first lengths[b] steps in reverse order (steps past a row's length
    stay where they are); the whole time axis reversed when lengths is None. Its own inverse. With a
    leading network dimension: x (K, T, B, F) and lengths (K, B), each network's rows by its own."""
    time_dim = x.dim() - 3
    if lengths is None:
        return x.flip(time_dim)
    steps = x.shape[time_dim]
    t = torch.arange(steps, device=x.device).unsqueeze(1)
    lengths = lengths.to(x.device).unsqueeze(-2)
    index = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(time_dim, index.unsqueeze(-1).expand(*index.shape, x.shape[-1]))


def as_ensemble(batch_size: int, in_dims, tensors):
    """The tensors of a serial-core call under torch.func.vmap (u, h0, w, alpha, lengths, ...; None
    allowed) as one ensemble call: each with vmap's N mapped networks first (an unmapped tensor
    expanded to N, a view), merged with a network dimension K of its own (the call is already an
    ensemble: u is 4-D) into N * K. Returns (tensors, unflatten), unflatten taking a result with
    N * K (or N) networks first back to (N, ...) as vmap expects it."""
    u, u_dim = tensors[0], in_dims[0]
    own = u.dim() - (u_dim is not None) == 4  # the logical call carries K networks
    out = []
    for t, dim in zip(tensors, in_dims):
        if t is None:
            out.append(None)
            continue
        t = t.movedim(dim, 0) if dim is not None else t.expand(batch_size, *t.shape)
        out.append(t.flatten(0, 1) if own else t)

    def unflatten(result: torch.Tensor) -> torch.Tensor:
        if own and result.numel() > 0:
            return result.unflatten(0, (batch_size, -1))
        return result if result.numel() > 0 else result.new_empty((batch_size, 0))
    return out, unflatten


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
    lengths: Optional[torch.Tensor] = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h (T, B, H), zero past each row's length, and the saved drive (T, B, H) (empty when save_drive
    is False)."""
    return serial_forward(u, h0, w, alpha, nonlinearity, placement, backend, precision, save_drive, lengths,
                          reverse)


def serial_forward(u, h0, w, alpha, nonlinearity, placement, backend, precision, save_drive, lengths=None,
                   reverse=False):
    """The body of the recurrence op (same arguments and results), callable without the op."""
    module = COMPILED[backend]
    if u.dim() == 4 and not getattr(module, "ENSEMBLE", False):  # one network at a time
        per_net = [serial_forward(u[k], h0[k], w[k], alpha[k], nonlinearity, placement, backend, precision,
                                  save_drive, None if lengths is None else lengths[k], reverse)
                   for k in range(u.shape[0])]
        return torch.stack([h for h, _ in per_net]), torch.stack([d for _, d in per_net])
    args = (h0.contiguous(), w.contiguous(), alpha.contiguous(), nonlinearity, placement, save_drive, precision)
    if not reverse:
        h, drive = module.forward(u.contiguous(), *args, lengths=lengths)
    elif getattr(module, "NATIVE_REVERSE", False):
        h, drive = module.forward(u.contiguous(), *args, lengths=lengths, reverse=True)
    else:
        h, drive = module.forward(reverse_in_time(u, lengths), *args, lengths=lengths)
        h, drive = reverse_in_time(h, lengths), (reverse_in_time(drive, lengths) if drive.numel() else drive)
    if lengths is not None:
        _zero_past_lengths_(h, lengths)
    return h, drive


def native_rates(backend: str, placement: str, lengths, reverse: bool) -> bool:
    """True where the backend's kernels write the "voltage" output r = f(v) themselves and take its
    gradient (its module sets VOLTAGE_RATES): not in reverse time order with lengths."""
    return (placement == "voltage" and getattr(COMPILED.get(backend), "VOLTAGE_RATES", False)
            and not (reverse and lengths is not None))


def serial_forward_rates(u, h0, w, alpha, nonlinearity, backend, precision, lengths=None, reverse=False,
                         save_drive=True):
    """(v, drive, r), each (T, B, H) (or (K, T, B, H)), for "voltage" where native_rates: the states v
    (not zeroed past a row's length: the caller reads each row's last one, and the backward does not
    read past it), the saved drive (empty unless save_drive), and the output r = f(v), zero past
    each row's length."""
    return COMPILED[backend].forward(u.contiguous(), h0.contiguous(), w.contiguous(), alpha.contiguous(),
                                     nonlinearity, "voltage", save_drive, precision, lengths=lengths, reverse=reverse,
                                     rates=True)


def running_mask(steps: int, lengths: torch.Tensor) -> torch.Tensor:
    """(T, B, 1) bool: True where step t < lengths[b]; (K, T, B, 1) for lengths (K, B)."""
    return (torch.arange(steps, device=lengths.device).unsqueeze(1) < lengths.unsqueeze(-2)).unsqueeze(-1)


def rates(h: torch.Tensor, nonlinearity: str, lengths: torch.Tensor | None) -> torch.Tensor:
    """f(h) for h (T, B, H) states (or (K, T, B, H) with lengths (K, B)) or a (B, H) one, zero at
    t >= lengths[b] when lengths: the "voltage" placement's output from its states (f(0) is not 0 for
    sigmoid)."""
    r = activation(nonlinearity)(h)
    if lengths is None or h.dim() == 2:
        return r
    return r.masked_fill(~running_mask(h.shape[-3], lengths.to(h.device)), 0.0)


def _zero_past_lengths_(h: torch.Tensor, lengths: torch.Tensor) -> None:
    """Sets h[t, b] = 0 where t >= lengths[b], in place (h (K, T, B, H) with lengths (K, B): per network)."""
    held = ~running_mask(h.shape[-3], lengths)
    if h.device.type == "cpu":  # writes the held rows only
        h.view(-1, h.shape[-1]).index_fill_(0, held.flatten().nonzero().squeeze(1), 0.0)
    else:  # no row count, so no synchronisation
        h.masked_fill_(held, 0.0)


@recurrence.register_fake
def _recurrence_fake(u, h0, w, alpha, nonlinearity, placement, backend, precision, save_drive, lengths=None,
                     reverse=False):
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
    lengths: Optional[torch.Tensor] = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d_drive (T, B, H), dh0 (B, H), d_alpha (H,)."""
    return serial_backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend, precision, lengths,
                           reverse)


def _last_index(h: torch.Tensor, lengths: torch.Tensor | None, reverse: bool):
    """Where each row's last state lies in h (T, B, ...) (or (K, T, B, ...), K networks): 0 in reverse
    order (it read input[0] last), -1 without lengths, (lengths - 1, arange(B)) with them (lengths
    (B,), or (K, B) with K)."""
    ensemble = lengths is not None and lengths.dim() == 2 or lengths is None and h.dim() == 4
    if reverse:
        return (slice(None), 0) if ensemble else 0
    if lengths is None:
        return (slice(None), -1) if ensemble else -1
    rows = torch.arange(h.shape[-2], device=h.device)
    if not ensemble:
        return lengths.to(h.device) - 1, rows
    nets = torch.arange(lengths.shape[0], device=h.device).unsqueeze(1)
    return nets, lengths.to(h.device) - 1, rows


def last_state(h: torch.Tensor, lengths: torch.Tensor | None, reverse: bool) -> torch.Tensor:
    """Each row's last state (B, H) of h (T, B, H): h[0] in reverse order, h[T - 1] without lengths,
    h[lengths[b] - 1, b] with them. A view where it can be one."""
    return h[_last_index(h, lengths, reverse)]


def _fold_last(grad_h, grad_last, lengths, reverse):
    """grad_h with grad_last added at each row's last state (a new tensor): for backends whose
    backward takes no grad_last."""
    grad = grad_h.clone(memory_format=torch.contiguous_format)
    grad[_last_index(grad, lengths, reverse)] += grad_last
    return grad


def serial_backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend, precision, lengths=None,
                    reverse=False, grad_last=None, rates=False):
    """The body of the recurrence_backward op (same arguments and results), callable without the op.
    grad_h keeps its strides (e.g. the expanded gradient of output.sum()); each backend copies what
    it needs. grad_last (B, H) or None: the gradient of last_state(h), which a backend with
    GRAD_LAST takes apart and the others receive folded into grad_h. rates (where native_rates):
    grad_h is the gradient of the output r = f(h) of serial_forward_rates, not of h."""
    if rates:
        return COMPILED[backend].backward(grad_h, h, h0.contiguous(), drive, w.contiguous(), alpha.contiguous(),
                                          nonlinearity, placement, precision, lengths=lengths, reverse=reverse,
                                          grad_last=None if grad_last is None else grad_last.contiguous(), rates=True)
    module = backward_or_reference(backend, kernel_key(h.device, h.dtype, nonlinearity, placement, precision,
                                                       lengths is not None, h0.shape))
    if h.dim() == 4 and not getattr(module, "ENSEMBLE", False):  # one network at a time
        per_net = [serial_backward(grad_h[k], h[k], h0[k], drive[k], w[k], alpha[k], nonlinearity, placement, backend,
                                   precision, None if lengths is None else lengths[k], reverse,
                                   None if grad_last is None else grad_last[k])
                   for k in range(h.shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*per_net))
    h0, w, alpha = h0.contiguous(), w.contiguous(), alpha.contiguous()
    rest = (nonlinearity, placement, precision)
    last = {}
    if grad_last is not None:
        if getattr(module, "GRAD_LAST", False):
            last = {"grad_last": grad_last.contiguous()}
        else:
            grad_h = _fold_last(grad_h, grad_last, lengths, reverse)
    if not reverse:
        return module.backward(grad_h, h, h0, drive, w, alpha, *rest, lengths=lengths, **last)
    if getattr(module, "NATIVE_REVERSE", False):
        return module.backward(grad_h, h, h0, drive, w, alpha, *rest, lengths=lengths, reverse=True, **last)
    d_drive, dh0, d_alpha = module.backward(*(reverse_in_time(t, lengths) for t in (grad_h, h)), h0,
                                            reverse_in_time(drive, lengths), w, alpha, *rest, lengths=lengths)
    return reverse_in_time(d_drive, lengths), dh0, d_alpha


@recurrence_backward.register_fake
def _recurrence_backward_fake(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend, precision,
                              lengths=None, reverse=False):
    return grad_h.new_empty(grad_h.shape), h0.new_empty(h0.shape), alpha.new_empty(alpha.shape)


def _setup_context(ctx, inputs, output):
    u, h0, w, alpha, nonlinearity, placement, backend, precision, save_drive, lengths, reverse = inputs
    h, drive = output
    ctx.save_for_backward(h, h0, drive, w, alpha, lengths)
    ctx.args = (nonlinearity, placement, backend, precision)
    ctx.reverse = reverse
    # The saved drive is an output only for autograd's bookkeeping: never build a zero gradient for it.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_h, grad_drive):
    h, h0, drive, w, alpha, lengths = ctx.saved_tensors
    if drive.numel() == 0:
        raise RuntimeError("leaky_rnn: backward through a forward that did not save its drive")
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    d_drive, dh0, d_alpha = recurrence_backward(grad_h, h, h0, drive, w, alpha, *ctx.args, lengths, ctx.reverse)
    dw = weight_gradient(d_drive, h, h0, lengths, ctx.reverse, rate=_rate_of(ctx.args))
    return d_drive, dh0, dw, d_alpha, None, None, None, None, None, None, None


def _rate_of(args):
    """weight_gradient's `rate` for ctx.args = (nonlinearity, placement, backend, precision): the
    nonlinearity for "voltage" (whose matmul operand is f(v)), else None."""
    return args[0] if args[1] == "voltage" else None


def weight_gradient(d_drive, h, h0, lengths, reverse=False, rate=None):
    """dW (H, H) = sum over the steps of d_drive[t]^T h_prev(t), h_prev(t) being h0 at the first step
    and otherwise the state before it (h[t - 1], or h[t + 1] in reverse time order), as GEMMs over the
    rows of all steps, without materialising the previous states. With a leading network dimension
    (d_drive, h (K, T, B, H), h0 (K, B, H), lengths (K, B)): dW (K, H, H), batched GEMMs. rate: a
    nonlinearity name when the step's operand is f(state) ("voltage"): h and h0 are replaced by
    rates(h), f(h0)."""
    if rate is not None:
        h, h0 = rates(h, rate, lengths), activation(rate)(h0)
    if h.dim() == 4:
        return _network_weight_gradient(d_drive, h, h0, lengths, reverse)
    hidden, steps = h.shape[-1], h.shape[0]
    if not reverse:  # step t reads h[t - 1]; the first, h0
        dw = d_drive[0].t() @ h0
        d_rows, h_rows, later = d_drive[1:], h[:-1], torch.arange(1, steps)
    else:  # step t reads h[t + 1]; each row's first, at time lengths[b] - 1 (or T - 1), h0
        first = steps - 1 if lengths is None else (lengths - 1, torch.arange(h.shape[1], device=h.device))
        dw = d_drive[first].t() @ h0
        d_rows, h_rows, later = d_drive[:-1], h[1:], torch.arange(1, steps) - 1
    if steps == 1:
        return dw
    d_rows, h_rows = d_rows.reshape(-1, hidden), h_rows.reshape(-1, hidden)
    if lengths is not None and h.device.type == "cpu" and not torch.compiler.is_compiling():
        # Past its length a row's d_drive is zero (and in reverse order so is h at t + 1 = lengths[b]):
        # gathering the pairs still running first costs less than the GEMM rows it saves. (Not on a
        # GPU, where the row count would cost a synchronisation, nor under torch.compile, which would
        # see a data-dependent shape; there the zeros make the full GEMM exact.)
        bound = lengths if not reverse else lengths - 1
        running = (later.unsqueeze(1) < bound).flatten().nonzero().squeeze(1)
        d_rows, h_rows = d_rows.index_select(0, running), h_rows.index_select(0, running)
    return dw.addmm(d_rows.t(), h_rows)


def _network_weight_gradient(d_drive, h, h0, lengths, reverse):
    """weight_gradient of K networks at once: (K, H, H) from two bmm's over each network's T*B rows
    (past a row's length its d_drive is zero, so the full GEMM is exact)."""
    count, steps, batch, hidden = h.shape
    if lengths is not None and h.device.type == "cpu" and not torch.compiler.is_compiling():
        # Network by network over its own running rows, as a lone call of that network computes it: a
        # GEMM over the padded T*B rows adds only zeros but sums in another order, and a network trained
        # in an ensemble must end where it would alone, to the bit (chaotic training amplifies the last
        # bit to percent-level differences within a few hundred steps).
        return torch.stack([weight_gradient(d_drive[k], h[k], h0[k], lengths[k], reverse) for k in range(count)])
    if not reverse:
        dw = torch.bmm(d_drive[:, 0].transpose(1, 2), h0)
        d_rows, h_rows = d_drive[:, 1:], h[:, :-1]
    else:
        if lengths is None:
            first = d_drive[:, steps - 1]
        else:
            nets = torch.arange(count, device=h.device).unsqueeze(1)
            first = d_drive[nets, lengths.to(h.device) - 1, torch.arange(batch, device=h.device)]
        dw = torch.bmm(first.transpose(1, 2), h0)
        d_rows, h_rows = d_drive[:, :-1], h[:, 1:]
    if steps == 1:
        return dw
    d_rows, h_rows = d_rows.reshape(count, -1, hidden), h_rows.reshape(count, -1, hidden)
    return dw.baddbmm(d_rows.transpose(1, 2), h_rows)


recurrence.register_autograd(_backward, setup_context=_setup_context)


def _backward_setup_context(ctx, inputs, output):
    ctx.backend = inputs[8]


def second_derivative_error(backend: str) -> RuntimeError:
    """The error raised where the backward kernels of a compiled backend would be differentiated."""
    return RuntimeError(f"leaky_rnn: gradients of gradients (create_graph=True) are not supported by the "
                        f"{backend!r} backend; use backend='reference', which supports them")


def _double_backward(ctx, grad_d_drive, grad_dh0, grad_d_alpha):
    raise second_derivative_error(ctx.backend)


# The compiled backward kernels are not differentiable: a second derivative through them raises,
# naming the backend that has one.
recurrence_backward.register_autograd(_double_backward, setup_context=_backward_setup_context)


@recurrence.register_vmap
def _recurrence_vmap(info, in_dims, u, h0, w, alpha, nonlinearity, placement, backend, precision, save_drive,
                     lengths=None, reverse=False):
    """torch.func.vmap of the op: its mapped networks (times any K of the call's own) as one ensemble."""
    tensors, unflatten = as_ensemble(info.batch_size, in_dims[:4] + in_dims[9:10], (u, h0, w, alpha, lengths))
    h, drive = recurrence(*tensors[:4], nonlinearity, placement, backend, precision, save_drive, tensors[4], reverse)
    return (unflatten(h), unflatten(drive)), (0, 0)


@recurrence_backward.register_vmap
def _recurrence_backward_vmap(info, in_dims, grad_h, h, h0, drive, w, alpha, nonlinearity, placement, backend,
                              precision, lengths=None, reverse=False):
    tensors, unflatten = as_ensemble(info.batch_size, in_dims[:6] + in_dims[10:11],
                                     (grad_h, h, h0, drive, w, alpha, lengths))
    results = recurrence_backward(*tensors[:6], nonlinearity, placement, backend, precision, tensors[6], reverse)
    return tuple(unflatten(r) for r in results), (0, 0, 0)
