"""LeakyRNN and LeakyRNNCell, drop-in modules with torch.nn.RNN's and torch.nn.RNNCell's conventions."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .cell import LeakyRNNCell
from .leaky_base import ROLES, LeakyBase, check_input_features, check_size
from .ops import BACKENDS, leaky_rnn
from .ops.backends import resolve_backend
from .ops.checks import check_choice, check_lengths
from .ops.eager import concat_features
from .sequences import pack_like, unpack
from .torch_rnn import from_torch_rnn, to_torch_rnn


def _group_names(layer: int, reverse: bool, single: bool) -> dict[str, str]:
    """Registered names of one layer and direction: today's one-layer names (weight_ih, ..., tau) for a
    one-layer unidirectional module, torch.nn.RNN's (weight_ih_l0, ..., tau_l1_reverse) otherwise."""
    if single:
        return {role: role for role in ROLES}
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    return {role: role + suffix for role in ROLES}


def _alias(first: str, second: str) -> property:
    """An attribute that reads whichever of two names is registered (weight_ih <-> weight_ih_l0)."""
    def get(self):
        parametrized = getattr(self, "parametrizations", {})
        for name in (first, second):
            if name in self._parameters:
                return self._parameters[name]
            if name in self._buffers:
                return self._buffers[name]
            if name in parametrized:  # torch.nn.utils.parametrize: the tensor as the module reads it
                return parametrized[name]()
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{first}'")
    return property(get, doc=f"{first}, the same tensor as {second} (layer 0, forward direction)")


class LeakyRNN(LeakyBase):
    r"""A stack of leaky (continuous-time) RNN layers with a trainable time constant per neuron.

    Each layer and direction computes, with its own weights and time constants:

    .. math::
        \tau = g(p), \quad \alpha = 1 / \tau, \quad
        d_t = W h_{t-1} + b_{hh} + W_{ih} x_t + b_{ih} + \sigma_{rec} \sqrt{2 \tau}\, \xi_t

    placement "outside": h_t = f((1 - alpha) h_{t-1} + alpha d_t);
    placement "inside":  h_t = (1 - alpha) h_{t-1} + alpha f(d_t);
    placement "voltage" (PsychRNN's and nn4n's form): the state is the pre-activation v, d_t reads the
    rate f(v_{t-1}) in place of h_{t-1}, v_t = (1 - alpha) v_{t-1} + alpha d_t, and the output is
    r_t = f(v_t); hx, initial_state and h_n hold v (h_n = v_T: pass it back as hx to continue).
    W = |W_hh| * dale_signs[None, :] * connectivity_mask (each factor only when given; its diagonal
    is zero unless self_connections); g is the tau parameterisation; xi_t ~ N(0, 1).
    Layer k > 0 reads layer k-1's output (both directions concatenated), after dropout in training.
    With tau = 1 and self_connections this is torch.nn.RNN, layer for layer.

    Equivalent plain code for one layer and direction (reversed directions read each row's first
    lengths[b] steps backwards)::

        h = h0
        for t in range(T):
            h = leaky_rnn_step(x[t], h, *module.layer_tensors(layer, reverse), ...)

    Args:
        input_size: I. hidden_size: H.
        bias: with bias_ih and bias_hh (default True).
        batch_first: input and output as (B, T, *) instead of (T, B, *).
        nonlinearity: "leaky_relu" (slope 0.01, default), "relu", "tanh", "sigmoid", "identity".
        placement: "outside" (default), "inside" or "voltage".
        tau_init: the time constants at initialisation: a (low, high) range drawn uniformly, or a number
            (moved just inside the open range of "softplus" and "sigmoid" where it reaches a bound).
        learn_tau: tau is a Parameter (default) or a fixed buffer.
        self_connections: keep the diagonal of each weight_hh (default False: zero and untrained).
        backend: "auto", "reference", "cpu" or "triton".
        num_layers, dropout, bidirectional: as torch.nn.RNN's (keyword only).
        tau_parameterisation: how the stored tau tensor p gives the time constants:
            "clamp" tau = max(p, 1) (the study's, the default: p is tau itself);
            "softplus" tau = 1 + softplus(p); "sigmoid" tau = tau_min + (tau_max - tau_min) sigmoid(p).
        tau_bounds: (tau_min, tau_max) with 1 <= tau_min < tau_max, for "sigmoid" only.
        sigma_rec: recurrent noise (default 0): sigma_rec * sqrt(2 tau) * N(0, 1) added to each step's
            drive (PsychRNN's discretisation: the state receives sqrt(2 alpha) sigma_rec N(0, 1)).
            Drawn in training mode only (module.train()), as dropout; eval() runs without noise.
        noise_generator: the torch.Generator the noise is drawn from (None: torch's global one);
            forward(..., generator=) overrides it for one call.
        learn_initial_state: a Parameter initial_state (num_layers * num_directions, H), zeros at
            first, used (broadcast over the batch) when hx is None.
        connectivity_mask: fixed (H, H) of 0/1: weight_hh[i, j] exists only where mask[i, j] = 1.
        dale_signs: fixed (H,) of +1/-1: presynaptic neuron j excitatory or inhibitory (Dale's law);
            the signs hold through training because the stored weight enters only as |W_hh|.

    Inputs: input, hx (forward also takes lengths= and generator= by keyword)
        input: (T, B, I), (B, T, I) with batch_first, unbatched (T, I), or a PackedSequence.
        hx: (num_layers * num_directions, B, H), or (num_layers * num_directions, H) unbatched;
            None means initial_state (learn_initial_state) or zeros.
        lengths: (B,) integers in 1..T for a padded batch: row b stops after lengths[b] steps.

    Outputs: output, h_n
        output: (T, B, num_directions * H) (batch_first: (B, T, ...); unbatched: (T, ...)), or a
            PackedSequence for a packed input; zero past each row's length.
        h_n: (num_layers * num_directions, B, H): each layer's and direction's last valid state.

    Gradients of gradients (create_graph=True) need backend="reference" (or LeakyRNNCell): the
    compiled backends' backward is not itself differentiable and raises.

    Attributes:
        weight_ih_l{k}[_reverse] (H, I or num_directions * H), weight_hh_l{k}[_reverse] (H, H),
        bias_ih_l{k}[_reverse], bias_hh_l{k}[_reverse] (H,), tau_l{k}[_reverse] (H,): torch.nn.RNN's
        names and initialisation U(-1/sqrt(H), 1/sqrt(H)). A one-layer unidirectional module registers
        them as weight_ih, weight_hh, bias_ih, bias_hh, tau (the names its checkpoints use); either
        spelling reads layer 0's forward tensors and loads from a state_dict.

    Examples::

        >>> rnn = LeakyRNN(1, 64, num_layers=2, bidirectional=True, nonlinearity="tanh")
        >>> output, h_n = rnn(torch.randn(100, 8, 1))     # (100, 8, 128), (4, 8, 64)
    """

    weight_ih, weight_ih_l0 = _alias("weight_ih", "weight_ih_l0"), _alias("weight_ih_l0", "weight_ih")
    weight_hh, weight_hh_l0 = _alias("weight_hh", "weight_hh_l0"), _alias("weight_hh_l0", "weight_hh")
    bias_ih, bias_ih_l0 = _alias("bias_ih", "bias_ih_l0"), _alias("bias_ih_l0", "bias_ih")
    bias_hh, bias_hh_l0 = _alias("bias_hh", "bias_hh_l0"), _alias("bias_hh_l0", "bias_hh")
    tau, tau_l0 = _alias("tau", "tau_l0"), _alias("tau_l0", "tau")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, batch_first: bool = False,
                 nonlinearity: str = "leaky_relu", placement: str = "outside", tau_init=(1.0, 2.0),
                 learn_tau: bool = True, self_connections: bool = False, backend: str = "auto",
                 device=None, dtype=None, *, num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False,
                 tau_parameterisation: str = "clamp", tau_bounds=None, sigma_rec: float = 0.0,
                 noise_generator: torch.Generator | None = None, learn_initial_state: bool = False,
                 connectivity_mask: torch.Tensor | None = None, dale_signs: torch.Tensor | None = None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self._setup(input_size, hidden_size, bias, nonlinearity, placement, tau_init, learn_tau, self_connections,
                    tau_parameterisation, tau_bounds, sigma_rec, connectivity_mask, dale_signs, factory)
        check_size("num_layers", num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a number in [0, 1]; got {dropout!r}")
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional: expected a bool; got {bidirectional!r}")
        check_choice("backend", backend, BACKENDS)
        if dropout and num_layers == 1:
            warnings.warn(f"dropout={dropout} with num_layers=1 does nothing: dropout applies to each layer's "
                          "output but the last's", stacklevel=2)
        self.batch_first, self.backend = batch_first, backend
        self.num_layers, self.dropout, self.bidirectional = num_layers, float(dropout), bidirectional
        self.noise_generator = noise_generator
        directions = 2 if bidirectional else 1
        single = num_layers == 1 and not bidirectional
        for layer in range(num_layers):
            for reverse in range(directions):
                in_size = input_size if layer == 0 else directions * hidden_size
                self._add_group(_group_names(layer, bool(reverse), single), in_size, factory)
        if learn_initial_state:
            self.initial_state = nn.Parameter(torch.zeros(num_layers * directions, hidden_size, **factory))
        else:
            self.initial_state = None
        self.reset_parameters()

    def __setattr__(self, name, value):
        # Assigning either spelling of layer 0's forward tensors (weight_hh_l0 = Parameter(...) on a
        # one-layer module, or weight_hh on a stacked one) replaces the registered tensor.
        if "_groups" in self.__dict__ and name not in self._parameters and name not in self._buffers:
            other = name[:-3] if name.endswith("_l0") else name + "_l0"
            if other.split("_l0")[0] in ROLES and (other in self._parameters or other in self._buffers):
                name = other
        super().__setattr__(name, value)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    proj_size = 0  # torch.nn.RNN's (projections exist only for LSTMs)

    @property
    def all_weights(self) -> list[list[torch.Tensor]]:
        """torch.nn.RNN's all_weights: per layer and direction, [weight_ih, weight_hh, bias_ih, bias_hh]
        (the biases only when bias=True), the raw parameters; tau is not among them (tau_l{k}[_reverse])."""
        roles = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        return [[self._tensor(names[role]) for role in roles] for names in self._groups]

    def flatten_parameters(self) -> None:
        """Does nothing: torch.nn.RNN compacts its weights into one buffer for cuDNN here; these
        kernels read each tensor where it is. Kept so that code written for torch.nn.RNN runs."""

    def _group(self, layer: int, reverse: bool) -> dict[str, str]:
        if not (isinstance(layer, int) and 0 <= layer < self.num_layers):
            raise ValueError(f"layer: expected an int in 0..{self.num_layers - 1}; got {layer!r}")
        if reverse and not self.bidirectional:
            raise ValueError("reverse: this module is unidirectional; got reverse=True")
        return self._groups[layer * self.num_directions + int(bool(reverse))]

    def layer_tensors(self, layer: int = 0, reverse: bool = False):
        """(weight_ih, weight_hh, bias_ih, bias_hh, tau) of one layer and direction as the op receives
        them (connectivity mask and Dale's signs applied, tau through its parameterisation)."""
        return self.group_tensors(self._group(layer, reverse))

    def time_constants(self, layer: int = 0, reverse: bool = False) -> torch.Tensor:
        """The time constants (H,) one layer and direction runs with (>= 1)."""
        return self.group_time_constants(self._group(layer, reverse))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Layer 0's forward tensors load from either spelling (weight_ih or weight_ih_l0, ...).
        for role, name in self._groups[0].items():
            for other in {role, role + "_l0"} - {name}:
                if prefix + name not in state_dict and prefix + other in state_dict:
                    state_dict[prefix + name] = state_dict.pop(prefix + other)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        parts += self._option_repr()
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self.initial_state is not None:
            parts.append("learn_initial_state=True")
        return ", ".join(parts)

    def forward(self, input, hx: torch.Tensor | None = None, *, lengths: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        template = input if isinstance(input, PackedSequence) else None
        x, lengths, batched = self._time_major(input, lengths)
        h0 = self._initial_states(hx, x, batched)
        output, h_n = self._run_layers(x, h0, lengths, generator if generator is not None else self.noise_generator)
        if template is not None:
            return pack_like(output, lengths, template), h_n
        if not batched:
            return output.squeeze(1), h_n.squeeze(1)
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, h_n

    def _time_major(self, input, lengths):
        """input -> (x (T, B, I), lengths (B,) or None, batched)."""
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; got lengths as well")
            x, lengths = unpack(input)
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input: expected a torch.Tensor or a PackedSequence; got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected (T, B, {self.input_size}) or unbatched (T, {self.input_size}); "
                                 f"got shape {tuple(input.shape)}")
            batched = input.dim() == 3
            if not batched and lengths is not None:
                raise ValueError("lengths: an unbatched input (T, I) takes no lengths; got lengths")
            x = input.unsqueeze(1) if not batched else input.transpose(0, 1) if self.batch_first else input
        check_input_features(input if isinstance(input, torch.Tensor) else x, self.input_size)  # the caller's shape
        self.check_input_dtype(x)
        if lengths is not None:
            lengths = check_lengths(lengths, x.shape[0], x.shape[1], x.device)
        return x, lengths, batched

    def _initial_states(self, hx, x: torch.Tensor, batched: bool) -> torch.Tensor:
        """h0 (num_layers * num_directions, B, H)."""
        count, batch, hidden = self.num_layers * self.num_directions, x.shape[1], self.hidden_size
        if hx is None:
            if self.initial_state is not None:
                return self.initial_state.unsqueeze(1).expand(count, batch, hidden)
            return x.new_zeros(count, batch, hidden)
        want = (count, batch, hidden) if batched else (count, hidden)
        if not isinstance(hx, torch.Tensor):
            raise TypeError(f"hx: expected a torch.Tensor of shape {want}; got {type(hx).__name__} (a leaky RNN "
                            "layer has one state, not an LSTM's (h, c) pair)")
        if tuple(hx.shape) != want:
            raise ValueError(f"hx: expected shape {want}; got {tuple(hx.shape)} (num_layers * num_directions = {count} "
                             f"initial states of size {hidden}{' per batch row' if batched else ''})")
        return hx if batched else hx.unsqueeze(1)

    def _run_layers(self, x, h0, lengths, generator):
        """Every layer and direction in turn: output (T, B, num_directions * H), h_n (L * D, B, H)."""
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            outputs = []
            for reverse in range(self.num_directions):
                k = layer * self.num_directions + reverse
                out, last = self._run_direction(layer_input, h0[k], self._groups[k], bool(reverse), lengths,
                                                generator)
                outputs.append(out)
                finals.append(last)
            if len(outputs) == 1:
                layer_input = outputs[0]
            else:  # into the cpu kernels' output pool when large (no fresh pages per call)
                layer_input = concat_features(outputs, resolve_backend(self.backend, outputs[0].device))
            if self.dropout and self.training and layer + 1 < self.num_layers:
                layer_input = F.dropout(layer_input, self.dropout, True)
        return layer_input, torch.stack(finals, 0)

    def _run_direction(self, x, h0, names, reverse, lengths, generator):
        w_ih, w_hh, b_ih, b_hh, tau = self.group_tensors(names)
        noise = self.noise_for(tau, (x.shape[0], x.shape[1], self.hidden_size), generator, x)
        return leaky_rnn(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity=self.nonlinearity,
                         placement=self.placement, self_connections=self.self_connections,
                         backend=self.backend, lengths=lengths, drive_noise=noise, reverse=reverse)

    @classmethod
    def from_torch_rnn(cls, rnn: nn.RNN, **kwargs) -> "LeakyRNN":
        """A LeakyRNN computing exactly what a torch.nn.RNN computes (any num_layers, bidirectional,
        dropout, batch_first; tau = 1, fixed; self-connections kept). kwargs override those settings
        or add others (placement, backend, ...)."""
        return from_torch_rnn(cls, rnn, **kwargs)

    def to_torch_rnn(self) -> nn.RNN:
        """The equivalent torch.nn.RNN (same layers, directions, dropout, batch_first); needs every
        time constant at 1 (tau <= 1 under "clamp") and a tanh or relu nonlinearity. The connectivity
        mask, Dale's signs and the zero diagonal are applied to the weights it receives."""
        return to_torch_rnn(self)

    @classmethod
    def from_nn4n(cls, ctrnn, **kwargs) -> "LeakyRNN":
        """A LeakyRNN (placement "voltage") computing exactly what an nn4n CTRNN's recurrent layer
        computes: its output is the CTRNN's states; nn4n_convert.nn4n_readout(ctrnn) gives the readout
        as a torch.nn.Linear. Raises ValueError naming an nn4n option without an exact counterpart
        (see timescale_kernels/nn4n_convert.py). kwargs add options (backend, ...)."""
        from .nn4n_convert import from_nn4n
        return from_nn4n(cls, ctrnn, **kwargs)

    def to_nn4n(self, readout: nn.Linear | None = None):
        """The equivalent nn4n CTRNN (dt = 1, this module's tau, which must be one value), with
        readout's weights in its readout layer; needs nn4n installed, placement "voltage", one
        unidirectional layer and relu, tanh or sigmoid."""
        from .nn4n_convert import to_nn4n
        return to_nn4n(self, readout)


__all__ = ["LeakyRNN", "LeakyRNNCell"]
