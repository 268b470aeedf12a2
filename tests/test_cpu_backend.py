"""The C++ CPU backend's serial core against the reference (ops/reference.py)."""
from __future__ import annotations

import pytest
import torch

from timescale_kernels.ops import core, cpu
from timescale_kernels.ops.choices import NONLINEARITIES, PLACEMENTS
from timescale_kernels.ops.reference import recurrence_reference

from helpers import core_inputs, drive_from_states, rel_err

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason=f"the C++ extension is not built: {cpu.unavailable_reason()}")

SHAPES = [(1, 3, 20), (9, 4, 37), (6, 70, 300)]  # (T, B, H); the last one runs on several threads


def assert_close_rel(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{name}: NaN or inf in the output"
    err = rel_err(got, want)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"
    # Element-wise as well, so that a single unwritten element cannot hide in the norm.
    worst = (got.double() - want.double()).abs().max().item()
    assert worst <= 100 * tol * want.abs().max().item() + 1e-30, f"{name}: max abs error {worst:.2e}"


def poison_allocator(*shapes, dtype=torch.float32) -> None:
    """Allocate and free NaN-filled blocks of the outputs' sizes right before a kernel runs, so
    that memory the kernel forgets to write is likely to read back as NaN (best effort)."""
    blocks = [torch.full(s, float("nan"), dtype=dtype) for s in shapes]
    del blocks


def make_inputs(steps, batch, hidden, dtype=torch.float32, seed=0, weight_scale=1.0):
    """u, h0, w (masked diagonal), alpha of helpers.core_inputs."""
    c = core_inputs(steps, batch, hidden, dtype=dtype, seed=seed, weight_scale=weight_scale)
    return c["u"], c["h0"], c["w"], c["alpha"]


def test_kernels_know_the_nonlinearities_of_the_table_in_its_order():
    assert cpu.nonlinearities() == NONLINEARITIES


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_forward_matches_reference(placement, nonlinearity, shape):
    u, h0, w, alpha = make_inputs(*shape)
    poison_allocator(u.shape, u.shape)
    h, drive = cpu.forward(u, h0, w, alpha, nonlinearity, placement, True, "fp32")
    want = recurrence_reference(u.double(), h0.double(), w.double(), alpha.double(), nonlinearity, placement)
    assert h.dtype == torch.float32
    assert_close_rel("h", h, want, 1e-5)
    assert_close_rel("drive", drive, drive_from_states(u, h0, want, w, nonlinearity, placement), 1e-5)

    h_no_drive, empty = cpu.forward(u, h0, w, alpha, nonlinearity, placement, False, "fp32")
    assert empty.numel() == 0
    assert torch.equal(h_no_drive, h)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_backward_matches_autograd_of_reference(placement, nonlinearity, shape):
    u, h0, w, alpha = make_inputs(*shape, seed=1)
    grad_h = torch.randn(u.shape, generator=torch.Generator().manual_seed(2))
    h, drive = cpu.forward(u, h0, w, alpha, nonlinearity, placement, True, "fp32")
    poison_allocator(u.shape, h0.shape, alpha.shape)
    d_drive, dh0, d_alpha = cpu.backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, "fp32")

    u64, h064, alpha64 = (t.double().requires_grad_() for t in (u, h0, alpha))
    ref = recurrence_reference(u64, h064, w.double(), alpha64, nonlinearity, placement)
    want_du, want_dh0, want_dalpha = torch.autograd.grad(ref, (u64, h064, alpha64), grad_h.double())
    assert_close_rel("d_drive", d_drive, want_du, 1e-5)
    assert_close_rel("dh0", dh0, want_dh0, 1e-5)
    assert_close_rel("d_alpha", d_alpha, want_dalpha, 1e-5)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_gradcheck_float64_through_custom_op(placement, nonlinearity):
    u, h0, w, alpha = make_inputs(4, 3, 5, dtype=torch.float64, seed=3)
    alpha = alpha.clamp(max=0.9)  # alpha = 1 exactly is fine, but (1 - alpha) = 0 hides a term

    def op(u, h0, w, alpha):
        return torch.ops.timescale_kernels.recurrence(
            u, h0, w, alpha, nonlinearity, placement, "cpu", "fp32", True)[0]

    args = tuple(t.clone().requires_grad_() for t in (u, h0, w, alpha))
    assert torch.autograd.gradcheck(op, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_full_op_matches_torch_rnn_at_tau_one():
    """With alpha = 1 the outside update is torch.nn.RNN's Elman update."""
    torch.manual_seed(4)
    steps, batch, hidden = 5, 3, 24
    rnn = torch.nn.RNN(1, hidden, nonlinearity="tanh")
    x = torch.randn(steps, batch, 1)
    h0 = torch.randn(batch, hidden)
    want, _ = rnn(x, h0[None])
    u = (x @ rnn.weight_ih_l0.t() + rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()
    h, _ = core.recurrence(u, h0, rnn.weight_hh_l0.detach(), torch.ones(hidden), "tanh", "outside", "cpu",
                           "fp32", False)
    assert_close_rel("h", h, want.detach(), 1e-5)


def strided_grad(layout: str, shape) -> torch.Tensor:
    """A non-contiguous (T, B, H) gradient of one of the layouts autograd hands the backward."""
    steps, batch, hidden = shape
    if layout == "expanded":  # output.sum(): stride 0 everywhere, filled once
        return torch.randn(1, 1, 1).expand(shape)
    if layout == "expanded-columns":  # (output * c[..., None]).sum(): one number per row, filled per row
        return torch.randn(steps, batch, 1).expand(shape)
    if layout == "expanded-rows":  # stride 0 over t and b, rows contiguous: read in place
        return torch.randn(1, 1, hidden).expand(shape)
    if layout == "transposed":  # batch_first: rows contiguous, read in place
        return torch.randn(batch, steps, hidden).transpose(0, 1)
    if layout == "concatenated":  # one direction's slice of a bidirectional output: read in place
        return torch.randn(steps, batch, 2 * hidden)[..., hidden:]
    return torch.randn(steps, batch, hidden, 2)[..., 0]  # columns strided: copied per step


@pytest.mark.parametrize("lengths", [None, torch.tensor([3, 5, 1, 2, 5, 4])])
@pytest.mark.parametrize("layout", ["expanded", "expanded-columns", "expanded-rows", "transposed", "concatenated",
                                    "strided-columns"])
def test_backward_accepts_strided_grad_h(layout, lengths):
    u, h0, w, alpha = make_inputs(5, 6, 37, seed=9)
    h, drive = cpu.forward(u, h0, w, alpha, "tanh", "inside", True, "fp32", lengths)
    grad_h = strided_grad(layout, u.shape)
    assert not grad_h.is_contiguous()
    got = cpu.backward(grad_h, h, h0, drive, w, alpha, "tanh", "inside", "fp32", lengths)
    want = cpu.backward(grad_h.contiguous(), h, h0, drive, w, alpha, "tanh", "inside", "fp32", lengths)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_recycled_output_memory_is_never_shared():
    """Outputs of 1 MiB and more come from a pool of recycled blocks: a live tensor's block must
    never be handed out again, a freed one may be."""
    u, h0, w, alpha = make_inputs(30, 128, 600, seed=10)
    h1, d1 = cpu.forward(u, h0, w, alpha, "relu", "outside", True, "fp32")
    h2, d2 = cpu.forward(u, h0, w, alpha, "relu", "outside", True, "fp32")
    assert len({t.data_ptr() for t in (h1, d1, h2, d2)}) == 4
    assert torch.equal(h1, h2) and torch.equal(d1, d2)
    freed = {h1.data_ptr(), d1.data_ptr()}
    del h1, d1
    h3, d3 = cpu.forward(u, h0, w, alpha, "relu", "outside", True, "fp32")
    assert {h3.data_ptr(), d3.data_ptr()} == freed
    assert torch.equal(h3, h2) and torch.equal(d3, d2)
    del h3, d3
    cpu.empty_cache()
    h4, _ = cpu.forward(u, h0, w, alpha, "relu", "outside", False, "fp32")
    assert torch.equal(h4, h2)


@pytest.mark.parametrize("in_size", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_pooled_input_projection_equals_the_gemm(monkeypatch, in_size, bias):
    """At 8 MB and more, the cpu backend's input projection u is written into the output pool (an
    element-wise pass for one input); its output and every gradient equal the one-GEMM path's."""
    import timescale_kernels as tk
    from timescale_kernels.ops import eager, whole
    calls = []
    original = eager._PooledProjection.forward
    monkeypatch.setattr(eager._PooledProjection, "forward",
                        staticmethod(lambda ctx, *a: calls.append(1) or original(ctx, *a)))
    torch.manual_seed(0)
    steps, batch, hidden = 40, 128, 500  # u: 10 MB
    x = torch.randn(steps, batch, in_size, requires_grad=True)
    h0 = torch.zeros(batch, hidden, requires_grad=True)
    w_ih = (torch.randn(hidden, in_size) * 0.3).requires_grad_()
    w_hh = (torch.randn(hidden, hidden) * hidden ** -0.5).requires_grad_()
    b_ih, b_hh = ((torch.randn(hidden) * 0.1).requires_grad_() if bias else None for _ in range(2))
    tau = (1 + 3 * torch.rand(hidden)).requires_grad_()
    leaves = [t for t in (x, h0, w_ih, w_hh, b_ih, b_hh, tau) if t is not None]
    results = {}

    def run():
        out, h_n = tk.leaky_rnn(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity="tanh", backend="cpu")
        return (out, h_n, *torch.autograd.grad(out.square().sum() + h_n.sum(), leaves))
    results["whole"] = run()  # the whole op in C++ (whole.py), which pools u there
    monkeypatch.setattr(whole, "applies", lambda *a: False)  # the Python path from here on
    for name, threshold in (("pooled", eager._POOL_MIN_BYTES), ("gemm", 1 << 62)):
        monkeypatch.setattr(eager, "_POOL_MIN_BYTES", threshold)
        results[name] = run()
    assert len(calls) == 1
    for got, want, whole_op in zip(results["pooled"], results["gemm"], results["whole"]):
        assert_close_rel("pooled vs gemm", got, want, 1e-6)
        assert torch.equal(whole_op, got), "the whole op's pooled path vs the Python one's"
    monkeypatch.setattr(eager, "_POOL_MIN_BYTES", 8 << 20)
    with torch.no_grad():  # inference takes the pool too
        out, _ = tk.leaky_rnn(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity="tanh", backend="cpu")
    assert torch.equal(out, results["pooled"][0]) and len(calls) == 2


def test_deterministic():
    u, h0, w, alpha = make_inputs(12, 96, 300, seed=5)
    grad_h = torch.randn(u.shape)
    runs = []
    for _ in range(2):
        h, drive = cpu.forward(u, h0, w, alpha, "tanh", "outside", True, "fp32")
        runs.append((h, drive) + tuple(cpu.backward(grad_h, h, h0, drive, w, alpha, "tanh", "outside", "fp32")))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _denormal_count(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("case", ["states_decay", "gradients_decay"])
def test_decay_into_denormal_range(case, placement):
    """Tiny weights and tau in [1.5, 3]: with no input ("states_decay") the state shrinks by about
    (1 - alpha) per step; with a gradient at the last step only ("gradients_decay") the adjoint
    shrinks the same way backwards in time. The
    kernel must flush instead of computing with denormals, stay finite, match the reference and
    leave the caller's floating-point mode as it found it. ("states_decay" uses tanh: at a state of
    exactly 0 the kink of (leaky) ReLU makes the derivative depend on the sign of a denormal.)"""
    steps, batch, hidden = 400, 16, 37
    nonlinearity = "tanh" if case == "states_decay" else "leaky_relu"
    u, h0, w, _ = make_inputs(steps, batch, hidden, seed=6, weight_scale=1e-3)
    if case == "states_decay":
        u.zero_()
    alpha = 1.0 / (1.5 + 1.5 * torch.rand(hidden, generator=torch.Generator().manual_seed(7)))
    grad_h = torch.randn(u.shape, generator=torch.Generator().manual_seed(8))
    if case == "gradients_decay":
        grad_h[:-1] = 0.0

    h, drive = cpu.forward(u, h0, w, alpha, nonlinearity, placement, True, "fp32")
    d_drive, dh0, d_alpha = cpu.backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, "fp32")
    for name, t in (("h", h), ("d_drive", d_drive), ("dh0", dh0), ("d_alpha", d_alpha)):
        assert torch.isfinite(t).all(), name
        assert _denormal_count(t) == 0, f"{name} holds denormals"
    if case == "states_decay":  # the decay did reach the flushed range
        assert h[-1].abs().max() == 0
    else:
        assert dh0.abs().max() == 0

    u64, h064, alpha64 = (t.double().requires_grad_() for t in (u, h0, alpha))
    ref = recurrence_reference(u64, h064, w.double(), alpha64, nonlinearity, placement)
    want_du, want_dh0, want_dalpha = torch.autograd.grad(ref, (u64, h064, alpha64), grad_h.double())
    assert rel_err(h, ref.detach()) <= 1e-5
    assert rel_err(d_drive, want_du) <= 1e-5
    assert rel_err(d_alpha, want_dalpha) <= 1e-5

    tiny = torch.full((8192,), 1e-39)  # a float32 denormal; survives unless FTZ/DAZ leaked out
    assert (tiny * 1.0).ne(0).all()


def test_precision_other_than_fp32_is_rejected():
    u, h0, w, alpha = make_inputs(2, 2, 4)
    with pytest.raises(ValueError, match="precision: the cpu backend computes in the input dtype"):
        cpu.forward(u, h0, w, alpha, "tanh", "outside", True, "tf32")
    with pytest.raises(ValueError, match="precision"):
        cpu.backward(u, u, h0, u, w, alpha, "tanh", "outside", "bf16")


def test_bad_arguments_are_rejected():
    u, h0, w, alpha = make_inputs(2, 2, 4)
    kernel = torch.ops.timescale_kernels_cpu.forward
    with pytest.raises(RuntimeError, match=f"nonlinearity: expected a code in 0..{len(NONLINEARITIES) - 1}"):
        kernel(u, h0, w, alpha, len(NONLINEARITIES), 0, True)
    with pytest.raises(RuntimeError, match="placement: expected 0 .outside., 1 .inside. or 2 .voltage."):
        kernel(u, h0, w, alpha, 0, len(PLACEMENTS), True)
    with pytest.raises(RuntimeError, match="dtype"):
        cpu.forward(u, h0.double(), w, alpha, "tanh", "outside", True, "fp32")
    with pytest.raises(RuntimeError, match="w: expected"):
        cpu.forward(u, h0, w[:3], alpha, "tanh", "outside", True, "fp32")
    with pytest.raises(RuntimeError, match="u: expected"):
        cpu.forward(u[:, :1], h0, w, alpha, "tanh", "outside", True, "fp32")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_matches_torch(dtype):
    """The argument checks' one-pass finiteness test (C++) against torch.isfinite(t).all(), on tensors
    of every shape the checks hand it (0-dim, empty, strided) and each kind of non-finite value."""
    from timescale_kernels.ops import checks
    assert checks._cpu_all_finite is not None  # the kernels loaded: the checks use it
    op = torch.ops.timescale_kernels_cpu.all_finite
    cases = [torch.randn(13, dtype=dtype), torch.tensor(2.5, dtype=dtype), torch.empty(0, dtype=dtype),
             torch.randn(6, 4, dtype=dtype)[:, 1], torch.full((3,), torch.finfo(dtype).max, dtype=dtype)]
    for bad in (float("nan"), float("inf"), float("-inf")):
        for at in (0, 7, 12):
            t = torch.randn(13, dtype=dtype)
            t[at] = bad
            cases.append(t)
    for t in cases:
        assert op(t) == bool(torch.isfinite(t).all()), t


def test_a_non_finite_tau_is_refused_through_the_fast_check():
    """With the kernels loaded, leaky_rnn's tau check takes the C++ pass and still names the values."""
    import timescale_kernels as tk
    from helpers import op_args
    args = op_args(T=3, B=2, H=5)
    args["tau"] = torch.tensor([2.0, float("nan"), 3.0, float("inf"), 1.5])
    with pytest.raises(ValueError, match=r"tau: expected finite values; got \[nan, inf\]"):
        tk.leaky_rnn(*args.values(), backend="cpu")
