"""The backends by name: which compiled module implements each, which run here, which one a call gets.

"reference" is the plain PyTorch loop of reference.py (the specification; always available).
"cpu" and "triton" are the compiled serial cores, each a module with the functions of the
compiled-backend contract (is_available, unavailable_reason, forward, backward; see core.py).
Both modules import without their compiler or runtime and then report themselves unavailable.

Also the record of triton kernels that failed at their first use under backend="auto" (a card
triton cannot compile for, a kernel over the card's resources, a triton bug): functional.py then
runs the call, and every later call of the same kernel key, on the reference backend, and
triton_failures() lists what happened (for `timescale-kernels info` and for bug reports).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import cpu, triton_recurrence
from .checks import check_choice

BACKENDS = ("auto", "reference", "cpu", "triton")
COMPILED = {"cpu": cpu, "triton": triton_recurrence}
# What "auto" asks for on each device type (the reference where that backend is unavailable).
AUTO_BY_DEVICE = {"cuda": "triton", "cpu": "cpu"}

_availability: dict[str, bool] = {}
_warned: set[str] = set()


@torch._dynamo.assume_constant_result
def compiled_available(name: str) -> bool:
    """Whether a compiled backend runs here; asked once per process (torch.compile treats the
    answer as a constant instead of tracing the check)."""
    if name not in _availability:
        _availability[name] = bool(COMPILED[name].is_available())
    return _availability[name]


def unavailable_reason(name: str) -> str:
    """Why a compiled backend does not run here, with the command that fixes it ('' if it does)."""
    return COMPILED[name].unavailable_reason()


def available_backends() -> list[str]:
    """The backends that run on this machine, e.g. ['reference', 'cpu'] or ['reference', 'cpu', 'triton']."""
    return ["reference"] + [name for name in COMPILED if compiled_available(name)]


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
        if backend != "reference" and not compiled_available(backend):
            raise ValueError(f"backend: {backend!r} is not available here ({unavailable_reason(backend)}); "
                             f"available: {available_backends()}")
        return backend
    wanted = AUTO_BY_DEVICE.get(device.type, "cpu")
    if device.type in AUTO_BY_DEVICE and compiled_available(wanted):
        return wanted
    if wanted == "cpu":
        return "reference"  # cpu.py said why once, when it looked for the kernel, with the fix
    _warn_once(f"fallback-{wanted}",
               f"timescale_kernels: the fast {wanted!r} backend is not available "
               f"({unavailable_reason(wanted)}); using the slow reference loop")
    return "reference"


@dataclass(frozen=True)
class TritonFailure:
    """A triton kernel that failed at its first use under backend="auto": the card (device name),
    the kernel (its function's name, or "the triton launcher" where no kernel was reached), the error
    (its type and first line) and the key of the calls that run on the reference from then on."""
    device: str
    kernel: str
    error: str
    key: tuple


_triton_failures: dict[tuple, TritonFailure] = {}
_auto_triton: set[tuple] = set()  # kernel keys whose forward "auto" ran on triton (their backward may fall back)


def kernel_key(device, dtype, nonlinearity: str, placement: str, precision: str, has_lengths: bool,
               state_shape) -> tuple:
    """What selects the triton kernels and their plan for a call: the device, the dtype computed in,
    the constexpr choices, whether lengths are given, and the state's shape (B, H) (with any leading
    dimensions), which the persistent plan and the kernels' specialisation read."""
    return (str(device), str(dtype), nonlinearity, placement, precision, bool(has_lengths), tuple(state_shape))


def note_auto_triton(key: tuple) -> None:
    """Records that "auto" ran this key's forward on triton: its backward falls back as the forward would."""
    _auto_triton.add(key)


def backward_or_reference(backend: str, key: tuple):
    """The module whose backward a call's gradient runs: COMPILED[backend], or, where "auto" chose triton
    for this key, one that runs the reference backward (reference.recurrence_reference_backward) when the
    triton kernel fails (recorded and warned once, as at the forward)."""
    if backend != "triton" or key not in _auto_triton:
        return COMPILED[backend]
    return _TritonBackwardOrReference(key)


class _TritonBackwardOrReference:
    """triton_recurrence.backward's contract; the reference's result where the triton kernel fails."""

    def __init__(self, key: tuple):
        self.key = key

    def backward(self, grad_h, h, h0, drive, w, alpha, nonlinearity, placement, precision, lengths=None):
        from .reference import recurrence_reference_backward
        if not triton_failed(self.key):
            try:
                return triton_recurrence.backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, precision,
                                                  lengths=lengths)
            except Exception as err:
                if not fall_back_from(err):
                    raise
                record_triton_failure(self.key, h.device, err)
        return recurrence_reference_backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, lengths)


def triton_failures() -> list[TritonFailure]:
    """The triton kernels that failed at first use in this process under backend="auto", oldest
    first; each such call, and every later one with the same key, ran on the reference backend.
    Empty when none failed."""
    return list(_triton_failures.values())


def triton_failed(key: tuple) -> bool:
    """Whether calls with this kernel key run on the reference (a triton kernel failed for it)."""
    return key in _triton_failures


def fall_back_from(err: BaseException) -> bool:
    """Whether a triton failure may run the call on the reference instead: a compile or launch error
    (triton's own errors, the driver's RuntimeError, a triton assertion), not a bad argument
    (ValueError, TypeError: the reference would refuse it too, e.g. a precision the card lacks) nor
    the device's memory running out (torch.OutOfMemoryError: the reference needs more)."""
    return isinstance(err, Exception) and not isinstance(err, (ValueError, TypeError, torch.OutOfMemoryError))


def record_triton_failure(key: tuple, device: torch.device, err: BaseException) -> TritonFailure:
    """Records that the triton kernels failed for key on device and warns once (a RuntimeWarning
    naming the card, the kernel and the error)."""
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} (Triton interpreter)"
    first = (str(err).strip().splitlines() or [""])[0][:300]
    failure = TritonFailure(card, _kernel_name(err), f"{type(err).__name__}: {first}", key)
    _triton_failures[key] = failure
    _warn_once(("triton-failed",) + key,
               f"timescale_kernels: triton failed in {failure.kernel} on {card} ({failure.error}); "
               "this call and later ones of the same shape run on the slow reference backend "
               "(backend='triton' raises the error instead)")
    return failure


def _kernel_name(err: BaseException) -> str:
    """The name of the innermost triton kernel (a triton KernelInterface: JITFunction, the
    interpreter's function, an autotuner) that a frame of err's traceback held; "the triton
    launcher" when none did (the error came before any kernel was reached)."""
    found = "the triton launcher"
    tb = err.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            fn = getattr(value, "fn", None)
            if type(value).__module__.startswith("triton.") and callable(fn) and hasattr(fn, "__name__"):
                found = fn.__name__
        tb = tb.tb_next
    return found
