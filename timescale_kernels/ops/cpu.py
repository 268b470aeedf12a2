"""The C++ CPU backend: binds the serial core in csrc/ (torch.ops.timescale_kernels_cpu).

Each thread owns blocks of (network, batch rows) for the whole sequence; each step of a block is
one direct BLAS call and one fused element-wise pass over its rows (csrc/row_blocks.h). See core.py
for the contract; every tensor may carry a leading network dimension K (an ensemble, one call).
With lengths the kernel orders each network's rows by length inside the call, so that each step
computes only the rows still running. Importing this module never fails:
without the compiled extension is_available() is False and unavailable_reason() says how to
build it.
"""
from __future__ import annotations

import importlib

import torch

from .choices import nonlinearity_code, placement_code

_BUILD_HINT = "build it with: pip install --no-build-isolation -e ."
NATIVE_REVERSE = True  # the loops run reverse time order in place (core.py flips for backends without)
ENSEMBLE = True  # K networks (a leading K on every tensor) in one call of the kernels

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


def nonlinearities() -> tuple[str, ...]:
    """The nonlinearity names the compiled kernels know, in the order of their integer codes."""
    return tuple(torch.ops.timescale_kernels_cpu.nonlinearities())


def empty_cache() -> None:
    """Frees the memory blocks the cpu backend keeps for reuse by the next call (csrc/output_pool.h):
    blocks of 8 MB and more (outputs, input projections, a stacked layer's input), at most 16 of them
    and 4 GB, as torch.cuda.empty_cache() does for CUDA's caching allocator."""
    if is_available():
        torch.ops.timescale_kernels_cpu.empty_cache()


def _check_precision(precision: str) -> None:
    # Not a name check (names are checked at the public boundary): a precision this backend lacks.
    if precision != "fp32":
        raise ValueError(f"precision: the cpu backend computes in the input dtype; got {precision!r}")


def forward(u, h0, w, alpha, nonlinearity: str, placement: str, save_drive: bool, precision: str,
            lengths: torch.Tensor | None = None, reverse: bool = False):
    """u (T, B, H), h0 (B, H), w (H, H) masked, alpha (H,), all float32 or all float64, on the CPU;
    lengths None or int64 (B,) with values in 1..T, in any order. K networks at once: a leading K on
    every tensor (u (K, T, B, H), h0 (K, B, H), w (K, H, H), alpha (K, H), lengths (K, B)).

    Returns h (T, B, H) = h_1..h_T and drive (T, B, H) (an empty tensor unless save_drive). With
    lengths, h[t, b] = h[t - 1, b] for t >= lengths[b], and drive there is unspecified. reverse
    (not with lengths): the steps read u[T-1] first and u[0] last, h[t] the state after u[t].
    """
    _check_precision(precision)
    return torch.ops.timescale_kernels_cpu.forward(
        u.contiguous(), h0.contiguous(), w.contiguous(), alpha.contiguous(), nonlinearity_code(nonlinearity),
        placement_code(placement), bool(save_drive), lengths, bool(reverse))


GRAD_LAST = True  # backward takes the gradient of the last state apart (core.py folds it in for the others)


def backward(grad_h, h, h0, drive, w, alpha, nonlinearity: str, placement: str, precision: str,
             lengths: torch.Tensor | None = None, reverse: bool = False, grad_last: torch.Tensor | None = None):
    """grad_h, h, drive (T, B, H), h0 (B, H), w (H, H), alpha (H,); lengths and reverse as in forward;
    grad_last (B, H) or None: the gradient of each row's last state, added where the loop starts (it
    passes through a row's held steps to its last one).

    grad_h may have any strides (e.g. the stride-0 expansion autograd gives for output.sum()): the
    kernel copies one (B, H) slice per step instead of materialising all of it.
    Returns d_drive (T, B, H), dh0 (B, H), d_alpha (H,); dW is left to the caller (one GEMM). With
    lengths, grad_h[t, b] is ignored and d_drive[t, b] = 0 for t >= lengths[b], and the gradient
    passes through those steps.
    """
    _check_precision(precision)
    return torch.ops.timescale_kernels_cpu.backward(
        grad_h, h.contiguous(), h0.contiguous(), drive.contiguous(), w.contiguous(), alpha.contiguous(),
        nonlinearity_code(nonlinearity), placement_code(placement), lengths, bool(reverse), grad_last)
