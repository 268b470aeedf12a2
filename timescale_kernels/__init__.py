"""timescale_kernels: fast, exact leaky RNNs with trainable per-neuron time constants.

    import timescale_kernels as tk
    rnn = tk.LeakyRNN(1, 500)                  # torch.nn.RNN's conventions
    output, h_n = rnn(x)                        # x (T, B, 1)
    tk.leaky_rnn(x, h0, w_ih, w_hh, b_ih, b_hh, tau)   # the functional op
"""
from __future__ import annotations

from .models import MultiHeadReadout
from .nn import LeakyRNN, LeakyRNNCell
from .ops import BACKENDS, NONLINEARITIES, PLACEMENTS, available_backends, empty_cache, leaky_rnn, leaky_rnn_step

__version__ = "0.1.0"

__all__ = ["LeakyRNN", "LeakyRNNCell", "MultiHeadReadout", "leaky_rnn", "leaky_rnn_step", "available_backends", "BACKENDS",
           "NONLINEARITIES", "PLACEMENTS", "empty_cache", "__version__"]
