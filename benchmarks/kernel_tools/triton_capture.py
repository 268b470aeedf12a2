"""Capture the Triton launches the launchers make, and compile them for sm_90 (or another card) as the JIT
would, without a GPU.

capturing(card): inside, the launchers see one CUDA H200 (or the card given, a
timescale_kernels.ops.devices.DeviceProperties: its SM count and shared memory set the persistent
plan, its compute capability the compile target) (torch.cuda and triton_recurrence's
device_properties / check_device patched) and tensors made by stand_in() are StandIns, which
report device "cuda" but live on the meta device (no memory, no GPU); every
`kernel[grid](*args, **kwargs)` is recorded as a Launch instead of running. compile_launch()
specialises a Launch's arguments with the installed triton's own launch-time code (its binder and
JITFunction._pack_args: a stride of 1 becomes the constant 1, integers and pointers divisible by 16
get tt.divisibility = 16; pointers are 256-byte aligned plus their storage offset, as CUDA
allocations are) and compiles for GPUTarget("cuda", launch.arch, 32) (90 unless captured for another
card): the same ASTSource, options and cache
key as the JIT's own compile on an H100/H200. resources() reads registers, spills and shared memory
from `ptxas -v` (the ptxas triton ships). Used by triton_compile.py (and through it by the tests and
gpu_check.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
import types
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

ARCH = 90
# An H200 as torch reports it (the launchers' co-residency rules read these).
DEVICE_PROPERTIES = types.SimpleNamespace(
    name="NVIDIA H200 (stand-in)", major=9, minor=0, multi_processor_count=132, total_memory=141 * 2 ** 30,
    L2_cache_size=60 * 2 ** 20, shared_memory_per_block=48 * 1024, shared_memory_per_block_optin=227 * 1024,
    shared_memory_per_multiprocessor=228 * 1024, regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
    max_threads_per_block=1024, warp_size=32, gcnArchName="", uuid="stand-in", is_integrated=False)


# ---- stand-in CUDA tensors --------------------------------------------------------------------------

class StandIn(torch.Tensor):
    """A tensor that reports device cuda:0 and a 256-byte aligned data_ptr, backed by a meta tensor."""
    _next_base = 1 << 40

    @staticmethod
    def __new__(cls, meta: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(cls, meta.shape, strides=meta.stride(),
                                                  storage_offset=meta.storage_offset(), dtype=meta.dtype,
                                                  device="cuda", requires_grad=meta.requires_grad)
        out.meta = meta
        out.base_address = StandIn._next_base
        StandIn._next_base += 1 << 36
        return out

    @classmethod
    def __torch_dispatch__(cls, func, types_, args=(), kwargs=None):
        raise RuntimeError(f"stand-in CUDA tensor reached the dispatcher with {func}: run it under StandInMode")


_CUDA_ATTRIBUTES = {torch.Tensor.device.__get__: lambda t: torch.device("cuda", 0),
                    torch.Tensor.is_cuda.__get__: lambda t: True,
                    torch.Tensor.data_ptr: lambda t: t.base_address + t.meta.storage_offset() * t.meta.element_size(),
                    torch.Tensor.get_device: lambda t: 0}


def _to_meta(value):
    if isinstance(value, StandIn):
        return value.meta
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("meta")
    if isinstance(value, str) and value.startswith("cuda"):
        return "meta"
    return value


class StandInMode(TorchFunctionMode):
    """Runs every torch call on meta tensors: cuda devices become meta, results become StandIns."""

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CUDA_ATTRIBUTES and args and isinstance(args[0], StandIn):
            return _CUDA_ATTRIBUTES[func](args[0])
        out = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        return tree_map(lambda v: StandIn(v) if isinstance(v, torch.Tensor) and v.is_meta else v, out)


def stand_in(shape, dtype=torch.float32) -> StandIn:
    """An uninitialised stand-in CUDA tensor of this shape (contiguous)."""
    return StandIn(torch.empty(shape, dtype=dtype, device="meta"))


@dataclasses.dataclass(frozen=True)
class Pointer:
    """What the JIT sees of a tensor argument: its dtype and address (triton calls data_ptr())."""
    dtype: torch.dtype
    address: int

    def data_ptr(self) -> int:
        return self.address


@dataclasses.dataclass
class Launch:
    """One recorded `kernel[grid](*args, **kwargs)`; tensors recorded as Pointers; arch: the sm_XX
    number of the card it was captured for (the compile target)."""
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict
    arch: int = ARCH

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


def _as_pointer(value):
    return Pointer(value.dtype, value.data_ptr()) if isinstance(value, StandIn) else value


@contextlib.contextmanager
def capturing(card=None):
    """Inside: the launchers see one CUDA H200, or card (a devices.DeviceProperties) (torch.cuda and
    triton_recurrence.device_properties / check_device patched, tensors are StandIns) and every
    JITFunction launch is recorded into the yielded list, with the card's arch, instead of running."""
    props = card or DEVICE_PROPERTIES
    arch = 10 * props.major + props.minor
    from triton.runtime.jit import JITFunction
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("capturing(): unset TRITON_INTERPRET (the launchers would take the interpreter's path)")
    launches: list[Launch] = []

    def record(self, *args, grid, warmup, **kwargs):
        grid = grid(dict(zip(self.arg_names, args))) if callable(grid) else tuple(grid)
        launches.append(Launch(self, tuple(grid), tuple(_as_pointer(a) for a in args),
                               {k: _as_pointer(v) for k, v in kwargs.items()}, arch))
        return None

    patches = {"is_available": lambda: True, "device_count": lambda: 1, "current_device": lambda: 0,
               "get_device_properties": lambda device=None: props,
               "get_device_capability": lambda device=None: (props.major, props.minor),
               "get_device_name": lambda device=None: props.name,
               "device": lambda device=None: contextlib.nullcontext(), "synchronize": lambda device=None: None}
    from timescale_kernels.ops import triton_recurrence as tr
    backend = {"device_properties": lambda device: props, "check_device": lambda u_like: None}
    saved = {name: getattr(torch.cuda, name) for name in patches}
    saved_backend = {name: getattr(tr, name) for name in backend}
    saved_run = JITFunction.run
    try:
        for name, fn in patches.items():
            setattr(torch.cuda, name, fn)
        for name, fn in backend.items():
            setattr(tr, name, fn)
        JITFunction.run = record
        with StandInMode():
            yield launches
    finally:
        JITFunction.run = saved_run
        for name, fn in saved_backend.items():
            setattr(tr, name, fn)
        for name, fn in saved.items():
            setattr(torch.cuda, name, fn)


# ---- specialise and compile ---------------------------------------------------------------------------

def target(arch: int = ARCH):
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", arch, 32)


def specialise(launch: Launch):
    """(signature, constexprs, attrs, options) as JITFunction.run derives them from these arguments."""
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target(launch.arch))
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    from triton import knobs
    kwargs = dict(launch.kwargs)  # the options JITFunction.run adds before binding, so the cache key matches
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound_args, specialization, options)


def compile_launch(launch: Launch):
    """The kernel the JIT would compile for this launch on its card (sm_90 by default; asm: ttgir, ptx, cubin)."""
    import triton
    options, signature, constexprs, attrs = specialise(launch)
    source = triton.compiler.ASTSource(launch.kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target(launch.arch), options=options.__dict__)


def specialised_arguments(launch: Launch) -> dict:
    """{argument name: JIT type, with ':16' for divisibility, or '=value' for a constant}: for reports."""
    options, signature, constexprs, attrs = specialise(launch)
    out = {}
    for index, (name, kind) in enumerate(signature.items()):
        if kind == "constexpr":
            out[name] = f"={constexprs[(index,)]}"
        else:
            out[name] = kind + (":16" if attrs.get((index,)) else "")
    return out


def resources(compiled, arch: int = ARCH) -> dict:
    """{'registers', 'spills' (bytes stored + loaded), 'smem' (bytes, ptxas static + triton's dynamic)}
    of a kernel compiled for sm_<arch>."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        run = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name={sm_arch_from_capability(arch)}", str(ptx),
                              "-o", str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, check=True)
    log = run.stderr + run.stdout
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    static_smem = re.search(r"(\d+) bytes smem", log)
    return {"registers": registers, "spills": int(spill.group(1)) + int(spill.group(2)) if spill else 0,
            "smem": (int(static_smem.group(1)) if static_smem else 0) + int(compiled.metadata.shared),
            "num_warps": compiled.metadata.num_warps}
