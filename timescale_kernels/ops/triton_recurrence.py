"""The ``triton`` backend: launchers for the serial core's forward and backward kernels.

Implements the compiled-backend interface of core.py:

    forward(u, h0, w, alpha, nonlinearity, placement, save_drive, precision, lengths) -> (h, drive)
        u (T, B, H), h0 (B, H), w (H, H) already masked, alpha (H,), lengths None or int64 (B,)
        with values in 1..T; h (T, B, H) = h_1..h_T (a row holds its state from t = lengths[b] on);
        drive (T, B, H), or an empty tensor when save_drive is False.
    backward(grad_h, h, h0, drive, w, alpha, nonlinearity, placement, precision, lengths)
        -> (d_drive (T, B, H), dh0 (B, H), d_alpha (H,)); at a held step (t >= lengths[b]) grad_h is
        ignored, d_drive = 0 and the carried gradient passes to the step before it.

Each call is one kernel launch covering all T steps, by one of two kernel families:
"default" (triton_kernels.py, one program per 16-row batch tile, any shape) and "persistent"
(triton_persistent.py, column splits meeting at a grid barrier once per step, W's column slice on
chip; only where its grid can be co-resident). choose_family() picks one from the device's
properties and the shape, never from timings; TIMESCALE_KERNELS_TRITON_FAMILY (auto, default,
persistent) or the keyword family= pins one, and last_family says which family the latest call ran.

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
from dataclasses import dataclass, replace

import torch

from .choices import nonlinearity_code

try:
    import triton

    from . import triton_common as _common
    from . import triton_kernels as _kernels
    from . import triton_persistent as _persistent
    _IMPORT_ERROR = None
except Exception as err:  # triton missing, or broken at import: the backend reports itself unavailable
    triton = None
    _common = _kernels = _persistent = None
    _IMPORT_ERROR = err

# Reverse time order is run by core.py flipping the tensors around the kernels (see cpu.py's loops).
NATIVE_REVERSE = False
# An ensemble (every tensor with a leading K networks) is one launch, the network a grid axis of the
# default kernels. The persistent kernels run one network (a lone one, K = 1): their grid already
# fills the SMs with one network's column splits, and K of them could not all be co-resident.
ENSEMBLE = True

# Fill every output with NaN before launching, so that an element a kernel fails to write
# cannot pass a test. Off by default (it costs a memset); tests switch it on.
poison_outputs = os.environ.get("TIMESCALE_KERNELS_POISON", "0") == "1"

FAMILIES = ("default", "persistent")
MMA_PRECISIONS = ("tf32x3", "tf32", "bf16")  # the precisions whose dots run on the tensor cores
FAMILY_ENV = "TIMESCALE_KERNELS_TRITON_FAMILY"
last_family = ""  # the kernel family the latest forward or backward call ran ("default" or "persistent")


def _interpreting() -> bool:
    return _common is not None and _common.interpreting()


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
    """Tile sizes and launch options of the default kernels. BLOCK_B >= 16 and the other blocks
    >= 16: tl.dot's minimum. contiguous_wt: the forward reads a contiguous copy of W^T (n-major,
    like the backward's W) rather than W through its strides (k-major). aligned_rows: the kernels
    are told how far H and the operand's row stride are divisible (ROW_ALIGN, triton_common.row_align),
    so rows move 16 bytes at a time wherever H is a multiple of 4; False tells them nothing beyond
    the JIT's own divisibility by 16 (for benchmarks; it also applies to the persistent family)."""
    block_b: int = 16
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2
    contiguous_wt: bool = True
    aligned_rows: bool = True


# The smallest batch tile gives the most programs (one per SM) for a given B, and each program's
# step time is dominated by streaming W, which does not shrink with the tile. 8 warps: 64x64 tiles
# compile for sm_90 without register spills in every precision.
GPU_CONFIG = LaunchConfig(block_b=16, block_n=64, block_k=64, num_warps=8, num_stages=2)
# The interpreter runs one program at a time in numpy: smaller column blocks still exercise the
# multi-block loops and masks at H = 20..50, and keep each numpy op cheap.
INTERPRETER_CONFIG = LaunchConfig(block_b=16, block_n=32, block_k=32, num_warps=1, num_stages=1)


def launch_config() -> LaunchConfig:
    return INTERPRETER_CONFIG if _interpreting() else GPU_CONFIG


def device_properties(device: torch.device):
    """torch.cuda.get_device_properties of a CUDA device; None for any other device."""
    return torch.cuda.get_device_properties(device) if device.type == "cuda" else None


def _smem_per_block(props) -> int:
    # torch exposes the opt-in limit (227 KB on sm_90) from 2.4 on; older: the sm_80/sm_90 values.
    optin = getattr(props, "shared_memory_per_block_optin", 0)
    return optin or (227 if props.major >= 9 else 163) * 1024


def _operand_bytes(precision: str, dtype: torch.dtype) -> int:
    """Bytes per element of M kept on chip by a persistent program (tf32x3 keeps two parts)."""
    w_bytes = 2 if precision == "bf16" else torch.empty((), dtype=dtype).element_size()
    return 2 * w_bytes if precision == "tf32x3" else w_bytes


def persistent_plan(device_props, B: int, H: int, precision: str, dtype: torch.dtype = torch.float32):
    """The persistent kernels' triton_persistent.Plan for (B, H) on a device, or None where the
    family cannot run there. device_props None: the interpreter's single-split plan. The tensor-core
    precisions get triton_persistent.mma_warps() warps, fp32 (FMA dots) triton_persistent.NUM_WARPS."""
    if device_props is None:
        return _persistent.plan(B, H, _operand_bytes(precision, dtype), None, None)
    if dtype == torch.float64:
        return None  # the float64 backward spills registers (sm_90, triton 3.6: 16x16 and 32x32 tiles)
    planned = _persistent.plan(B, H, _operand_bytes(precision, dtype), device_props.multi_processor_count,
                               _smem_per_block(device_props))
    if planned is not None and precision in MMA_PRECISIONS:  # no warp repeating another's tensor-core products
        planned = replace(planned, num_warps=_persistent.mma_warps(planned.block_b, planned.block_n))
    return planned


def persistent_tilings(device_props, B: int, H: int, precision: str, dtype: torch.dtype = torch.float32) -> list:
    """Every triton_persistent.Plan that fits (B, H) resident on a CUDA device (persistent_plan
    picks one of them); for benchmarks that compare tilings."""
    if dtype == torch.float64:
        return []
    return _persistent.candidates(B, H, _operand_bytes(precision, dtype), device_props.multi_processor_count,
                                  _smem_per_block(device_props))


def choose_family(device_props, B: int, H: int, precision: str, dtype: torch.dtype = torch.float32) -> str:
    """"persistent" when its grid of one program per SM fits co-resident on the device (at most
    multi_processor_count programs, W's column slice within one program's shared memory; float32
    only), else "default". A function of the device's properties and the shape only, never of
    timings: a resumed run takes the same kernels as an uninterrupted one. The sequence length
    does not enter: both families cover all steps in one launch. Not yet set from GPU measurements
    (benchmarks/NOTES.md)."""
    return "persistent" if persistent_plan(device_props, B, H, precision, dtype) is not None else "default"


def resolve_family(u_like: torch.Tensor, precision: str, family: str | None = None) -> str:
    """The family a call on tensors like u_like (T, B, H) asks for: family, else the environment
    variable TIMESCALE_KERNELS_TRITON_FAMILY, else "auto" = choose_family (the default family off
    CUDA). Whether it runs is decided at launch (a refused persistent launch runs the default)."""
    name = family if family is not None else os.environ.get(FAMILY_ENV, "auto")
    if name not in FAMILIES + ("auto",):
        where = "family" if family is not None else FAMILY_ENV
        raise ValueError(f"{where}: expected one of {FAMILIES + ('auto',)}; got {name!r}")
    if name != "auto":
        return name
    props = device_properties(u_like.device)
    if props is None:
        return "default"
    if u_like.dim() == 4:
        return "default"  # an ensemble (see ENSEMBLE)
    return choose_family(props, u_like.shape[1], u_like.shape[2], precision, u_like.dtype)


def _check(name: str, t: torch.Tensor, shape, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}; got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}; got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device}; got {t.device}")


def check_device(u_like: torch.Tensor) -> None:
    """Raises unless the kernels can run on u_like's device (CUDA, or any under the interpreter)."""
    if not is_available():
        raise RuntimeError(f"triton backend unavailable: {unavailable_reason()}")
    if not _interpreting() and u_like.device.type != "cuda":
        raise ValueError(f"triton backend: expected CUDA tensors; got device {u_like.device}")


def _prepare(u_like: torch.Tensor, precision: str, nonlinearity: str, placement: str, lengths):
    """Checks the tensors' dtype and device (names arrive validated); returns the kernels'
    constexprs ACT, INSIDE, HAS_LENGTHS, DOT_PRECISION, DOT_BF16."""
    check_device(u_like)
    if u_like.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"triton backend: expected float32 or float64 tensors; got {u_like.dtype} "
                        "(leaky_rnn upcasts float16/bfloat16 to float32 before calling it)")
    if u_like.dtype == torch.float64 and precision != "fp32":
        raise ValueError(f"precision: {precision!r} needs float32 tensors; got float64 (use 'fp32')")
    if lengths is not None:
        _check("lengths", lengths, (*u_like.shape[:-3], u_like.shape[-2]), torch.int64, u_like.device)
        if not lengths.is_contiguous():
            raise ValueError("lengths: expected a contiguous tensor (network k's lengths at k * B)")
    dot_precision, dot_bf16 = _common.dot_modes(precision)
    return dict(ACT=nonlinearity_code(nonlinearity), INSIDE=placement == "inside", HAS_LENGTHS=lengths is not None,
                DOT_PRECISION=dot_precision, DOT_BF16=dot_bf16)


def _new(shape, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    return out.fill_(float("nan")) if poison_outputs else out


def _on_device(t: torch.Tensor):
    # Triton launches on torch's current device: make it the tensors' device.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _operand(w: torch.Tensor, transpose: bool, dot_bf16: int) -> torch.Tensor:
    """The step's matmul operand M, row-major: W^T (forward) or W (backward); bf16 mode casts it
    once per call, halving the bytes each step reads."""
    m = w.transpose(-1, -2).contiguous() if transpose else w
    return m.to(torch.bfloat16) if dot_bf16 else m


def _run_persistent(kernel, family: str, u_like, precision: str, pointers: tuple, ints: tuple, constexprs: dict,
                    w_index: int, plan=None) -> bool:
    """Launches a persistent kernel when family asks for it and its plan fits (plan: that tiling
    instead of persistent_plan()'s); False when the default kernel must run instead (one warning
    when the persistent family was pinned but cannot run)."""
    global last_family
    last_family = "default"
    if family != "persistent":
        return False
    _, batch, hidden = u_like.shape
    if plan is not None and _interpreting() and plan.grid[0] > 1 and not _common.concurrent_programs:
        raise ValueError(f"plan: {plan.grid[0]} column splits under TRITON_INTERPRET=1, where programs run one "
                         "after another and could never meet at the barrier; use one split (grid (1, tiles))")
    planned = plan or persistent_plan(None if _interpreting() else device_properties(u_like.device), batch, hidden,
                                      precision, u_like.dtype)
    if planned is None:
        _common.warn_once(("no plan", batch, hidden, precision, u_like.dtype),
                          f"triton persistent kernels: (B, H) = ({batch}, {hidden}) in {precision} does not fit "
                          "co-resident on this device; using the default kernels", stacklevel=4)
        return False
    if _persistent.launch(kernel, planned, pointers, ints, constexprs, w_index):
        last_family = "persistent"
    return last_family == "persistent"


def forward(u, h0, w, alpha, nonlinearity: str, placement: str, save_drive: bool, precision: str = "fp32",
            lengths=None, *, config: LaunchConfig | None = None, family: str | None = None, plan=None):
    """h (T, B, H) and drive (T, B, H) (empty unless save_drive); see the module docstring.
    config: the default kernels' tiles (launch_config() when None); family: pins a kernel family;
    plan: the persistent kernels' tiling (a triton_persistent.Plan; persistent_plan()'s when None),
    which pins the persistent family (for benchmarks that compare tilings). With a leading network
    dimension K on every tensor (u (K, T, B, H), ..., lengths (K, B)): K networks in one launch."""
    if u.dim() == 4 and u.shape[0] == 1:  # a lone network: either family
        h, drive = forward(u[0], h0[0], w[0], alpha[0], nonlinearity, placement, save_drive, precision,
                           None if lengths is None else lengths[0], config=config, family=family, plan=plan)
        return h.unsqueeze(0), drive.unsqueeze(0) if drive.numel() else drive
    consts = _prepare(u, precision, nonlinearity, placement, lengths)
    lead, (steps, batch, hidden) = u.shape[:-3], u.shape[-3:]
    for name, t, shape in (("h0", h0, (batch, hidden)), ("w", w, (hidden, hidden)), ("alpha", alpha, (hidden,))):
        _check(name, t, (*lead, *shape), u.dtype, u.device)
    chosen = "default" if lead else "persistent" if plan is not None else resolve_family(u, precision, family)
    u, h0, w, alpha = (t.contiguous() for t in (u, h0, w, alpha))
    h = _new(u.shape, u)
    drive = _new(u.shape, u) if save_drive else u.new_empty((0,))
    if steps == 0:
        return h, drive
    cfg = config or launch_config()
    m = _operand(w, cfg.contiguous_wt, consts["DOT_BF16"])
    # M = W^T: M[k, n] = m[k, n] for the contiguous copy, W[n, k] read through W's strides otherwise.
    stride_wk, stride_wn = (m.stride(-2), m.stride(-1)) if cfg.contiguous_wt else (m.stride(-1), m.stride(-2))
    pointers = (u, h0, m, alpha, h, drive if save_drive else h, lengths if lengths is not None else alpha)
    ints = (steps, batch, hidden, stride_wk, stride_wn)
    consts["SAVE_DRIVE"] = bool(save_drive)
    consts["ROW_ALIGN"] = _common.row_align(hidden, stride_wk) if cfg.aligned_rows else 1
    with _on_device(u):
        if _run_persistent(_persistent.persistent_fwd_kernel, chosen, u, precision, pointers, ints, consts, 2, plan):
            return h, drive
        _kernels.recurrence_fwd_kernel[(triton.cdiv(batch, cfg.block_b), _networks(u))](
            *pointers, *ints, **consts, BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return h, drive


def backward(grad_h, h, h0, drive, w, alpha, nonlinearity: str, placement: str, precision: str = "fp32",
             lengths=None, *, config: LaunchConfig | None = None, family: str | None = None, plan=None):
    """d_drive (T, B, H), dh0 (B, H), d_alpha (H,); see the module docstring. Needs the drive
    saved by forward(..., save_drive=True). config, family and plan as in forward. With a leading
    network dimension K on every tensor: K networks in one launch, d_alpha (K, H)."""
    if h.dim() == 4 and h.shape[0] == 1:  # a lone network: either family
        one = backward(grad_h[0], h[0], h0[0], drive[0], w[0], alpha[0], nonlinearity, placement, precision,
                       None if lengths is None else lengths[0], config=config, family=family, plan=plan)
        return tuple(t.unsqueeze(0) for t in one)
    consts = _prepare(h, precision, nonlinearity, placement, lengths)
    lead, (steps, batch, hidden) = h.shape[:-3], h.shape[-3:]
    if drive.numel() == 0:
        raise ValueError("drive: empty; the backward pass needs forward(..., save_drive=True)")
    for name, t, shape in (("grad_h", grad_h, h.shape), ("drive", drive, h.shape), ("h0", h0, (*lead, batch, hidden)),
                           ("w", w, (*lead, hidden, hidden)), ("alpha", alpha, (*lead, hidden))):
        _check(name, t, shape, h.dtype, h.device)
    chosen = "default" if lead else "persistent" if plan is not None else resolve_family(h, precision, family)
    grad_h, h, h0, drive, w, alpha = (t.contiguous() for t in (grad_h, h, h0, drive, w, alpha))
    cfg = config or launch_config()
    d_drive = _new(h.shape, h)
    dh0 = _new((*lead, batch, hidden), h)
    d_alpha_rows = _new((*lead, batch, hidden), h)
    if steps == 0:
        return d_drive, dh0.zero_(), d_alpha_rows.zero_().sum(-2)
    m = _operand(w, False, consts["DOT_BF16"])  # M = W, row-major
    pointers = (grad_h, h, h0, drive, m, alpha, lengths if lengths is not None else alpha, d_drive, dh0, d_alpha_rows)
    ints = (steps, batch, hidden, m.stride(-2), m.stride(-1))
    consts["ROW_ALIGN"] = _common.row_align(hidden, m.stride(0)) if cfg.aligned_rows else 1
    with _on_device(h):
        if not _run_persistent(_persistent.persistent_bwd_kernel, chosen, h, precision, pointers, ints, consts, 4,
                               plan):
            _kernels.recurrence_bwd_kernel[(triton.cdiv(batch, cfg.block_b), _networks(h))](
                *pointers, *ints, **consts, BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )
    # Per-row partial sums reduced here: deterministic, no atomics.
    return d_drive, dh0, d_alpha_rows.sum(-2)


def _networks(t: torch.Tensor) -> int:
    """The grid's network axis: K for an ensemble's (K, T, B, H) tensor, 1 for one network's."""
    return t.shape[0] if t.dim() == 4 else 1
