"""The functional op: every backend against the reference, gradients, drive noise, bad input."""
import pytest
import torch

import timescale_kernels as tk
from timescale_kernels.ops import NONLINEARITIES, PLACEMENTS

from helpers import GRAD_NAMES, op_args, rel_err

FAST_BACKENDS = [b for b in tk.available_backends() if b != "reference"]


def run(args, backend, **kw):
    """Output, h_n and the gradients of a loss that reaches both output and h_n."""
    for t in args.values():
        t.grad = None
    out, hn = tk.leaky_rnn(*args.values(), backend=backend, **kw)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + (hn ** 2).sum()
    loss.backward()
    return out.detach(), hn.detach(), {n: args[n].grad.clone() for n in GRAD_NAMES}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("self_connections", [False, True])
def test_backend_matches_reference(backend, placement, nonlinearity, self_connections):
    kw = dict(nonlinearity=nonlinearity, placement=placement, self_connections=self_connections)
    args = op_args(H=13 if backend == "triton" else 37)
    ref = run(args, "reference", **kw)
    got = run(args, backend, **kw)
    assert rel_err(got[0], ref[0]) <= 1e-5
    assert rel_err(got[1], ref[1]) <= 1e-5
    for name in GRAD_NAMES:
        assert rel_err(got[2][name], ref[2][name]) <= 1e-5, name


def test_reference_gradients_follow_the_design():
    """tau < 1 gets no gradient; the diagonal gets none without self-connections."""
    args = op_args(H=9, tau_range=(0.2, 3.0))
    _, _, grads = run(args, "reference")
    below = args["tau"].detach() < 1
    assert below.any() and (~below).any()
    assert torch.all(grads["tau"][below] == 0)
    assert torch.all(grads["tau"][~below] != 0)
    assert torch.all(grads["weight_hh"].diagonal() == 0)
    _, _, grads = run(args, "reference", self_connections=True)
    assert torch.all(grads["weight_hh"].diagonal() != 0)


@pytest.mark.parametrize("backend", ["reference"] + [b for b in FAST_BACKENDS if b == "cpu"])
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "leaky_relu", "sigmoid"])
def test_gradcheck_float64(backend, placement, nonlinearity):
    args = op_args(T=4, B=2, I=2, H=5, dtype=torch.float64, tau_range=(1.2, 3.0))
    names = list(args)

    def fn(*tensors):
        out, hn = tk.leaky_rnn(*tensors, nonlinearity=nonlinearity, placement=placement, backend=backend)
        return out, hn

    assert torch.autograd.gradcheck(fn, tuple(args[n] for n in names), eps=1e-6, atol=1e-5)


def test_scalar_tau_and_no_bias():
    args = op_args(H=8)
    args["tau"] = torch.tensor(1.7, requires_grad=True)
    args["bias_ih"] = args["bias_hh"] = None
    ref_out, _ = tk.leaky_rnn(*args.values(), backend="reference")
    for backend in FAST_BACKENDS:
        out, _ = tk.leaky_rnn(*args.values(), backend=backend)
        assert rel_err(out, ref_out) <= 1e-5
        out.sum().backward()
        assert args["tau"].grad is not None and args["tau"].grad.shape == ()


def test_noncontiguous_input_matches():
    args = op_args(T=5, B=4, H=11, requires_grad=False)
    batch_major = args["input"].transpose(0, 1).contiguous()
    strided = batch_major.transpose(0, 1)
    assert not strided.is_contiguous()
    for backend in tk.available_backends():
        a, _ = tk.leaky_rnn(*args.values(), backend=backend)
        args2 = dict(args, input=strided)
        b, _ = tk.leaky_rnn(*args2.values(), backend=backend)
        assert rel_err(b, a) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_run_in_float32(dtype):
    args = op_args(requires_grad=False)
    low = {k: v.to(dtype) for k, v in args.items()}
    for backend in FAST_BACKENDS:
        out, hn = tk.leaky_rnn(*low.values(), backend=backend)
        assert out.dtype == dtype and hn.dtype == dtype
        ref, _ = tk.leaky_rnn(*{k: v.float() for k, v in low.items()}.values(), backend="reference")
        assert rel_err(out.float(), ref) <= 1e-2


def test_available_backends_lists_reference_first():
    backends = tk.available_backends()
    assert backends[0] == "reference"
    assert set(backends) <= {"reference", "cpu", "triton"}


def test_forward_without_grad_runs_on_every_backend():
    args = op_args(requires_grad=False)
    ref, _ = tk.leaky_rnn(*args.values(), backend="reference")
    for backend in FAST_BACKENDS:
        with torch.no_grad():
            out, hn = tk.leaky_rnn(*args.values(), backend=backend)
        assert rel_err(out, ref) <= 1e-5 and torch.equal(hn, out[-1])


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_drive_noise_is_added_to_the_drive(backend):
    """Noise n (T, B, H) in the drive equals an input [x, n] through weight_ih [W_ih, identity]."""
    args = op_args(T=5, B=3, I=2, H=11, seed=4)
    noise = torch.randn(5, 3, 11, generator=torch.Generator().manual_seed(5)).requires_grad_()
    out, hn = tk.leaky_rnn(*args.values(), backend=backend, drive_noise=noise)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    (out * weights).sum().backward()
    got_grads = [args["weight_hh"].grad.clone(), noise.grad.clone()]
    args["weight_hh"].grad = None

    widened = dict(args, input=torch.cat([args["input"].detach(), noise.detach()], 2).requires_grad_(),
                   weight_ih=torch.cat([args["weight_ih"].detach(), torch.eye(11)], 1))
    want, want_hn = tk.leaky_rnn(*widened.values(), backend="reference")
    (want * weights).sum().backward()
    assert rel_err(out, want) <= 1e-5 and rel_err(hn, want_hn) <= 1e-5
    assert rel_err(got_grads[0], args["weight_hh"].grad) <= 1e-5
    assert rel_err(got_grads[1], widened["input"].grad[..., 2:]) <= 1e-5


def test_gradients_of_gradients_on_the_reference():
    args = op_args(T=3, B=2, I=2, H=4, dtype=torch.float64, tau_range=(1.2, 3.0))

    def fn(*tensors):
        return tk.leaky_rnn(*tensors, nonlinearity="tanh", backend="reference")[0]

    assert torch.autograd.gradgradcheck(fn, tuple(args.values()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradients_of_gradients_name_the_backend_that_has_them(backend):
    args = op_args(T=4, B=2, H=6)
    out, _ = tk.leaky_rnn(*args.values(), backend=backend)
    (grad_w,) = torch.autograd.grad(out.square().sum(), args["weight_hh"], create_graph=True)
    with pytest.raises(RuntimeError, match=f"not supported by the '{backend}' backend; use backend='reference'"):
        grad_w.square().sum().backward()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reached", ["h_n", "output", "both", "h_n through output[-1]"])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("placement", ["outside", "voltage"])
def test_the_last_states_gradient_reaches_the_kernels_apart(backend, reached, lengths, reverse, placement):
    """h_n is a tensor of its own whose gradient goes to the backward kernels apart from the output's
    (no (T, B, H) gradient for a loss on h_n alone); every way of reaching the last state, with
    lengths and in reverse order, gives the reference's gradients."""
    args = op_args(T=7, B=4, H=13, dtype=torch.float64)
    kw = dict(lengths=torch.tensor([7, 2, 5, 1]) if lengths else None, reverse=reverse)
    results = {}
    for b in ("reference", backend):
        out, hn = tk.leaky_rnn(*args.values(), backend=b, nonlinearity="tanh", placement=placement, **kw)
        last = out[0] if reverse else out[-1]
        loss = {"h_n": (hn ** 2).sum(), "output": (out ** 3).sum(), "both": (hn ** 2).sum() + (out ** 3).sum(),
                "h_n through output[-1]": (last ** 2).sum()}[reached]
        results[b] = (out, hn, *torch.autograd.grad(loss, [args[n] for n in GRAD_NAMES]))
    for name, got, want in zip(("output", "h_n", *GRAD_NAMES), results[backend], results["reference"]):
        assert rel_err(got, want) <= 1e-9, (name, rel_err(got, want))


@pytest.mark.parametrize("path", ["whole", "python"])
def test_a_loss_on_h_n_alone_builds_no_time_sized_gradient(monkeypatch, path):
    """On the cpu backend the backward kernels see no (T, B, H) gradient for the output (none at all on
    the whole op's path, whose node leaves absent gradients absent; one zero row on the Python path)
    and h_n's gradient apart."""
    if "cpu" not in FAST_BACKENDS:
        pytest.skip("the C++ extension is not built")
    from timescale_kernels.ops import eager, whole
    seen = []
    if path != "whole":
        monkeypatch.setattr(whole, "applies", lambda *a: False)
        original = eager.serial_backward
        monkeypatch.setattr(eager, "serial_backward",
                            lambda grad_h, *a: seen.append((grad_h, a[11])) or original(grad_h, *a))
    args = op_args(T=9, B=4, H=13)
    _, hn = tk.leaky_rnn(*args.values(), backend="cpu")
    if path == "whole":  # the C++ node's incoming gradients, as its backward receives them
        assert hn.grad_fn.name().endswith("WholeNode>")
        hn.grad_fn.register_prehook(lambda grads: seen.append(grads))
    hn.sum().backward()
    (grad_h, grad_last), = seen
    if path == "whole":
        assert grad_h is None
    else:
        assert grad_h.stride() == (0, 0, 1) and grad_h.shape == (9, 4, 13) and not grad_h.any()
    assert grad_last.shape == (4, 13) and torch.equal(grad_last, torch.ones(4, 13))
