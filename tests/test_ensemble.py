"""K networks in one call against the same K networks one call each (the reference backend's single
network is the specification): outputs and the gradient of every tensor, per network and shared."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import timescale_kernels as tk  # noqa: E402
from timescale_kernels.ops import NONLINEARITIES, PLACEMENTS  # noqa: E402
from timescale_kernels.ops import triton_recurrence as tr  # noqa: E402

from ensemble_helpers import NAMES, ensemble_args, grads, separate_calls  # noqa: E402
from helpers import random_lengths, rel_err  # noqa: E402

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.skipif(
    not tr.is_available(), reason="triton backend not available"))]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(tr, "poison_outputs", True)


def dtype_for(backend):
    return torch.float32 if backend == "triton" else torch.float64


def check_against_separate(backend, K, shared=(), lengths=None, drive_noise=None, tol=None, inputs=2, **options):
    """The ensemble call's outputs and gradients equal the separate calls' (relative error <= tol)."""
    dtype = dtype_for(backend)
    tol = tol if tol is not None else (1e-5 if dtype == torch.float32 else 1e-12)
    args = ensemble_args(K, I=inputs, shared=shared, dtype=dtype)
    out, h_n = tk.leaky_rnn(*args.values(), backend=backend, lengths=lengths, drive_noise=drive_noise, **options)
    want_out, want_h_n = separate_calls(args, K, shared, lengths, drive_noise, **options)
    assert out.shape == want_out.shape and h_n.shape == want_h_n.shape
    assert rel_err(out, want_out) <= tol
    assert rel_err(h_n, want_h_n) <= tol
    got, want = grads(args, out, h_n), grads(args, want_out, want_h_n)
    for name in NAMES:
        assert got[name].shape == args[name].shape, name
        assert rel_err(got[name], want[name]) <= tol, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("shared", [(), ("input",), ("weight_hh", "hx", "bias_ih"), ("input", "tau")])
def test_ensemble_matches_separate_calls(backend, K, shared):
    check_against_separate(backend, K, shared)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_each_nonlinearity_and_placement(backend, nonlinearity, placement):
    check_against_separate(backend, 2, ("input",), nonlinearity=nonlinearity, placement=placement)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("per_network", [False, True])
def test_lengths_and_reverse(backend, reverse, per_network):
    K, T, B = 3, 5, 3
    lengths = (torch.stack([random_lengths(T, B, seed=k) for k in range(K)]) if per_network
               else random_lengths(T, B))
    check_against_separate(backend, K, ("input",), lengths=lengths, reverse=reverse)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("shared", [(), ("input", "bias_hh"), ("weight_ih", "bias_ih", "bias_hh")])
def test_one_input_feature(backend, shared):
    """I = 1 (the study's tasks): the projection is an outer product per network."""
    check_against_separate(backend, 3, shared, inputs=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_connections_and_drive_noise(backend):
    noise = 0.1 * torch.randn(2, 5, 3, 7, dtype=dtype_for(backend))
    check_against_separate(backend, 2, self_connections=True, drive_noise=noise)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    args = ensemble_args(2, T=3, B=2, I=2, H=4, shared=("input", "bias_hh"))
    args["tau"] = (1.2 + torch.rand(2, 4, dtype=torch.float64)).requires_grad_()  # away from the clamp's kink

    def run(*tensors):
        return tk.leaky_rnn(*tensors, backend=backend, lengths=torch.tensor([[3, 1], [2, 3]]))
    assert torch.autograd.gradcheck(run, tuple(args.values()))


def test_lone_network_keeps_its_shapes():
    args = ensemble_args(1, shared=NAMES, dtype=torch.float32)
    out, h_n = tk.leaky_rnn(*args.values())
    assert out.shape == (5, 3, 7) and h_n.shape == (3, 7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_tensors(dtype):
    args = {k: v.detach().to(dtype) for k, v in ensemble_args(2, shared=("input",)).items()}
    out, h_n = tk.leaky_rnn(*args.values(), backend="cpu")
    want, _ = separate_calls({k: v.float() for k, v in args.items()}, 2, ("input",))
    assert out.dtype == dtype and rel_err(out.float(), want) <= 1e-2


def test_autocast_and_empty_batch():
    args = {k: v.detach().float() for k, v in ensemble_args(2, shared=("input",)).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = tk.leaky_rnn(*args.values())
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 3, 7)
    empty = ensemble_args(2, B=0, dtype=torch.float32)
    out, h_n = tk.leaky_rnn(*empty.values())
    assert out.shape == (2, 5, 0, 7) and h_n.shape == (2, 0, 7)
    out.sum().backward()
    assert empty["weight_hh"].grad.shape == (2, 7, 7)


@pytest.mark.parametrize("changes, words", [
    (dict(weight_hh=torch.randn(3, 7, 7)), ["weight_hh", "2 networks", "(3, 7, 7)", "weight_ih (2, 7, 2)"]),
    (dict(hx=torch.randn(2, 2, 3, 7)), ["hx", "2-D", "3-D", "(2, 2, 3, 7)"]),
    (dict(input=torch.randn(2, 5, 3, 4)), ["weight_ih", "(7, 4)", "(7, 2)", "K = 2"]),
    (dict(lengths=torch.ones(2, 4, dtype=torch.int64)), ["lengths", "(2, 3)", "(2, 4)"]),
    (dict(lengths=torch.ones(3, 3, dtype=torch.int64)), ["lengths", "2 networks", "(3, 3)"]),
    (dict(tau=torch.rand(2, 7, 1) + 1), ["tau", "(K, H)", "(2, 7, 1)"]),
])
def test_bad_ensembles_name_the_argument(changes, words):
    args = {k: v.detach().float() for k, v in ensemble_args(2, shared=("input",)).items()}
    lengths = changes.pop("lengths", None)
    args.update(changes)
    with pytest.raises(ValueError) as info:
        tk.leaky_rnn(*args.values(), lengths=lengths)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_scalar_time_constants(backend):
    """tau (K, 1): one time constant per network; a 0-dim tau shared by all."""
    args = ensemble_args(2)
    per_net = (1.0 + 2.0 * torch.rand(2, 1, dtype=torch.float64)).requires_grad_()
    shared = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    for tau in (per_net, shared):
        rest = [args[n] for n in NAMES[:6]]
        out, h_n = tk.leaky_rnn(*rest, tau, backend=backend)
        for k in range(2):
            one_tau = tau[k, 0] if tau.dim() == 2 else tau
            want, want_n = tk.leaky_rnn(*(t[k] for t in rest), one_tau, backend="reference")
            assert rel_err(out[k], want) <= 1e-12 and rel_err(h_n[k], want_n) <= 1e-12
        got = torch.autograd.grad(out.sum(), tau)[0]
        want_grad = torch.autograd.grad(sum(tk.leaky_rnn(*(t[k] for t in rest), tau[k, 0] if tau.dim() == 2 else tau,
                                                         backend="reference")[0].sum() for k in range(2)), tau)[0]
        assert got.shape == tau.shape and rel_err(got, want_grad) <= 1e-12
