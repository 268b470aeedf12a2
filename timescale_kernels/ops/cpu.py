"""The C++ CPU backend: binds the serial core in csrc/ (torch.ops.timescale_kernels_cpu).

Each time step is one BLAS GEMM plus one fused element-wise pass over torch's intra-op threads;
see core.py for the contract. Importing this module never fails: without the compiled extension
is_available() is False and unavailable_reason() says how to build it.
"""
from __future__ import annotations

import importlib

import torch

_NONLINEARITY_CODES = {"leaky_relu": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "identity": 4}
_PLACEMENT_CODES = {"outside": 0, "inside": 1}
_BUILD_HINT = "build it with: pip install --no-build-isolation -e ."

try:
    importlib.import_module("timescale_kernels._C")  # registers torch.ops.timescale_kernels_cpu
    _LOAD_ERROR: str | None = None
except (ImportError, OSError) as err:  # OSError: a stale build against another torch
    _LOAD_ERROR = f"timescale_kernels._C could not be loaded ({err}); {_BUILD_HINT}"


def is_available() -> bool:
    """True when the compiled kernels are loaded and registered."""
    return _LOAD_ERROR is None and hasattr(torch.ops.timescale_kernels_cpu, "forward")


def unavailable_reason() -> str:
    """Why is_available() is False (empty when it is True), with the command that fixes it."""
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    if not is_available():
        return f"timescale_kernels._C loaded but registered no kernels; {_BUILD_HINT}"
    return ""


def empty_cache() -> None:
    """Frees the output blocks the kernels keep for reuse by the next call (csrc/output_pool.h)."""
    if is_available():
        torch.ops.timescale_kernels_cpu.empty_cache()


def _codes(nonlinearity: str, placement: str, precision: str) -> tuple[int, int]:
    if precision != "fp32":
        raise ValueError(f"precision: the cpu backend computes in the input dtype; got {precision!r}")
    if nonlinearity not in _NONLINEARITY_CODES:
        raise ValueError(f"nonlinearity: expected one of {', '.join(map(repr, _NONLINEARITY_CODES))}; "
                         f"got {nonlinearity!r}")
    if placement not in _PLACEMENT_CODES:
        raise ValueError(f"placement: expected one of {', '.join(map(repr, _PLACEMENT_CODES))}; got {placement!r}")
    return _NONLINEARITY_CODES[nonlinearity], _PLACEMENT_CODES[placement]


def forward(u, h0, w, alpha, nonlinearity: str, placement: str, save_drive: bool, precision: str):
    """u (T, B, H), h0 (B, H), w (H, H) masked, alpha (H,), all float32 or all float64, on the CPU.

    Returns h (T, B, H) = h_1..h_T and drive (T, B, H) (an empty tensor unless save_drive).
    """
    nl, pl = _codes(nonlinearity, placement, precision)
    return torch.ops.timescale_kernels_cpu.forward(
        u.contiguous(), h0.contiguous(), w.contiguous(), alpha.contiguous(), nl, pl, bool(save_drive))


def backward(grad_h, h, h0, drive, w, alpha, nonlinearity: str, placement: str, precision: str):
    """grad_h, h, drive (T, B, H), h0 (B, H), w (H, H), alpha (H,).

    grad_h may have any strides (e.g. the stride-0 expansion autograd gives for output.sum()): the
    kernel copies one (B, H) slice per step instead of materialising all of it.
    Returns d_drive (T, B, H), dh0 (B, H), d_alpha (H,). dW is left to the caller (one GEMM).
    """
    nl, pl = _codes(nonlinearity, placement, precision)
    return torch.ops.timescale_kernels_cpu.backward(
        grad_h, h.contiguous(), h0.contiguous(), drive.contiguous(), w.contiguous(),
        alpha.contiguous(), nl, pl)
