"""LeakyRNN: torch.nn.RNN's conventions, conversions, torch.compile."""
import pytest
import torch
from torch import nn

import timescale_kernels as tk
from timescale_kernels.models import MemoryNet, MultiHeadReadout

from helpers import rel_err

BACKENDS = [b for b in tk.available_backends() if b != "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("placement", ["outside", "inside"])
def test_tau_one_equals_torch_rnn(backend, nonlinearity, placement):
    torch.manual_seed(0)
    rnn = nn.RNN(3, 17, nonlinearity=nonlinearity)
    leaky = tk.LeakyRNN.from_torch_rnn(rnn, placement=placement, backend=backend)
    x = torch.randn(9, 4, 3)
    h0 = torch.randn(1, 4, 17)
    want, want_n = rnn(x, h0)
    got, got_n = leaky(x, h0)
    assert rel_err(got, want) <= 1e-5 and rel_err(got_n, want_n) <= 1e-5
    (want.sum() + want_n.sum()).backward()
    (got.sum() + got_n.sum()).backward()
    assert rel_err(leaky.weight_hh.grad, rnn.weight_hh_l0.grad) <= 1e-5
    assert rel_err(leaky.weight_ih.grad, rnn.weight_ih_l0.grad) <= 1e-5
    assert rel_err(leaky.bias_hh.grad, rnn.bias_hh_l0.grad) <= 1e-5


def test_round_trip_to_torch_rnn():
    leaky = tk.LeakyRNN(2, 6, nonlinearity="tanh", tau_init=1.0, backend="reference")
    rnn = leaky.to_torch_rnn()
    x = torch.randn(5, 3, 2)
    assert rel_err(rnn(x)[0], leaky(x)[0]) <= 1e-6
    assert rnn.weight_hh_l0.diagonal().abs().max() == 0


def test_to_torch_rnn_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match="tau"):
        tk.LeakyRNN(1, 4, nonlinearity="tanh", tau_init=(1.5, 2.0)).to_torch_rnn()
    with pytest.raises(ValueError, match="nonlinearity"):
        tk.LeakyRNN(1, 4, tau_init=1.0).to_torch_rnn()


def test_shapes_follow_torch_rnn():
    m = tk.LeakyRNN(3, 5, backend="reference")
    x = torch.randn(7, 2, 3)
    out, hn = m(x)
    assert out.shape == (7, 2, 5) and hn.shape == (1, 2, 5)
    assert torch.equal(hn[0], out[-1])
    out_u, hn_u = m(x[:, 0])
    assert out_u.shape == (7, 5) and hn_u.shape == (1, 5)
    assert rel_err(out_u, out[:, 0]) <= 1e-6
    mb = tk.LeakyRNN(3, 5, batch_first=True, backend="reference")
    mb.load_state_dict(m.state_dict())
    out_b, hn_b = mb(x.transpose(0, 1))
    assert out_b.shape == (2, 7, 5) and rel_err(out_b.transpose(0, 1), out) <= 1e-6
    h0 = torch.randn(1, 2, 5)
    assert rel_err(m(x, h0)[0], mb(x.transpose(0, 1), h0)[0].transpose(0, 1)) <= 1e-6


def test_parameters_and_init():
    m = tk.LeakyRNN(2, 50, tau_init=(1.0, 2.0))
    names = {n for n, _ in m.named_parameters()}
    assert names == {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau"}
    assert m.tau.min() >= 1.0 and m.tau.max() <= 2.0 and m.tau.std() > 0
    bound = 50 ** -0.5
    assert m.weight_hh.abs().max() <= bound
    fixed = tk.LeakyRNN(2, 50, tau_init=3.0, learn_tau=False)
    assert "tau" not in dict(fixed.named_parameters()) and "tau" in dict(fixed.named_buffers())
    assert torch.all(fixed.tau == 3.0)
    nobias = tk.LeakyRNN(2, 4, bias=False)
    assert nobias.bias_ih is None and nobias.bias_hh is None


def test_fixed_tau_stays_fixed_under_training():
    m = tk.LeakyRNN(1, 8, tau_init=2.5, learn_tau=False, backend="reference")
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    out, _ = m(torch.randn(5, 3, 1))
    out.sum().backward()
    opt.step()
    assert torch.all(m.tau == 2.5)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(input_size=0, hidden_size=4), ValueError, ["input_size", "positive"]),
    (dict(input_size=1, hidden_size=4, nonlinearity="gelu"), ValueError, ["nonlinearity", "gelu"]),
    (dict(input_size=1, hidden_size=4, placement="up"), ValueError, ["placement", "up"]),
    (dict(input_size=1, hidden_size=4, backend="gpu"), ValueError, ["backend", "gpu"]),
    (dict(input_size=1, hidden_size=4, tau_init=(2.0, 1.0)), ValueError, ["tau_init"]),
    (dict(input_size=1, hidden_size=4, tau_init=float("nan")), ValueError, ["tau_init"]),
])
def test_module_bad_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        tk.LeakyRNN(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_module_bad_forward_inputs():
    m = tk.LeakyRNN(3, 5, backend="reference")
    with pytest.raises(ValueError, match=r"input: expected .*3 features.*\(7, 2, 4\)"):
        m(torch.randn(7, 2, 4))
    with pytest.raises(ValueError, match=r"input: expected"):
        m(torch.randn(7))
    with pytest.raises(ValueError, match=r"hx: expected shape \(1, 2, 5\); got \(2, 5\)"):
        m(torch.randn(7, 2, 3), torch.randn(2, 5))
    with pytest.raises(TypeError, match="input"):
        m([1, 2, 3])


class _Classifier(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.rnn = tk.LeakyRNN(1, 12, backend=backend)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[1][0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_matches_eager(backend):
    torch.manual_seed(0)
    model = _Classifier(backend)
    x = torch.randn(6, 4, 1)
    want = model(x)
    want.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, backend="eager" if backend == "reference" else "inductor", fullgraph=True)
    got = compiled(x)
    got.sum().backward()
    assert rel_err(got, want) <= 1e-5
    for n, p in model.named_parameters():
        assert rel_err(p.grad, grads[n]) <= 1e-5, n


def test_multi_head_readout_and_memory_net():
    readout = MultiHeadReadout(6, 2, num_heads=2)
    h = torch.randn(4, 6)
    logits = readout(h)
    assert logits.shape == (2, 4, 2)
    assert rel_err(logits[1], readout.heads[1](h)) <= 1e-6
    assert readout.add_head() == 2 and readout(h, [2]).shape == (1, 4, 2)
    net = MemoryNet("leaky", 10, num_heads=3, backend="reference")
    h0 = net.initial_state(5, torch.Generator().manual_seed(0))
    assert h0.shape == (5, 10) and h0.min() >= 0 and h0.max() <= 0.1
    assert net(torch.rand(8, 5, 1), heads=[0, 2]).shape == (2, 5, 2)
    for core in ("gru", "lstm"):
        assert MemoryNet(core, 10, num_heads=1)(torch.rand(8, 5, 1)).shape == (1, 5, 2)
