"""The executable specification of the leaky-RNN op: a plain PyTorch loop.

Every other backend is tested against this file. Autograd provides every gradient.

    alpha   = 1 / clamp(tau, min=1)
    W       = weight_hh with a zero diagonal unless self_connections
    drive_t = h_{t-1} W^T + bias_hh + x_t weight_ih^T + bias_ih
    outside: h_t = f((1 - alpha) * h_{t-1} + alpha * drive_t)
    inside:  h_t = (1 - alpha) * h_{t-1} + alpha * f(drive_t)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .choices import LEAKY_SLOPE


def activation(name: str):
    """The element-wise nonlinearity f for a name in choices.NONLINEARITIES."""
    if name == "leaky_relu":
        return lambda z: F.leaky_relu(z, LEAKY_SLOPE)
    if name == "relu":
        return torch.relu
    if name == "tanh":
        return torch.tanh
    if name == "sigmoid":
        return torch.sigmoid
    if name == "identity":
        return lambda z: z
    raise ValueError(f"nonlinearity: unknown {name!r}")


def alpha_from_tau(tau: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """alpha (H,) = 1 / clamp(tau, min=1); tau is (H,) or 0-dim. No gradient where tau < 1."""
    alpha = 1.0 / torch.clamp(tau, min=1.0)
    return alpha.expand(hidden_size) if alpha.dim() == 0 else alpha


def masked_recurrent_weight(weight_hh: torch.Tensor, self_connections: bool) -> torch.Tensor:
    """weight_hh (H, H) (or (K, H, H), each network's) with its diagonal zeroed (and given no gradient)
    unless self_connections."""
    if self_connections:
        return weight_hh
    eye = torch.eye(weight_hh.shape[-1], dtype=torch.bool, device=weight_hh.device)
    return weight_hh.masked_fill(eye, 0.0)


def leaky_rnn_reference(
    input: torch.Tensor,
    hx: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    tau: torch.Tensor,
    nonlinearity: str = "leaky_relu",
    placement: str = "outside",
    self_connections: bool = False,
    lengths: torch.Tensor | None = None,
    drive_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The leaky RNN as a Python loop over time.

    Shapes: input (T, B, I), hx (B, H), weight_ih (H, I), weight_hh (H, H), bias_ih and bias_hh (H,)
    or None, tau (H,) or 0-dim; lengths (B,) integers in 1..T or None; drive_noise (T, B, H) or None,
    added to each step's drive. Returns output (T, B, H) = h_1..h_T and h_n (B, H) = h_T.

    With lengths, row b runs for lengths[b] steps: after that its state is held
    (h_t = h_{t-1}), its output is zero, and h_n is its last valid state.
    """
    f = activation(nonlinearity)
    hidden = weight_hh.shape[0]
    alpha = alpha_from_tau(tau, hidden)
    w = masked_recurrent_weight(weight_hh, self_connections)
    h = hx
    outputs = []
    for t, x_t in enumerate(input.unbind(0)):
        drive = h @ w.t() + x_t @ weight_ih.t()
        if bias_hh is not None:
            drive = drive + bias_hh
        if bias_ih is not None:
            drive = drive + bias_ih
        if drive_noise is not None:
            drive = drive + drive_noise[t]
        if placement == "outside":
            h_new = f((1.0 - alpha) * h + alpha * drive)
        elif placement == "inside":
            h_new = (1.0 - alpha) * h + alpha * f(drive)
        else:
            raise ValueError(f"placement: unknown {placement!r}")
        if lengths is None:
            h = h_new
            outputs.append(h)
        else:
            running = (lengths.to(h.device) > t).unsqueeze(1)
            h = torch.where(running, h_new, h)
            outputs.append(torch.where(running, h_new, torch.zeros_like(h_new)))
    output = torch.stack(outputs, 0)
    return output, h


def recurrence_reference(u, h0, w, alpha, nonlinearity, placement):
    """The serial core alone, for testing backends' cores: u (T, B, H) already holds the input
    projection and both biases; w (H, H) is already masked; alpha (H,). Returns h (T, B, H)."""
    f = activation(nonlinearity)
    h = h0
    outputs = []
    for u_t in u.unbind(0):
        drive = h @ w.t() + u_t
        if placement == "outside":
            h = f((1.0 - alpha) * h + alpha * drive)
        else:
            h = (1.0 - alpha) * h + alpha * f(drive)
        outputs.append(h)
    return torch.stack(outputs, 0)
