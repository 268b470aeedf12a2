"""The cpu backend's whole op (ops/whole.py, csrc/whole_op.cpp: one C++ call each way) against the Python
path it replaces in eager mode (the input projection and eager._RecurrenceOfParams around the serial
core): the same outputs and gradients, to the bit, for one network and for ensembles, every
placement and nonlinearity, lengths, reverse time order, shared tensors, missing biases, tau shapes,
frozen tensors, float32 and float64, and with no gradient at all. Calls it does not serve (drive
noise, reverse with lengths) take the Python path; half precision is cast to float32 and served."""
import pytest
import torch

import timescale_kernels as tk
from timescale_kernels.ops import cpu, whole
from timescale_kernels.ops.core import second_derivative_error

from ensemble_helpers import NAMES, ensemble_args, loss_of
from helpers import op_args

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the C++ extension is not built")


def both_paths(monkeypatch, args, **options):
    """(output, h_n, gradients) of the whole op, then of the Python path, for the tensors in args."""
    results = []
    for served in (True, False):
        if not served:
            monkeypatch.setattr(whole, "applies", lambda *a: False)
        out, h_n = tk.leaky_rnn(*args.values(), backend="cpu", **options)
        wanting = [t for t in args.values() if t is not None and t.requires_grad]
        grads = torch.autograd.grad(loss_of(out, h_n), wanting) if wanting else ()
        results.append((out, h_n, grads))
    return results


def assert_same(results):
    (out, h_n, grads), (out_p, h_n_p, grads_p) = results
    assert torch.equal(out, out_p) and torch.equal(h_n, h_n_p)
    assert len(grads) == len(grads_p)
    for a, b in zip(grads, grads_p):
        assert torch.equal(a, b)


@pytest.mark.parametrize("placement", ["outside", "inside", "voltage"])
@pytest.mark.parametrize("nonlinearity", ["leaky_relu", "relu", "tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("lengths", [False, True])
def test_one_network_equals_the_python_path(monkeypatch, placement, nonlinearity, lengths):
    args = op_args(T=7, B=5, I=3, H=11, seed=1)
    kw = dict(lengths=torch.tensor([7, 2, 5, 1, 7]) if lengths else None)
    assert_same(both_paths(monkeypatch, args, nonlinearity=nonlinearity, placement=placement, **kw))


@pytest.mark.parametrize("placement", ["outside", "voltage"])
@pytest.mark.parametrize("options", [dict(reverse=True), dict(self_connections=True), dict(no_bias=True),
                                     dict(scalar_tau=True), dict(dtype=torch.float64), dict(in_size=1)])
def test_options_equal_the_python_path(monkeypatch, placement, options):
    options = dict(options)
    args = op_args(T=6, B=4, I=options.pop("in_size", 2), H=9, dtype=options.pop("dtype", torch.float32), seed=2)
    if options.pop("no_bias", False):
        args["bias_ih"] = None
    if options.pop("scalar_tau", False):
        args["tau"] = torch.tensor(2.5, dtype=args["input"].dtype, requires_grad=True)
    assert_same(both_paths(monkeypatch, args, nonlinearity="tanh", placement=placement, **options))


@pytest.mark.parametrize("frozen", [("input", "hx"), ("weight_hh", "tau"), ("weight_ih", "bias_ih", "bias_hh")])
def test_frozen_tensors_get_no_gradient_and_the_others_the_python_paths(monkeypatch, frozen):
    args = op_args(T=5, B=3, H=8, seed=3)
    for name in frozen:
        args[name] = args[name].detach()
    assert_same(both_paths(monkeypatch, args, nonlinearity="tanh"))


@pytest.mark.parametrize("placement", ["outside", "voltage"])
@pytest.mark.parametrize("shared", [(), ("input", "hx"), ("weight_hh",), ("tau",)])
@pytest.mark.parametrize("lengths", [False, True])
def test_an_ensemble_equals_the_python_path(monkeypatch, placement, shared, lengths):
    K, T, B = 3, 6, 4
    args = ensemble_args(K, T=T, B=B, I=2, H=7, shared=shared, dtype=torch.float32, seed=4)
    kw = dict(lengths=torch.tensor([[6, 1, 3, 6], [2, 6, 6, 5], [6, 6, 6, 6]]) if lengths else None)
    assert_same(both_paths(monkeypatch, args, nonlinearity="tanh", placement=placement, **kw))


def test_an_ensemble_with_tau_per_network_of_one_value(monkeypatch):
    args = ensemble_args(2, T=4, B=3, H=6, dtype=torch.float32, seed=5)
    args["tau"] = (1.0 + 3.0 * torch.rand(2, 1)).requires_grad_()
    assert_same(both_paths(monkeypatch, args, nonlinearity="tanh", reverse=True))


def test_without_gradients_the_forward_alone_equals_the_python_path(monkeypatch):
    args = op_args(T=6, B=3, H=10, seed=6, requires_grad=False)
    lengths = torch.tensor([6, 2, 4])
    for placement in ("outside", "voltage"):
        assert_same(both_paths(monkeypatch, args, nonlinearity="tanh", placement=placement, lengths=lengths))


def test_calls_it_does_not_serve_take_the_python_path():
    x = torch.randn(4, 2, 3)
    assert whole.applies("cpu", x, None, None, False)
    assert not whole.applies("cpu", x, torch.zeros(4, 2, 5), None, False)  # drive noise
    assert not whole.applies("cpu", x, None, torch.tensor([4, 2]), True)  # reverse with lengths
    assert not whole.applies("cpu", x.half(), None, None, False)
    assert not whole.applies("reference", x, None, None, False)
    seen = []
    with torch.no_grad():
        torch.func.vmap(lambda t: seen.append(whole.applies("cpu", t, None, None, False)) or t)(x)
    assert seen == [False]  # a torch.func transform: the Python path, with its vmap rules


def test_a_second_derivative_names_the_reference_backend():
    args = op_args(T=4, B=2, H=6, seed=7)
    out, _ = tk.leaky_rnn(*args.values(), backend="cpu")
    (grad_w,) = torch.autograd.grad(out.square().sum(), args["weight_hh"], create_graph=True)
    with pytest.raises(RuntimeError, match="backend='reference'") as raised:
        grad_w.square().sum().backward()
    assert str(second_derivative_error("cpu")) in str(raised.value)  # the C++ node's text is the shared one


def test_it_is_what_leaky_rnn_runs_on_the_cpu_backend(monkeypatch):
    calls = []
    original = whole.run
    monkeypatch.setattr(whole, "run", lambda *a, **k: calls.append(1) or original(*a, **k))
    args = op_args(T=3, B=2, H=5, seed=8)
    tk.leaky_rnn(*args.values(), backend="cpu")[0].sum().backward()
    ens = ensemble_args(2, T=3, B=2, H=5, dtype=torch.float32)
    tk.leaky_rnn(*[ens[n] for n in NAMES], backend="cpu")
    half = {k: v.detach().bfloat16() for k, v in op_args(T=3, B=2, H=5, seed=9).items()}
    out, h_n = tk.leaky_rnn(*half.values(), backend="cpu")  # cast to float32, served, cast back
    assert out.dtype == h_n.dtype == torch.bfloat16
    assert len(calls) == 3
