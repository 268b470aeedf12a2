"""A triton kernel that fails at first use under backend="auto": the call runs on the reference, with one
warning naming the card, the kernel and the error, and later calls of that kernel key skip triton. A
backward kernel that fails after its forward ran gives the reference's gradients.

Runs without CUDA: under TRITON_INTERPRET=1 the triton backend runs on CPU tensors, and "auto" is made to
resolve to it on the CPU (backends.AUTO_BY_DEVICE), as it does on CUDA.
"""
import os
import warnings

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from timescale_kernels.ops import backends, leaky_rnn, triton_failures  # noqa: E402
from timescale_kernels.ops import triton_kernels, triton_recurrence as tr  # noqa: E402

from helpers import rel_err  # noqa: E402

pytestmark = pytest.mark.skipif(not tr.is_available(), reason=f"triton backend: {tr.unavailable_reason()}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class KernelBug(RuntimeError):
    """What the kernel made to fail raises (standing for a compile, resource or driver error)."""


@pytest.fixture
def auto_is_triton(monkeypatch):
    """'auto' resolves to triton on this device; a fresh failure record and fresh once-only warnings."""
    monkeypatch.setitem(backends.AUTO_BY_DEVICE, DEVICE, "triton")
    monkeypatch.setattr(backends, "_triton_failures", {})
    monkeypatch.setattr(backends, "_auto_triton", set())
    monkeypatch.setattr(backends, "_warned", set())


@pytest.fixture
def failing_forward(monkeypatch):
    """The default family's forward kernel raises at launch; returns the list of its launches."""
    launches = []

    def run(*args, **kwargs):
        launches.append(kwargs.get("grid"))
        raise KernelBug("out of resource: shared memory, Required: 300000, Hardware limit: 232448")

    monkeypatch.setattr(triton_kernels.recurrence_fwd_kernel, "run", run)
    return launches


def inputs(T=5, B=3, I=2, H=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(T, B, I, generator=g), 0.5 * torch.randn(B, H, generator=g), torch.randn(H, I, generator=g),
         0.3 * torch.randn(H, H, generator=g), torch.randn(H, generator=g), torch.randn(H, generator=g),
         1 + 3 * torch.rand(H, generator=g)]
    return [x.to(DEVICE).requires_grad_() for x in t]


def grads_of(backend, tensors, **kwargs):
    output, h_n = leaky_rnn(*tensors, backend=backend, **kwargs)
    grads = torch.autograd.grad((output.sum() + h_n.square().sum()), tensors)
    return output.detach(), grads


def test_a_failing_kernel_falls_back_to_the_reference_with_one_warning(auto_is_triton, failing_forward):
    tensors = inputs()
    want, want_grads = grads_of("reference", tensors)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [grads_of("auto", tensors) for _ in range(3)]
    for got, got_grads in results:
        assert rel_err(got, want) == 0.0
        assert all(rel_err(a, b) == 0.0 for a, b in zip(got_grads, want_grads))
    mine = [w for w in caught if "triton failed" in str(w.message)]
    assert len(mine) == 1, [str(w.message) for w in caught]
    message = str(mine[0].message)
    card = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (Triton interpreter)"
    assert card in message and "recurrence_fwd_kernel" in message and "KernelBug: out of resource" in message
    assert len(failing_forward) == 1  # the later calls of the same key went straight to the reference
    [failure] = triton_failures()
    assert (failure.device, failure.kernel) == (card, "recurrence_fwd_kernel")
    assert failure.error.startswith("KernelBug: out of resource")


def test_another_shape_tries_triton_again_and_the_same_shape_does_not(auto_is_triton, failing_forward):
    with pytest.warns(RuntimeWarning, match="recurrence_fwd_kernel"):
        grads_of("auto", inputs(B=3))
    with pytest.warns(RuntimeWarning, match="recurrence_fwd_kernel"):
        grads_of("auto", inputs(B=4))
    grads_of("auto", inputs(B=3, seed=1))
    assert len(failing_forward) == 2 and len(triton_failures()) == 2


def test_backend_triton_still_raises(auto_is_triton, failing_forward):
    with pytest.raises(KernelBug, match="out of resource"):
        grads_of("triton", inputs())
    assert triton_failures() == []


def test_a_bad_argument_is_not_a_kernel_failure(auto_is_triton, monkeypatch):
    """A ValueError from the launchers (here a precision the card lacks) is the caller's to see, not hidden
    behind the reference."""
    def refuse(props, precision):
        raise ValueError("precision: 'tf32' needs tf32/bf16 tensor cores")

    monkeypatch.setattr(tr, "check_precision", refuse)
    # the launchers ask the card only off the interpreter: stand for a card here
    monkeypatch.setattr(tr, "_interpreting", lambda: False)
    monkeypatch.setattr(tr, "check_device", lambda u_like: None)
    monkeypatch.setattr(tr, "device_properties", lambda device: None)
    with pytest.raises(ValueError, match="tensor cores"):
        leaky_rnn(*inputs(), backend="auto", precision="tf32")
    assert triton_failures() == []


def test_without_failures_auto_runs_triton(auto_is_triton, monkeypatch):
    calls = []
    real = tr.forward
    monkeypatch.setattr(tr, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    tensors = inputs()
    got, got_grads = grads_of("auto", tensors)
    want, want_grads = grads_of("reference", tensors)
    assert calls and rel_err(got, want) <= 1e-5 and triton_failures() == []


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_a_failing_backward_kernel_gives_the_reference_gradients(auto_is_triton, monkeypatch, lengths):
    """The forward ran on triton; its backward kernel fails: the gradients are the reference's, one
    warning names the backward kernel, and the next call runs on the reference from its forward on."""
    launches = []

    def run(*args, **kwargs):
        launches.append(1)
        raise KernelBug("PTX .version 9.9 does not support .target sm_75")

    monkeypatch.setattr(triton_kernels.recurrence_bwd_kernel, "run", run)
    forwards = []
    real = tr.forward
    monkeypatch.setattr(tr, "forward", lambda *a, **k: forwards.append(1) or real(*a, **k))
    tensors = inputs()
    extra = {} if lengths is None else {"lengths": torch.tensor(lengths, device=DEVICE)}
    want, want_grads = grads_of("reference", tensors, **extra)
    with pytest.warns(RuntimeWarning, match="recurrence_bwd_kernel on .*KernelBug: PTX"):
        got, got_grads = grads_of("auto", tensors, **extra)
    assert rel_err(got, want) <= 1e-5 and all(rel_err(a, b) <= 1e-5 for a, b in zip(got_grads, want_grads))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again, again_grads = grads_of("auto", tensors, **extra)
    assert rel_err(again, want) == 0.0 and all(rel_err(a, b) == 0.0 for a, b in zip(again_grads, want_grads))
    assert len(launches) == 1 and len(forwards) == 1
    assert [f.kernel for f in triton_failures()] == ["recurrence_bwd_kernel"]


def test_info_reports_the_kernel_that_failed_at_first_use(auto_is_triton, failing_forward):
    from timescale_kernels import info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = info.collect()
    trial = report["first_use"]
    assert trial["ran"] == "reference (a triton kernel failed)"
    assert len(trial["failures"]) == 1 and "recurrence_fwd_kernel" in trial["failures"][0]
    assert "KernelBug: out of resource" in trial["failures"][0]
    text = info.format_report(report)
    assert "triton failed" in text and "recurrence_fwd_kernel" in text


def test_info_reports_the_backend_that_ran_when_nothing_failed(auto_is_triton):
    from timescale_kernels import info
    trial = info.first_use_trial(DEVICE)
    assert trial == {"ran": "triton", "failures": []}
