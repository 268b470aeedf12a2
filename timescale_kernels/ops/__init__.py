"""The functional leaky-RNN op and its backends."""
from __future__ import annotations

import warnings

import torch

from . import core
from .checks import check_choice, check_drive_noise, check_lengths, check_op_args
from .core import NONLINEARITIES, PLACEMENTS, PRECISIONS
from .reference import alpha_from_tau, leaky_rnn_reference, masked_recurrent_weight

BACKENDS = ("auto", "reference", "cpu", "triton")
_warned = set()


_availability: dict[str, bool] = {}


@torch._dynamo.assume_constant_result
def _compiled_available(name: str) -> bool:
    """Whether a compiled backend runs here; asked once per process (torch.compile treats the
    answer as a constant instead of tracing the import)."""
    if name not in _availability:
        try:
            _availability[name] = bool(core.backend_module(name).is_available())
        except ImportError:
            _availability[name] = False
    return _availability[name]


def _unavailable_reason(name: str) -> str:
    try:
        return core.backend_module(name).unavailable_reason()
    except ImportError as err:
        return str(err)


def available_backends() -> list[str]:
    """The backends that run on this machine, e.g. ['reference', 'cpu'] or ['reference', 'cpu', 'triton']."""
    return ["reference"] + [b for b in ("cpu", "triton") if _compiled_available(b)]


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that 'auto' (or an explicit name) means for tensors on device."""
    check_choice("backend", backend, BACKENDS)
    if backend != "auto":
        if backend == "cpu" and device.type != "cpu":
            raise ValueError(f"backend: 'cpu' runs on CPU tensors; got tensors on {device} "
                             "(use 'auto' or 'triton' for CUDA tensors)")
        if backend != "reference" and not _compiled_available(backend):
            raise ValueError(f"backend: {backend!r} is not available here ({_unavailable_reason(backend)}); "
                             f"available: {available_backends()}")
        return backend
    wanted = "triton" if device.type == "cuda" else "cpu"
    if device.type in ("cuda", "cpu") and _compiled_available(wanted):
        return wanted
    if wanted == "cpu":
        return "reference"  # the package said so once, at import, with the command that builds it
    _warn_once(f"fallback-{wanted}",
               f"timescale_kernels: the fast {wanted!r} backend is not available "
               f"({_unavailable_reason(wanted)}); using the slow reference loop")
    return "reference"


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """A leaky RNN with per-neuron time constants, over a whole sequence.

    Args:
        input: (T, B, I), time-major; any strides.
        hx: (B, H) initial state h_0.
        weight_ih: (H, I). weight_hh: (H, H) (its diagonal is ignored unless self_connections).
        bias_ih, bias_hh: (H,) or None.
        tau: (H,) or 0-dim; alpha = 1 / clamp(tau, min=1), so tau < 1 acts as 1 and gets no gradient.
        nonlinearity: "leaky_relu" (slope 0.01), "relu", "tanh", "sigmoid" or "identity".
        placement: "outside": h_t = f((1 - alpha) h_{t-1} + alpha drive_t) (the study's default);
            "inside": h_t = (1 - alpha) h_{t-1} + alpha f(drive_t) (the study's "mod" model);
            drive_t = h_{t-1} W^T + bias_hh + x_t weight_ih^T + bias_ih.
        self_connections: keep (and train) the diagonal of weight_hh.
        backend: "auto" (the fastest available for the tensors' device), "reference", "cpu", "triton".
        precision: "fp32" (exact); "tf32x3" (three tf32 tensor-core products per fp32 product:
            near-fp32 accuracy on tensor cores); "tf32" or "bf16" matmuls; state and accumulation
            always fp32 (all but "fp32" need the triton backend).
        lengths: (B,) integers in 1..T, or None (every row runs T steps). Row b stops after
            lengths[b] steps: later states are held (h_t = h_{t-1}), later outputs are zero (as in
            torch.nn.RNN's padded packed output) and h_n is its last valid state.
        drive_noise: (T, B, H) or None: added to each step's drive (e.g. recurrent noise).

    Returns:
        output (T, B, H) = h_1..h_T and h_n (B, H) = h_T. Gradients reach every tensor argument.
        float16 and bfloat16 tensors are computed in float32 and returned in their own dtype.
    """
    steps, batch, _, hidden = check_op_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity,
                                            placement, precision)
    if lengths is not None:
        lengths = check_lengths(lengths, steps, batch, input.device)
    if drive_noise is not None:
        check_drive_noise(drive_noise, input, hidden)
    name = resolve_backend(backend, input.device)
    if lengths is not None and name != "reference":
        # The compiled cores do not take lengths yet: the reference loop computes the same function.
        name = "reference"
    if precision != "fp32" and name != "triton":
        raise ValueError(f"precision: {precision!r} needs the triton backend; got backend {name!r} "
                         f"(the {name!r} backend computes exactly in the input dtype: use 'fp32')")
    if name == "reference":
        return leaky_rnn_reference(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau,
                                   nonlinearity, placement, self_connections, lengths, drive_noise)
    out_dtype = input.dtype
    if out_dtype in (torch.float16, torch.bfloat16):
        input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau = (
            None if t is None else t.float() for t in (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau))
    in_size = input.shape[2]
    flat = input.reshape(steps * batch, in_size)
    if bias_ih is not None and bias_hh is not None:
        u = torch.addmm(bias_ih + bias_hh, flat, weight_ih.t())
    elif bias_ih is not None or bias_hh is not None:
        u = torch.addmm(bias_ih if bias_ih is not None else bias_hh, flat, weight_ih.t())
    else:
        u = flat @ weight_ih.t()
    u = u.view(steps, batch, hidden)
    if drive_noise is not None:
        u = u + drive_noise.to(u.dtype)
    w = masked_recurrent_weight(weight_hh, self_connections)
    alpha = alpha_from_tau(tau, hidden).contiguous()
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (input, hx, weight_ih, weight_hh, bias_ih, bias_hh, tau, drive_noise))
    output, _ = core.recurrence(u, hx, w, alpha, nonlinearity, placement, name, precision, needs_grad)
    if output.dtype != out_dtype:
        output = output.to(out_dtype)
    return output, output[-1]


__all__ = ["leaky_rnn", "available_backends", "resolve_backend", "BACKENDS", "NONLINEARITIES", "PLACEMENTS",
           "PRECISIONS"]
