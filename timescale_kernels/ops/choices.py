"""One table per choice of the op: nonlinearities, placements, precisions.

A nonlinearity's integer code, as the C++ and Triton kernels receive it, is its index in
NONLINEARITIES; a placement's code is its index in PLACEMENTS. Nothing else spells these codes out.
"""
from __future__ import annotations

NONLINEARITIES = ("leaky_relu", "relu", "tanh", "sigmoid", "identity")
PLACEMENTS = ("outside", "inside")
PRECISIONS = ("fp32", "tf32x3", "tf32", "bf16")
LEAKY_SLOPE = 0.01  # leaky_relu's negative slope, everywhere


def nonlinearity_code(name: str) -> int:
    """The kernels' integer code of a nonlinearity (its index in NONLINEARITIES)."""
    return NONLINEARITIES.index(name)


def placement_code(name: str) -> int:
    """The kernels' integer code of a placement (its index in PLACEMENTS)."""
    return PLACEMENTS.index(name)
