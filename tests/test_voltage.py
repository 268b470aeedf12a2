"""The "voltage" placement through the public op and the modules: hx is v_0, the output f(v), h_n = v_T
(a state to continue from), float64 gradients of every argument, the stacked modules and the cell."""
import pytest
import torch

import timescale_kernels as tk
from timescale_kernels.ops.reference import activation

from helpers import GRAD_NAMES, op_args, rel_err

BACKENDS = [b for b in ("reference", "cpu") if b in tk.available_backends()]


def by_hand(args, nonlinearity):
    """The voltage recurrence written out: v_t = (1 - a) v + a (f(v) W^T + b_hh + x W_ih^T + b_ih)."""
    f, v = activation(nonlinearity), args["hx"]
    alpha = 1 / args["tau"].clamp(min=1)
    w = args["weight_hh"] * (1 - torch.eye(v.shape[1], dtype=v.dtype))
    rates = []
    for x in args["input"]:
        v = (1 - alpha) * v + alpha * (f(v) @ w.t() + args["bias_hh"] + x @ args["weight_ih"].t() + args["bias_ih"])
        rates.append(f(v))
    return torch.stack(rates), v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh", "sigmoid"])
def test_output_is_the_rate_and_h_n_the_state(backend, nonlinearity):
    args = op_args(T=7, B=3, H=11, seed=1)
    out, h_n = tk.leaky_rnn(*args.values(), nonlinearity=nonlinearity, placement="voltage", backend=backend)
    want_out, want_v = by_hand(args, nonlinearity)
    assert rel_err(out, want_out) <= 1e-5 and rel_err(h_n, want_v) <= 1e-5
    # h_n continues the sequence: two halves with h_n passed back as hx give the whole run
    first = dict(args, input=args["input"][:3])
    out1, v1 = tk.leaky_rnn(*first.values(), nonlinearity=nonlinearity, placement="voltage", backend=backend)
    second = dict(args, input=args["input"][3:], hx=v1)
    out2, v2 = tk.leaky_rnn(*second.values(), nonlinearity=nonlinearity, placement="voltage", backend=backend)
    assert rel_err(torch.cat([out1, out2]), out) <= 1e-6 and rel_err(v2, h_n) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonlinearity", ["leaky_relu", "tanh", "sigmoid"])
def test_gradcheck_float64_every_argument(backend, nonlinearity):
    args = op_args(T=4, B=2, I=2, H=5, dtype=torch.float64, tau_range=(1.2, 3.0), seed=2)
    lengths = torch.tensor([4, 2])

    def op(*tensors):
        out, h_n = tk.leaky_rnn(*tensors, nonlinearity=nonlinearity, placement="voltage", backend=backend,
                                lengths=lengths)
        return out, h_n
    assert torch.autograd.gradcheck(op, tuple(args[n] for n in GRAD_NAMES), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")
def test_stacked_bidirectional_module_matches_the_reference_backend():
    torch.manual_seed(3)
    rnn = tk.LeakyRNN(2, 9, num_layers=2, bidirectional=True, nonlinearity="tanh", placement="voltage",
                      learn_initial_state=True, backend="cpu")
    with torch.no_grad():
        rnn.initial_state.normal_()
    x, lengths = torch.randn(6, 4, 2), torch.tensor([6, 3, 1, 5])
    results = []
    for backend in ("cpu", "reference"):
        rnn.backend = backend
        out, h_n = rnn(x, lengths=lengths)
        grads = torch.autograd.grad((out ** 2).sum() + h_n.sum(), list(rnn.parameters()))
        results.append((out, h_n, grads))
    (out, h_n, grads), (out_r, h_n_r, grads_r) = results
    assert rel_err(out, out_r) <= 1e-5 and rel_err(h_n, h_n_r) <= 1e-5
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(grads, grads_r))


def test_cell_steps_give_the_module_state():
    torch.manual_seed(4)
    rnn = tk.LeakyRNN(2, 7, nonlinearity="sigmoid", placement="voltage", backend="reference")
    cell = tk.LeakyRNNCell(2, 7, nonlinearity="sigmoid", placement="voltage")
    cell.load_state_dict(rnn.state_dict())
    x, v = torch.randn(5, 3, 2), torch.randn(3, 7)
    out, h_n = rnn(x, v[None])
    for t in range(5):
        v = cell(x[t], v)
        assert rel_err(torch.sigmoid(v), out[t]) <= 1e-6
    assert rel_err(v, h_n[0]) <= 1e-6
