"""What LeakyRNN and LeakyRNNCell share: their options, parameter groups, initialisation, and the
transforms (constraints.py) that turn stored parameters into the tensors the op receives."""
from __future__ import annotations

import math

import torch
from torch import nn

from .constraints import (check_connectivity_mask, check_dale_signs, check_sigma_rec, check_tau_parameterisation,
                          constrained_weight_hh, effective_tau, parameter_from_tau, recurrent_noise,
                          tau_from_parameter)
from .ops import NONLINEARITIES, PLACEMENTS
from .ops.checks import check_choice

ROLES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau")


def check_size(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int; got {value!r}")


def check_input_features(input: torch.Tensor, input_size: int) -> None:
    """input's last dimension must be input_size; the error shows the caller's shape."""
    if input.shape[-1] != input_size:
        raise ValueError(f"input: expected input_size = {input_size} features in the last dimension; "
                         f"got shape {tuple(input.shape)}")


def check_tau_init(tau_init) -> None:
    if isinstance(tau_init, (tuple, list)):
        try:
            low, high = (float(v) for v in tau_init)
        except (TypeError, ValueError):
            raise ValueError(f"tau_init: expected a number or a (low, high) range; got {tau_init!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"tau_init: expected a finite (low, high) with low <= high; got {tau_init!r}")
    else:
        try:
            value = float(tau_init)
        except (TypeError, ValueError):
            raise ValueError(f"tau_init: expected a number or a (low, high) range; got {tau_init!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"tau_init: expected a finite number; got {tau_init!r}")


class LeakyBase(nn.Module):
    """Options and parameter groups of a leaky recurrent module (see LeakyRNN for their meaning).

    A group is one layer and direction: a dict from each role in ROLES to its registered name.
    """

    def _setup(self, input_size, hidden_size, bias, nonlinearity, placement, tau_init, learn_tau,
               self_connections, tau_parameterisation, tau_bounds, sigma_rec, connectivity_mask, dale_signs,
               factory) -> None:
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        if not isinstance(bias, bool):
            raise TypeError(f"bias: expected a bool; got {bias!r} (give num_layers and other options by keyword)")
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        check_choice("placement", placement, PLACEMENTS)
        check_tau_init(tau_init)
        self.tau_bounds = check_tau_parameterisation(tau_parameterisation, tau_bounds)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.nonlinearity, self.placement, self.tau_init = nonlinearity, placement, tau_init
        self.learn_tau, self.self_connections = learn_tau, self_connections
        self.tau_parameterisation = tau_parameterisation
        self.sigma_rec = check_sigma_rec(sigma_rec)
        like = torch.empty(0, **factory)
        # The values given, kept where they were given, so that reset_parameters can restore the buffers
        # after module.to_empty() (a module built on the meta device holds no values).
        self._fixed_given: dict[str, torch.Tensor] = {}
        for name, given, value in (
                ("connectivity_mask", connectivity_mask, check_connectivity_mask(connectivity_mask, hidden_size, like)),
                ("dale_signs", dale_signs, check_dale_signs(dale_signs, hidden_size, like))):
            if value is None:
                setattr(self, name, None)  # plain attribute: absent from state_dict, as before these options
            else:
                self.register_buffer(name, value)
                if given.device.type != "meta":
                    self._fixed_given[name] = given.detach().clone()
        self._groups: list[dict[str, str]] = []

    def _add_group(self, names: dict[str, str], in_size: int, factory) -> None:
        hidden = self.hidden_size
        self.register_parameter(names["weight_ih"], nn.Parameter(torch.empty(hidden, in_size, **factory)))
        self.register_parameter(names["weight_hh"], nn.Parameter(torch.empty(hidden, hidden, **factory)))
        for role in ("bias_ih", "bias_hh"):
            value = nn.Parameter(torch.empty(hidden, **factory)) if self.bias else None
            self.register_parameter(names[role], value)
        tau = torch.empty(hidden, **factory)
        if self.learn_tau:
            self.register_parameter(names["tau"], nn.Parameter(tau))
        else:
            self.register_buffer(names["tau"], tau)
        self._groups.append(names)

    def _tensor(self, name: str):
        """The registered tensor name as the module reads it: through its parametrization when one is
        registered (torch.nn.utils.parametrize: weight_norm, spectral_norm, ...)."""
        return getattr(self, name)

    def _stored(self, name: str):
        """The stored tensor behind name, to write into (a parametrized one's `original`)."""
        if name in self._parameters:
            return self._parameters[name]
        if name in self._buffers:
            return self._buffers[name]
        plist = getattr(self, "parametrizations", {})
        original = getattr(plist[name], "original", None) if name in plist else None
        if original is None:
            raise RuntimeError(f"{name}: parametrized without a single original tensor; set its values through "
                               "the parametrization")
        return original

    def reset_parameters(self) -> None:
        """torch.nn.RNN's initialisation U(-1/sqrt(H), 1/sqrt(H)) for weights and biases (weight_hh
        then made to obey dale_signs and connectivity_mask, its diagonal zero unless
        self_connections); tau drawn from tau_init and stored through the inverse of the
        parameterisation. Restores connectivity_mask and dale_signs to the values given (after
        to_empty(), a module built on the meta device is whole again)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, given in self._fixed_given.items():
                self._buffers[name].copy_(given)
            for names in self._groups:
                for role in ROLES[:4]:
                    p = self._stored(names[role])
                    if p is not None:
                        p.uniform_(-bound, bound)
                w = self._stored(names["weight_hh"])
                w.copy_(constrained_weight_hh(w, self.connectivity_mask, self.dale_signs))
            self.zero_diagonals()
            for names in self._groups:
                tau = self._stored(names["tau"])
                if isinstance(self.tau_init, (tuple, list)):
                    tau.uniform_(*(float(v) for v in self.tau_init))
                else:
                    tau.fill_(float(self.tau_init))
                tau.copy_(parameter_from_tau(tau, self.tau_parameterisation, self.tau_bounds))

    def zero_diagonals(self) -> None:
        """Sets each weight_hh's diagonal to zero unless self_connections: the op ignores it and it gets
        no gradient, so the stored weights then say what the network computes (all_weights,
        to_torch_rnn, analyses reading weight_hh)."""
        if self.self_connections:
            return
        with torch.no_grad():
            for names in self._groups:
                self._stored(names["weight_hh"]).fill_diagonal_(0.0)

    def check_input_dtype(self, x: torch.Tensor) -> None:
        """The input's dtype must be the parameters' (outside torch.autocast, which casts them itself)."""
        dtype = self._tensor(self._groups[0]["weight_ih"]).dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"input: dtype {x.dtype} differs from the module's parameters ({dtype}); convert the "
                            f"input (input.to({dtype})) or the module (module.to({x.dtype}))")

    def group_tensors(self, names: dict[str, str]):
        """(weight_ih, weight_hh, bias_ih, bias_hh, tau) of one group as the op receives them:
        weight_hh constrained, tau through its parameterisation."""
        w_ih, w_hh, b_ih, b_hh, p = (self._tensor(names[role]) for role in ROLES)
        w_hh = constrained_weight_hh(w_hh, self.connectivity_mask, self.dale_signs)
        return w_ih, w_hh, b_ih, b_hh, tau_from_parameter(p, self.tau_parameterisation, self.tau_bounds)

    def group_time_constants(self, names: dict[str, str]) -> torch.Tensor:
        """The time constants (H,) one group runs with (>= 1)."""
        return effective_tau(self._tensor(names["tau"]), self.tau_parameterisation, self.tau_bounds)

    def noise_for(self, tau: torch.Tensor, shape, generator, like: torch.Tensor):
        """Recurrent noise for one group's drive (see constraints.py), or None when off: noise is
        drawn only in training mode and only when sigma_rec > 0."""
        if not (self.training and self.sigma_rec > 0):
            return None
        return recurrent_noise(self.sigma_rec, tau.clamp(min=1.0), shape, generator, like)

    def _option_repr(self) -> list[str]:
        parts = [f"nonlinearity={self.nonlinearity!r}", f"placement={self.placement!r}"]
        if not self.bias:
            parts.append("bias=False")
        if not self.learn_tau:
            parts.append("learn_tau=False")
        if self.self_connections:
            parts.append("self_connections=True")
        if self.tau_parameterisation != "clamp":
            parts.append(f"tau_parameterisation={self.tau_parameterisation!r}")
        if self.tau_bounds is not None:
            parts.append(f"tau_bounds={self.tau_bounds}")
        if self.sigma_rec:
            parts.append(f"sigma_rec={self.sigma_rec}")
        if self.connectivity_mask is not None:
            parts.append("connectivity_mask=...")
        if self.dale_signs is not None:
            parts.append("dale_signs=...")
        return parts
