"""Test support: the Triton kernel launches the triton backend's launchers make, captured without
running them, and compiled for sm_90 the way the JIT compiles them at launch. Imported by the
compile tests in fresh processes without TRITON_INTERPRET (no GPU needed)."""
from __future__ import annotations

import re
import types

import torch

from timescale_kernels.ops import triton_common, triton_kernels, triton_persistent
from timescale_kernels.ops import triton_recurrence as tr

# An H100/H200 as torch.cuda.get_device_properties describes it (the fields the launchers read).
SM90_PROPS = types.SimpleNamespace(name="sm_90 (132 SMs)", major=9, minor=0, multi_processor_count=132,
                                   shared_memory_per_block_optin=227 * 1024)
KERNELS = ((triton_kernels, "recurrence_fwd_kernel"), (triton_kernels, "recurrence_bwd_kernel"),
           (triton_persistent, "persistent_fwd_kernel"), (triton_persistent, "persistent_bwd_kernel"))


class _Recorder:
    """Stands in for a JITFunction: kernel[grid](*args, **kwargs) records the call."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.calls.append((self.kernel, grid, args, kwargs))
        return call


def capture(T, B, H, precision="fp32", dtype=torch.float32, family="default", nonlinearity="tanh",
            placement="outside", lengths=False, config=None, props=SM90_PROPS):
    """[(kernel, grid, args, kwargs)] of one forward and one backward call at (T, B, H) on CPU
    tensors, on a device described by props."""
    calls, saved = [], {}
    originals = (tr.check_device, tr.device_properties)
    for module, name in KERNELS:
        saved[(module, name)] = getattr(module, name)
        setattr(module, name, _Recorder(getattr(module, name), calls))
    tr.check_device, tr.device_properties = (lambda u: None), (lambda device: props)
    try:
        g = torch.Generator().manual_seed(0)
        u, grad = (torch.randn(T, B, H, generator=g, dtype=dtype) for _ in range(2))
        h0, w, alpha = torch.randn(B, H, dtype=dtype), torch.randn(H, H, dtype=dtype), torch.rand(H, dtype=dtype)
        steps = torch.full((B,), T, dtype=torch.int64) if lengths else None
        h, drive = tr.forward(u, h0, w, alpha, nonlinearity, placement, True, precision, steps,
                              config=config, family=family)
        tr.backward(grad, u, h0, u.clone(), w, alpha, nonlinearity, placement, precision, steps,
                    config=config, family=family)
    finally:
        for (module, name), kernel in saved.items():
            setattr(module, name, kernel)
        tr.check_device, tr.device_properties = originals
    return calls


def compile_captured(calls, arch=90):
    """[(kernel name, grid, launch kwargs, compiled)] for captured launches."""
    return [(kernel.__name__, grid, kwargs, triton_common.compile_launch(kernel, args, kwargs, arch))
            for kernel, grid, args, kwargs in calls]


def shared_layouts(ttgir: str) -> list[str]:
    """The distinct shared-memory layouts a TTGIR module declares."""
    return sorted(set(re.findall(r"#ttg\.(?:swizzled_shared|nvmma_shared)<[^>]*>", ttgir)))
