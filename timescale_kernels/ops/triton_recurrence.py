"""The ``triton`` backend: launchers for the serial core's forward and backward kernels.

Implements the interface in core.py:

    forward(u, h0, w, alpha, nonlinearity, placement, save_drive, precision) -> (h, drive)
        u (T, B, H), h0 (B, H), w (H, H) already masked, alpha (H,);
        h (T, B, H) = h_1..h_T; drive (T, B, H), or an empty tensor when save_drive is False.
    backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, precision)
        -> (d_drive (T, B, H), dh0 (B, H), d_alpha (H,))

Each call is one kernel launch covering all T steps (see triton_kernels.py for the design).
precision: "fp32" exact (IEEE fp32 dots; float64 tensors run in float64), "tf32x3" (fp32 products
from three tf32 tensor-core products: near-fp32 accuracy at tensor-core speed), "tf32" (tf32 dots),
"bf16" (bf16 dot operands, W cast once per call, fp32 accumulation and state).

A forward pass with save_drive=False allocates nothing but h, so long gradient-free runs cost
T*B*H values. For runs whose h does not fit, call forward on consecutive time chunks of u,
passing the previous chunk's h[-1] as h0: the result is identical, the chunk boundary only
adds one launch.

Works without a GPU under TRITON_INTERPRET=1 (set before triton is imported), on CPU tensors.
Importing this module never fails; is_available() says whether it can run.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

try:
    import triton

    from . import triton_kernels as _kernels
    from . import triton_persistent as _persistent
    _IMPORT_ERROR = None
except Exception as err:  # triton missing, or broken at import: the backend reports itself unavailable
    triton = None
    _kernels = None
    _persistent = None
    _IMPORT_ERROR = err

# Fill every output with NaN before launching, so that an element a kernel fails to write
# cannot pass a test. Off by default (it costs a memset); tests switch it on.
poison_outputs = os.environ.get("TIMESCALE_KERNELS_POISON", "0") == "1"

# Opt-in: the persistent column-split kernels of triton_persistent.py (one grid barrier per step,
# the grid must fit on the SMs; otherwise these kernels run, with one warning). Off by default
# until measured on a GPU.
persistent = os.environ.get("TIMESCALE_KERNELS_TRITON_PERSISTENT", "0") == "1"

_DOT_PRECISION = {"fp32": "ieee", "tf32x3": "tf32x3", "tf32": "tf32", "bf16": "ieee"}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_available() -> bool:
    """True when triton imports and there is a CUDA device or the Triton interpreter is on."""
    return _kernels is not None and (torch.cuda.is_available() or _interpreting())


def unavailable_reason() -> str:
    """Why is_available() is False ('' when it is True)."""
    if _kernels is None:
        return f"triton is not importable ({_IMPORT_ERROR}); install it with: pip install triton"
    if not (torch.cuda.is_available() or _interpreting()):
        return "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run the kernels slowly on the CPU)"
    return ""


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch options. BLOCK_B >= 16 and the other blocks >= 16: tl.dot's minimum."""
    block_b: int = 16
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2


# The smallest batch tile gives the most programs (one per SM) for a given B, and each program's
# step time is dominated by streaming W, which does not shrink with the tile. Not yet tuned on a
# GPU: benchmarks/bench_gpu.py sweeps alternatives.
# 8 warps: 64x64 tiles compile for sm_90 without register spills in every precision (4 warps
# spill in tf32).
GPU_CONFIG = LaunchConfig(block_b=16, block_n=64, block_k=64, num_warps=8, num_stages=2)
# The interpreter runs one program at a time in numpy: smaller column blocks still exercise the
# multi-block loops and masks at H = 20..50, and keep each numpy op cheap.
INTERPRETER_CONFIG = LaunchConfig(block_b=16, block_n=32, block_k=32, num_warps=1, num_stages=1)


def launch_config() -> LaunchConfig:
    return INTERPRETER_CONFIG if _interpreting() else GPU_CONFIG


def _check(name: str, t: torch.Tensor, shape, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}; got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}; got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device}; got {t.device}")


def _prepare(u_like: torch.Tensor, precision: str, nonlinearity: str, placement: str):
    """Validates the shared arguments; returns (act code, inside, dot precision, dot bf16)."""
    if not is_available():
        raise RuntimeError(f"triton backend unavailable: {unavailable_reason()}")
    if u_like.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"triton backend: expected float32 or float64 tensors; got {u_like.dtype} "
                        "(leaky_rnn upcasts float16/bfloat16 to float32 before calling it)")
    if u_like.dtype == torch.float64 and precision != "fp32":
        raise ValueError(f"precision: {precision!r} needs float32 tensors; got float64 (use 'fp32')")
    if not _interpreting() and u_like.device.type != "cuda":
        raise ValueError(f"triton backend: expected CUDA tensors; got device {u_like.device}")
    if nonlinearity not in _kernels.ACT_CODES:
        raise ValueError(f"nonlinearity: expected one of {tuple(_kernels.ACT_CODES)}; got {nonlinearity!r}")
    if placement not in ("outside", "inside"):
        raise ValueError(f"placement: expected 'outside' or 'inside'; got {placement!r}")
    if precision not in _DOT_PRECISION:
        raise ValueError(f"precision: expected one of {tuple(_DOT_PRECISION)}; got {precision!r}")
    dot_bf16 = 0 if precision != "bf16" else (2 if _interpreting() else 1)
    return _kernels.ACT_CODES[nonlinearity], placement == "inside", _DOT_PRECISION[precision], dot_bf16


def _new(shape, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    return out.fill_(float("nan")) if poison_outputs else out


def _on_device(t: torch.Tensor):
    # Triton launches on torch's current device: make it the tensors' device.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _operand(w: torch.Tensor, dot_bf16: int) -> torch.Tensor:
    # bf16 mode: cast W once per call, halving the bytes every step streams.
    return w.to(torch.bfloat16) if dot_bf16 else w


def forward(u, h0, w, alpha, nonlinearity: str, placement: str, save_drive: bool, precision: str = "fp32",
            config: LaunchConfig | None = None):
    """h (T, B, H) = h_1..h_T and drive (T, B, H) (empty unless save_drive); see the module docstring."""
    act, inside, dot_precision, dot_bf16 = _prepare(u, precision, nonlinearity, placement)
    steps, batch, hidden = u.shape
    for name, t, shape in (("h0", h0, (batch, hidden)), ("w", w, (hidden, hidden)), ("alpha", alpha, (hidden,))):
        _check(name, t, shape, u.dtype, u.device)
    u, h0, w, alpha = (t.contiguous() for t in (u, h0, w, alpha))
    h = _new(u.shape, u)
    drive = _new(u.shape, u) if save_drive else u.new_empty((0,))
    if steps == 0:
        return h, drive
    cfg = config or launch_config()
    m = _operand(w, dot_bf16)
    grid = (triton.cdiv(batch, cfg.block_b),)
    with _on_device(u):
        if persistent and _persistent.launch_forward(
                u, h0, m, alpha, h, drive, save_drive, m.stride(1), m.stride(0), act, inside,
                dot_precision, dot_bf16, cfg):
            return h, drive
        _kernels.recurrence_fwd_kernel[grid](
            u, h0, m, alpha, h, drive if save_drive else h,
            steps, batch, hidden, m.stride(1), m.stride(0),  # M = W^T: M[k, n] = W[n, k]
            ACT=act, INSIDE=inside, SAVE_DRIVE=bool(save_drive),
            DOT_PRECISION=dot_precision, DOT_BF16=dot_bf16,
            BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return h, drive


def backward(grad_h, h, h0, drive, w, alpha, nonlinearity: str, placement: str, precision: str = "fp32",
             config: LaunchConfig | None = None):
    """d_drive (T, B, H), dh0 (B, H), d_alpha (H,); see the module docstring. Needs the drive
    saved by forward(..., save_drive=True)."""
    act, inside, dot_precision, dot_bf16 = _prepare(h, precision, nonlinearity, placement)
    steps, batch, hidden = h.shape
    if drive.numel() == 0:
        raise ValueError("drive: empty; the backward pass needs forward(..., save_drive=True)")
    for name, t, shape in (("grad_h", grad_h, h.shape), ("drive", drive, h.shape), ("h0", h0, (batch, hidden)),
                           ("w", w, (hidden, hidden)), ("alpha", alpha, (hidden,))):
        _check(name, t, shape, h.dtype, h.device)
    grad_h, h, h0, drive, w, alpha = (t.contiguous() for t in (grad_h, h, h0, drive, w, alpha))
    cfg = config or launch_config()
    d_drive = _new(h.shape, h)
    dh0 = _new((batch, hidden), h)
    d_alpha_rows = _new((batch, hidden), h)
    if steps == 0:
        return d_drive, dh0.zero_(), d_alpha_rows.zero_().sum(0)
    m = _operand(w, dot_bf16)
    with _on_device(h):
        if persistent and _persistent.launch_backward(
                grad_h, h, h0, drive, m, alpha, d_drive, dh0, d_alpha_rows, m.stride(0), m.stride(1),
                act, inside, dot_precision, dot_bf16, cfg):
            return d_drive, dh0, d_alpha_rows.sum(0)
        _kernels.recurrence_bwd_kernel[(triton.cdiv(batch, cfg.block_b),)](
            grad_h, h, h0, drive, m, alpha, d_drive, dh0, d_alpha_rows,
            steps, batch, hidden, m.stride(0), m.stride(1),  # M = W
            ACT=act, INSIDE=inside, DOT_PRECISION=dot_precision, DOT_BF16=dot_bf16,
            BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    # Per-row partial sums reduced here: deterministic, no atomics.
    return d_drive, dh0, d_alpha_rows.sum(0)


def compile_for_target(arch: int = 90, precision: str = "fp32", dtype: torch.dtype = torch.float32,
                       nonlinearity: str = "tanh", placement: str = "outside", config: LaunchConfig | None = None):
    """Compiles both kernels for NVIDIA sm_<arch> on any machine (triton ships ptxas), returning
    {"forward": compiled, "backward": compiled}; each has .asm["ptx"] and .metadata. Catches
    GPU-only compile failures that the interpreter cannot see. Needs TRITON_INTERPRET unset."""
    if _kernels is None:
        raise RuntimeError(unavailable_reason())
    if _interpreting():
        raise RuntimeError("compile_for_target: unset TRITON_INTERPRET (the kernels are interpreted functions)")
    from triton.backends.compiler import GPUTarget
    cfg = config or GPU_CONFIG
    state = {torch.float32: "*fp32", torch.float64: "*fp64"}[dtype]
    operand = "*bf16" if precision == "bf16" else state
    ints = {name: "i32" for name in ("T", "B", "H", "stride_wk", "stride_wn")}
    common = dict(ACT=_kernels.ACT_CODES[nonlinearity], INSIDE=placement == "inside",
                  DOT_PRECISION=_DOT_PRECISION[precision], DOT_BF16=int(precision == "bf16"),
                  BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    target = GPUTarget("cuda", arch, 32)
    out = {}
    for key, kernel, pointers, extra in (
        ("forward", _kernels.recurrence_fwd_kernel, ("u", "h0", "w", "alpha", "h", "drive"), dict(SAVE_DRIVE=True)),
        ("backward", _kernels.recurrence_bwd_kernel,
         ("grad_h", "h", "h0", "drive", "w", "alpha", "d_drive", "dh", "d_alpha"), {}),
    ):
        constexprs = dict(common, **extra)
        signature = {f"{p}_ptr": operand if p == "w" else state for p in pointers}
        signature.update(ints)
        signature.update({name: "constexpr" for name in constexprs})
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        out[key] = triton.compile(source, target=target, options=options)
    return out
