"""leaky_rnn, the public op: validate the arguments, resolve the backend, run it.

The reference backend runs reference.py's loop; a compiled one runs the input projection here, as
one GEMM before the loop, then the serial core of the backend's module through core.py's op (under
torch.compile) or eager.py's autograd Function (otherwise).

Where backend="auto" resolves to triton, a kernel that fails to compile or launch at its first use
runs the call on the reference instead, with one warning, and every later call with the same
kernel key goes straight to the reference (backends.triton_failures() lists them); a backward kernel
that fails after its forward ran gives the reference's backward (backends.backward_or_reference).
"""
from __future__ import annotations

import torch

from . import whole
from .backends import fall_back_from, kernel_key, note_auto_triton, record_triton_failure, resolve_backend, triton_failed
from .checks import (check_drive_noise, check_lengths, check_network_args, check_network_lengths, check_op_args,
                     network_count, per_network)
from .core import reverse_in_time
from .eager import input_projection, run_recurrence_of_params
from .ensemble import ARG_NAMES, run_compiled_ensemble
from .reference import leaky_rnn_reference

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def leaky_rnn(
    input: torch.Tensor,
    hx: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    tau: torch.Tensor,
    *,
    nonlinearity: str = "leaky_relu",
    placement: str = "outside",
    self_connections: bool = False,
    backend: str = "auto",
    precision: str = "fp32",
    lengths: torch.Tensor | None = None,
    drive_noise: torch.Tensor | None = None,
    reverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A leaky RNN with per-neuron time constants, over a whole sequence.

    Args:
        input: (T, B, I), time-major; any strides.
        hx: (B, H) initial state h_0.
        weight_ih: (H, I). weight_hh: (H, H) (its diagonal is ignored unless self_connections).
        bias_ih, bias_hh: (H,) or None.
        tau: (H,) or 0-dim; alpha = 1 / clamp(tau, min=1), so tau < 1 acts as 1 and gets no gradient.
        nonlinearity: one of NONLINEARITIES: "leaky_relu" (slope 0.01), "relu", "tanh", "sigmoid", "identity".
        placement: "outside": h_t = f((1 - alpha) h_{t-1} + alpha drive_t) (the study's default);
            "inside": h_t = (1 - alpha) h_{t-1} + alpha f(drive_t) (the study's "mod" model);
            drive_t = h_{t-1} W^T + bias_hh + x_t weight_ih^T + bias_ih.
            "voltage" (PsychRNN's and nn4n's form): the state is the pre-activation v and the drive
            reads the rate f(v): v_t = (1 - alpha) v_{t-1} + alpha (f(v_{t-1}) W^T + bias_hh +
            x_t weight_ih^T + bias_ih); the output is r_t = f(v_t). hx is v_0 (the first step's drive
            reads f(v_0)) and h_n is v_T, the state to continue from (as torch.nn.LSTM returns c
            beside h): pass h_n back as hx to continue a sequence.
        self_connections: keep (and train) the diagonal of weight_hh.
        backend: "auto" (the fastest available for the tensors' device), "reference", "cpu", "triton".
        precision: "fp32" (exact); "tf32x3" (three tf32 tensor-core products per fp32 product:
            near-fp32 accuracy on tensor cores); "tf32" or "bf16" matmuls; state and accumulation
            always fp32 (all but "fp32" need the triton backend).
        lengths: (B,) integers in 1..T, in any order, or None (every row runs T steps). Row b stops
            after lengths[b] steps: later states are held (h_t = h_{t-1}), later outputs are zero
            (as in torch.nn.RNN's padded packed output) and h_n is its last valid state. The
            compiled backends compute only the rows still running at each step.
        drive_noise: (T, B, H) or None: added to the drive of the step that reads input[t] (e.g.
            recurrent noise).
        reverse: run the sequence backwards in time (the reverse direction of a bidirectional
            layer): the first step reads input[T-1] (with lengths, each row's input[lengths[b]-1]),
            the last reads input[0]; output[t] is the state after reading input[t] and h_n the state
            after input[0]. The same as reversing input (and drive_noise) in time within each row's
            length, running forwards and reversing the output back; the cpu backend runs it in place
            (lengths included), the others reverse the tensors around a forward run.

    Ensembles: any tensor argument may carry a leading network dimension K (input (K, T, B, I), hx
    (K, B, H), weight_ih (K, H, I), weight_hh (K, H, H), bias_ih and bias_hh (K, H), tau (K, H) or
    (K, 1), lengths (K, B), drive_noise (K, T, B, H)): K independent networks, each computing the
    equations above with its own tensors, in one call (one kernel call on the compiled backends; one
    network after another on the reference backend). A tensor without K is shared by all networks
    and its gradient is the sum over them. Outputs (K, T, B, H) and (K, B, H). torch.func.vmap over
    this function runs the mapped networks as one such call.

    Returns:
        output (T, B, H) = h_1..h_T and h_n (B, H) = h_T ("voltage": output f(v_1)..f(v_T), h_n v_T).
        Gradients reach every tensor argument.
        float16 and bfloat16 tensors are computed in float32 and returned in their own dtype.
        Under torch.autocast (for the input's device type) the op computes in float32 whatever the
        mix of dtypes autocast makes, and returns autocast's dtype, as torch.nn.RNN does there
        (float64 tensors are left alone, as autocast leaves them). An empty batch (B = 0) gives
        empty outputs. Gradients of gradients (create_graph=True) need backend="reference".
    """
    cast_to = _autocast_dtype(input)
    if cast_to is not None:
        tensors = [None if t is None else t.float() for t in (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau,
                                                               drive_noise)]
        with torch.autocast(input.device.type, enabled=False):
            output, h_n = leaky_rnn(*tensors[:7], nonlinearity=nonlinearity, placement=placement,
                                    self_connections=self_connections, backend=backend, precision=precision,
                                    lengths=lengths, drive_noise=tensors[7], reverse=reverse)
        return output.to(cast_to), h_n.to(cast_to)
    options = dict(nonlinearity=nonlinearity, placement=placement, self_connections=self_connections,
                   backend=backend, precision=precision, reverse=reverse)
    count = network_count(dict(input=input, hx=hx, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                               bias_hh=bias_hh, tau=tau, lengths=lengths, drive_noise=drive_noise))
    if count is not None:
        return _run_ensemble(count, dict(zip(ARG_NAMES, (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau,
                                                         drive_noise))), lengths, **options)
    steps, batch, _, hidden = check_op_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity,
                                            placement, precision)
    if lengths is not None:
        lengths = check_lengths(lengths, steps, batch, input.device)
    if drive_noise is not None:
        check_drive_noise(drive_noise, input, hidden)
    name = resolve_backend(backend, input.device)
    if batch == 0:
        name = "reference"  # nothing to compute: the plain loop gives the empty outputs and their gradients
    if precision != "fp32" and name != "triton":
        raise ValueError(f"precision: {precision!r} needs the triton backend; got backend {name!r} "
                         f"(the {name!r} backend computes exactly in the input dtype: use 'fp32')")
    tensors = (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau)
    if name == "reference":
        return _run_reference(tensors, nonlinearity, placement, self_connections, lengths, drive_noise, reverse)
    if backend == "auto" and name == "triton" and not torch.compiler.is_compiling():
        return _run_triton_or_reference(tensors, nonlinearity, placement, self_connections, precision, lengths,
                                        drive_noise, reverse)
    return _run_compiled(name, *tensors, nonlinearity, placement, self_connections, precision, lengths,
                         drive_noise, reverse)


def _run_triton_or_reference(tensors, nonlinearity, placement, self_connections, precision, lengths, drive_noise,
                             reverse):
    """The triton backend, chosen by "auto": on the reference instead where a kernel of the same key failed
    before, or fails now (recorded, with one warning: backends.record_triton_failure)."""
    input, hx = tensors[:2]
    key = kernel_key(input.device, torch.float32 if input.dtype in _LOW_PRECISION else input.dtype, nonlinearity,
                     placement, precision, lengths is not None, hx.shape)
    if not triton_failed(key):
        note_auto_triton(key)
        try:
            return _run_compiled("triton", *tensors, nonlinearity, placement, self_connections, precision, lengths,
                                 drive_noise, reverse)
        except Exception as err:
            if not fall_back_from(err):
                raise
            record_triton_failure(key, tensors[0].device, err)
    return _run_reference(tensors, nonlinearity, placement, self_connections, lengths, drive_noise, reverse)


def _run_reference(tensors, nonlinearity, placement, self_connections, lengths, drive_noise, reverse):
    """leaky_rnn on the reference backend; tensors = (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau)."""
    input, *rest = tensors
    if reverse:
        noise = None if drive_noise is None else reverse_in_time(drive_noise, lengths)
        output, h_n = leaky_rnn_reference(reverse_in_time(input, lengths), *rest, nonlinearity, placement,
                                          self_connections, lengths, noise)
        return reverse_in_time(output, lengths), h_n
    return leaky_rnn_reference(input, *rest, nonlinearity, placement, self_connections, lengths, drive_noise)


def _run_ensemble(count, tensors, lengths, *, nonlinearity, placement, self_connections, backend, precision,
                  reverse):
    """(output (K, T, B, H), h_n (K, B, H)) of K networks; tensors by name (ensemble.ARG_NAMES), each
    per network or shared. The reference backend runs the networks one after another (the
    specification); a compiled one runs all K in one call of its serial core."""
    tensors = per_network(tensors, count)
    steps, batch, _, _ = check_network_args(tensors, nonlinearity, placement, precision)
    device = tensors["input"].device
    if lengths is not None:
        lengths = check_network_lengths(lengths, count, steps, batch, device)
    name = resolve_backend(backend, device)
    if batch == 0:
        name = "reference"
    if name != "reference":
        if precision != "fp32" and name != "triton":
            raise ValueError(f"precision: {precision!r} needs the triton backend; got backend {name!r}")
        return run_compiled_ensemble(name, tensors, nonlinearity, placement, self_connections, precision, lengths,
                                     reverse)
    tau = tensors["tau"]
    outputs, finals = [], []
    for k in range(count):
        one = [None if tensors[n] is None else tensors[n][k] for n in ARG_NAMES]
        one[6] = tau[k, 0] if tau.shape[1] == 1 else tau[k]
        output, h_n = leaky_rnn(*one[:7], nonlinearity=nonlinearity, placement=placement,
                                self_connections=self_connections, backend="reference", precision=precision,
                                lengths=None if lengths is None else lengths[k], drive_noise=one[7], reverse=reverse)
        outputs.append(output)
        finals.append(h_n)
    return torch.stack(outputs), torch.stack(finals)


def _autocast_dtype(input) -> torch.dtype | None:
    """autocast's dtype when it is on for the input's device and the input is not float64, else None."""
    if not isinstance(input, torch.Tensor) or input.dtype == torch.float64:
        return None
    device = input.device.type
    if not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _run_compiled(backend, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity, placement,
                  self_connections, precision, lengths, drive_noise, reverse=False):
    """leaky_rnn on a compiled backend: input projection, the serial core, the output mask (on the cpu
    backend in eager mode, all of it in one C++ call each way: whole.py)."""
    out_dtype = input.dtype
    if out_dtype in _LOW_PRECISION:
        input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, drive_noise = (
            None if t is None else t.float()
            for t in (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, drive_noise))
    if whole.applies(backend, input, drive_noise, lengths, reverse):
        output, h_n = whole.run(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity, placement,
                                self_connections, lengths, reverse)
    else:
        u = _input_projection(input, weight_ih, bias_ih, bias_hh, drive_noise, backend)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, drive_noise))
        # h_n: each row's last valid state (the output is zero past it; in reverse, the state after input[0])
        output, h_n = run_recurrence_of_params(u, hx, weight_hh, tau, self_connections, nonlinearity, placement,
                                               backend, precision, needs_grad, lengths, reverse)
    if out_dtype != output.dtype:
        output, h_n = output.to(out_dtype), h_n.to(out_dtype)
    return output, h_n


def _input_projection(input, weight_ih, bias_ih, bias_hh, drive_noise, backend):
    """u (T, B, H) = x weight_ih^T + bias_ih + bias_hh (+ drive_noise), over all T*B rows at once
    (eager.input_projection)."""
    steps, batch, in_size = input.shape
    hidden = weight_ih.shape[0]
    flat = input.reshape(steps * batch, in_size)
    if bias_ih is not None and bias_hh is not None:
        bias = bias_ih + bias_hh
    else:
        bias = bias_ih if bias_ih is not None else bias_hh
    u = input_projection(flat, weight_ih, bias, backend).view(steps, batch, hidden)
    return u if drive_noise is None else u + drive_noise
