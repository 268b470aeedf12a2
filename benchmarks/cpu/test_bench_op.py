"""One forward + backward of the op at (T, B, H) = (20, 64, 64), (50, 64, 128), (100, 256, 500):
the cpu backend against the study's eager loop, the same model as a lean eager loop, and
torch.nn.RNN (tanh, oneDNN). The step functions are bench_cpu.py's; loss = output.sum()."""
from __future__ import annotations

import bench_cpu
import pytest
import torch

from timescale_kernels.ops import cpu


def nn_rnn_step(rnn: torch.nn.RNN):
    """torch.nn.RNN's forward + backward on x (T, B, 1), h0 (B, H): the fused library's floor."""
    def step(x, h0, params):
        out, _ = rnn(x, h0.unsqueeze(0))
        out.sum().backward()
    return step


ROWS = {"cpu backend": lambda rnn: bench_cpu.cpu_backend_step,
        "study loop": lambda rnn: bench_cpu.study_loop_step,
        "lean eager loop": lambda rnn: bench_cpu.eager_step,
        "torch.nn.RNN": nn_rnn_step}


@pytest.mark.parametrize("row", ROWS)
def test_forward_backward(benchmark, op_shape, row):
    (steps, batch, hidden), rounds = op_shape
    if row == "cpu backend" and not cpu.is_available():
        pytest.skip(f"the C++ CPU kernel is not available: {cpu.unavailable_reason()}")
    torch.manual_seed(0)
    x, h0 = torch.randn(steps, batch, 1), torch.zeros(batch, hidden)
    params = bench_cpu.make_params(hidden, 1)
    rnn = torch.nn.RNN(1, hidden, nonlinearity="tanh")
    leaves = list(params.values()) + list(rnn.parameters())
    step = ROWS[row](rnn)

    def clear_grads():
        for p in leaves:
            p.grad = None

    benchmark.group = f"op fwd+bwd (T, B, H) = ({steps}, {batch}, {hidden})"
    benchmark.extra_info.update(T=steps, B=batch, H=hidden, I=1, threads=torch.get_num_threads())
    benchmark.pedantic(step, args=(x, h0, params), setup=clear_grads, rounds=rounds, warmup_rounds=1)
