"""Opt-in persistent column-split kernels for the triton backend (benchmarks/NOTES.md, design C).

Same contract and results as triton_kernels.py; enabled by TIMESCALE_KERNELS_TRITON_PERSISTENT=1
(or triton_recurrence.persistent = True). The grid is (batch tiles, column splits): program (i, j)
owns batch rows i*BLOCK_B.. and output columns j*BLOCK_N.. for the whole sequence. Each step it
needs every column of the previous state, written by the other programs of its batch tile, so
those programs meet at a barrier made of a per-tile int32 counter in global memory:

    debug_barrier                      every warp of the program has issued its stores
    atomic_add(counter, 1, release)    publish them (cumulative over the block by the bar.sync)
    spin atomic_add(counter, 0, acquire) until counter >= (step + 1) * splits
    debug_barrier                      the acquire, done by one thread, now covers every warp

The counter only grows, so a program that is already one step ahead cannot make a slow one
miss its target (no reset, no ABA). The barrier deadlocks unless all programs of a tile are
resident at once: the launcher runs this path only when the grid fits on the device's SMs
(one program per SM always fits, since a launch fails outright if one does not), and falls
back to the one-program-per-tile kernels otherwise, with one warning. Under TRITON_INTERPRET=1
programs run one after another, so the launcher uses a single split (BLOCK_N >= H): the same
code runs, counter and spin included, but the spin is satisfied at once. The multi-program
barrier itself is exercised only on a GPU (tests marked gpu).

Data written by other programs (h[t-1] in the forward, d_drive[t] in the backward) is loaded
after the acquire, which the PTX memory model makes cover every warp through the bar.sync. The
loads ask for cache_modifier=".cg" (L2 only), but the software pipeliner turns them into 4-byte
cp.async.ca copies that drop the hint: correctness then rests on the gpu-scope acquire
invalidating the SM's L1, as the memory model requires (checked only on a GPU). The program's
own columns of the state stay in registers across steps.
"""
from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

from .triton_kernels import _row_tile_matmul, _step_backward, _step_forward


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Waits until the tile's counter reaches target, after adding this program's arrival."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def persistent_fwd_kernel(
    u_ptr, h0_ptr, w_ptr, alpha_ptr, h_ptr, drive_ptr, counter_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, INSIDE: tl.constexpr, SAVE_DRIVE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """u, h, drive: (T, B, H); h0: (B, H); alpha: (H,); M[k, n] = W[n, k]; counter: (tiles,) int32, zero.

    One grid barrier per step: step t+1 reads all columns of h[t] (RAW across programs); every
    step writes its own slice of h, so there is no write-after-read hazard to guard.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    splits = tl.num_programs(1)
    counter = counter_ptr + tl.program_id(0)
    mask = (rows[:, None] < B) & (cols[None, :] < H)
    offs = rows[:, None] * H + cols[None, :]
    state_dtype = h0_ptr.dtype.element_ty
    alpha = tl.load(alpha_ptr + cols, mask=cols < H, other=0.0)[None, :]
    h_own = tl.load(h0_ptr + offs, mask=mask, other=0.0)
    for t in range(T):
        cur = tl.cast(t, tl.int64) * B * H  # 64-bit: T * B * H may exceed 2**31
        if t == 0:
            prev_ptr = h0_ptr
        else:
            prev_ptr = h_ptr + (cur - B * H)
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
        # h[t-1] was written by the other programs of this tile: read it from L2 (".cg").
        acc = _row_tile_matmul(prev_ptr, w_ptr, rows, cols, B, H, stride_wk, stride_wn, acc,
                               DOT_PRECISION, DOT_BF16, BLOCK_K, ".cg")
        drive = acc + tl.load(u_ptr + cur + offs, mask=mask, other=0.0)
        h_own = _step_forward(h_own, drive, alpha, ACT, INSIDE)
        tl.store(h_ptr + cur + offs, h_own, mask=mask)
        if SAVE_DRIVE:
            tl.store(drive_ptr + cur + offs, drive, mask=mask)
        _grid_barrier(counter, (t + 1) * splits)


@triton.jit(do_not_specialize=["T"])
def persistent_bwd_kernel(
    grad_h_ptr, h_ptr, h0_ptr, drive_ptr, w_ptr, alpha_ptr,
    d_drive_ptr, dh_ptr, d_alpha_ptr, counter_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, INSIDE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """grad_h, h, drive, d_drive: (T, B, H); h0, dh (= dh0 on exit), d_alpha: (B, H) (per-row partials,
    summed by the launcher); alpha: (H,); M[k, n] = W[k, n]; counter: (tiles,) int32, zero.

    Per step t (reverse): phase 1, element-wise on own columns: dh = grad_h[t] + carry, d_drive[t],
    the d_alpha partial, carry = (1 - alpha) dz; phase 2: carry += d_drive[t][rows, :] @ W[:, cols].
    Phase 2 reads every column of d_drive[t] (RAW across programs): one grid barrier between the
    phases. Nothing else crosses programs: the next phase 1 uses only this program's carry (in
    registers) and inputs, and each step writes its own slice of d_drive, so one barrier per step
    suffices (none at the step's end).
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    splits = tl.num_programs(1)
    counter = counter_ptr + tl.program_id(0)
    mask = (rows[:, None] < B) & (cols[None, :] < H)
    offs = rows[:, None] * H + cols[None, :]
    state_dtype = h0_ptr.dtype.element_ty
    alpha = tl.load(alpha_ptr + cols, mask=cols < H, other=0.0)[None, :]
    carry = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
    d_alpha_rows = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
    for i in range(T):
        t = T - 1 - i
        cur = tl.cast(t, tl.int64) * B * H
        if t == 0:
            prev_ptr = h0_ptr
        else:
            prev_ptr = h_ptr + (cur - B * H)
        dh = tl.load(grad_h_ptr + cur + offs, mask=mask, other=0.0) + carry
        drive = tl.load(drive_ptr + cur + offs, mask=mask, other=0.0)
        h_prev = tl.load(prev_ptr + offs, mask=mask, other=0.0)
        d_drive, d_alpha, carry = _step_backward(dh, drive, h_prev, h_ptr + cur + offs, mask, alpha, ACT, INSIDE)
        d_alpha_rows += d_alpha
        tl.store(d_drive_ptr + cur + offs, d_drive, mask=mask)
        _grid_barrier(counter, (i + 1) * splits)
        carry = _row_tile_matmul(d_drive_ptr + cur, w_ptr, rows, cols, B, H, stride_wk, stride_wn, carry,
                                 DOT_PRECISION, DOT_BF16, BLOCK_K, ".cg")
    tl.store(dh_ptr + offs, carry, mask=mask)
    tl.store(d_alpha_ptr + offs, d_alpha_rows, mask=mask)


# ---- launchers ----

BLOCK_N_GPU = 64  # H = 500 -> 8 column splits; 16 tiles x 8 = 128 programs at B = 256 (132 SMs on an H100)
# 8 warps and 32-wide reduction blocks compile for sm_90 without register spills in every precision
# and dtype (ptxas -v; 4 warps, or BLOCK_K = 64 in bf16, spill).
BLOCK_K_GPU = 32
NUM_WARPS_GPU = 8
_warned: set = set()
last_launch = ""  # "persistent" or "fallback": which path the latest call took (for benchmarks and tests)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device; None (no limit) under the interpreter."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def plan(batch: int, hidden: int, block_b: int, device: torch.device):
    """(grid, BLOCK_N), or None when the grid cannot be co-resident (then warn once)."""
    if _interpreting():
        # Programs run sequentially: one split, so that the spin never waits for a later program.
        block_n = max(16, triton.next_power_of_2(hidden))
    else:
        block_n = BLOCK_N_GPU
    grid = (triton.cdiv(batch, block_b), triton.cdiv(hidden, block_n))
    sms = sm_count(device)
    if sms is not None and grid[0] * grid[1] > sms:
        key = (grid, sms)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"triton persistent kernels: grid {grid[0]}x{grid[1]} exceeds the device's {sms} SMs, "
                          "so its programs cannot all be resident; using the one-program-per-tile kernels",
                          stacklevel=3)
        return None
    return grid, block_n


def _launch(kernel, args, steps, batch, hidden, stride_wk, stride_wn, device, cfg, **constexprs) -> bool:
    """Plans the grid and launches kernel on (*args, counter, T, B, H, strides); False (nothing
    launched) when the grid cannot be co-resident and the caller must run the default kernel."""
    global last_launch
    planned = plan(batch, hidden, cfg.block_b, device)
    last_launch = "persistent" if planned else "fallback"
    if planned is None:
        return False
    grid, block_n = planned
    counter = torch.zeros(grid[0], dtype=torch.int32, device=device)  # one barrier counter per batch tile
    interpreting = _interpreting()
    kernel[grid](
        *args, counter, steps, batch, hidden, stride_wk, stride_wn, **constexprs,
        BLOCK_B=cfg.block_b, BLOCK_N=block_n, BLOCK_K=cfg.block_k if interpreting else BLOCK_K_GPU,
        num_warps=cfg.num_warps if interpreting else NUM_WARPS_GPU, num_stages=cfg.num_stages,
    )
    return True


def launch_forward(u, h0, m, alpha, h, drive, save_drive, stride_wk, stride_wn, act, inside,
                   dot_precision, dot_bf16, cfg) -> bool:
    """Runs the forward core in place (shapes as in persistent_fwd_kernel); False as _launch."""
    steps, batch, hidden = u.shape
    return _launch(persistent_fwd_kernel, (u, h0, m, alpha, h, drive if save_drive else h),
                   steps, batch, hidden, stride_wk, stride_wn, u.device, cfg,
                   ACT=act, INSIDE=inside, SAVE_DRIVE=bool(save_drive), DOT_PRECISION=dot_precision,
                   DOT_BF16=dot_bf16)


def launch_backward(grad_h, h, h0, drive, m, alpha, d_drive, dh0, d_alpha_rows, stride_wk, stride_wn,
                    act, inside, dot_precision, dot_bf16, cfg) -> bool:
    """Runs the backward core in place (shapes as in persistent_bwd_kernel); False as _launch."""
    steps, batch, hidden = h.shape
    return _launch(persistent_bwd_kernel, (grad_h, h, h0, drive, m, alpha, d_drive, dh0, d_alpha_rows),
                   steps, batch, hidden, stride_wk, stride_wn, h.device, cfg,
                   ACT=act, INSIDE=inside, DOT_PRECISION=dot_precision, DOT_BF16=dot_bf16)


def compile_for_target(arch: int = 90, precision: str = "fp32", dtype: torch.dtype = torch.float32,
                       nonlinearity: str = "tanh", placement: str = "outside", block_b: int = 16,
                       block_k: int = BLOCK_K_GPU, num_stages: int = 2, num_warps: int = NUM_WARPS_GPU):
    """Compiles both persistent kernels for NVIDIA sm_<arch> without a GPU (TRITON_INTERPRET unset);
    {"forward": compiled, "backward": compiled}, each with .asm["ptx"] and .metadata."""
    from triton.backends.compiler import GPUTarget

    from .triton_kernels import ACT_CODES
    from .triton_recurrence import _DOT_PRECISION
    if _interpreting():
        raise RuntimeError("compile_for_target: unset TRITON_INTERPRET (the kernels are interpreted functions)")
    state = {torch.float32: "*fp32", torch.float64: "*fp64"}[dtype]
    operand = "*bf16" if precision == "bf16" else state
    ints = {name: "i32" for name in ("T", "B", "H", "stride_wk", "stride_wn")}
    common = dict(ACT=ACT_CODES[nonlinearity], INSIDE=placement == "inside",
                  DOT_PRECISION=_DOT_PRECISION[precision], DOT_BF16=int(precision == "bf16"),
                  BLOCK_B=block_b, BLOCK_N=BLOCK_N_GPU, BLOCK_K=block_k)
    out = {}
    for key, kernel, pointers, extra in (
        ("forward", persistent_fwd_kernel, ("u", "h0", "w", "alpha", "h", "drive"), dict(SAVE_DRIVE=True)),
        ("backward", persistent_bwd_kernel,
         ("grad_h", "h", "h0", "drive", "w", "alpha", "d_drive", "dh", "d_alpha"), {}),
    ):
        constexprs = dict(common, **extra)
        signature = {f"{p}_ptr": operand if p == "w" else state for p in pointers}
        signature["counter_ptr"] = "*i32"
        signature.update(ints)
        signature.update({name: "constexpr" for name in constexprs})
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        out[key] = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=num_warps, num_stages=num_stages))
    return out
