"""Ensembles for the tests: K networks' arguments (each per network or shared) and the same K networks
run one call each, the specification an ensemble call is checked against."""
from __future__ import annotations

import torch

import timescale_kernels as tk

NAMES = ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau")


def ensemble_args(K, T=5, B=3, I=2, H=7, shared=(), dtype=torch.float64, seed=0) -> dict:
    """leaky_rnn's tensor arguments by name for K networks: (K, ...) per network, or one network's
    shape for the names in shared. tau uniform in [0.5, 3] (both sides of the clamp at 1)."""
    g = torch.Generator().manual_seed(seed)
    shapes = dict(input=(T, B, I), hx=(B, H), weight_ih=(H, I), weight_hh=(H, H), bias_ih=(H,), bias_hh=(H,),
                  tau=(H,))
    scales = dict(input=1.0, hx=0.5, weight_ih=0.5, weight_hh=1.0 / H ** 0.5, bias_ih=0.1, bias_hh=0.1)
    args = {}
    for name, shape in shapes.items():
        full = shape if name in shared else (K, *shape)
        if name == "tau":
            t = 0.5 + 2.5 * torch.rand(full, generator=g, dtype=dtype)
        else:
            t = scales[name] * torch.randn(full, generator=g, dtype=dtype)
        args[name] = t.requires_grad_()
    return args


def network(args: dict, k: int, shared=()) -> list:
    """Network k's arguments (a slice of each per-network tensor, the shared ones as they are)."""
    return [args[n] if n in shared else args[n][k] for n in NAMES]


def separate_calls(args, K, shared=(), lengths=None, drive_noise=None, **options):
    """(output (K, T, B, H), h_n (K, B, H)): the K networks one call each, on the reference backend."""
    outs = []
    for k in range(K):
        one_lengths = None if lengths is None else (lengths[k] if lengths.dim() == 2 else lengths)
        noise = None if drive_noise is None else drive_noise[k]
        outs.append(tk.leaky_rnn(*network(args, k, shared), backend="reference", lengths=one_lengths,
                                 drive_noise=noise, **options))
    return torch.stack([o for o, _ in outs]), torch.stack([h for _, h in outs])


def loss_of(output, h_n, seed=1):
    """A loss with fresh random weights on every element of both outputs (so every gradient path counts)."""
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(output.shape, generator=g, dtype=torch.float64).to(output.dtype)
    w_last = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(h_n.dtype)
    return (output * w_out).sum() + (h_n * w_last).sum()


def grads(args, output, h_n):
    """The gradients of loss_of(output, h_n) with respect to every tensor argument, by name."""
    values = torch.autograd.grad(loss_of(output, h_n), [args[n] for n in NAMES])
    return dict(zip(NAMES, values))
