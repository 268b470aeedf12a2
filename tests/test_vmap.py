"""torch.func.vmap over leaky_rnn and PyTorch's model-ensembling idiom on LeakyRNN: against the same
networks one call each, forward and backward, on every backend, and one ensemble call per mapped call."""
import os

import pytest
import torch
from torch.func import functional_call, grad, stack_module_state, vmap

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import timescale_kernels as tk  # noqa: E402
from timescale_kernels.ops import eager, triton_recurrence as tr  # noqa: E402

from ensemble_helpers import NAMES, ensemble_args, grads, separate_calls  # noqa: E402
from helpers import random_lengths, rel_err  # noqa: E402

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.skipif(
    not tr.is_available(), reason="triton backend not available"))]


def dtype_for(backend):
    return torch.float32 if backend == "triton" else torch.float64


def tol_for(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


@pytest.fixture
def calls(monkeypatch):
    """The serial-core calls made through eager.py, as (u.shape,) tuples."""
    seen = []
    original = eager.serial_forward

    def spy(u, *args, **kwargs):
        seen.append(tuple(u.shape))
        return original(u, *args, **kwargs)
    monkeypatch.setattr(eager, "serial_forward", spy)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [(), ("input", "weight_hh"), ("hx", "tau", "bias_ih")])
def test_vmap_over_the_op(backend, shared, calls):
    dtype = dtype_for(backend)
    args = ensemble_args(3, shared=shared, dtype=dtype)
    lengths = torch.stack([random_lengths(5, 3, seed=k) for k in range(3)])
    in_dims = tuple(None if n in shared else 0 for n in NAMES) + (0,)

    def one(*tensors):
        return tk.leaky_rnn(*tensors[:7], backend=backend, lengths=tensors[7], placement="inside")
    out, h_n = vmap(one, in_dims=in_dims)(*args.values(), lengths)
    want_out, want_h_n = separate_calls(args, 3, shared, lengths, placement="inside")
    assert rel_err(out, want_out) <= tol_for(dtype) and rel_err(h_n, want_h_n) <= tol_for(dtype)
    got, want = grads(args, out, h_n), grads(args, want_out, want_h_n)
    for name in NAMES:
        assert rel_err(got[name], want[name]) <= tol_for(dtype), name
    if backend != "reference":  # the mapped call ran as one ensemble of the 3 networks
        assert calls == [(3, 5, 3, 7)]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_grad_inside_vmap_and_nested_vmap(backend, calls):
    args = ensemble_args(4, shared=("input",))
    g = torch.randn(5, 3, 7, dtype=torch.float64)

    def loss(w_hh, tau, w_ih, x):
        out, _ = tk.leaky_rnn(x, args["hx"][0], w_ih, w_hh, None, None, tau, backend=backend, reverse=True)
        return (out * g).sum()
    per_net = vmap(grad(loss), in_dims=(0, 0, 0, None))(args["weight_hh"], args["tau"], args["weight_ih"],
                                                       args["input"])
    for k in range(4):
        w_hh = args["weight_hh"][k].detach().requires_grad_()
        loss(w_hh, args["tau"][k], args["weight_ih"][k], args["input"]).backward()
        assert rel_err(per_net[k], w_hh.grad) <= 1e-12
    calls.clear()
    nested = vmap(vmap(loss, in_dims=(0, 0, 0, None)), in_dims=(0, 0, 0, None))(
        args["weight_hh"].view(2, 2, 7, 7), args["tau"].view(2, 2, 7), args["weight_ih"].view(2, 2, 7, 2),
        args["input"])
    flat = vmap(loss, in_dims=(0, 0, 0, None))(args["weight_hh"], args["tau"], args["weight_ih"], args["input"])
    assert nested.shape == (2, 2) and rel_err(nested.flatten(), flat) <= 1e-12
    if backend == "cpu":
        assert calls[0] == (4, 5, 3, 7)  # the nested mapping ran as one ensemble of 2 * 2 networks


MODEL_OPTIONS = [
    dict(num_layers=2, bidirectional=True),
    dict(dale_signs=True, learn_initial_state=True, placement="inside", nonlinearity="tanh"),
    dict(tau_parameterisation="softplus", connectivity_mask=True),
]


def make_models(options, count=3, backend="cpu"):
    models = []
    for k in range(count):
        torch.manual_seed(k)
        kwargs = dict(options)
        if kwargs.pop("dale_signs", False):
            kwargs["dale_signs"] = torch.where(torch.arange(6) < 4, 1.0, -1.0)
        if kwargs.pop("connectivity_mask", False):
            kwargs["connectivity_mask"] = (torch.rand(6, 6) < 0.7).float()
        models.append(tk.LeakyRNN(2, 6, backend=backend, tau_init=(1.0, 4.0), **kwargs).double())
    return models


@pytest.mark.parametrize("options", MODEL_OPTIONS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_module_ensembling_idiom(options, backend):
    models = make_models(options, backend=backend)
    params, buffers = stack_module_state(models)
    base = make_models(options, 1, backend)[0].to("meta")
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4, 1])
    target = torch.randn(3, 5, 4, 6 * (2 if options.get("bidirectional") else 1), dtype=torch.float64)

    def loss(p, b, t):
        out, _ = functional_call(base, (p, b), (x,), dict(lengths=lengths))
        return ((out - t) ** 2).sum()
    per_net = vmap(grad(loss))(params, buffers, target)
    total = vmap(loss)(params, buffers, target).sum()
    total.backward()
    for k, model in enumerate(models):
        want = loss_of_model(model, x, lengths, target[k])
        want.backward()
        for name, p in model.named_parameters():
            assert rel_err(per_net[name][k], p.grad) <= 1e-12, name
            assert rel_err(params[name].grad[k], p.grad) <= 1e-12, name


def loss_of_model(model, x, lengths, target):
    out, _ = model(x, lengths=lengths)
    return ((out - target) ** 2).sum()


def test_dropout_and_noise_follow_vmap_randomness():
    models = make_models(dict(num_layers=2, dropout=0.5, sigma_rec=0.1))
    params, buffers = stack_module_state(models)
    base = make_models(dict(num_layers=2, dropout=0.5, sigma_rec=0.1), 1)[0].to("meta")
    x = torch.randn(5, 4, 2, dtype=torch.float64)

    def run(p, b):
        return functional_call(base, (p, b), (x,))[0]
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(run)(params, buffers)
    assert vmap(run, randomness="different")(params, buffers).shape == (3, 5, 4, 6)
    torch.manual_seed(0)
    same = vmap(run, randomness="same")(params, buffers)
    assert same.shape == (3, 5, 4, 6)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_torch_compile_traces_an_ensemble(backend):
    args = ensemble_args(3, shared=("input",), dtype=torch.float32)
    lengths = torch.stack([random_lengths(5, 3, seed=k) for k in range(3)])

    def run(*tensors):
        return tk.leaky_rnn(*tensors, backend=backend, lengths=lengths)
    compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
    out, h_n = compiled(*args.values())
    want_out, want_h_n = separate_calls(args, 3, ("input",), lengths)
    assert rel_err(out, want_out) <= 1e-5 and rel_err(h_n, want_h_n) <= 1e-5
    got, want = grads(args, out, h_n), grads(args, want_out, want_h_n)
    for name in NAMES:
        assert rel_err(got[name], want[name]) <= 1e-5, name


@pytest.mark.parametrize("backend", ["cpu"])
def test_vmap_of_the_registered_op(backend):
    """The torch.library op (what torch.compile traces) has its own vmap rule, forward and backward."""
    from timescale_kernels.ops import core
    args = ensemble_args(3, shared=("input",))
    c = dict(u=torch.randn(3, 5, 2, 7, dtype=torch.float64), h0=torch.randn(2, 7, dtype=torch.float64),
             w=args["weight_hh"].detach(), alpha=1.0 / args["tau"].detach().clamp(min=1.0))
    lengths = torch.tensor([5, 2])

    def run(u, w, alpha):
        return core.recurrence(u, c["h0"], w, alpha, "tanh", "outside", backend, "fp32", True, lengths, False)[0]
    u, w, alpha = (c[k].clone().requires_grad_() for k in ("u", "w", "alpha"))
    h = vmap(run, in_dims=(0, 0, 0))(u, w, alpha)
    h.square().sum().backward()
    for k in range(3):
        uk, wk, ak = (c[n][k].clone().requires_grad_() for n in ("u", "w", "alpha"))
        want = run(uk, wk, ak)
        want.square().sum().backward()
        assert rel_err(h[k], want) <= 1e-12
        for got, ref in ((u.grad[k], uk.grad), (w.grad[k], wk.grad), (alpha.grad[k], ak.grad)):
            assert rel_err(got, ref) <= 1e-12


def test_packed_sequence_under_vmap():
    """A PackedSequence shared by the mapped models (in_dims None for it): each model's h_n."""
    models = make_models(dict(num_layers=1))
    params, buffers = stack_module_state(models)
    base = make_models(dict(num_layers=1), 1)[0].to("meta")
    packed = torch.nn.utils.rnn.pack_sequence([torch.rand(n, 2, dtype=torch.float64) for n in (5, 3, 4)],
                                              enforce_sorted=False)
    h_n = vmap(lambda p, b: functional_call(base, (p, b), (packed,))[1])(params, buffers)
    for k, model in enumerate(models):
        assert rel_err(h_n[k], model(packed)[1]) <= 1e-12
