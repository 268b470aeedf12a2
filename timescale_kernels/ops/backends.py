"""The backends by name: which compiled module implements each, which run here, which one a call gets.

"reference" is the plain PyTorch loop of reference.py (the specification; always available).
"cpu" and "triton" are the compiled serial cores, each a module with the functions of the
compiled-backend contract (is_available, unavailable_reason, forward, backward; see core.py).
Both modules import without their compiler or runtime and then report themselves unavailable.
"""
from __future__ import annotations

import warnings

import torch

from . import cpu, triton_recurrence
from .checks import check_choice

BACKENDS = ("auto", "reference", "cpu", "triton")
COMPILED = {"cpu": cpu, "triton": triton_recurrence}

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
    wanted = "triton" if device.type == "cuda" else "cpu"
    if device.type in ("cuda", "cpu") and compiled_available(wanted):
        return wanted
    if wanted == "cpu":
        return "reference"  # cpu.py said why once, when it looked for the kernel, with the fix
    _warn_once(f"fallback-{wanted}",
               f"timescale_kernels: the fast {wanted!r} backend is not available "
               f"({unavailable_reason(wanted)}); using the slow reference loop")
    return "reference"
