"""The triton backend's serial core against the reference; runs under TRITON_INTERPRET=1 without CUDA.

Outputs are poisoned with NaN before every launch, so an element a kernel does not write fails.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402

from timescale_kernels.ops import core, triton_common, triton_recurrence as tr  # noqa: E402
from timescale_kernels.ops.choices import NONLINEARITIES, PLACEMENTS  # noqa: E402
from timescale_kernels.ops.reference import activation, leaky_rnn_reference, recurrence_reference  # noqa: E402

from helpers import core_inputs, drive_from_states, random_lengths, rel_err  # noqa: E402

pytestmark = pytest.mark.skipif(not tr.is_available(), reason=f"triton backend: {tr.unavailable_reason()}")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(tr, "poison_outputs", True)


def make_core(T, B, H, dtype=torch.float32, seed=0, device=DEVICE):
    """The shared core inputs (helpers.core_inputs) at a scale the tf32 and bf16 tolerances are set for:
    u and h0 halved, W in torch.nn.RNN's init range."""
    c = core_inputs(T, B, H, dtype=torch.float64, seed=seed, weight_scale=0.5)
    c["u"], c["h0"] = 0.5 * c["u"], 0.5 * c["h0"]
    return {k: v.to(device=device, dtype=dtype) for k, v in c.items()}


def reference_grads(c, nonlinearity, placement, dtype=torch.float64):
    """h and the gradients (d_drive = du, dh0, d_alpha) of <h, grad_h> by autograd of the reference."""
    u, h0, alpha = (c[k].detach().to(dtype).requires_grad_() for k in ("u", "h0", "alpha"))
    h = recurrence_reference(u, h0, c["w"].to(dtype), alpha, nonlinearity, placement)
    du, dh0, dalpha = torch.autograd.grad(h, (u, h0, alpha), c["grad_h"].to(dtype))
    return h.detach(), du, dh0, dalpha


def check_core(c, nonlinearity, placement, precision="fp32", tol=1e-5):
    h_ref, du, dh0, dalpha = reference_grads(c, nonlinearity, placement)
    h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], nonlinearity, placement, True, precision)
    assert rel_err(h, h_ref) <= tol
    drive_ref = drive_from_states(c["u"], c["h0"], h_ref, c["w"], nonlinearity, placement)
    assert rel_err(drive, drive_ref) <= tol
    d_drive, dh0_got, dalpha_got = tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"],
                                               nonlinearity, placement, precision)
    for name, got, want in (("d_drive", d_drive, du), ("dh0", dh0_got, dh0), ("d_alpha", dalpha_got, dalpha)):
        assert got.shape == want.shape, name
        assert rel_err(got, want) <= tol, name


# Every nonlinearity and placement at one cheap shape; then awkward shapes: B not a multiple of the
# 16-row tile, B = 1, T = 1, H not a power of two and larger than one column block.

@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_core_matches_reference(nonlinearity, placement):
    check_core(make_core(7, 3, 20), nonlinearity, placement)


@pytest.mark.parametrize("T,B,H,nonlinearity,placement", [
    (7, 19, 50, "tanh", "outside"),
    (7, 19, 50, "leaky_relu", "inside"),
    (1, 1, 20, "leaky_relu", "outside"),
    (1, 3, 50, "sigmoid", "inside"),
    (6, 1, 50, "relu", "outside"),
    (5, 17, 33, "sigmoid", "outside"),
    (7, 19, 50, "sigmoid", "voltage"),
    (1, 1, 20, "tanh", "voltage"),
    (5, 17, 33, "relu", "voltage"),
])
def test_core_awkward_shapes(T, B, H, nonlinearity, placement):
    check_core(make_core(T, B, H, seed=T * B + H), nonlinearity, placement)


@pytest.mark.parametrize("nonlinearity,placement", [("tanh", "outside"), ("tanh", "inside"),
                                                    ("leaky_relu", "outside"), ("sigmoid", "inside"),
                                                    ("tanh", "voltage"), ("sigmoid", "voltage")])
def test_core_float64(nonlinearity, placement):
    check_core(make_core(5, 3, 20, dtype=torch.float64), nonlinearity, placement, tol=1e-12)


@pytest.mark.parametrize("precision,tol", [("tf32x3", 1e-5), ("tf32", 1e-3), ("bf16", 1e-2)])
@pytest.mark.parametrize("placement", ["outside", "voltage"])
def test_core_reduced_precision(precision, tol, placement):
    check_core(make_core(6, 5, 50), "tanh", placement, precision, tol)


# ---- lengths: row b runs lengths[b] steps, then holds its state ----

def make_lengths(T, B, seed):
    """(B,) int64 lengths in 1..T, in no particular order, with 1 and T both present."""
    return random_lengths(T, B, seed).to(DEVICE)


def reference_with_lengths(c, lengths, nonlinearity, placement, g_out, g_n):
    """leaky_rnn_reference with lengths on u (weight_ih = I, no biases), in float64: output (T, B, H),
    h_n (B, H), and the gradients of <output, g_out> + <h_n, g_n> for u, h0 and alpha."""
    hidden = c["w"].shape[0]
    u, h0 = (c[k].detach().double().requires_grad_() for k in ("u", "h0"))
    tau = (1.0 / c["alpha"].detach().double()).requires_grad_()
    eye = torch.eye(hidden, dtype=torch.float64, device=u.device)
    output, h_n = leaky_rnn_reference(u, h0, eye, c["w"].double(), None, None, tau, nonlinearity, placement,
                                      self_connections=True, lengths=lengths)
    du, dh0, dtau = torch.autograd.grad((output * g_out).sum() + (h_n * g_n).sum(), (u, h0, tau))
    return output.detach(), h_n.detach(), du, dh0, -dtau * tau.detach() ** 2  # d_alpha = -d_tau tau^2


def core_gradient(h, g_out, g_n, lengths, nonlinearity, placement):
    """(the op's output from the core's states h, the core's grad_h) for the gradients g_out of the
    output and g_n of h_n (added at each row's last step). "voltage": the output is f(v) of the states
    v, so the core takes g_out f'(v)."""
    grad_h, seen = g_out.clone(), h
    if placement == "voltage":
        v = h.detach().requires_grad_()
        seen = activation(nonlinearity)(v)
        grad_h = torch.autograd.grad(seen, v, g_out)[0]
    grad_h[lengths - 1, torch.arange(len(lengths), device=lengths.device)] += g_n
    return seen, grad_h


def check_lengths(c, lengths, nonlinearity, placement, family="default", tol=1e-5, plan=None):
    """The core with lengths against the reference loop: h where running, the held state after,
    and the gradients of <output, g_out> + <h_n, g_n>. The core gets g_out whole, h_n's gradient
    added at each row's last step: it must ignore what reaches the held steps (the op's output is
    zero there). plan: a persistent tiling (pins that family)."""
    steps = c["u"].shape[0]
    live = (torch.arange(steps, device=lengths.device)[:, None] < lengths[None, :])[..., None]
    g_out, g_n = c["grad_h"], c["grad_h"][0].flip(0)
    output, h_n, du, dh0, dalpha = reference_with_lengths(c, lengths, nonlinearity, placement, g_out, g_n)
    h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], nonlinearity, placement, True, "fp32", lengths,
                          family=family, plan=plan)
    assert tr.last_family == ("persistent" if plan is not None else family)
    seen, grad_h = core_gradient(h, g_out, g_n, lengths, nonlinearity, placement)
    assert rel_err(torch.where(live, seen, 0.0), output) <= tol
    assert rel_err(h[-1], h_n) <= tol
    d_drive, dh0_got, dalpha_got = tr.backward(grad_h, h, c["h0"], drive, c["w"], c["alpha"], nonlinearity,
                                               placement, "fp32", lengths, family=family, plan=plan)
    assert torch.equal(torch.where(live, 0.0, d_drive), torch.zeros_like(d_drive))  # exactly zero where held
    for name, got, want in (("d_drive", d_drive, du), ("dh0", dh0_got, dh0), ("d_alpha", dalpha_got, dalpha)):
        assert rel_err(got, want) <= tol, name
    return h, d_drive, dh0_got, dalpha_got


@pytest.mark.parametrize("T,B,H,nonlinearity,placement", [
    (6, 5, 20, "tanh", "outside"),
    (6, 5, 20, "leaky_relu", "inside"),
    (5, 19, 50, "sigmoid", "outside"),
    (4, 3, 33, "relu", "inside"),
    (6, 5, 20, "sigmoid", "voltage"),
    (5, 19, 50, "leaky_relu", "voltage"),
])
def test_lengths_match_reference(T, B, H, nonlinearity, placement):
    check_lengths(make_core(T, B, H, seed=B + H), make_lengths(T, B, seed=T), nonlinearity, placement)


def check_rows_alone(c, lengths, nonlinearity, placement, family="default"):
    """A batch with lengths equals each row run alone for its own length (forward and backward;
    the gradient reaching a held step is ignored)."""
    h, d_drive, dh0, dalpha = check_lengths(c, lengths, nonlinearity, placement, family)
    steps = c["u"].shape[0]
    grad_h = core_gradient(h, c["grad_h"], c["grad_h"][0].flip(0), lengths, nonlinearity, placement)[1]
    dalpha_rows = torch.zeros_like(dalpha)
    for b, n in enumerate(lengths.tolist()):
        u, h0, g = c["u"][:n, b:b + 1], c["h0"][b:b + 1], grad_h[:n, b:b + 1].clone()
        alone, drive = tr.forward(u, h0, c["w"], c["alpha"], nonlinearity, placement, True, "fp32", family=family)
        assert rel_err(h[:n, b], alone[:, 0]) <= 1e-6, b
        assert torch.equal(h[n:, b], alone[-1:, 0].expand(steps - n, -1)), b  # held bitwise
        dd, dh0_alone, da = tr.backward(g, alone, h0, drive, c["w"], c["alpha"], nonlinearity, placement, "fp32",
                                        family=family)
        assert rel_err(d_drive[:n, b], dd[:, 0]) <= 1e-6, b
        assert rel_err(dh0[b], dh0_alone[0]) <= 1e-6, b
        dalpha_rows += da
    assert rel_err(dalpha, dalpha_rows) <= 1e-6


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_lengths_batch_equals_rows_alone(placement):
    T, B = 5, 4
    check_rows_alone(make_core(T, B, 20, seed=7), torch.tensor([T, 1, 3, T], device=DEVICE), "tanh", placement)


def test_forward_without_drive_keeps_only_h():
    c = make_core(5, 3, 20)
    h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "leaky_relu", "outside", False, "fp32")
    assert drive.numel() == 0
    h_ref, *_ = reference_grads(c, "leaky_relu", "outside")
    assert rel_err(h, h_ref) <= 1e-5
    with pytest.raises(ValueError, match="drive"):
        tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], "leaky_relu", "outside", "fp32")


def test_chunked_forward_equals_one_launch():
    """Long runs may be split in time: the chunk boundary changes nothing."""
    c = make_core(6, 3, 20)
    args = (c["w"], c["alpha"], "tanh", "inside", False, "fp32")
    whole, _ = tr.forward(c["u"], c["h0"], *args)
    first, _ = tr.forward(c["u"][:4], c["h0"], *args)
    second, _ = tr.forward(c["u"][4:], first[-1], *args)
    assert torch.equal(torch.cat([first, second]), whole)


def test_bad_arguments_are_named():
    c = make_core(2, 2, 20)
    with pytest.raises(TypeError, match="float16"):
        tr.forward(c["u"].half(), c["h0"].half(), c["w"].half(), c["alpha"].half(), "tanh", "outside", False, "fp32")
    d = make_core(2, 2, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match="precision"):
        tr.forward(d["u"], d["h0"], d["w"], d["alpha"], "tanh", "outside", False, "tf32")
    with pytest.raises(ValueError, match="h0"):
        tr.forward(c["u"], c["h0"][:1], c["w"], c["alpha"], "tanh", "outside", False, "fp32")
    with pytest.raises(TypeError, match="alpha"):
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"].double(), "tanh", "outside", False, "fp32")
    with pytest.raises(TypeError, match="lengths.*int64"):
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32", torch.ones(2))
    with pytest.raises(ValueError, match="lengths.*shape"):
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32",
                   torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="family.*'fast'"):
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32", family="fast")


def test_family_environment_variable(monkeypatch):
    c = make_core(2, 2, 20)
    monkeypatch.setenv(tr.FAMILY_ENV, "persistent")
    assert tr.resolve_family(c["u"], "fp32") == "persistent"
    assert tr.resolve_family(c["u"], "fp32", family="default") == "default"  # the keyword wins
    monkeypatch.setenv(tr.FAMILY_ENV, "fastest")
    with pytest.raises(ValueError, match=f"{tr.FAMILY_ENV}.*'fastest'"):
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32")
    monkeypatch.delenv(tr.FAMILY_ENV)
    tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32")
    assert tr.last_family == "default"  # "auto" off CUDA


def test_custom_op_autograd_including_w():
    """torch.ops.timescale_kernels.recurrence with backend='triton': gradients for u, h0, w, alpha."""
    c = make_core(5, 4, 20, seed=3)
    leaves = {k: c[k].clone().requires_grad_() for k in ("u", "h0", "w", "alpha")}
    h, _ = torch.ops.timescale_kernels.recurrence(leaves["u"], leaves["h0"], leaves["w"], leaves["alpha"],
                                                  "tanh", "outside", "triton", "fp32", True)
    got = torch.autograd.grad(h, list(leaves.values()), c["grad_h"])
    ref_leaves = {k: c[k].double().requires_grad_() for k in leaves}
    h_ref = recurrence_reference(*ref_leaves.values(), "tanh", "outside")
    want = torch.autograd.grad(h_ref, list(ref_leaves.values()), c["grad_h"].double())
    assert rel_err(h, h_ref) <= 1e-5
    for name, a, b in zip(leaves, got, want):
        assert rel_err(a, b) <= 1e-5, name
    assert core.recurrence is not None  # the op is registered by importing core


# ---- GPU only: the study's shapes and the reduced-precision modes ----

@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("tf32x3", 1e-5), ("tf32", 1e-3), ("bf16", 1e-2)])
def test_study_shape_on_gpu(precision, tol, placement):
    check_core(make_core(100, 256, 500, device="cuda"), "leaky_relu", placement, precision, tol)


@pytest.mark.gpu
@gpu
def test_leaky_rnn_triton_on_gpu():
    import timescale_kernels as tk
    g = torch.Generator().manual_seed(0)
    T, B, I, H = 50, 64, 1, 500
    args = [torch.randn(T, B, I, generator=g), torch.randn(B, H, generator=g) * 0.5,
            torch.randn(H, I, generator=g), torch.randn(H, H, generator=g) * H ** -0.5,
            torch.randn(H, generator=g) * 0.1, torch.randn(H, generator=g) * 0.1, 1 + 9 * torch.rand(H, generator=g)]
    ref = [a.double().cuda().requires_grad_() for a in args]
    got = [a.cuda().requires_grad_() for a in args]
    out_ref, _ = tk.leaky_rnn(*ref, backend="reference")
    out, _ = tk.leaky_rnn(*got, backend="triton")
    weight = torch.randn(out.shape, generator=g).cuda()
    (out_ref * weight.double()).sum().backward()
    (out * weight).sum().backward()
    assert rel_err(out, out_ref) <= 1e-5
    for i, (a, b) in enumerate(zip(got, ref)):
        assert rel_err(a.grad, b.grad) <= 1e-5, i


@pytest.mark.gpu
@gpu
def test_lengths_on_gpu():
    """Per-row lengths at the study's batch: held rows, and the gradient at held steps ignored."""
    check_lengths(make_core(30, 256, 500, device="cuda"), make_lengths(30, 256, seed=3), "leaky_relu", "outside",
                  family="default")


@pytest.mark.gpu
@gpu
def test_stacked_bidirectional_module_on_gpu():
    """LeakyRNN with 2 layers, both directions (reverse=True runs through flips on this backend), on the
    triton backend against the same module on the reference backend in float64."""
    import timescale_kernels as tk
    torch.manual_seed(0)
    fast = tk.LeakyRNN(1, 500, num_layers=2, bidirectional=True, nonlinearity="tanh", backend="triton").cuda()
    slow = tk.LeakyRNN(1, 500, num_layers=2, bidirectional=True, nonlinearity="tanh", backend="reference")
    slow.load_state_dict(fast.state_dict())
    slow = slow.cuda().double()
    x = torch.rand(20, 256, 1, device="cuda").round()
    out, h_n = fast(x)
    out_ref, h_n_ref = slow(x.double())
    weight = torch.randn(out.shape, device="cuda")
    (out * weight).sum().backward()
    (out_ref * weight.double()).sum().backward()
    assert rel_err(out, out_ref) <= 1e-5 and rel_err(h_n, h_n_ref) <= 1e-5
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert rel_err(a.grad, b.grad) <= 1e-5, name


@pytest.mark.gpu
@gpu
def test_offsets_beyond_int32_on_gpu():
    """T * B * H > 2**31 elements: the kernels' time offsets are 64-bit. About 18 GB of GPU memory."""
    T, B, H = 16400, 256, 512
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2 ** 30:
        pytest.skip("needs 24 GB of GPU memory")
    c = make_core(1, B, H, device="cuda")
    u = torch.randn(T, B, H, device="cuda") * 0.5
    h, _ = tr.forward(u, c["h0"], c["w"], c["alpha"], "leaky_relu", "outside", False, "fp32")
    tail = recurrence_reference(u[-3:].double(), h[-4].double(), c["w"].double(), c["alpha"].double(),
                                "leaky_relu", "outside")
    assert rel_err(h[-3:], tail) <= 1e-5
    del u, h


@pytest.mark.gpu
@gpu
def test_new_length_does_not_recompile():
    """T is a runtime argument: sequences of 5, 16 and 37 steps share one compiled forward kernel."""
    from timescale_kernels.ops import triton_kernels

    kernel = triton_kernels.recurrence_fwd_kernel
    if not hasattr(kernel, "device_caches"):
        pytest.skip("this triton keeps its kernel cache elsewhere")

    def compiled():
        return sum(len(caches[0]) for caches in kernel.device_caches.values())
    c = make_core(37, 20, 50, device="cuda")
    tr.forward(c["u"][:5], c["h0"], c["w"], c["alpha"], "tanh", "inside", False, "fp32")
    before = compiled()
    for steps in (16, 37):
        tr.forward(c["u"][:steps], c["h0"], c["w"], c["alpha"], "tanh", "inside", False, "fp32")
    assert compiled() == before


@pytest.mark.parametrize("hidden,stride,align", [(500, 500, 4), (512, 512, 16), (24, 24, 8), (50, 50, 2), (33, 33, 1),
                                                 (20, 20, 4), (500, 1, 1), (96, 48, 16), (1, 1, 1)])
def test_row_align_divides_h_and_the_row_stride(hidden, stride, align):
    """The launchers' ROW_ALIGN: the largest of 16, 8, 4, 2, 1 dividing H and the operand's row stride
    (the kernels rely on it dividing both; the strided-W read has row stride 1)."""
    assert triton_common.row_align(hidden, stride) == align
