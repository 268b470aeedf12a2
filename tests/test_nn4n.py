"""LeakyRNN(placement="voltage") against nn4n's CTRNN itself: from_nn4n computes the same states,
outputs and gradients, to_nn4n goes back, and options without an exact counterpart raise by name."""
import math

import pytest
import torch

import timescale_kernels as tk
from timescale_kernels.nn4n_convert import nn4n_readout

from helpers import rel_err

nn4n_model = pytest.importorskip("nn4n.model")
CTRNN = nn4n_model.CTRNN
DIMS = [3, 16, 2]
TOL = 1e-5


def per_presynaptic_ei(hidden, seed):
    """nn4n's hidden E/I mask in its (pre, post) layout: one sign per presynaptic neuron, 75% excitatory."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(hidden, generator=g) < 0.75, 1.0, -1.0)
    return signs[:, None].expand(hidden, hidden).clone()


def sparse_mask(hidden, seed, diagonal=False):
    """A 0/1 mask (pre, post), half the entries kept; the diagonal removed unless diagonal."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(hidden, hidden, generator=g) < 0.5).float()
    return mask if diagonal else mask * (1 - torch.eye(hidden))


def build(activation, biases=None, init_state="zero", ei=False, sparse=False, seed=0, **kwargs):
    """An nn4n CTRNN (alpha = dt / tau = 0.1) with a random learned initial state when init_state="learn"."""
    torch.manual_seed(seed)
    hidden = DIMS[1]
    ctrnn = CTRNN(dims=list(DIMS), tau=100, dt=10, activation=activation, biases=biases, init_state=init_state,
                  ei_masks=[None, per_presynaptic_ei(hidden, seed) if ei else None, None],
                  sparsity_masks=[None, sparse_mask(hidden, seed + 1) if sparse else None, None],
                  suppress_warnings=True, **kwargs)
    with torch.no_grad():
        ctrnn.recurrent_layer.hidden_layer.weight.mul_(3.0)  # a recurrence strong enough to matter
        if init_state == "learn":
            ctrnn.recurrent_layer.hidden_state.copy_(torch.randn(hidden))
    ctrnn.eval()
    return ctrnn


def nn4n_parameters(ctrnn):
    layer = ctrnn.recurrent_layer
    return {"weight_ih": layer.input_layer.weight, "weight_hh": layer.hidden_layer.weight,
            "bias_ih": layer.input_layer.bias, "bias_hh": layer.hidden_layer.bias,
            "initial_state": layer.hidden_state}


def run_both(ctrnn, backend):
    """(states, output, {name: gradient}) of nn4n and of from_nn4n + nn4n_readout, for the same loss."""
    x = torch.randn(25, 4, DIMS[0])
    g_out, g_states = torch.randn(25, 4, DIMS[2]), torch.randn(25, 4, DIMS[1])
    rnn, readout = tk.LeakyRNN.from_nn4n(ctrnn, backend=backend), nn4n_readout(ctrnn)
    results = []
    for model in ("nn4n", "ours"):
        xi = x.clone().requires_grad_()
        if model == "nn4n":
            output, (states,) = ctrnn(xi)
            params = nn4n_parameters(ctrnn)
        else:
            states, _ = rnn(xi)
            output = readout(states)
            params = {"weight_ih": rnn.weight_ih, "weight_hh": rnn.weight_hh, "bias_ih": rnn.bias_ih,
                      "bias_hh": rnn.bias_hh, "initial_state": rnn.initial_state}
        params = {k: v for k, v in params.items() if v is not None and v.requires_grad}
        loss = (output * g_out).sum() + (states * g_states).sum()
        grads = torch.autograd.grad(loss, [xi, *params.values()])
        results.append((states, output, dict(zip(["input", *params], grads))))
    return results


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("case", ["plain", "biases", "learned_state", "dale", "sparse", "dale_sparse_biases"])
def test_from_nn4n_matches_states_outputs_and_gradients(activation, case, backend):
    if backend not in tk.available_backends():
        pytest.skip("the C++ extension is not built")
    kwargs = {"plain": {}, "biases": dict(biases="uniform"), "learned_state": dict(init_state="learn"),
              "dale": dict(ei=True), "sparse": dict(sparse=True),
              "dale_sparse_biases": dict(ei=True, sparse=True, biases="normal", init_state="learn")}[case]
    ctrnn = build(activation, seed=len(case), **kwargs)
    (s_ref, o_ref, g_ref), (s, o, g) = run_both(ctrnn, backend)
    assert rel_err(s, s_ref) <= TOL and rel_err(o, o_ref) <= TOL
    assert set(g) == set(g_ref)
    # Where nn4n's projection holds a weight at zero (E/I clamp, sparsity), LeakyRNN gives it no
    # gradient: compare the weights that exist and are non-zero, and check the zeros.
    w = ctrnn.recurrent_layer.hidden_layer.weight.detach()
    alive = w != 0
    for name in g_ref:
        got, want = g[name], g_ref[name]
        if name == "weight_hh":
            assert torch.equal(got[~alive], torch.zeros_like(got[~alive]))
            got, want = got[alive], want[alive]
        assert rel_err(got, want) <= TOL, name


def test_the_issue_example_matches_over_25_steps():
    """CTRNN(dims=[3, 16, 2], tau=100, dt=10, relu) against tk.leaky_rnn with its weights and tau = 10."""
    ctrnn = build("relu", seed=3)
    layer = ctrnn.recurrent_layer
    x = torch.randn(25, 5, 3)
    _, (states,) = ctrnn(x)
    out, _ = tk.leaky_rnn(x, torch.zeros(5, 16), layer.input_layer.weight, layer.hidden_layer.weight,
                          layer.input_layer.bias, layer.hidden_layer.bias, torch.tensor(10.0), nonlinearity="relu",
                          placement="voltage", self_connections=True)
    assert rel_err(out, states) <= TOL


def test_preact_noise_is_drive_noise_and_sigma_rec():
    """nn4n adds alpha * sigma * N(0, 1) to v: the same draws as drive_noise = sigma * N(0, 1) give the same
    states, and from_nn4n sets sigma_rec = sigma / sqrt(2 tau)."""
    sigma = 0.3
    ctrnn = build("tanh", seed=5, preact_noise=sigma)
    ctrnn.train()
    layer = ctrnn.recurrent_layer
    x = torch.randn(10, 4, 3)
    torch.manual_seed(11)
    _, (states,) = ctrnn(x)
    torch.manual_seed(11)
    noise = torch.stack([torch.randn(4, 16) for _ in range(10)]) * sigma
    out, _ = tk.leaky_rnn(x, torch.zeros(4, 16), layer.input_layer.weight, layer.hidden_layer.weight,
                          layer.input_layer.bias, layer.hidden_layer.bias, torch.tensor(10.0), nonlinearity="tanh",
                          placement="voltage", self_connections=True, drive_noise=noise)
    assert rel_err(out, states) <= TOL
    rnn = tk.LeakyRNN.from_nn4n(ctrnn)
    assert rnn.training and math.isclose(rnn.sigma_rec * math.sqrt(2 * 10.0), sigma, rel_tol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_to_nn4n_goes_back(activation):
    torch.manual_seed(7)
    hidden = 12
    signs = torch.where(torch.rand(hidden) < 0.7, 1.0, -1.0)
    rnn = tk.LeakyRNN(3, hidden, nonlinearity=activation, placement="voltage", tau_init=4.0, learn_tau=False,
                      learn_initial_state=True, connectivity_mask=torch.rand(hidden, hidden) < 0.6, dale_signs=signs)
    with torch.no_grad():
        rnn.initial_state.normal_()
        rnn.weight_hh.mul_(4.0)
    readout = torch.nn.Linear(hidden, 2)
    ctrnn = tk.LeakyRNN.to_nn4n(rnn.eval(), readout)
    x = torch.randn(15, 5, 3)
    output, (states,) = ctrnn(x)
    ours, _ = rnn(x)
    assert rel_err(states, ours) <= TOL and rel_err(output, readout(ours)) <= TOL
    back, _ = tk.LeakyRNN.from_nn4n(ctrnn).eval()(x)
    assert rel_err(back, ours) <= TOL


@pytest.mark.parametrize("make,option", [
    (lambda: build("retanh"), "activation='retanh'"),
    (lambda: build("relu", init_state="keep"), "init_state='keep'"),
    (lambda: build("relu", postact_noise=0.1), "postact_noise"),
    (lambda: CTRNN(dims=[3, 8, 1], ei_masks=[torch.ones(3, 8), None, None], suppress_warnings=True), "ei_masks[0]"),
    (lambda: CTRNN(dims=[3, 8, 1], sparsity_masks=[torch.ones(3, 8), None, None], suppress_warnings=True),
     "sparsity_masks[0]"),
    (lambda: CTRNN(dims=[3, 8, 1], ei_masks=[None, torch.where(torch.rand(8, 8) < 0.5, 1, -1), None],
                   suppress_warnings=True), "ei_masks[1]"),
    (lambda: CTRNN(dims=[3, 8, 1], tau=5, dt=10, suppress_warnings=True), "dt/tau"),
])
def test_options_without_a_counterpart_raise_by_name(make, option):
    with pytest.raises(ValueError, match="nn4n option " + option.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")):
        tk.LeakyRNN.from_nn4n(make())


@pytest.mark.parametrize("kwargs,match", [(dict(placement="outside"), "placement='voltage'"),
                                          (dict(placement="voltage", nonlinearity="leaky_relu"), "leaky_relu"),
                                          (dict(placement="voltage", num_layers=2), "num_layers=2"),
                                          (dict(placement="voltage", nonlinearity="tanh"), "one time constant")])
def test_to_nn4n_refuses_what_nn4n_lacks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tk.LeakyRNN(3, 8, **kwargs).to_nn4n()
