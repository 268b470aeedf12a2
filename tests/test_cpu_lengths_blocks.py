"""The cpu kernel's row-block loops with per-row lengths (csrc/row_blocks.h): K networks in one call
against the same networks one call each, bit for bit, on one and two threads; against the by-length
loops (which the reverse time order still runs); float64 gradcheck."""
import pytest
import torch

from timescale_kernels.ops import PLACEMENTS, core, cpu
from timescale_kernels.ops.core import reverse_in_time

from helpers import rel_err

pytestmark = pytest.mark.skipif(not cpu.is_available(), reason="the C++ CPU kernel is not available")

K, T, HIDDEN = 3, 9, 13


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def ensemble_lengths(batch, seed=0):
    """(K, B): network 0 mixed (rows of length 1 and T among them), network 1 all of one length,
    network 2 mixed with runs of equal lengths (whole groups of rows held together)."""
    g = torch.Generator().manual_seed(seed)
    mixed = torch.randint(1, T + 1, (batch,), generator=g)
    mixed[0], mixed[batch // 2], mixed[-1] = T, 1, 1
    runs = torch.arange(batch).div(5, rounding_mode="floor").remainder(T) + 1
    runs[1] = T
    return torch.stack([mixed, torch.full((batch,), T // 2), runs])


def inputs(batch, dtype, seed=0):
    """u, h0, w, alpha, grad_h, grad_last for K networks, fresh random values."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    alpha = (0.05 + 0.9 * torch.rand(K, HIDDEN, generator=g, dtype=torch.float64)).to(dtype)
    return (randn(K, T, batch, HIDDEN), randn(K, batch, HIDDEN, scale=0.5),
            randn(K, HIDDEN, HIDDEN, scale=HIDDEN ** -0.5), alpha, randn(K, T, batch, HIDDEN),
            randn(K, batch, HIDDEN))


def kernel_results(u, h0, w, alpha, grad_h, grad_last, lengths, placement, reverse=False):
    """h (drive only where it is specified: t < lengths[b]), d_drive, dh0, d_alpha of one call."""
    h, drive = cpu.forward(u, h0, w, alpha, "tanh", placement, True, "fp32", lengths, reverse=reverse)
    grads = cpu.backward(grad_h, h, h0, drive, w, alpha, "tanh", placement, "fp32", lengths, reverse=reverse,
                         grad_last=grad_last)
    running = torch.arange(u.shape[-3]).unsqueeze(1) < lengths.unsqueeze(-2)
    return (h, drive.masked_fill(~running.unsqueeze(-1), 0.0), *grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("batch", [6, 40])  # 40 rows: a lone network splits into two blocks on two threads
def test_ensemble_equals_lone_calls(threads, batch, placement, dtype):
    u, h0, w, alpha, grad_h, grad_last = inputs(batch, dtype)
    lengths = ensemble_lengths(batch)
    together = kernel_results(u, h0, w, alpha, grad_h, grad_last, lengths, placement)
    for k in range(K):
        alone = kernel_results(u[k], h0[k], w[k], alpha[k], grad_h[k], grad_last[k], lengths[k], placement)
        for name, a, b in zip(("h", "drive", "d_drive", "dh0", "d_alpha"), together, alone):
            assert torch.equal(a[k], b), (name, k)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_held_rows_follow_the_contract(threads, placement):
    """h holds each row's last state past its length, d_drive is zero there, and the gradient reaching
    a held step from outside is ignored."""
    u, h0, w, alpha, grad_h, grad_last = inputs(40, torch.float64, seed=1)
    lengths = ensemble_lengths(40, seed=1)
    h, _, d_drive, dh0, d_alpha = kernel_results(u, h0, w, alpha, grad_h, grad_last, lengths, placement)
    held = torch.arange(T).unsqueeze(1) >= lengths.unsqueeze(-2)  # (K, T, B)
    last = h[torch.arange(K).unsqueeze(1), lengths - 1, torch.arange(40)]  # (K, B, H)
    expanded_last = last.unsqueeze(1).expand_as(h)
    assert torch.equal(h[held], expanded_last[held])
    assert torch.all(d_drive[held] == 0)
    poisoned = grad_h.masked_fill(held.unsqueeze(-1), float("nan"))
    again = kernel_results(u, h0, w, alpha, poisoned, grad_last, lengths, placement)
    for a, b in zip((d_drive, dh0, d_alpha), again[2:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_matches_the_by_length_loops(threads, placement, dtype):
    """The row blocks (forward time order) against the by-length loops (which run the reverse order,
    here on inputs reversed within each row's length): the same per-row arithmetic, except where a
    GEMM's row count changes a row's rounding (MKL's tiles), and d_alpha's partial sums taken over
    rows in batch order instead of length order."""
    batch = 40
    u, h0, w, alpha, grad_h, grad_last = inputs(batch, dtype, seed=2)
    lengths = ensemble_lengths(batch, seed=2)
    blocks = kernel_results(u, h0, w, alpha, grad_h, grad_last, lengths, placement)
    flipped = [reverse_in_time(t, lengths) for t in (u, grad_h)]
    by_length = kernel_results(flipped[0], h0, w, alpha, flipped[1], grad_last, lengths, placement, reverse=True)
    by_length = [reverse_in_time(t, lengths) for t in by_length[:3]] + list(by_length[3:])
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for name, a, b in zip(("h", "drive", "d_drive", "dh0", "d_alpha"), blocks, by_length):
        assert rel_err(a, b) <= tol, name
    # Network 1's rows share one length: its GEMMs cover the same rows in both loops on one thread.
    if threads == 1:
        for name, a, b in zip(("h", "drive", "d_drive", "dh0", "d_alpha"), blocks, by_length):
            assert torch.equal(a[1], b[1]), name


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_gradcheck_float64(placement):
    """Through the op (core.recurrence: the kernels, then core.py's weight gradient), two networks of
    (T, B, H) = (4, 5, 3), one with mixed lengths, one with a single length below T."""
    g = torch.Generator().manual_seed(3)
    u = torch.randn(2, 4, 5, 3, generator=g, dtype=torch.float64)
    h0 = 0.5 * torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    w = 0.6 * torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    alpha = 0.1 + 0.8 * torch.rand(2, 3, generator=g, dtype=torch.float64)
    lengths = torch.tensor([[4, 1, 3, 4, 2], [2, 2, 2, 2, 2]])

    def run(u, h0, w, alpha):
        h, _ = core.recurrence(u, h0, w, alpha, "tanh", placement, "cpu", "fp32", True, lengths)
        return h
    args = tuple(t.requires_grad_() for t in (u, h0, w, alpha))
    assert torch.autograd.gradcheck(run, args)
