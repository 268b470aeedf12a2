"""The functional leaky-RNN op and its backends.

Read top-down: functional.py (leaky_rnn: validate, resolve the backend, run) -> core.py (the
serial core as a custom op, with its autograd) -> the backend modules named in backends.py
(cpu.py binds csrc/; triton_recurrence.py launches the Triton kernels). reference.py is the
specification every backend is tested against; choices.py holds the tables of names.
"""
from __future__ import annotations

from .backends import BACKENDS, available_backends, resolve_backend, triton_failures
from .backends import compiled_available as _compiled_available
from .backends import unavailable_reason as _unavailable_reason
from .choices import NONLINEARITIES, PLACEMENTS, PRECISIONS
from .cpu import empty_cache
from .functional import leaky_rnn
from .reference import alpha_from_tau, leaky_rnn_reference, masked_recurrent_weight
from .step import leaky_rnn_step

__all__ = ["leaky_rnn", "leaky_rnn_step", "available_backends", "resolve_backend", "BACKENDS", "NONLINEARITIES", "PLACEMENTS",
           "PRECISIONS", "alpha_from_tau", "masked_recurrent_weight", "leaky_rnn_reference", "empty_cache",
           "triton_failures"]
