"""What PsychRNN and nn4n users expect of a leaky RNN, as transforms applied before the op.

Each function maps a stored (trainable) tensor to what the op receives; autograd differentiates the
transform, so the kernels stay unchanged.

Time constants (one table, TAU_PARAMETERISATIONS), from the stored parameter p (H,):
    "clamp"    tau = max(p, 1)                                   (the study's; no gradient where p < 1)
    "softplus" tau = 1 + softplus(p)                             (always > 1, gradient everywhere)
    "sigmoid"  tau = tau_min + (tau_max - tau_min) * sigmoid(p)  (inside (tau_min, tau_max), tau_min >= 1)

Recurrent weights, from the stored W (H, H), a fixed 0/1 connectivity mask M (H, H) and Dale's
signs s (H,) (+1 excitatory, -1 inhibitory presynaptic neuron j, i.e. column j):
    W_eff = |W| * s[None, :] * M      (either factor left out when not given)

Recurrent noise, added to each step's drive (xi ~ N(0, 1), iid over time, batch and neurons):
    noise_t = sigma_rec * sqrt(2 / alpha) * xi_t,   alpha = 1 / tau
PsychRNN's discretisation of the continuous-time noise: with alpha multiplying the drive, the state
receives sqrt(2 alpha) * sigma_rec * xi_t per step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TAU_PARAMETERISATIONS = ("clamp", "softplus", "sigmoid")
_EDGE = 1e-6  # how close to an open bound an initial tau is placed


def check_tau_parameterisation(name, bounds) -> tuple[float, float] | None:
    """Validates a parameterisation and its bounds; returns (tau_min, tau_max) for "sigmoid", else None."""
    if not isinstance(name, str) or name not in TAU_PARAMETERISATIONS:
        raise ValueError(f"tau_parameterisation: expected one of {', '.join(map(repr, TAU_PARAMETERISATIONS))}; "
                         f"got {name!r}")
    if name != "sigmoid":
        if bounds is not None:
            raise ValueError(f"tau_bounds: only the 'sigmoid' parameterisation takes bounds; got {bounds!r} "
                             f"with {name!r}")
        return None
    try:
        low, high = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"tau_bounds: expected (tau_min, tau_max) for 'sigmoid'; got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 1.0 <= low < high):
        raise ValueError(f"tau_bounds: expected finite 1 <= tau_min < tau_max; got {bounds!r}")
    return low, high


def tau_from_parameter(p: torch.Tensor, name: str, bounds) -> torch.Tensor:
    """The tau (H,) the op receives from the stored parameter p (H,); "clamp" passes p, the op clamps."""
    if name == "clamp":
        return p
    if name == "softplus":
        return 1.0 + F.softplus(p)
    low, high = bounds
    return low + (high - low) * torch.sigmoid(p)


def parameter_from_tau(tau: torch.Tensor, name: str, bounds) -> torch.Tensor:
    """The stored parameter p that gives the time constants tau (inverse of tau_from_parameter);
    values outside a parameterisation's open range are moved just inside it."""
    if name == "clamp":
        return tau.clone()
    if name == "softplus":
        excess = (tau - 1.0).clamp(min=_EDGE)
        return excess + torch.log(-torch.expm1(-excess))  # softplus^-1, stable for large excess
    low, high = bounds
    return torch.logit(((tau - low) / (high - low)).clamp(_EDGE, 1.0 - _EDGE))


def effective_tau(p: torch.Tensor, name: str, bounds) -> torch.Tensor:
    """The time constants (H,) the model runs with: tau_from_parameter, clamped at 1 as the op does."""
    return tau_from_parameter(p, name, bounds).clamp(min=1.0)


def check_connectivity_mask(mask, hidden: int, like: torch.Tensor) -> torch.Tensor | None:
    """mask (H, H) of 0/1 (bool or numeric), or None; returned as like's dtype and device."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"connectivity_mask: expected a torch.Tensor of shape ({hidden}, {hidden}); "
                        f"got {type(mask).__name__}")
    if tuple(mask.shape) != (hidden, hidden):
        raise ValueError(f"connectivity_mask: expected shape ({hidden}, {hidden}) (hidden_size squared); "
                         f"got {tuple(mask.shape)}")
    values = mask.detach().to(torch.float64)
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError("connectivity_mask: expected only 0 and 1 (or a bool tensor); got other values")
    return mask.detach().to(dtype=like.dtype, device=like.device)


def check_dale_signs(signs, hidden: int, like: torch.Tensor) -> torch.Tensor | None:
    """signs (H,) of +1 (excitatory) and -1 (inhibitory) per presynaptic neuron, or None."""
    if signs is None:
        return None
    if not isinstance(signs, torch.Tensor):
        raise TypeError(f"dale_signs: expected a torch.Tensor of shape ({hidden},); got {type(signs).__name__}")
    if tuple(signs.shape) != (hidden,):
        raise ValueError(f"dale_signs: expected shape ({hidden},) (one sign per neuron); got {tuple(signs.shape)}")
    values = signs.detach().to(torch.float64)
    if not bool((values.abs() == 1).all()):
        raise ValueError("dale_signs: expected only +1 (excitatory) and -1 (inhibitory); got other values")
    return signs.detach().to(dtype=like.dtype, device=like.device)


def constrained_weight_hh(weight_hh: torch.Tensor, mask: torch.Tensor | None,
                          signs: torch.Tensor | None) -> torch.Tensor:
    """W_eff (H, H) = |W| * signs[None, :] * mask, each factor only when given."""
    w = weight_hh
    if signs is not None:
        w = w.abs() * signs
    if mask is not None:
        w = w * mask
    return w


def check_sigma_rec(sigma_rec) -> float:
    """sigma_rec: a finite number >= 0."""
    if isinstance(sigma_rec, bool) or not isinstance(sigma_rec, (int, float)) or not math.isfinite(sigma_rec) \
            or sigma_rec < 0:
        raise ValueError(f"sigma_rec: expected a finite number >= 0; got {sigma_rec!r}")
    return float(sigma_rec)


def recurrent_noise(sigma_rec: float, tau: torch.Tensor, shape, generator: torch.Generator | None,
                    like: torch.Tensor) -> torch.Tensor:
    """noise (T, B, H) or (B, H) = sigma_rec * sqrt(2 tau) * xi, xi ~ N(0, 1) drawn from generator;
    tau (H,) or 0-dim is the effective time constant (>= 1). Gradients reach tau."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None; got {type(generator).__name__}")
    if generator is not None and generator.device.type != like.device.type:
        raise ValueError(f"generator: expected a generator on {like.device.type} (the input's device); "
                         f"got one on {generator.device}")
    xi = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    return sigma_rec * torch.sqrt(2.0 * tau) * xi
