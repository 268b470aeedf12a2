"""The C++ CPU backend: binds the serial core in csrc/ (torch.ops.timescale_kernels_cpu).

Each thread owns blocks of (network, batch rows) for the whole sequence; each step of a block is
one direct BLAS call and one fused element-wise pass over its rows (csrc/row_blocks.h). See core.py
for the contract; every tensor may carry a leading network dimension K (an ensemble, one call).
With lengths a row past its length is held, and each step's GEMM covers only the rows around those
still running (in reverse time order with lengths, each network's rows are ordered by length
instead, csrc/loops.h).

In eager mode the whole op (alpha, the masked weight, the input projection, this loop, every gradient)
runs as one C++ call each way (csrc/whole_op.cpp, whole.py); this module's forward and backward are
the serial core that the torch.library op, torch.compile and torch.func's rules call.

The kernel is looked for once per process, at first use (the first is_available()): the prebuilt
extension timescale_kernels._C where it loads (a build ahead of time against this torch), else the
one compiled for this torch in the user's cache, compiled there first if absent (cpu_build.py). Only
where it cannot be compiled (no compiler, no ninja) do CPU runs fall back to the reference loop,
with one warning that says why and the command that fixes it. Importing this module never fails
and compiles nothing.
"""
from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass

import torch

from . import cpu_build
from .checks import use_cpu_all_finite
from .choices import nonlinearity_code, placement_code

NATIVE_REVERSE = True  # the loops run reverse time order in place (core.py flips for backends without)
PREBUILT = "timescale_kernels._C"
ENSEMBLE = True  # K networks (a leading K on every tensor) in one call of the kernels
# "voltage": the kernels write the output r = f(v) from inside the forward loop and take its gradient
# in the backward loop (not in reverse time order with lengths; core.native_rates).
VOLTAGE_RATES = True


@dataclass(frozen=True)
class KernelSource:
    """Where this process's kernel came from. origin: "prebuilt" (timescale_kernels._C), "cache"
    (compiled earlier for this torch), "compiled" (compiled by this process), "waited" (compiled by
    another process while this one waited) or "" (not loaded: error says why and how to fix it).
    prebuilt: why timescale_kernels._C was not used ('' where it was)."""
    origin: str
    path: str
    error: str
    prebuilt: str


_lock = threading.Lock()
_source: KernelSource | None = None


def _short(err: Exception, lines: int = 8) -> str:
    """An error's message cut to its last lines (a failed compile's message holds its whole log)."""
    text = str(err).strip().splitlines() or [type(err).__name__]
    tail = text[-lines:] if len(text) > lines else text
    more = f" ({cpu_build.VERBOSE_ENV}=1 shows the compiler's whole output)" if len(text) > lines else ""
    return " | ".join(line.strip() for line in tail) + more


def _find_kernel() -> KernelSource:
    try:
        module = importlib.import_module(PREBUILT)  # registers torch.ops.timescale_kernels_cpu
        return KernelSource("prebuilt", str(module.__file__), "", "")
    except ModuleNotFoundError:
        prebuilt = f"no prebuilt {PREBUILT}"
    except (ImportError, OSError) as err:  # OSError: a build against another torch
        prebuilt = f"the prebuilt {PREBUILT} did not load ({err})"
    try:
        path, how = cpu_build.load_or_compile()
    except cpu_build.BuildUnavailable as err:  # no compiler or ninja: the reference loop runs instead
        return KernelSource("", "", f"{prebuilt}, and {err}", prebuilt)
    except Exception as err:  # the compile failed (its message holds the compiler's log)
        return KernelSource("", "", f"{prebuilt}, and compiling it failed: {_short(err)}", prebuilt)
    return KernelSource(how, str(path), "", prebuilt)


def kernel_source() -> KernelSource:
    """Finds (loads, compiles) the kernel on the first call; warns once if there is none."""
    global _source
    with _lock:
        if _source is None:
            _source = _find_kernel()
            if not _source.error and hasattr(torch.ops.timescale_kernels_cpu, "all_finite"):
                use_cpu_all_finite(torch.ops.timescale_kernels_cpu.all_finite)
            if _source.error:
                warnings.warn("timescale_kernels: the C++ CPU kernel is not available, CPU runs use the slow "
                              f"reference loop ({_source.error})", RuntimeWarning, stacklevel=4)
    return _source


def is_available() -> bool:
    """True when the compiled kernels are loaded and registered (loading or compiling them first)."""
    return not kernel_source().error and hasattr(torch.ops.timescale_kernels_cpu, "forward")


def unavailable_reason() -> str:
    """Why is_available() is False (empty when it is True), with the command that fixes it."""
    source = kernel_source()
    if source.error:
        return source.error
    if not is_available():
        return f"{source.path} loaded but registered no kernels"
    return ""


def nonlinearities() -> tuple[str, ...]:
    """The nonlinearity names the compiled kernels know, in the order of their integer codes."""
    return tuple(torch.ops.timescale_kernels_cpu.nonlinearities())


def empty_cache() -> None:
    """Frees the memory blocks the cpu backend keeps for reuse by the next call (csrc/output_pool.h):
    blocks of 1 MiB and more (outputs, input projections, a stacked layer's input), at most 16 of them
    and 4 GB, as torch.cuda.empty_cache() does for CUDA's caching allocator."""
    if _source is not None and is_available():  # nothing to free (and nothing to compile) before first use
        torch.ops.timescale_kernels_cpu.empty_cache()


def _check_precision(precision: str) -> None:
    # Not a name check (names are checked at the public boundary): a precision this backend lacks.
    if precision != "fp32":
        raise ValueError(f"precision: the cpu backend computes in the input dtype; got {precision!r}")


def forward(u, h0, w, alpha, nonlinearity: str, placement: str, save_drive: bool, precision: str,
            lengths: torch.Tensor | None = None, reverse: bool = False, rates: bool = False):
    """u (T, B, H), h0 (B, H), w (H, H) masked, alpha (H,), all float32 or all float64, on the CPU;
    lengths None or int64 (B,) with values in 1..T, in any order. K networks at once: a leading K on
    every tensor (u (K, T, B, H), h0 (K, B, H), w (K, H, H), alpha (K, H), lengths (K, B)).

    Returns h (T, B, H) = h_1..h_T and drive (T, B, H) (an empty tensor unless save_drive). With
    lengths, h[t, b] = h[t - 1, b] for t >= lengths[b], and drive there is unspecified. reverse:
    the steps read u[T-1] first and u[0] last (with lengths, each row's u[lengths[b] - 1] first),
    h[t] the state after u[t].
    rates ("voltage", not in reverse with lengths): returns (h, drive, r) instead, r (T, B, H) =
    f(h), zero past each row's length, written by the forward loop.
    """
    _check_precision(precision)
    h, drive, r = torch.ops.timescale_kernels_cpu.forward(
        u.contiguous(), h0.contiguous(), w.contiguous(), alpha.contiguous(), nonlinearity_code(nonlinearity),
        placement_code(placement), bool(save_drive), lengths, bool(reverse), bool(rates))
    return (h, drive, r) if rates else (h, drive)


GRAD_LAST = True  # backward takes the gradient of the last state apart (core.py folds it in for the others)


def backward(grad_h, h, h0, drive, w, alpha, nonlinearity: str, placement: str, precision: str,
             lengths: torch.Tensor | None = None, reverse: bool = False, grad_last: torch.Tensor | None = None,
             rates: bool = False):
    """grad_h, h, drive (T, B, H), h0 (B, H), w (H, H), alpha (H,); lengths and reverse as in forward;
    grad_last (B, H) or None: the gradient of each row's last state, added where the loop starts (it
    passes through a row's held steps to its last one).

    grad_h may have any strides (e.g. the stride-0 expansion autograd gives for output.sum()): the
    kernel copies one (B, H) slice per step instead of materialising all of it.
    Returns d_drive (T, B, H), dh0 (B, H), d_alpha (H,); dW is left to the caller (one GEMM). With
    lengths, grad_h[t, b] is ignored and d_drive[t, b] = 0 for t >= lengths[b], and the gradient
    passes through those steps.
    rates (as in forward): grad_h is the gradient of r = f(h), not of h; the loop applies f'(h).
    """
    _check_precision(precision)
    return torch.ops.timescale_kernels_cpu.backward(
        grad_h, h.contiguous(), h0.contiguous(), drive.contiguous(), w.contiguous(), alpha.contiguous(),
        nonlinearity_code(nonlinearity), placement_code(placement), lengths, bool(reverse), grad_last, bool(rates))
