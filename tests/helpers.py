"""What the op's tests share: the relative error, and fresh random inputs for the op and for a backend's core."""
from __future__ import annotations

import torch

GRAD_NAMES = ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64; NaN anywhere gives inf so that it never passes."""
    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    denom = b.norm().item()
    return (a - b).norm().item() / (denom if denom > 0 else 1.0)


def op_args(T=6, B=3, I=2, H=13, dtype=torch.float32, tau_range=(0.5, 3.0), seed=0, requires_grad=True) -> dict:
    """Fresh random arguments of leaky_rnn, by name and in its order: input (T, B, I), hx (B, H),
    weight_ih (H, I), weight_hh (H, H), bias_ih and bias_hh (H,), tau (H,) uniform in tau_range
    (by default on both sides of 1)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(requires_grad)
    tau = (tau_range[0] + (tau_range[1] - tau_range[0]) * torch.rand(H, generator=g, dtype=dtype))
    return dict(input=r(T, B, I), hx=r(B, H, scale=0.5), weight_ih=r(H, I, scale=0.5),
                weight_hh=r(H, H, scale=1.0 / H ** 0.5), bias_ih=r(H, scale=0.1), bias_hh=r(H, scale=0.1),
                tau=tau.requires_grad_(requires_grad))


def core_inputs(steps, batch, hidden, dtype=torch.float32, seed=0, weight_scale=1.0, device="cpu") -> dict:
    """Fresh random inputs of a backend's serial core: u (T, B, H), h0 (B, H), w (H, H) with a zero
    diagonal, alpha (H,) from tau of which a third lies below 1 (alpha = 1 there) and the rest in
    [1, 20], and an upstream gradient grad_h (T, B, H)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(steps, batch, hidden, generator=gen, dtype=dtype)
    h0 = torch.randn(batch, hidden, generator=gen, dtype=dtype)
    w = weight_scale * torch.randn(hidden, hidden, generator=gen, dtype=dtype) / hidden ** 0.5
    w.fill_diagonal_(0.0)
    tau = torch.cat([0.2 + 0.8 * torch.rand(hidden // 3, generator=gen, dtype=dtype),
                     1.0 + 19.0 * torch.rand(hidden - hidden // 3, generator=gen, dtype=dtype)])
    alpha = 1.0 / torch.clamp(tau, min=1.0)
    grad_h = torch.randn(steps, batch, hidden, generator=gen, dtype=dtype)
    tensors = dict(u=u, h0=h0, w=w, alpha=alpha, grad_h=grad_h)
    return {k: v.to(device) for k, v in tensors.items()}


def random_lengths(steps: int, batch: int, seed: int = 0) -> torch.Tensor:
    """int64 (B,) uniform in 1..T, in no order, with 1 and T among them when B >= 2."""
    lengths = torch.randint(1, steps + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    if batch >= 2:
        lengths[batch // 2] = steps
        lengths[-1] = 1
    return lengths


def drive_from_states(u: torch.Tensor, h0: torch.Tensor, h: torch.Tensor, w: torch.Tensor, nonlinearity: str,
                      placement: str) -> torch.Tensor:
    """The core's drive (T, B, H) = u + operand(h_prev) W^T, in float64, from the states h (T, B, H): the
    operand is h_prev itself, or the rate f(h_prev) for "voltage" (whose states are v)."""
    from timescale_kernels.ops.reference import activation
    h_prev = torch.cat([h0[None].double(), h.double()[:-1]])
    if placement == "voltage":
        h_prev = activation(nonlinearity)(h_prev)
    return u.double() + h_prev @ w.double().t()
