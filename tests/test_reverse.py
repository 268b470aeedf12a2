"""leaky_rnn(..., reverse=True): the sequence run backwards in time equals reversing the input in time
(within each row's length), running forwards and reversing the output back, on every backend; the
C++ loops run that order in place, bitwise equal to the loop over flipped tensors."""
import os

import pytest
import torch

import timescale_kernels as tk
from timescale_kernels.ops import PLACEMENTS, cpu
from timescale_kernels.ops.functional import reverse_in_time

from helpers import GRAD_NAMES, core_inputs, op_args, random_lengths, rel_err

# CPU tensors: the triton backend runs them under its interpreter (conftest sets it without CUDA).
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = [b for b in ("reference", "cpu", "triton") if b in tk.available_backends()
            and (b != "triton" or INTERPRETING)]
needs_cpu = pytest.mark.skipif(not cpu.is_available(), reason="the C++ extension is not built")


def run(args, backend, placement, lengths, reverse, noise=None):
    return tk.leaky_rnn(*args.values(), nonlinearity="tanh", placement=placement, backend=backend,
                        lengths=lengths, drive_noise=noise, reverse=reverse)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_reverse_equals_the_flipped_run(backend, placement, with_lengths):
    steps, batch = 7, 5
    args = op_args(T=steps, B=batch, I=3, H=11, seed=3)
    lengths = random_lengths(steps, batch, seed=4) if with_lengths else None
    noise = 0.1 * torch.randn(steps, batch, 11, generator=torch.Generator().manual_seed(5))
    out, h_n = run(args, backend, placement, lengths, True, noise)
    flipped = dict(args, input=reverse_in_time(args["input"], lengths))
    want_out, want_h_n = run(flipped, backend, placement, lengths, False, reverse_in_time(noise, lengths))
    want_out = reverse_in_time(want_out, lengths)
    assert rel_err(out, want_out) <= 1e-6 and rel_err(h_n, want_h_n) <= 1e-6
    # the last step read input[0]; "voltage" returns the state v there and outputs f(v) (the cpu
    # kernels' own tanh, within an ulp of torch's)
    if placement == "voltage":
        torch.testing.assert_close(out[0], torch.tanh(h_n), rtol=2e-7, atol=1e-7)
    else:
        assert torch.equal(h_n, out[0])
    gen = torch.Generator().manual_seed(6)
    g_out, g_n = torch.randn(out.shape, generator=gen), torch.randn(h_n.shape, generator=gen)
    got = torch.autograd.grad((out * g_out).sum() + (h_n * g_n).sum(), list(args.values()))
    want = torch.autograd.grad((want_out * g_out).sum() + (want_h_n * g_n).sum(), list(args.values()))
    for name, a, b in zip(GRAD_NAMES, got, want):
        assert rel_err(a, b) <= 1e-5, name


@needs_cpu
@pytest.mark.parametrize("shape", [(1, 3, 8), (9, 70, 300)])  # one step; several threads
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_cpu_core_reverse_is_the_loop_over_flipped_tensors(shape, placement):
    c = core_inputs(*shape, seed=5)
    h, drive = cpu.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", placement, True, "fp32", reverse=True)
    h_f, drive_f = cpu.forward(c["u"].flip(0), c["h0"], c["w"], c["alpha"], "tanh", placement, True, "fp32")
    assert torch.equal(h, h_f.flip(0)) and torch.equal(drive, drive_f.flip(0))
    got = cpu.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], "tanh", placement, "fp32", reverse=True)
    want = cpu.backward(c["grad_h"].flip(0), h_f, c["h0"], drive_f, c["w"], c["alpha"], "tanh", placement, "fp32")
    assert torch.equal(got[0], want[0].flip(0)) and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


@needs_cpu
def test_cpu_core_reverse_reads_strided_gradients_in_place():
    c = core_inputs(6, 4, 20, seed=6)
    h, drive = cpu.forward(c["u"], c["h0"], c["w"], c["alpha"], "relu", "outside", True, "fp32", reverse=True)
    for grad_h in (torch.randn(6, 4, 40)[..., 20:], torch.randn(1, 1, 1).expand(6, 4, 20)):
        got = cpu.backward(grad_h, h, c["h0"], drive, c["w"], c["alpha"], "relu", "outside", "fp32", reverse=True)
        want = cpu.backward(grad_h.contiguous(), h, c["h0"], drive, c["w"], c["alpha"], "relu", "outside", "fp32",
                            reverse=True)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@needs_cpu
def test_gradcheck_float64_reverse_on_cpu():
    args = op_args(T=4, B=2, I=2, H=5, dtype=torch.float64, tau_range=(1.2, 3.0), seed=7)
    torch.autograd.gradcheck(
        lambda *a: tk.leaky_rnn(*a, nonlinearity="tanh", backend="cpu", reverse=True),
        tuple(args.values()), eps=1e-6, atol=1e-7)


@needs_cpu
@pytest.mark.parametrize("shape", [(6, 5, 20), (9, 70, 300)])  # the last runs on several threads
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_cpu_core_reverse_with_lengths_is_the_loop_over_reversed_rows(shape, placement):
    """Each row reversed within its own length, in place: the by-length loop (reverse order) against
    the row blocks (forward order) over reversed tensors (drive compared where the rows run; it is
    unspecified where they hold). The same per-row arithmetic, but each step's GEMM covers other rows
    in the two loops, and MKL rounds a row by its place in the GEMM's tiles: equal to 1e-6, not to
    the bit; the held steps' states are copies, equal to the bit."""
    steps, batch, hidden = shape
    c = core_inputs(steps, batch, hidden, seed=9)
    lengths = random_lengths(steps, batch, seed=10)
    running = (torch.arange(steps)[:, None] < lengths[None, :])[..., None]
    h, drive = cpu.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", placement, True, "fp32", lengths, reverse=True)
    h_r, drive_r = cpu.forward(reverse_in_time(c["u"], lengths), c["h0"], c["w"], c["alpha"], "tanh", placement, True,
                               "fp32", lengths)
    assert rel_err(h, reverse_in_time(h_r, lengths)) <= 1e-6
    last = h[0, torch.arange(batch)]  # each row's last state, in reverse order
    assert torch.equal(torch.where(running, h, last), h)  # held steps: copies of it
    running_drive = torch.where(running, reverse_in_time(drive_r, lengths), 0.0)
    assert rel_err(torch.where(running, drive, 0.0), running_drive) <= 1e-6
    for grad_h in (c["grad_h"], torch.randn(steps, batch, 2 * hidden)[..., :hidden], torch.ones(1, 1, 1).expand_as(h)):
        got = cpu.backward(grad_h, h, c["h0"], drive, c["w"], c["alpha"], "tanh", placement, "fp32", lengths,
                           reverse=True)
        want = cpu.backward(reverse_in_time(grad_h, lengths), h_r, c["h0"], drive_r, c["w"], c["alpha"], "tanh",
                            placement, "fp32", lengths)
        assert rel_err(got[0], reverse_in_time(want[0], lengths)) <= 1e-6
        assert rel_err(got[1], want[1]) <= 1e-6 and rel_err(got[2], want[2]) <= 1e-6
        assert torch.all(got[0][~running.expand_as(h)] == 0)


def test_torch_compile_reverse_matches_eager():
    args = op_args(T=5, B=3, I=2, H=6, seed=8, requires_grad=False)
    backend = "cpu" if cpu.is_available() else "reference"
    fn = torch.compile(lambda *a: tk.leaky_rnn(*a, nonlinearity="tanh", backend=backend, reverse=True),
                       fullgraph=True, backend="eager")
    got, eager = fn(*args.values()), tk.leaky_rnn(*args.values(), nonlinearity="tanh", backend=backend, reverse=True)
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])


@needs_cpu
def test_compiled_bidirectional_module_with_lengths_matches_eager():
    """torch.compile (aot_eager: the op's autograd traced, fullgraph) of a stacked bidirectional
    LeakyRNN with lengths, whose reverse directions run in place: outputs and every gradient."""
    torch.manual_seed(0)
    model = tk.LeakyRNN(2, 12, num_layers=2, bidirectional=True, nonlinearity="tanh", backend="cpu")
    x, lengths = torch.randn(7, 5, 2), torch.tensor([7, 3, 1, 5, 7])

    def grads(module):
        model.zero_grad(set_to_none=True)
        out, h_n = module(x, lengths=lengths)
        ((out ** 2).sum() + h_n.sum()).backward()
        return out.detach(), h_n.detach(), [p.grad.clone() for p in model.parameters()]
    eager = grads(model)
    compiled = grads(torch.compile(model, backend="aot_eager", fullgraph=True))
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    for got, want in zip(compiled[2], eager[2]):
        assert rel_err(got, want) <= 1e-6
