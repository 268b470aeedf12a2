"""LeakyRNNCell, the functional step, float64 gradchecks of the new paths, gradients of gradients."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import timescale_kernels as tk
from timescale_kernels.ops.step import leaky_rnn_step

from helpers import rel_err

SMALL_BACKENDS = tk.available_backends()  # triton runs under the interpreter on the CPU


@pytest.mark.parametrize("backend", SMALL_BACKENDS)
@pytest.mark.parametrize("placement", ["outside", "inside"])
@pytest.mark.parametrize("nonlinearity", ["leaky_relu", "tanh", "sigmoid"])
def test_cell_equals_one_step_of_the_op(backend, placement, nonlinearity):
    torch.manual_seed(0)
    cell = tk.LeakyRNNCell(3, 5, nonlinearity=nonlinearity, placement=placement, tau_init=(1.0, 4.0))
    x, h = torch.randn(4, 3), torch.randn(4, 5)
    got = cell(x, h)
    tensors = [p.detach().clone().requires_grad_(True) for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih,
                                                                 cell.bias_hh, cell.tau)]
    want, want_n = tk.leaky_rnn(x.unsqueeze(0), h, *tensors, nonlinearity=nonlinearity, placement=placement,
                                backend=backend)
    assert rel_err(got, want[0]) <= 1e-5 and rel_err(got, want_n) <= 1e-5
    g = torch.randn(4, 5)
    (got * g).sum().backward()
    (want[0] * g).sum().backward()
    for p, q in zip((cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, cell.tau), tensors):
        assert rel_err(p.grad, q.grad) <= 1e-5


def test_cell_equals_torch_rnn_cell_and_unrolls_to_leaky_rnn():
    torch.manual_seed(1)
    ref = nn.RNNCell(3, 6, nonlinearity="relu")
    cell = tk.LeakyRNNCell.from_torch_rnn_cell(ref)
    x, h = torch.randn(5, 3), torch.randn(5, 6)
    assert rel_err(cell(x, h), ref(x, h)) <= 1e-6
    assert rel_err(cell(x[0]), ref(x[0])) <= 1e-6 and cell(x[0]).shape == (6,)
    mask = (torch.rand(6, 6) > 0.4)
    signs = torch.tensor([1.0, -1, 1, 1, -1, 1])
    opts = dict(tau_parameterisation="softplus", connectivity_mask=mask, dale_signs=signs)
    rnn = tk.LeakyRNN(3, 6, backend="reference", **opts)
    cell = tk.LeakyRNNCell(3, 6, **opts)
    cell.load_state_dict(rnn.state_dict())
    xs = torch.randn(7, 5, 3)
    h = torch.zeros(5, 6)
    steps = []
    for x_t in xs:
        h = cell(x_t, h)
        steps.append(h)
    assert rel_err(torch.stack(steps), rnn(xs)[0]) <= 1e-6


def test_cell_bad_inputs():
    cell = tk.LeakyRNNCell(3, 5)
    with pytest.raises(ValueError, match=r"hx: expected shape \(4, 5\); got \(4, 6\)"):
        cell(torch.randn(4, 3), torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"input: expected"):
        cell(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="input_size"):
        tk.LeakyRNNCell(0, 5)
    with pytest.raises(ValueError, match="x_t"):
        leaky_rnn_step(torch.randn(3), torch.randn(1, 5), cell.weight_ih, cell.weight_hh, None, None, cell.tau)
    with pytest.raises(ValueError, match="drive_noise"):
        leaky_rnn_step(torch.randn(4, 3), torch.randn(4, 5), cell.weight_ih, cell.weight_hh, None, None, cell.tau,
                       drive_noise=torch.randn(4, 6))


def _double(shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).requires_grad_(True)


def test_step_gradcheck_and_gradgradcheck():
    torch.manual_seed(2)
    args = (_double((3, 2)), _double((3, 4)), _double((4, 2)), _double((4, 4), 0.5), _double((4,)), _double((4,)),
            (torch.rand(4, dtype=torch.float64) * 3 + 1.2).requires_grad_(True))
    for placement in ("outside", "inside"):
        def step(*a):
            return leaky_rnn_step(*a, nonlinearity="tanh", placement=placement)
        assert torch.autograd.gradcheck(step, args)
        assert torch.autograd.gradgradcheck(step, args)


def test_jacobian_with_torch_func():
    torch.manual_seed(3)
    cell = tk.LeakyRNNCell(2, 5, nonlinearity="tanh", dtype=torch.float64)
    x, h = torch.randn(2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    jac = torch.func.jacrev(lambda s: cell(x, s))(h)
    eps = 1e-6
    numeric = torch.stack([(cell(x, h + eps * e) - cell(x, h - eps * e)) / (2 * eps)
                           for e in torch.eye(5, dtype=torch.float64)], 1)
    assert jac.shape == (5, 5) and rel_err(jac, numeric) <= 1e-7


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_gradcheck_layers_directions_lengths(backend, with_lengths):
    if backend not in tk.available_backends():
        pytest.skip(f"{backend} is not available")
    torch.manual_seed(4)
    m = tk.LeakyRNN(2, 3, num_layers=2, bidirectional=True, tau_init=(1.5, 3.0), nonlinearity="tanh",
                    backend=backend, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    x, h0 = _double((4, 3, 2)), _double((4, 3, 3))
    lengths = torch.tensor([2, 4, 1]) if with_lengths else None

    def run(x, h0, *params):
        state = dict(zip(names, params))
        out, h_n = torch.func.functional_call(m, state, (x, h0), {"lengths": lengths})
        return out, h_n

    assert torch.autograd.gradcheck(run, (x, h0, *[p.detach().clone().requires_grad_(True)
                                                   for p in m.parameters()]))


@pytest.mark.parametrize("opts", [
    dict(tau_parameterisation="softplus"),
    dict(tau_parameterisation="sigmoid", tau_bounds=(1.0, 5.0)),
    dict(dale_signs=torch.tensor([1.0, -1.0, 1.0]), connectivity_mask=torch.tensor([[0, 1, 1], [1, 0, 0], [1, 1, 0]])),
    dict(learn_initial_state=True),
])
def test_gradcheck_transforms(opts):
    torch.manual_seed(5)
    m = tk.LeakyRNN(2, 3, backend="reference", dtype=torch.float64, **opts)
    names = [n for n, _ in m.named_parameters()]
    x = _double((4, 2, 2))

    def run(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))[0]

    assert torch.autograd.gradcheck(run, (x, *[p.detach().clone().requires_grad_(True) for p in m.parameters()]))


def test_gradcheck_packed_sequence():
    torch.manual_seed(6)
    m = tk.LeakyRNN(2, 3, num_layers=2, bidirectional=True, backend="reference", dtype=torch.float64)

    def run(x):
        return m(pack_padded_sequence(x, torch.tensor([1, 4, 3]), enforce_sorted=False))[0].data

    assert torch.autograd.gradcheck(run, (_double((4, 3, 2)),))


def test_gradients_of_gradients_on_the_reference():
    torch.manual_seed(7)
    m = tk.LeakyRNN(2, 3, num_layers=2, bidirectional=True, nonlinearity="tanh", backend="reference",
                    dtype=torch.float64)
    x = _double((4, 2, 2))
    assert torch.autograd.gradgradcheck(lambda x: m(x)[0], (x,))


@pytest.mark.parametrize("backend", [b for b in SMALL_BACKENDS if b != "reference"])
def test_gradients_of_gradients_on_compiled_backends_raise(backend):
    torch.manual_seed(8)
    m = tk.LeakyRNN(2, 3, nonlinearity="tanh", backend=backend)
    x = torch.randn(4, 2, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(m(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="reference"):
        torch.autograd.grad(grad.sum(), m.weight_hh)


@pytest.mark.parametrize("backend", [b for b in SMALL_BACKENDS if b == "cpu"])
def test_torch_func_grad_through_the_cpu_backend(backend):
    """torch.func.grad over functional_call of a LeakyRNN on the cpu backend (the op's eager autograd
    Function keeps forward and setup_context apart) equals the reference backend's. (The triton
    launchers read raw data pointers, which torch.func's wrapped tensors do not have.)"""
    torch.manual_seed(9)
    fast = tk.LeakyRNN(1, 8, nonlinearity="tanh", backend=backend)
    slow = tk.LeakyRNN(1, 8, nonlinearity="tanh", backend="reference")
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(5, 3, 1)
    params = {k: v.detach() for k, v in fast.named_parameters()}

    def loss(model):
        return lambda p: torch.func.functional_call(model, p, (x,))[0].square().sum()
    got, want = torch.func.grad(loss(fast))(params), torch.func.grad(loss(slow))(params)
    for name in params:
        assert rel_err(got[name], want[name]) <= 1e-5, name
