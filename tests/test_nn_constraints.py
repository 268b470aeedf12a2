"""PsychRNN/nn4n features of LeakyRNN: tau parameterisations, connectivity mask, Dale's law,
recurrent noise, a learnable initial state; each against its equation."""
import pytest
import torch
import torch.nn.functional as F

import timescale_kernels as tk

from helpers import rel_err

H = 6


def _signs():
    return torch.tensor([1.0, 1, -1, 1, -1, 1])


def _mask():
    torch.manual_seed(100)
    return torch.rand(H, H) > 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dale_signs_and_mask_hold_after_training(optimizer):
    torch.manual_seed(0)
    m = tk.LeakyRNN(2, H, num_layers=2, bidirectional=True, dale_signs=_signs(), connectivity_mask=_mask(),
                    backend="reference")
    opt = (torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(m.parameters(), lr=0.05))
    before = m.layer_tensors(1, True)[1].detach().clone()
    for _ in range(5):
        opt.zero_grad()
        out, _ = m(torch.randn(5, 3, 2))
        ((out - 1.0) ** 2).sum().backward()
        opt.step()
    for layer in range(2):
        for reverse in (False, True):
            w = m.layer_tensors(layer, reverse)[1].detach()
            assert torch.all(w[:, _signs() > 0] >= 0) and torch.all(w[:, _signs() < 0] <= 0)
            assert torch.all(w[~_mask()] == 0)
    assert not torch.equal(before, m.layer_tensors(1, True)[1].detach())  # it trained


def test_constrained_weights_enter_the_op():
    torch.manual_seed(1)
    m = tk.LeakyRNN(2, H, dale_signs=_signs(), connectivity_mask=_mask(), nonlinearity="tanh", backend="reference")
    with torch.no_grad():
        m.weight_hh.normal_()  # signs violated in the stored weight: only |W| counts
    x = torch.randn(5, 3, 2)
    w = m.weight_hh.abs() * _signs() * _mask()
    want, _ = tk.leaky_rnn(x, torch.zeros(3, H), m.weight_ih, w, m.bias_ih, m.bias_hh, m.tau,
                           nonlinearity="tanh", backend="reference")
    assert rel_err(m(x)[0], want) <= 1e-6
    fresh = tk.LeakyRNN(2, H, dale_signs=_signs(), connectivity_mask=_mask())
    assert torch.equal(fresh.weight_hh, fresh.layer_tensors()[1])  # initialised already obeying both


@pytest.mark.parametrize("name, bounds, expected", [
    ("clamp", None, lambda p: p.clamp(min=1)),
    ("softplus", None, lambda p: 1 + F.softplus(p)),
    ("sigmoid", (2.0, 10.0), lambda p: 2 + 8 * torch.sigmoid(p)),
])
def test_tau_parameterisations(name, bounds, expected):
    torch.manual_seed(2)
    m = tk.LeakyRNN(1, H, tau_parameterisation=name, tau_bounds=bounds, tau_init=(2.5, 4.0), backend="reference")
    tau = m.time_constants()
    assert rel_err(tau, expected(m.tau.detach())) <= 1e-6
    assert tau.min() >= 2.5 - 1e-5 and tau.max() <= 4.0 + 1e-5 and tau.std() > 0
    x = torch.randn(5, 3, 1)
    want, _ = tk.leaky_rnn(x, torch.zeros(3, H), m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, expected(m.tau),
                           backend="reference")
    assert rel_err(m(x)[0], want) <= 1e-6
    opt = torch.optim.SGD(m.parameters(), lr=50.0)
    for _ in range(3):
        opt.zero_grad()
        m(x)[0].pow(2).sum().backward()
        assert m.tau.grad.abs().sum() > 0
        opt.step()
    tau = m.time_constants()
    assert tau.min() >= (bounds[0] if bounds else 1.0) and (bounds is None or tau.max() <= bounds[1])


def test_clamp_is_the_default_and_stores_tau_itself():
    m = tk.LeakyRNN(1, H, tau_init=3.0)
    assert m.tau_parameterisation == "clamp" and torch.all(m.tau == 3.0) and torch.all(m.time_constants() == 3.0)


def test_noise_follows_its_equation_and_its_generator():
    torch.manual_seed(3)
    m = tk.LeakyRNN(2, H, sigma_rec=0.3, nonlinearity="tanh", tau_init=(1.0, 4.0), backend="reference")
    x = torch.randn(5, 3, 2)
    a = m(x, generator=torch.Generator().manual_seed(7))[0]
    b = m(x, generator=torch.Generator().manual_seed(7))[0]
    c = m(x, generator=torch.Generator().manual_seed(8))[0]
    assert torch.equal(a, b) and rel_err(a, c) > 1e-3
    xi = torch.randn(5, 3, H, generator=torch.Generator().manual_seed(7))
    noise = 0.3 * torch.sqrt(2 * m.tau.clamp(min=1)) * xi
    want, _ = tk.leaky_rnn(x, torch.zeros(3, H), m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh, m.tau,
                           nonlinearity="tanh", backend="reference", drive_noise=noise.detach())
    assert rel_err(a, want) <= 1e-6
    m.noise_generator = torch.Generator().manual_seed(7)
    assert torch.equal(m(x)[0], a)
    m.eval()
    quiet = tk.LeakyRNN(2, H, nonlinearity="tanh", backend="reference")
    quiet.load_state_dict(m.state_dict())
    assert torch.equal(m(x)[0], quiet(x)[0])


def test_cell_noise_same_seed_same_noise():
    cell = tk.LeakyRNNCell(2, H, sigma_rec=0.5)
    x, h = torch.randn(3, 2), torch.randn(3, H)
    a = cell(x, h, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, cell(x, h, generator=torch.Generator().manual_seed(1)))
    assert rel_err(a, cell(x, h, generator=torch.Generator().manual_seed(2))) > 1e-3


def test_learnable_initial_state():
    torch.manual_seed(4)
    m = tk.LeakyRNN(1, H, num_layers=2, learn_initial_state=True, backend="reference")
    assert m.initial_state.shape == (2, H) and "initial_state" in dict(m.named_parameters())
    with torch.no_grad():
        m.initial_state.normal_()
    x = torch.randn(4, 3, 1)
    out, h_n = m(x)
    want, _ = m(x, m.initial_state.detach().unsqueeze(1).expand(2, 3, H).contiguous())
    assert rel_err(out, want) <= 1e-6
    out.sum().backward()
    assert m.initial_state.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(connectivity_mask=torch.ones(H, H + 1)), ValueError, ["connectivity_mask", f"({H}, {H})", f"({H}, {H + 1})"]),
    (dict(connectivity_mask=torch.full((H, H), 0.5)), ValueError, ["connectivity_mask", "0 and 1"]),
    (dict(connectivity_mask=[[1]]), TypeError, ["connectivity_mask"]),
    (dict(dale_signs=torch.ones(H - 1)), ValueError, ["dale_signs", f"({H},)", f"({H - 1},)"]),
    (dict(dale_signs=torch.zeros(H)), ValueError, ["dale_signs", "+1"]),
    (dict(tau_parameterisation="exp"), ValueError, ["tau_parameterisation", "'softplus'", "exp"]),
    (dict(tau_parameterisation="sigmoid"), ValueError, ["tau_bounds"]),
    (dict(tau_parameterisation="sigmoid", tau_bounds=(0.5, 3.0)), ValueError, ["tau_bounds", "1 <= tau_min"]),
    (dict(tau_parameterisation="softplus", tau_bounds=(1.0, 3.0)), ValueError, ["tau_bounds", "sigmoid"]),
    (dict(sigma_rec=-0.1), ValueError, ["sigma_rec"]),
])
def test_bad_constraint_arguments(kwargs, error, words):
    for cls in (tk.LeakyRNN, tk.LeakyRNNCell):
        with pytest.raises(error) as info:
            cls(2, H, **kwargs)
        for word in words:
            assert word in str(info.value)


def test_bad_generator():
    m = tk.LeakyRNN(2, H, sigma_rec=0.1, backend="reference")
    with pytest.raises(TypeError, match="generator"):
        m(torch.randn(4, 3, 2), generator=7)
