"""What code written for torch.nn.RNN and torch.nn.RNNCell does with a module besides calling it:
torch.autocast, parametrizations (weight_norm, spectral_norm), the meta device, empty batches, the
stored weights, conversions keeping train/eval mode, and errors that name what the caller passed."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import timescale_kernels as tk
from timescale_kernels.ops.reference import masked_recurrent_weight

from helpers import rel_err

BACKENDS = [b for b in tk.available_backends() if b != "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32_and_returns_its_dtype(backend, dtype):
    """As torch.nn.RNN under autocast: the output comes in autocast's dtype; the recurrence runs in
    float32, so it is the float32 result rounded once."""
    torch.manual_seed(0)
    rnn = tk.LeakyRNN(3, 8, num_layers=2, bidirectional=True, backend=backend)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=dtype):
        out, h_n = rnn(x)
        assert out.dtype == dtype and h_n.dtype == dtype
        assert nn.RNN(3, 8)(x)[0].dtype == dtype  # the contract followed
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in rnn.parameters())
    # layer 0 sees the same input either way, so its output is the float32 one rounded once
    single = tk.LeakyRNN(3, 8, backend=backend)
    want, _ = single(x)
    with torch.autocast("cpu", dtype=dtype):
        got, _ = single(x)
    assert torch.equal(got, want.to(dtype))


def test_autocast_leaves_float64_alone():
    rnn = tk.LeakyRNN(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = rnn(x)
    assert out.dtype == torch.float64 and torch.equal(out, rnn(x)[0])


@pytest.mark.parametrize("make", [
    lambda: parametrizations.weight_norm(tk.LeakyRNN(3, 6, self_connections=True), "weight_hh"),
    lambda: parametrizations.spectral_norm(tk.LeakyRNN(3, 6, num_layers=2, self_connections=True), "weight_hh_l1"),
    lambda: parametrizations.weight_norm(tk.LeakyRNN(3, 6, bidirectional=True, self_connections=True),
                                         "weight_ih_l0_reverse"),
])
def test_parametrized_weights_are_what_the_module_runs(make):
    """torch.nn.utils.parametrize: the op receives the parametrized tensor, and the gradient reaches
    the parametrization's own parameters."""
    torch.manual_seed(1)
    rnn = make().eval()  # spectral_norm's power iteration would move the weight at each read in training mode
    name = next(iter(rnn.parametrizations.keys()))
    x = torch.randn(4, 2, 3)
    out, _ = rnn(x)
    plain = tk.LeakyRNN(3, 6, num_layers=rnn.num_layers, bidirectional=rnn.bidirectional, self_connections=True)
    with torch.no_grad():
        for key, value in rnn.state_dict().items():
            if not key.startswith("parametrizations."):
                plain.state_dict()[key].copy_(value)
        getattr(plain, name).copy_(getattr(rnn, name))
    assert rel_err(out, plain(x)[0]) <= 1e-6
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rnn.parametrizations[name].parameters())


def test_parametrized_cell_and_custom_parametrization():
    class Symmetric(nn.Module):
        def forward(self, w):
            return (w + w.t()) / 2

    cell = tk.LeakyRNNCell(3, 5, self_connections=True)
    parametrize.register_parametrization(cell, "weight_hh", Symmetric())
    x, h = torch.randn(2, 3), torch.randn(2, 5)
    w = cell.weight_hh
    assert torch.equal(w, w.t())
    want = tk.leaky_rnn_step(x, h, cell.weight_ih, w, cell.bias_ih, cell.bias_hh, cell.tau,
                             nonlinearity="leaky_relu", self_connections=True)
    assert torch.equal(cell(x, h), want)
    cell.reset_parameters()  # writes into the parametrization's original
    assert not torch.equal(cell.weight_hh, w)


def test_meta_device_then_to_empty_and_reset_is_whole_again():
    mask = (torch.rand(6, 6) > 0.5).float()
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    rnn = tk.LeakyRNN(3, 6, device="meta", connectivity_mask=mask, dale_signs=signs)
    rnn.to_empty(device="cpu")
    rnn.reset_parameters()
    assert torch.equal(rnn.connectivity_mask, mask) and torch.equal(rnn.dale_signs, signs)
    w = rnn.layer_tensors()[1]
    assert torch.equal(w == 0, (w == 0) | (mask == 0)) and ((w * signs) >= 0).all()
    assert rnn(torch.randn(4, 2, 3))[0].isfinite().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_outputs(backend):
    rnn = tk.LeakyRNN(3, 5, num_layers=2, bidirectional=True, backend=backend)
    out, h_n = rnn(torch.randn(4, 0, 3, requires_grad=True))
    assert out.shape == (4, 0, 10) and h_n.shape == (4, 0, 5)
    (out.sum() + h_n.sum()).backward()
    assert rnn.weight_hh_l0.grad is not None and torch.equal(rnn.weight_hh_l0.grad, torch.zeros(5, 5))
    assert tuple(nn.RNN(3, 5)(torch.randn(4, 0, 3))[0].shape) == (4, 0, 5)  # the contract followed
    cell = tk.LeakyRNNCell(3, 5)
    assert cell(torch.randn(0, 3)).shape == (0, 5)
    out, h_n = tk.leaky_rnn(torch.randn(4, 0, 3), torch.zeros(0, 5), cell.weight_ih, cell.weight_hh, None, None,
                            cell.tau, backend=backend, lengths=torch.zeros(0, dtype=torch.int64))
    assert out.shape == (4, 0, 5) and h_n.shape == (0, 5)


def test_stored_diagonal_is_zero_without_self_connections():
    """The op ignores weight_hh's diagonal unless self_connections: it is stored as zero, so that
    all_weights and the state_dict say what the network computes."""
    rnn = tk.LeakyRNN(3, 6, num_layers=2, bidirectional=True)
    for layer in rnn.all_weights:
        assert torch.equal(layer[1].diagonal(), torch.zeros(6))
    kept = tk.LeakyRNN(3, 6, self_connections=True)
    assert (kept.weight_hh.diagonal() != 0).all()
    cell = tk.LeakyRNNCell(3, 6)
    assert torch.equal(cell.weight_hh.diagonal(), torch.zeros(6))
    leaky = tk.LeakyRNN.from_torch_rnn(nn.RNN(3, 6), self_connections=False, tau_init=1.0)
    assert torch.equal(leaky.weight_hh.diagonal(), torch.zeros(6))
    w = leaky.weight_hh
    assert torch.equal(masked_recurrent_weight(w, False), w)


def test_conversions_keep_train_or_eval_mode():
    rnn = nn.RNN(3, 8, num_layers=2, dropout=0.5).eval()
    leaky = tk.LeakyRNN.from_torch_rnn(rnn)
    assert not leaky.training
    x = torch.randn(5, 2, 3)
    assert rel_err(leaky(x)[0], rnn(x)[0]) <= 1e-5
    assert not leaky.to_torch_rnn().training and leaky.train().to_torch_rnn().training
    cell = tk.LeakyRNNCell.from_torch_rnn_cell(nn.RNNCell(3, 4).eval())
    assert not cell.training


def test_to_torch_rnn_refuses_a_learned_initial_state_and_warns_of_noise():
    rnn = tk.LeakyRNN(3, 4, nonlinearity="tanh", tau_init=1.0, learn_initial_state=True)
    rnn.to_torch_rnn()  # zero initial state: the same network
    with torch.no_grad():
        rnn.initial_state.fill_(0.7)
    with pytest.raises(ValueError, match="initial_state.*hx"):
        rnn.to_torch_rnn()
    noisy = tk.LeakyRNN(3, 4, nonlinearity="tanh", tau_init=1.0, sigma_rec=0.1)
    with pytest.warns(UserWarning, match="sigma_rec"):
        converted = noisy.to_torch_rnn()
    x = torch.randn(5, 2, 3)
    assert rel_err(converted(x)[0], noisy.eval()(x)[0]) <= 1e-6


@pytest.mark.parametrize("call, error, words", [
    (lambda: tk.LeakyRNN(3, 4, batch_first=True)(torch.randn(2, 5, 4)), ValueError, ["input_size = 3", "(2, 5, 4)"]),
    (lambda: tk.LeakyRNN(3, 4)(torch.randn(5, 4)), ValueError, ["input_size = 3", "(5, 4)"]),
    (lambda: tk.LeakyRNNCell(3, 4)(torch.randn(2, 5)), ValueError, ["input_size = 3", "(2, 5)"]),
    (lambda: tk.LeakyRNN(3, 5)(torch.randn(4, 2, 3).double()), TypeError,
     ["input", "float64", "parameters", "module.to"]),
    (lambda: tk.LeakyRNNCell(3, 5)(torch.randn(2, 3).double()), TypeError, ["input", "float64", "parameters"]),
    (lambda: tk.LeakyRNN(3, 5)(torch.randn(4, 2, 3), (torch.zeros(1, 2, 5),) * 2), TypeError,
     ["hx", "torch.Tensor", "tuple"]),
    (lambda: tk.LeakyRNNCell(3, 5)(torch.randn(2, 3), [0.0]), TypeError, ["hx", "torch.Tensor", "list"]),
])
def test_errors_name_what_the_caller_passed(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert all(w in str(info.value) for w in words), str(info.value)


def test_dropout_on_one_layer_warns_as_torch_does():
    with pytest.warns(UserWarning, match="num_layers=1"):
        tk.LeakyRNN(3, 4, dropout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tk.LeakyRNN(3, 4, num_layers=2, dropout=0.2)


def test_assigning_either_spelling_replaces_the_registered_tensor():
    one = tk.LeakyRNN(3, 4)
    w = nn.Parameter(torch.zeros(4, 4))
    one.weight_hh_l0 = w
    assert one.weight_hh is w and "weight_hh_l0" not in dict(one.named_parameters())
    stacked = tk.LeakyRNN(3, 4, num_layers=2)
    v = nn.Parameter(torch.ones(4, 3))
    stacked.weight_ih = v
    assert stacked.weight_ih_l0 is v and "weight_ih" not in dict(stacked.named_parameters())
    assert stacked(torch.randn(5, 2, 3))[0].shape == (5, 2, 4)


def test_autocast_and_empty_batches_under_torch_compile():
    rnn = tk.LeakyRNN(3, 8)
    compiled = torch.compile(rnn, fullgraph=True)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = compiled(x)
        want, _ = rnn(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    assert compiled(torch.randn(5, 0, 3))[0].shape == (5, 0, 8)
