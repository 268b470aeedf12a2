"""Conversion between nn4n's CTRNN (nn4n 1.1) and LeakyRNN(placement="voltage").

nn4n integrates the pre-activation v (its RecurrentLayer._recurrence), with one alpha = dt / tau:

    v_t  = (1 - alpha) v_{t-1} + alpha (r_{t-1} W_hid^T + b_hid + x_t W_in^T + b_in)
           (+ alpha * preact_noise * N(0, 1) in training mode)
    r_t  = f(v_t) (+ postact_noise * N(0, 1) in training mode);  output_t = r_t W_out^T + b_out

with r_0 = f(v_0) and v_0 zero (init_state="zero") or a learned (H,) vector ("learn"). That is
LeakyRNN's "voltage" placement with tau = tau_nn4n / dt, weight_ih = W_in, weight_hh = W_hid (the same
(post, pre) layout), bias_ih = b_in, bias_hh = b_hid, self_connections=True (nn4n keeps the diagonal
unless a sparsity mask removes it) and the readout a torch.nn.Linear (nn4n_readout). Its states
(CTRNN.forward's second result) are LeakyRNN's output.

Noise: nn4n's pre-activation noise adds alpha * sigma * N(0, 1) to v, i.e. sigma * N(0, 1) to the drive,
which is LeakyRNN's sigma_rec * sqrt(2 tau) * N(0, 1) with sigma_rec = sigma / sqrt(2 tau) (or, on the
functional op, drive_noise = sigma * N(0, 1)). Post-activation noise eps_t on r_t reaches the next step
as a drive term eps_t W^T and the readout as eps_t W_out^T: tk.leaky_rnn(..., drive_noise=) with
drive_noise[t + 1] = eps_t W^T reproduces the states (add eps_t to the output yourself); LeakyRNN has no
module setting for it, so from_nn4n raises for postact_noise > 0.

Constraints: nn4n holds Dale's law and sparsity by projecting W after each training-mode forward (a
clamp to the sign, a product with the mask); LeakyRNN reparameterises (W = |W_hh| * sign * mask). The
forward is the same. The gradients agree on every weight that exists and is non-zero; where nn4n's
projection holds an entry at zero, LeakyRNN gives it no gradient (nn4n gives one and projects the update
away again at the next training-mode forward, unless it points into the allowed sign).

Options without an exact counterpart raise ValueError naming the option: activation="retanh",
init_state="keep", postact_noise, masks on the input or readout layer, plasticity masks other than all
ones, an E/I mask whose sign is not one per presynaptic neuron, alpha = dt / tau > 1.

Imported only by LeakyRNN.from_nn4n / to_nn4n (nn4n is not needed to import timescale_kernels).
"""
from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = ("relu", "tanh", "sigmoid")  # nn4n's activations that LeakyRNN has ("retanh" it lacks)


def _refuse(option: str, why: str) -> None:
    raise ValueError(f"nn4n option {option}: {why}; LeakyRNN cannot represent it exactly")


def _check_ctrnn(ctrnn) -> None:
    """Raises for every option of ctrnn that LeakyRNN cannot reproduce exactly."""
    layer = ctrnn.recurrent_layer
    if layer.act not in ACTIVATIONS:
        _refuse(f"activation={layer.act!r}", f"LeakyRNN's nonlinearities here are {ACTIVATIONS}")
    if layer.init_state not in ("zero", "learn"):
        _refuse(f"init_state={layer.init_state!r}", "the initial state carries the last rate across calls")
    if not 0.0 < layer.alpha <= 1.0:
        _refuse(f"dt/tau = {layer.alpha}", "LeakyRNN needs alpha = dt / tau in (0, 1]")
    if ctrnn.postact_noise:
        _refuse(f"postact_noise={ctrnn.postact_noise}", "pass drive_noise[t + 1] = eps_t W^T to tk.leaky_rnn "
                "instead (see timescale_kernels.nn4n_convert)")
    for name, sub in (("input", layer.input_layer), ("hidden", layer.hidden_layer)):
        if sub.plasticity_mask is not None and not bool((sub.plasticity_mask == 1).all()):
            _refuse("plasticity_masks", f"the {name} layer's weights learn at different rates")
    if layer.input_layer.ei_mask is not None:
        _refuse("ei_masks[0]", "LeakyRNN constrains no input weights")
    if layer.input_layer.sparsity_mask is not None:
        _refuse("sparsity_masks[0]", "LeakyRNN constrains no input weights")


def _dale_signs(ei_mask: torch.Tensor | None) -> torch.Tensor | None:
    """nn4n's hidden E/I mask (post, pre) of +1/-1 -> LeakyRNN's dale_signs (H,), one per presynaptic neuron."""
    if ei_mask is None:
        return None
    signs = ei_mask[0].float()
    if not bool((ei_mask.float() == signs[None, :]).all()):
        _refuse("ei_masks[1]", "its sign differs within a presynaptic neuron's outgoing weights")
    return signs


def from_nn4n(cls, ctrnn, **kwargs):
    """A cls (LeakyRNN) computing ctrnn's recurrent layer exactly: its output is ctrnn's states
    (T, B, H); nn4n_readout(ctrnn) is the readout. kwargs add LeakyRNN options (backend, ...)."""
    _check_ctrnn(ctrnn)
    layer = ctrnn.recurrent_layer
    inp, hid = layer.input_layer, layer.hidden_layer
    hidden, in_size = hid.weight.shape[0], inp.weight.shape[1]
    tau = 1.0 / layer.alpha
    biases = (inp.bias, hid.bias)
    with_bias = any(b.requires_grad or bool(b.detach().ne(0).any()) for b in biases)
    mask = None if hid.sparsity_mask is None else hid.sparsity_mask.float()
    options = dict(bias=with_bias, nonlinearity=layer.act, placement="voltage", tau_init=tau, learn_tau=False,
                   self_connections=True, sigma_rec=float(ctrnn.preact_noise) / math.sqrt(2.0 * tau),
                   learn_initial_state=layer.init_state == "learn", connectivity_mask=mask,
                   dale_signs=_dale_signs(hid.ei_mask), dtype=hid.weight.dtype)
    rnn = cls(in_size, hidden, **{**options, **kwargs})
    with torch.no_grad():
        rnn.weight_ih.copy_(inp.weight)
        rnn.weight_hh.copy_(hid.weight)
        if with_bias:
            for ours, theirs in zip((rnn.bias_ih, rnn.bias_hh), biases):
                ours.copy_(theirs)
                ours.requires_grad_(theirs.requires_grad)
        if rnn.initial_state is not None:
            rnn.initial_state.copy_(layer.hidden_state.detach().reshape(1, hidden))
    return rnn.train(bool(ctrnn.training))


def nn4n_readout(ctrnn) -> nn.Linear:
    """ctrnn's readout layer as a torch.nn.Linear (H -> O): output = readout(states)."""
    out = ctrnn.readout_layer
    if out.ei_mask is not None or out.sparsity_mask is not None:
        _refuse("ei_masks[2] / sparsity_masks[2]", "a torch.nn.Linear readout holds no constraint")
    linear = nn.Linear(out.weight.shape[1], out.weight.shape[0], dtype=out.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(out.weight)
        linear.bias.copy_(out.bias)
    linear.bias.requires_grad_(out.bias.requires_grad)
    return linear


def _check_module(rnn) -> float:
    """The one time constant of a LeakyRNN that nn4n can hold; raises for anything else."""
    if rnn.num_layers != 1 or rnn.bidirectional:
        raise ValueError("to_nn4n: nn4n's CTRNN has one unidirectional layer; got "
                         f"num_layers={rnn.num_layers}, bidirectional={rnn.bidirectional}")
    if rnn.placement != "voltage":
        raise ValueError(f"to_nn4n: nn4n integrates the pre-activation: needs placement='voltage'; got "
                         f"{rnn.placement!r}")
    if rnn.nonlinearity not in ACTIVATIONS:
        raise ValueError(f"to_nn4n: nonlinearity {rnn.nonlinearity!r} is not one of nn4n's {ACTIVATIONS}")
    tau = rnn.time_constants().detach()
    if not bool((tau == tau[0]).all()):
        raise ValueError("to_nn4n: nn4n has one time constant for all neurons; got tau from "
                         f"{tau.min().item()} to {tau.max().item()}")
    return float(tau[0])


def _hidden_masks(rnn):
    """(sparsity mask, E/I mask) for nn4n's hidden layer, in its (pre, post) layout, or None each."""
    hidden = rnn.hidden_size
    mask = None
    if rnn.connectivity_mask is not None or not rnn.self_connections:
        mask = torch.ones(hidden, hidden) if rnn.connectivity_mask is None else rnn.connectivity_mask.float().cpu()
        if not rnn.self_connections:
            mask = mask * (1 - torch.eye(hidden))
        mask = mask.t().contiguous()
    ei = None if rnn.dale_signs is None else rnn.dale_signs.float().cpu()[:, None].expand(hidden, hidden).clone()
    return mask, ei


def to_nn4n(rnn, readout: nn.Linear | None = None):
    """An nn4n CTRNN (dt = 1, tau = the module's) computing what rnn computes, with readout's weights
    in its readout layer (None: a 1-output readout left at nn4n's initialisation)."""
    from nn4n.model import CTRNN

    tau = _check_module(rnn)
    w_ih, w_hh, b_ih, b_hh, _ = rnn.layer_tensors(0)
    hidden, in_size = w_hh.shape[0], w_ih.shape[1]
    mask, ei = _hidden_masks(rnn)
    out_size = 1 if readout is None else readout.out_features
    ctrnn = CTRNN(dims=[in_size, hidden, out_size], tau=tau, dt=1.0, activation=rnn.nonlinearity,
                  biases=["zero", "zero", "zero"] if rnn.bias else None, weights="uniform",
                  sparsity_masks=[None, mask, None], ei_masks=[None, ei, None],
                  init_state="learn" if rnn.initial_state is not None else "zero",
                  preact_noise=rnn.sigma_rec * math.sqrt(2.0 * tau), suppress_warnings=True)
    layer = ctrnn.recurrent_layer
    with torch.no_grad():  # nn4n rescales weights under E/I masks at construction: write them after
        layer.input_layer.weight.copy_(w_ih)
        w = w_hh if rnn.self_connections else w_hh * (1 - torch.eye(hidden, dtype=w_hh.dtype, device=w_hh.device))
        layer.hidden_layer.weight.copy_(w)
        if rnn.bias:
            layer.input_layer.bias.copy_(b_ih)
            layer.hidden_layer.bias.copy_(b_hh)
        if rnn.initial_state is not None:
            layer.hidden_state.copy_(rnn.initial_state[0])
        if readout is not None:
            ctrnn.readout_layer.weight.copy_(readout.weight)
            ctrnn.readout_layer.bias.copy_(readout.bias)
    if not rnn.training:
        ctrnn.eval()
    return ctrnn
