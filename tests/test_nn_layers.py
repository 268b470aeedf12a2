"""LeakyRNN's torch.nn.RNN contract: layers, directions, packed and padded batches, names, conversions."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import timescale_kernels as tk

from helpers import rel_err

BACKENDS = [b for b in tk.available_backends() if b != "triton"]
T, B, I, H = 6, 4, 3, 7


def _lengths():
    """Lengths in 1..T, including 1 and T, in no particular order."""
    return torch.tensor([3, T, 1, 5])


def _check_against_torch(rnn, leaky, x, h0, packed, batch_first):
    """Outputs, h_n and every gradient (parameters, input, h0) of leaky equal rnn's."""
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    hs = [h0.clone().requires_grad_(True) for _ in range(2)]
    results = []
    for model, xi, hi in ((rnn, xs[0], hs[0]), (leaky, xs[1], hs[1])):
        inp = pack_padded_sequence(xi, _lengths(), batch_first=batch_first, enforce_sorted=False) if packed else xi
        out, h_n = model(inp, hi)
        if packed:
            assert isinstance(out, PackedSequence)
            out = out.data
        results.append((out, h_n))
    (want, want_n), (got, got_n) = results
    assert got.shape == want.shape and got_n.shape == want_n.shape
    assert rel_err(got, want) <= 1e-5 and rel_err(got_n, want_n) <= 1e-5
    g_out, g_n = torch.randn_like(want), torch.randn_like(want_n)
    ((want * g_out).sum() + (want_n * g_n).sum()).backward()
    ((got * g_out).sum() + (got_n * g_n).sum()).backward()
    assert rel_err(xs[1].grad, xs[0].grad) <= 1e-5 and rel_err(hs[1].grad, hs[0].grad) <= 1e-5
    for name, p in rnn.named_parameters():
        assert rel_err(getattr(leaky, name).grad, p.grad) <= 1e-5, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_equals_torch_rnn(backend, nonlinearity, num_layers, bidirectional, batch_first, packed):
    torch.manual_seed(num_layers * 8 + bidirectional * 4 + batch_first * 2 + packed)
    rnn = nn.RNN(I, H, num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                 batch_first=batch_first)
    leaky = tk.LeakyRNN.from_torch_rnn(rnn, backend=backend)
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), B, H)
    _check_against_torch(rnn, leaky, x, h0, packed, batch_first)


def test_padded_lengths_equal_packed():
    torch.manual_seed(1)
    rnn = nn.RNN(I, H, num_layers=2, bidirectional=True, nonlinearity="tanh")
    leaky = tk.LeakyRNN.from_torch_rnn(rnn, backend="reference")
    x = torch.randn(T, B, I)
    packed_out, packed_n = leaky(pack_padded_sequence(x, _lengths(), enforce_sorted=False))
    padded_out, padded_n = leaky(x, lengths=_lengths())
    want = torch.nn.utils.rnn.pad_packed_sequence(packed_out)[0]
    assert rel_err(padded_out, want) <= 1e-6 and rel_err(padded_n, packed_n) <= 1e-6
    mask = torch.arange(T).unsqueeze(1) >= _lengths().unsqueeze(0)
    assert torch.all(padded_out[mask] == 0)


@pytest.mark.parametrize("backend", tk.available_backends())
def test_lengths_batch_equals_each_sequence_alone(backend):
    torch.manual_seed(2)
    steps, hidden = 5, 6
    m = tk.LeakyRNN(2, hidden, num_layers=2, bidirectional=True, tau_init=(1.0, 3.0), backend=backend)
    lengths = torch.tensor([2, steps, 1, 4])
    x = torch.randn(steps, 4, 2, requires_grad=True)
    h0 = torch.randn(4, 4, hidden, requires_grad=True)
    g = torch.randn(steps, 4, 2 * hidden)
    out, h_n = m(x, h0, lengths=lengths)
    ((out * g).sum() + h_n.sum() * 0.5).backward()
    batch_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    x_solo = x.detach().clone().requires_grad_(True)
    h0_solo = h0.detach().clone().requires_grad_(True)
    for b, n in enumerate(lengths.tolist()):
        o, hn = m(x_solo[:n, b:b + 1], h0_solo[:, b:b + 1])
        assert rel_err(out[:n, b:b + 1], o) <= 1e-5 and rel_err(h_n[:, b:b + 1], hn) <= 1e-5
        ((o * g[:n, b:b + 1]).sum() + hn.sum() * 0.5).backward()
    assert torch.all(out[2:, 0] == 0) and torch.all(out[1:, 2] == 0)
    assert rel_err(x.grad, x_solo.grad) <= 1e-5 and rel_err(h0.grad, h0_solo.grad) <= 1e-5
    for n, p in m.named_parameters():
        assert rel_err(batch_grads[n], p.grad) <= 1e-5, n


def test_parameter_names_and_aliases():
    m = tk.LeakyRNN(2, 5, num_layers=2, bidirectional=True, backend="reference")
    names = [n for n, _ in m.named_parameters()]
    torch_names = [n for n, _ in nn.RNN(2, 5, num_layers=2, bidirectional=True).named_parameters()]
    assert [n for n in names if not n.startswith("tau")] == torch_names
    assert {n for n in names if n.startswith("tau")} == {"tau_l0", "tau_l0_reverse", "tau_l1", "tau_l1_reverse"}
    assert m.weight_ih is m.weight_ih_l0 and m.tau is m.tau_l0 and m.bias_hh is m.bias_hh_l0
    assert m.weight_ih_l1.shape == (5, 10)
    one = tk.LeakyRNN(2, 5, backend="reference")
    assert {n for n, _ in one.named_parameters()} == {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau"}
    assert one.weight_hh_l0 is one.weight_hh and one.tau_l0 is one.tau


@pytest.mark.parametrize("bias", [True, False])
def test_all_weights_flatten_parameters_and_proj_size_like_torch_rnn(bias):
    """Code written for torch.nn.RNN reads all_weights, calls flatten_parameters() and checks proj_size."""
    m = tk.LeakyRNN(2, 5, num_layers=2, bidirectional=True, bias=bias, backend="reference")
    ref = nn.RNN(2, 5, num_layers=2, bidirectional=True, bias=bias)
    assert [[w.shape for w in ws] for ws in m.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    assert m.all_weights[3][1] is m.weight_hh_l1_reverse and m.all_weights[0][0] is m.weight_ih
    with torch.no_grad():  # the usual init loop over all_weights leaves tau alone
        for weights in m.all_weights:
            for w in weights:
                w.zero_()
    assert all(p.abs().sum() == 0 for n, p in m.named_parameters() if not n.startswith("tau"))
    assert m.tau_l1.min() >= 1.0
    x = torch.randn(4, 3, 2)
    before = m(x)[0]
    assert m.flatten_parameters() is None and torch.equal(m(x)[0], before)
    assert m.proj_size == ref.proj_size == 0


def test_state_dicts_load_across_spellings():
    torch.manual_seed(3)
    one = tk.LeakyRNN(2, 5, backend="reference")
    stored = {k: v.clone() for k, v in one.state_dict().items()}
    assert set(stored) == {"weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau"}
    torch_style = {k + "_l0": v for k, v in stored.items()}
    fresh = tk.LeakyRNN(2, 5, backend="reference")
    fresh.load_state_dict(torch_style)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in stored.items())
    layered = tk.LeakyRNN(2, 5, num_layers=2, backend="reference")
    layer1 = {k: v for k, v in layered.state_dict().items() if "_l1" in k}
    layered.load_state_dict({**stored, **layer1})
    assert torch.equal(layered.weight_hh_l0, stored["weight_hh"]) and torch.equal(layered.tau_l0, stored["tau"])


def test_memory_net_checkpoint_keys_unchanged():
    from timescale_kernels.models import MemoryNet
    net = MemoryNet("leaky", 6, num_heads=1, backend="reference")
    keys = set(net.state_dict())
    assert {"rnn.weight_ih", "rnn.weight_hh", "rnn.bias_ih", "rnn.bias_hh", "rnn.tau"} <= keys
    again = MemoryNet("leaky", 6, num_heads=1, backend="reference")
    again.load_state_dict(net.state_dict())
    x = torch.rand(5, 3, 1)
    h0 = torch.rand(3, 6)
    assert torch.equal(again(x, h0=h0), net(x, h0=h0))


def test_round_trip_to_torch_rnn_layers():
    torch.manual_seed(4)
    rnn = nn.RNN(3, 6, num_layers=3, nonlinearity="relu", bidirectional=True, batch_first=True, dropout=0.25)
    leaky = tk.LeakyRNN.from_torch_rnn(rnn, backend="reference")
    assert leaky.dropout == 0.25 and leaky.batch_first and leaky.num_layers == 3
    back = leaky.to_torch_rnn()
    for name, p in rnn.named_parameters():
        assert torch.equal(getattr(back, name), p), name
    assert (back.num_layers, back.bidirectional, back.batch_first, back.dropout) == (3, True, True, 0.25)
    stacked = tk.LeakyRNN(3, 6, num_layers=2, nonlinearity="tanh", tau_init=(1.0, 2.0), backend="reference")
    with pytest.raises(ValueError, match="tau"):
        stacked.to_torch_rnn()


def test_repr_like_torch_rnn():
    m = tk.LeakyRNN(3, 8, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True, nonlinearity="tanh")
    assert repr(m) == ("LeakyRNN(3, 8, num_layers=2, nonlinearity='tanh', placement='outside', batch_first=True, "
                       "dropout=0.5, bidirectional=True)")
    assert repr(tk.LeakyRNN(1, 4)) == "LeakyRNN(1, 4, nonlinearity='leaky_relu', placement='outside')"


def test_unbatched_and_dropout():
    torch.manual_seed(5)
    m = tk.LeakyRNN(3, 5, num_layers=2, bidirectional=True, dropout=0.5, backend="reference")
    x, h0 = torch.randn(6, 3), torch.randn(4, 5)
    m.eval()
    out, h_n = m(x, h0)
    assert out.shape == (6, 10) and h_n.shape == (4, 5)
    batched, batched_n = m(x.unsqueeze(1), h0.unsqueeze(1))
    assert rel_err(out, batched[:, 0]) <= 1e-6 and rel_err(h_n, batched_n[:, 0]) <= 1e-6
    m.train()
    torch.manual_seed(6)
    a = m(x, h0)[0]
    torch.manual_seed(7)
    b = m(x, h0)[0]
    assert rel_err(a, b) > 1e-3  # dropout between the layers changes the output in training
    assert rel_err(m(x, h0)[1][:2], h_n[:2]) <= 1e-6  # the first layer reads no dropout


@pytest.mark.parametrize("call, error, words", [
    (lambda m: m(torch.randn(6, 4, 3), torch.randn(2, 4, 5)), ValueError, ["hx", "(4, 4, 5)", "(2, 4, 5)"]),
    (lambda m: m(torch.randn(6, 3), torch.randn(1, 5)), ValueError, ["hx", "(4, 5)"]),
    (lambda m: m(torch.randn(6, 4, 3), lengths=torch.tensor([1, 2, 7, 3])), ValueError, ["lengths", "1..6"]),
    (lambda m: m(torch.randn(6, 4, 3), lengths=torch.tensor([0, 2, 6, 3])), ValueError, ["lengths", "1..6"]),
    (lambda m: m(torch.randn(6, 4, 3), lengths=torch.tensor([1, 2])), ValueError, ["lengths", "(4,)"]),
    (lambda m: m(torch.randn(6, 4, 3), lengths=torch.tensor([1.0, 2, 3, 4])), TypeError, ["lengths", "integer"]),
    (lambda m: m(torch.randn(6, 3), lengths=torch.tensor([2])), ValueError, ["lengths", "unbatched"]),
    (lambda m: m(pack_padded_sequence(torch.randn(6, 4, 3), torch.tensor([6, 5, 2, 1])),
                 lengths=torch.tensor([1, 1, 1, 1])), ValueError, ["lengths", "PackedSequence"]),
    (lambda m: m("x"), TypeError, ["input"]),
])
def test_bad_forward_inputs(call, error, words):
    m = tk.LeakyRNN(3, 5, num_layers=2, bidirectional=True, backend="reference")
    with pytest.raises(error) as info:
        call(m)
    for word in words:
        assert word in str(info.value)


def test_lengths_on_another_device():
    m = tk.LeakyRNN(3, 5, backend="reference")
    with pytest.raises(ValueError, match=r"lengths: expected device cpu .*got meta"):
        m(torch.randn(6, 2, 3), lengths=torch.tensor([1, 2], device="meta"))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(num_layers=0), ValueError, ["num_layers"]),
    (dict(dropout=1.5), ValueError, ["dropout"]),
    (dict(bidirectional=1), TypeError, ["bidirectional"]),
    (dict(bias=2), TypeError, ["bias", "keyword"]),
])
def test_bad_layer_arguments(kwargs, error, words):
    with pytest.raises(error) as info:
        tk.LeakyRNN(3, 5, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_torch_compile_traces_layers_directions_and_lengths():
    torch.manual_seed(8)
    m = tk.LeakyRNN(3, 5, num_layers=2, bidirectional=True, backend=BACKENDS[-1])
    x = torch.randn(T, B, 3)
    want, want_n = m(x, lengths=_lengths())
    got, got_n = torch.compile(m, backend="eager", fullgraph=True)(x, lengths=_lengths())
    assert rel_err(got, want) <= 1e-6 and rel_err(got_n, want_n) <= 1e-6


def test_stacked_bidirectional_with_pooled_buffers_equals_plain_tensors(monkeypatch):
    """At 8 MB and more, the cpu backend writes a stacked layer's concatenated input, the input
    projections and the input gradients into its output pool; output, h_n and every gradient equal
    those of plain torch tensors."""
    from timescale_kernels.ops import cpu, eager
    if not cpu.is_available():
        pytest.skip("the C++ extension is not built")
    used = []
    original = eager._PooledCat.forward
    monkeypatch.setattr(eager._PooledCat, "forward", staticmethod(lambda ctx, *t: used.append(1) or original(ctx, *t)))
    torch.manual_seed(0)
    m = tk.LeakyRNN(3, 400, num_layers=2, bidirectional=True, nonlinearity="tanh", backend="cpu")
    x = torch.randn(24, 128, 3, requires_grad=True)  # the layer-1 input (24, 128, 800): 9.8 MB
    results = {}
    for name, threshold in (("pooled", eager._POOL_MIN_BYTES), ("plain", 1 << 62)):
        monkeypatch.setattr(eager, "_POOL_MIN_BYTES", threshold)
        out, h_n = m(x)
        grads = torch.autograd.grad(out.square().sum() + h_n.sum(), [x, *m.parameters()])
        results[name] = (out, h_n, *grads)
    assert used == [1, 1]  # both layers: the second one's is the output
    for got, want in zip(results["pooled"], results["plain"]):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()
    tk.empty_cache()
