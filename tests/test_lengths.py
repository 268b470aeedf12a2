"""Per-sequence lengths: a batch of sequences of different lengths equals each sequence run alone."""
import pytest
import torch

import timescale_kernels as tk
from timescale_kernels.ops import PLACEMENTS, cpu

from helpers import GRAD_NAMES, core_inputs, op_args, random_lengths, rel_err
from timescale_kernels.ops.reference import recurrence_reference

BACKENDS = [b for b in ("reference", "cpu") if b in tk.available_backends()]
needs_cpu = pytest.mark.skipif(not cpu.is_available(), reason=f"the C++ extension is not built: "
                                                              f"{cpu.unavailable_reason()}")


def loss_weights(out: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)


def batch_run(args, lengths, backend, **kw):
    """Output, h_n and the 7 gradients of <output, G> + |h_n|^2 for the whole batch with lengths."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in args.items()}
    out, hn = tk.leaky_rnn(*leaves.values(), backend=backend, lengths=lengths, **kw)
    ((out * loss_weights(out)).sum() + (hn ** 2).sum()).backward()
    return out.detach(), hn.detach(), {n: leaves[n].grad for n in GRAD_NAMES}


def rows_alone(args, lengths, backend, **kw):
    """The same quantities from B separate runs of one sequence each, without lengths, padded back
    to the batch's shapes (zero output and zero input gradient past each row's length)."""
    weights = loss_weights(torch.empty(args["input"].shape[:2] + args["hx"].shape[1:], dtype=args["hx"].dtype))
    shared = {k: args[k].detach().clone().requires_grad_() for k in GRAD_NAMES[2:]}
    out = torch.zeros_like(weights)
    hn = torch.zeros_like(args["hx"])
    d_input, d_hx = torch.zeros_like(args["input"]), torch.zeros_like(args["hx"])
    for b, length in enumerate(lengths.tolist()):
        x = args["input"][:length, b:b + 1].detach().clone().requires_grad_()
        h0 = args["hx"][b:b + 1].detach().clone().requires_grad_()
        out_b, hn_b = tk.leaky_rnn(x, h0, *shared.values(), backend=backend, **kw)
        ((out_b[:, 0] * weights[:length, b]).sum() + (hn_b ** 2).sum()).backward()
        out[:length, b], hn[b] = out_b[:, 0].detach(), hn_b[0].detach()
        d_input[:length, b], d_hx[b] = x.grad[:, 0], h0.grad[0]
    grads = dict(input=d_input, hx=d_hx, **{k: v.grad for k, v in shared.items()})
    return out, hn, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "leaky_relu", "sigmoid"])
def test_batch_equals_each_sequence_alone(backend, placement, nonlinearity):
    kw = dict(nonlinearity=nonlinearity, placement=placement)
    args = op_args(T=7, B=6, I=3, H=37, seed=11)
    lengths = random_lengths(7, 6, seed=2)
    assert {1, 7} <= set(lengths.tolist())
    out, hn, grads = batch_run(args, lengths, backend, **kw)
    want_out, want_hn, want_grads = rows_alone(args, lengths, backend, **kw)
    for t in range(7):  # past its length a row's output is exactly zero
        assert torch.all(out[t][lengths <= t] == 0)
    assert rel_err(out, want_out) <= 1e-5
    assert rel_err(hn, want_hn) <= 1e-5
    for name in GRAD_NAMES:
        assert rel_err(grads[name], want_grads[name]) <= 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_gradcheck_float64_with_lengths(backend, placement):
    args = op_args(T=4, B=3, I=2, H=5, dtype=torch.float64, tau_range=(1.2, 3.0), seed=3)
    lengths = torch.tensor([2, 4, 1])

    def fn(*tensors):
        return tk.leaky_rnn(*tensors, nonlinearity="tanh", placement=placement, backend=backend, lengths=lengths)

    assert torch.autograd.gradcheck(fn, tuple(args.values()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_lengths_equal_no_lengths(backend):
    args = op_args(T=5, B=4, H=21, requires_grad=False, seed=5)
    lengths = torch.full((4,), 5)
    with_lengths, hn_with = tk.leaky_rnn(*args.values(), backend=backend, lengths=lengths)
    without, hn_without = tk.leaky_rnn(*args.values(), backend=backend)
    assert rel_err(with_lengths, without) <= 1e-6 and rel_err(hn_with, hn_without) <= 1e-6


@needs_cpu
def test_torch_compile_with_lengths_matches_eager():
    args = op_args(T=6, B=5, H=16, seed=6)
    lengths = torch.tensor([6, 2, 5, 1, 3])

    def fn(*tensors):
        out, hn = tk.leaky_rnn(*tensors, backend="cpu", lengths=lengths)
        return (out * out).sum() + hn.sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    want = torch.autograd.grad(fn(*args.values()), list(args.values()))
    got = torch.autograd.grad(compiled(*args.values()), list(args.values()))
    for name, a, b in zip(args, got, want):
        assert rel_err(a, b) <= 1e-6, name


# ---- the cpu core's contract with lengths (core.py): held states, their grad_h ignored, zero d_drive ----

@needs_cpu
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "sigmoid", "identity"])
@pytest.mark.parametrize("shape", [(6, 5, 20), (9, 70, 300)])  # the last runs on several threads
def test_cpu_core_with_lengths(shape, nonlinearity, placement):
    """Row by row against the float64 reference. Smooth nonlinearities only: at a (leaky) ReLU's kink
    a drive of about 1e-7 can have one sign in float32 and the other in float64, which a single
    short row does not average away."""
    steps, batch, hidden = shape
    c = core_inputs(steps, batch, hidden, seed=7)
    lengths = random_lengths(steps, batch, seed=8)
    h, drive = cpu.forward(c["u"], c["h0"], c["w"], c["alpha"], nonlinearity, placement, True, "fp32", lengths)
    d_drive, dh0, d_alpha = cpu.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], nonlinearity,
                                         placement, "fp32", lengths)
    want_d_alpha = torch.zeros(hidden, dtype=torch.float64)
    for b, length in enumerate(lengths.tolist()):
        u = c["u"][:length, b:b + 1].double().requires_grad_()
        h0 = c["h0"][b:b + 1].double().requires_grad_()
        alpha = c["alpha"].double().requires_grad_()
        ref = recurrence_reference(u, h0, c["w"].double(), alpha, nonlinearity, placement)
        assert rel_err(h[:length, b], ref[:, 0]) <= 1e-5, b
        assert torch.equal(h[length:, b], h[length - 1, b].expand(steps - length, hidden)), b  # held
        # The gradients reaching the held steps are ignored (the op's output is zero there).
        grad = c["grad_h"][:length, b:b + 1].double()
        du, dh0_b, da = torch.autograd.grad(ref, (u, h0, alpha), grad)
        assert rel_err(d_drive[:length, b], du[:, 0]) <= 1e-5, b
        assert torch.all(d_drive[length:, b] == 0), b
        assert rel_err(dh0[b], dh0_b[0]) <= 1e-5, b
        want_d_alpha += da
    assert rel_err(d_alpha, want_d_alpha) <= 1e-5


@needs_cpu
def test_cpu_core_lengths_with_strided_grad_h():
    c = core_inputs(5, 6, 37, seed=9)
    lengths = torch.tensor([3, 5, 1, 2, 5, 4])
    h, drive = cpu.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "inside", True, "fp32", lengths)
    grad_h = torch.randn(1, 1, 37).expand(c["u"].shape)
    got = cpu.backward(grad_h, h, c["h0"], drive, c["w"], c["alpha"], "tanh", "inside", "fp32", lengths)
    want = cpu.backward(grad_h.contiguous(), h, c["h0"], drive, c["w"], c["alpha"], "tanh", "inside", "fp32",
                        lengths)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@needs_cpu
def test_cpu_kernel_checks_lengths():
    c = core_inputs(3, 2, 4)
    args = (c["u"], c["h0"], c["w"], c["alpha"], 0, 0, True)
    for bad, match in ((torch.tensor([1, 4]), "lengths: expected values in 1..3"),
                       (torch.tensor([0, 2]), "lengths: expected values in 1..3"),
                       (torch.tensor([1, 2, 3]), r"lengths: expected \(2,\)"),
                       (torch.tensor([1, 2], dtype=torch.int32), "lengths: expected a CPU int64 tensor")):
        with pytest.raises(RuntimeError, match=match):
            torch.ops.timescale_kernels_cpu.forward(*args, bad)
