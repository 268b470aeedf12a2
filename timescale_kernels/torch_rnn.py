"""Conversions between LeakyRNN and torch.nn.RNN (any num_layers, bidirectional, dropout, batch_first)."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .leaky_base import ROLES


def _suffix(layer: int, reverse: bool) -> str:
    return f"_l{layer}" + ("_reverse" if reverse else "")


def from_torch_rnn(cls, rnn: nn.RNN, **kwargs):
    """A cls (LeakyRNN) computing exactly what rnn computes: tau = 1 (fixed), self-connections kept,
    rnn's weights copied into every layer and direction. kwargs override the settings."""
    if not isinstance(rnn, nn.RNN):
        raise TypeError(f"rnn: expected a torch.nn.RNN; got {type(rnn).__name__}")
    if getattr(rnn, "proj_size", 0):
        raise ValueError(f"rnn: expected no projection (proj_size=0); got proj_size={rnn.proj_size}")
    ref = rnn.weight_hh_l0
    settings = dict(bias=rnn.bias, batch_first=rnn.batch_first, nonlinearity=rnn.nonlinearity, tau_init=1.0,
                    learn_tau=False, self_connections=True, device=ref.device, dtype=ref.dtype,
                    num_layers=rnn.num_layers, dropout=float(rnn.dropout), bidirectional=rnn.bidirectional)
    settings.update(kwargs)
    model = cls(rnn.input_size, rnn.hidden_size, **settings)
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            for reverse in range(2 if rnn.bidirectional else 1):
                names = model._group(layer, bool(reverse))
                for role in ROLES[:4]:
                    source = getattr(rnn, role + _suffix(layer, bool(reverse)), None)
                    target = model._stored(names[role])
                    if source is not None and target is not None:
                        target.copy_(source)
    model.zero_diagonals()  # when kwargs drop the self-connections, their weights are not kept
    return model.train(rnn.training)


def to_torch_rnn(module) -> nn.RNN:
    """The torch.nn.RNN computing what module (a LeakyRNN) computes; needs tau = 1 everywhere and a
    tanh or relu nonlinearity. Receives the weights as the op does (mask, signs, zero diagonal)."""
    if module.nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: torch.nn.RNN supports 'tanh' or 'relu'; this module has "
                         f"{module.nonlinearity!r}")
    initial = getattr(module, "initial_state", None)
    if initial is not None and bool((initial.detach() != 0).any()):
        raise ValueError("initial_state: torch.nn.RNN has no learned initial state, and this module's is not zero; "
                         "pass it as hx instead: rnn(x, module.initial_state[:, None].expand(-1, B, -1))")
    if module.sigma_rec > 0:
        warnings.warn(f"sigma_rec: torch.nn.RNN has no recurrent noise; the conversion computes this module's "
                      f"output without noise (its eval() mode), not the sigma_rec={module.sigma_rec} noise of "
                      "training mode", stacklevel=3)
    directions = module.num_directions
    ref = module.weight_hh
    rnn = nn.RNN(module.input_size, module.hidden_size, num_layers=module.num_layers,
                 nonlinearity=module.nonlinearity, bias=module.bias, batch_first=module.batch_first,
                 dropout=module.dropout, bidirectional=module.bidirectional, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for layer in range(module.num_layers):
            for reverse in range(directions):
                w_ih, w_hh, b_ih, b_hh, tau = module.layer_tensors(layer, bool(reverse))
                if bool((tau.detach() > 1).any()):
                    raise ValueError(f"tau: torch.nn.RNN has no time constant, expected tau = 1 everywhere; got "
                                     f"max tau {float(tau.detach().max()):.4g} in layer {layer}"
                                     f"{' (reverse)' if reverse else ''}")
                w_hh = w_hh.clone()
                if not module.self_connections:
                    w_hh.fill_diagonal_(0.0)
                suffix = _suffix(layer, bool(reverse))
                for role, value in zip(ROLES[:4], (w_ih, w_hh, b_ih, b_hh)):
                    if value is not None:
                        getattr(rnn, role + suffix).copy_(value)
    return rnn.train(module.training)
