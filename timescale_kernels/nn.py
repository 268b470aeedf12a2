"""LeakyRNN, a drop-in module with torch.nn.RNN's conventions."""
from __future__ import annotations

import math

import torch
from torch import nn

from .ops import BACKENDS, NONLINEARITIES, PLACEMENTS, leaky_rnn
from .ops.checks import check_choice


class LeakyRNN(nn.Module):
    r"""One layer of leaky (continuous-time) RNN with a trainable time constant per neuron.

    .. math::
        \alpha = 1 / \max(\tau, 1), \quad
        d_t = W_{hh} h_{t-1} + b_{hh} + W_{ih} x_t + b_{ih}

    placement "outside": h_t = f((1 - alpha) h_{t-1} + alpha d_t);
    placement "inside":  h_t = (1 - alpha) h_{t-1} + alpha f(d_t).
    With tau = 1 both are torch.nn.RNN's Elman update.

    Args:
        input_size: I, features per time step.
        hidden_size: H, neurons.
        bias: with bias_ih and bias_hh (default True).
        batch_first: input and output as (B, T, *) instead of (T, B, *).
        nonlinearity: "leaky_relu" (slope 0.01, default), "relu", "tanh", "sigmoid", "identity".
        placement: "outside" (default) or "inside".
        tau_init: a (low, high) range to draw each neuron's tau from uniformly, or one number.
        learn_tau: tau is a Parameter (default) or a fixed buffer.
        self_connections: keep the diagonal of weight_hh (default False: it is zero and untrained).
        backend: "auto", "reference", "cpu" or "triton".

    Inputs: input, hx
        input: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I).
        hx: (1, B, H) or (1, H) unbatched; None means zeros.

    Outputs: output, h_n
        output: (T, B, H), (B, T, H) with batch_first, or (T, H) unbatched: h_1..h_T.
        h_n: (1, B, H) or (1, H): h_T.

    Attributes:
        weight_ih (H, I), weight_hh (H, H), bias_ih (H,), bias_hh (H,): torch.nn.RNN's names and
        initialisation U(-1/sqrt(H), 1/sqrt(H)); tau (H,).
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, batch_first: bool = False,
                 nonlinearity: str = "leaky_relu", placement: str = "outside", tau_init=(1.0, 2.0),
                 learn_tau: bool = True, self_connections: bool = False, backend: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int; got {value!r}")
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        check_choice("placement", placement, PLACEMENTS)
        check_choice("backend", backend, BACKENDS)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.bias, self.batch_first = bias, batch_first
        self.nonlinearity, self.placement = nonlinearity, placement
        self.self_connections, self.backend = self_connections, backend
        self.learn_tau = learn_tau
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        tau = torch.empty(hidden_size, **factory)
        if learn_tau:
            self.tau = nn.Parameter(tau)
        else:
            self.register_buffer("tau", tau)
        self.tau_init = tau_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.RNN's initialisation for the weights; tau from tau_init."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
                if p is not None:
                    p.uniform_(-bound, bound)
            if isinstance(self.tau_init, (tuple, list)):
                low, high = (float(v) for v in self.tau_init)
                if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                    raise ValueError(f"tau_init: expected a finite (low, high) with low <= high; got {self.tau_init!r}")
                self.tau.uniform_(low, high)
            else:
                value = float(self.tau_init)
                if not math.isfinite(value):
                    raise ValueError(f"tau_init: expected a finite number; got {self.tau_init!r}")
                self.tau.fill_(value)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}", f"nonlinearity={self.nonlinearity!r}",
                 f"placement={self.placement!r}"]
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if not self.learn_tau:
            parts.append("learn_tau=False")
        if self.self_connections:
            parts.append("self_connections=True")
        return ", ".join(parts)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None):
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor; got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"input: expected (T, B, {self.input_size}) or unbatched (T, {self.input_size}); "
                             f"got shape {tuple(input.shape)}")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input: expected {self.input_size} features in the last dimension; "
                             f"got shape {tuple(input.shape)}")
        batch = input.shape[1]
        if hx is None:
            h0 = torch.zeros(batch, self.hidden_size, dtype=input.dtype, device=input.device)
        else:
            want = (1, batch, self.hidden_size) if batched else (1, self.hidden_size)
            if not isinstance(hx, torch.Tensor) or tuple(hx.shape) != want:
                got = tuple(hx.shape) if isinstance(hx, torch.Tensor) else type(hx).__name__
                raise ValueError(f"hx: expected shape {want}; got {got}")
            h0 = hx[0] if batched else hx
            h0 = h0.reshape(batch, self.hidden_size)
        output, h_n = leaky_rnn(input, h0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                                self.tau, nonlinearity=self.nonlinearity, placement=self.placement,
                                self_connections=self.self_connections, backend=self.backend)
        if not batched:
            return output.squeeze(1), h_n.view(1, self.hidden_size)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n.unsqueeze(0)

    @classmethod
    def from_torch_rnn(cls, rnn: nn.RNN, **kwargs) -> "LeakyRNN":
        """A LeakyRNN computing exactly what a one-layer, unidirectional torch.nn.RNN computes
        (tau = 1, fixed; self-connections kept)."""
        if not isinstance(rnn, nn.RNN):
            raise TypeError(f"rnn: expected a torch.nn.RNN; got {type(rnn).__name__}")
        if rnn.num_layers != 1 or rnn.bidirectional or getattr(rnn, "proj_size", 0):
            raise ValueError("rnn: expected one layer, unidirectional, no projection; got "
                             f"num_layers={rnn.num_layers}, bidirectional={rnn.bidirectional}")
        ref = rnn.weight_hh_l0
        model = cls(rnn.input_size, rnn.hidden_size, bias=rnn.bias, batch_first=rnn.batch_first,
                    nonlinearity=rnn.nonlinearity, tau_init=1.0, learn_tau=False, self_connections=True,
                    device=ref.device, dtype=ref.dtype, **kwargs)
        with torch.no_grad():
            model.weight_ih.copy_(rnn.weight_ih_l0)
            model.weight_hh.copy_(rnn.weight_hh_l0)
            if rnn.bias:
                model.bias_ih.copy_(rnn.bias_ih_l0)
                model.bias_hh.copy_(rnn.bias_hh_l0)
        return model

    def to_torch_rnn(self) -> nn.RNN:
        """The equivalent torch.nn.RNN; needs tau <= 1 everywhere and a tanh or relu nonlinearity."""
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: torch.nn.RNN supports 'tanh' or 'relu'; this module has {self.nonlinearity!r}")
        if bool((self.tau.detach() > 1).any()):
            raise ValueError(f"tau: torch.nn.RNN has no time constant, expected tau <= 1 everywhere; "
                             f"got max tau {float(self.tau.detach().max()):.4g}")
        ref = self.weight_hh
        rnn = nn.RNN(self.input_size, self.hidden_size, nonlinearity=self.nonlinearity, bias=self.bias,
                     batch_first=self.batch_first, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            rnn.weight_ih_l0.copy_(self.weight_ih)
            w = self.weight_hh.clone()
            if not self.self_connections:
                w.fill_diagonal_(0.0)
            rnn.weight_hh_l0.copy_(w)
            if self.bias:
                rnn.bias_ih_l0.copy_(self.bias_ih)
                rnn.bias_hh_l0.copy_(self.bias_hh)
        return rnn
