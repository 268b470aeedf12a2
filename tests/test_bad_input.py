"""Every bad-input path names the argument, what was expected and what came."""
import pytest
import torch

import timescale_kernels as tk
from timescale_kernels.ops import NONLINEARITIES, PLACEMENTS

from helpers import op_args

OPTIONS = ("nonlinearity", "placement", "backend", "precision", "lengths", "drive_noise")


def call(**changes):
    args = op_args(requires_grad=False)
    options = {k: changes.pop(k) for k in list(changes) if k in OPTIONS}
    args.update(changes)
    return tk.leaky_rnn(*args.values(), **options)


@pytest.mark.parametrize("changes, error, words", [
    (dict(input=torch.randn(6, 3)), ValueError, ["input", "3-D", "(6, 3)"]),
    (dict(input=torch.randn(0, 3, 2)), ValueError, ["input", "T >= 1"]),
    (dict(input=torch.randn(6, 3, 4)), ValueError, ["weight_ih", "(13, 4)", "(13, 2)"]),
    (dict(hx=torch.randn(4, 13)), ValueError, ["hx", "(3, 13)", "(4, 13)"]),
    (dict(hx=torch.randn(1, 1, 3, 13)), ValueError, ["hx", "2-D", "3-D", "(K, B, H)", "(1, 1, 3, 13)"]),
    (dict(weight_hh=torch.randn(13, 12)), ValueError, ["weight_hh", "(13, 13)", "(13, 12)"]),
    (dict(bias_ih=torch.randn(12)), ValueError, ["bias_ih", "(13)", "(12,)"]),
    (dict(tau=torch.rand(12) + 1), ValueError, ["tau", "(13,)", "(12,)"]),
    (dict(tau=torch.tensor([float("nan")] * 13)), ValueError, ["tau", "finite", "nan"]),
    (dict(tau=torch.full((13,), float("inf"))), ValueError, ["tau", "finite", "inf"]),
    (dict(hx=torch.randn(3, 13, dtype=torch.float64)), TypeError, ["hx", "float32", "float64"]),
    (dict(input=torch.ones(6, 3, 2, dtype=torch.int64)), TypeError, ["input", "floating", "int64"]),
    (dict(weight_ih=[[1.0]]), TypeError, ["weight_ih", "torch.Tensor", "list"]),
    (dict(nonlinearity="softsign"), ValueError, ["nonlinearity", *NONLINEARITIES, "softsign"]),
    (dict(placement="middle"), ValueError, ["placement", *PLACEMENTS, "middle"]),
    (dict(backend="cuda"), ValueError, ["backend", "auto", "cuda"]),
    (dict(precision="fp8"), ValueError, ["precision", "fp32", "fp8"]),
    (dict(precision="bf16", backend="reference"), ValueError, ["precision", "triton", "reference"]),
    (dict(lengths=torch.tensor([1, 7, 2])), ValueError, ["lengths", "1..6", "from 1 to 7"]),
    (dict(lengths=torch.tensor([0, 6, 2])), ValueError, ["lengths", "1..6", "from 0 to 6"]),
    (dict(lengths=torch.tensor([1, 6])), ValueError, ["lengths", "(3,)", "(2,)"]),
    (dict(lengths=torch.tensor([[[1, 6, 2]]])), ValueError, ["lengths", "1-D", "(K, B)", "(1, 1, 3)"]),
    (dict(lengths=torch.tensor([1.0, 6.0, 2.0])), TypeError, ["lengths", "integer", "float32"]),
    (dict(lengths=[1, 6, 2]), TypeError, ["lengths", "torch.Tensor", "list"]),
    (dict(drive_noise=torch.randn(6, 3, 12)), ValueError, ["drive_noise", "(6, 3, 13)", "(6, 3, 12)"]),
    (dict(drive_noise=torch.randn(6, 3, 13, dtype=torch.float64)), TypeError, ["drive_noise", "float32", "float64"]),
])
def test_bad_input_is_named(changes, error, words):
    with pytest.raises(error) as info:
        call(**changes)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)


def test_device_mismatch_is_named():
    if not hasattr(torch, "device") or torch.device("meta") is None:
        pytest.skip("no meta device")
    with pytest.raises(ValueError, match=r"hx: expected device cpu .* got meta"):
        call(hx=torch.empty(3, 13, device="meta"))


def test_unavailable_backend_says_what_is_available():
    if "triton" in tk.available_backends():
        pytest.skip("triton is available here")
    with pytest.raises(ValueError, match=r"backend: 'triton' is not available.*available"):
        call(backend="triton")


def test_cpu_backend_refuses_other_devices():
    from timescale_kernels.ops import resolve_backend
    with pytest.raises(ValueError, match=r"backend: 'cpu' runs on CPU tensors; got tensors on meta"):
        resolve_backend("cpu", torch.device("meta"))


def test_lengths_on_another_device_is_named():
    with pytest.raises(ValueError, match=r"lengths: expected device cpu .* got meta"):
        call(lengths=torch.empty(3, dtype=torch.int64, device="meta"))
