"""One table per choice of the op: nonlinearities, placements, precisions.

A nonlinearity's integer code, as the C++ and Triton kernels receive it, is its index in
NONLINEARITIES; a placement's code is its index in PLACEMENTS. Nothing else spells these codes out.
"""
from __future__ import annotations

NONLINEARITIES = ("leaky_relu", "relu", "tanh", "sigmoid", "identity")
# "outside": h_t = f((1 - alpha) h_{t-1} + alpha drive_t) (the study's default); "inside":
# h_t = (1 - alpha) h_{t-1} + alpha f(drive_t) (the study's "mod"); "voltage": the state is the
# pre-activation v, v_t = (1 - alpha) v_{t-1} + alpha (f(v_{t-1}) W^T + u_t), output r_t = f(v_t)
# (PsychRNN's and nn4n's form). See reference.py for the exact loop.
PLACEMENTS = ("outside", "inside", "voltage")
PRECISIONS = ("fp32", "tf32x3", "tf32", "bf16")
LEAKY_SLOPE = 0.01  # leaky_relu's negative slope, everywhere


def nonlinearity_code(name: str) -> int:
    """The kernels' integer code of a nonlinearity (its index in NONLINEARITIES)."""
    return NONLINEARITIES.index(name)


def placement_code(name: str) -> int:
    """The kernels' integer code of a placement (its index in PLACEMENTS)."""
    return PLACEMENTS.index(name)
