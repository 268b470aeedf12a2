"""One step of the leaky RNN as plain PyTorch: for cells, fixed points and Jacobians.

Every operation is an ordinary differentiable torch function, so the step works with
create_graph=True (gradients of gradients), torch.func.jacrev / vmap, and root finders.
It computes exactly one time step of the op (ops.leaky_rnn) and of the reference loop.
"""
from __future__ import annotations

import torch

from .checks import check_drive_noise, check_op_args, check_tensor
from .reference import activation, alpha_from_tau, masked_recurrent_weight


def leaky_rnn_step(
    x_t: torch.Tensor,
    h: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None,
    bias_hh: torch.Tensor | None,
    tau: torch.Tensor,
    *,
    nonlinearity: str = "leaky_relu",
    placement: str = "outside",
    self_connections: bool = False,
    drive_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """h_next (B, H) from x_t (B, I) and h (B, H): one step of leaky_rnn.

        alpha   = 1 / clamp(tau, min=1)
        drive   = h W^T + bias_hh + x_t weight_ih^T + bias_ih (+ drive_noise)
        outside: h_next = f((1 - alpha) h + alpha drive)
        inside:  h_next = (1 - alpha) h + alpha f(drive)
        voltage: h is the pre-activation v; drive reads f(v) in place of h (drive = f(v) W^T + ...),
                 v_next = (1 - alpha) v + alpha drive, and the rate f(v_next) is the output
                 (activation(nonlinearity)(v_next)); this returns v_next, the state to continue from.

    Args:
        x_t: (B, I). h: (B, H).
        weight_ih: (H, I). weight_hh: (H, H) (diagonal ignored unless self_connections).
        bias_ih, bias_hh: (H,) or None. tau: (H,) or 0-dim.
        nonlinearity, placement, self_connections: as in leaky_rnn.
        drive_noise: (B, H) or None, added to the drive.

    Returns:
        h_next (B, H), differentiable to any order in every argument.
    """
    if not isinstance(x_t, torch.Tensor):
        raise TypeError(f"x_t: expected a torch.Tensor of shape (B, I); got {type(x_t).__name__}")
    if x_t.dim() != 2:
        raise ValueError(f"x_t: expected shape (B, I); got {tuple(x_t.shape)}")
    check_op_args(x_t.unsqueeze(0), h, weight_ih, weight_hh, bias_ih, bias_hh, tau, nonlinearity, placement,
                  "fp32")
    if drive_noise is not None:
        check_tensor("drive_noise", drive_noise, (2,), (x_t.shape[0], weight_hh.shape[0]))
        check_drive_noise(drive_noise.unsqueeze(0), x_t.unsqueeze(0), weight_hh.shape[0])
    f = activation(nonlinearity)
    alpha = alpha_from_tau(tau, weight_hh.shape[0])
    pre = f(h) if placement == "voltage" else h
    drive = pre @ masked_recurrent_weight(weight_hh, self_connections).t() + x_t @ weight_ih.t()
    if bias_hh is not None:
        drive = drive + bias_hh
    if bias_ih is not None:
        drive = drive + bias_ih
    if drive_noise is not None:
        drive = drive + drive_noise
    if placement == "outside":
        return f((1.0 - alpha) * h + alpha * drive)
    if placement == "voltage":
        return (1.0 - alpha) * h + alpha * drive
    return (1.0 - alpha) * h + alpha * f(drive)
