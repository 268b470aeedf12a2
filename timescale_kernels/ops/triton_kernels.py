"""Triton kernels for the serial leaky-RNN core: one launch per direction covers all T steps.

Design ("one program per batch tile"): the grid runs over tiles of BLOCK_B batch rows. Rows of
different tiles never interact, so the programs need no synchronisation with one another. Each
program loops over time itself; within a step it sweeps output column blocks of BLOCK_N and, for
each, reduction blocks of BLOCK_K, streaming W from L2 and the previous state from its own
output buffer (L1/L2). A block barrier (``tl.debug_barrier``, a ``__syncthreads`` on the GPU)
after each step's stores makes the new state visible to every warp of the program before the
next step reads it. Only the block sizes, the nonlinearity, the modes and ROW_ALIGN are
compile-time constants; T, B and H are runtime values, so a new sequence length never recompiles.
ROW_ALIGN (triton_common.row_align: the largest of 16, 8, 4, 2, 1 dividing H and the operand's row
stride) lets the compiler move rows 16 bytes at a time where H is a multiple of 4, as at H = 500.

The operand matrix of each step's matmul is addressed as M[k, n] = w_ptr + k * stride_wk +
n * stride_wn: M = W^T in the forward, M = W in the backward. The launchers pass a contiguous
W^T to the forward, so that both directions read an n-major M (stride_wn = 1), which the compiler
stages in a swizzled shared layout; read through W's strides (stride_wk = 1) the forward's
operand lands k-major and unswizzled, with bank conflicts on every load (benchmarks/NOTES.md).

With lengths (HAS_LENGTHS), row b runs lengths[b] steps and then holds its state; the backward
passes the gradient of a held step straight to the step before it.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _aligned, _row_lengths, _row_tile_matmul, _step_backward, _step_forward, _step_pointers


@triton.jit(do_not_specialize=["T"])
def recurrence_fwd_kernel(
    u_ptr, h0_ptr, w_ptr, alpha_ptr, h_ptr, drive_ptr, len_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, INSIDE: tl.constexpr, SAVE_DRIVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """h[t] = step(h[t-1]) for t = 0..T-1 over this program's batch rows.

    u, h, drive: (T, B, H) contiguous; h0: (B, H); alpha: (H,); M[k, n] = W[n, k] (W^T);
    len: (B,) int64 when HAS_LENGTHS (else unused). An ensemble (grid axis 1 of K) gives every
    tensor a leading K, contiguous (M: (K, H, H)). drive[t] = u[t] + h[t-1] W^T is written only
    when SAVE_DRIVE.
    """
    H, stride_wk = _aligned(H, ROW_ALIGN), _aligned(stride_wk, ROW_ALIGN)
    # An ensemble's network program_id(1): each tensor holds its K networks one after another.
    net = tl.program_id(1).to(tl.int64)
    u_ptr += net * T * B * H
    h_ptr += net * T * B * H
    drive_ptr += net * T * B * H
    h0_ptr += net * B * H
    w_ptr += net * H * H
    alpha_ptr += net * H
    if HAS_LENGTHS:
        len_ptr += net * B
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    state_dtype = h0_ptr.dtype.element_ty
    steps = _row_lengths(len_ptr, rows, B, T, HAS_LENGTHS)
    for t in range(T):
        cur, prev_ptr = _step_pointers(t, h0_ptr, h_ptr, B, H)
        for n0 in range(0, H, BLOCK_N):
            cols = n0 + rn
            mask = (rows[:, None] < B) & (cols[None, :] < H)
            offs = rows[:, None] * H + cols[None, :]
            acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
            acc = _row_tile_matmul(prev_ptr, w_ptr, rows, cols, B, H, stride_wk, stride_wn, acc,
                                   DOT_PRECISION, DOT_BF16, BLOCK_K, "")
            drive = acc + tl.load(u_ptr + cur + offs, mask=mask, other=0.0)
            h_prev = tl.load(prev_ptr + offs, mask=mask, other=0.0)
            alpha = tl.load(alpha_ptr + cols, mask=cols < H, other=0.0)[None, :]
            h_new = _step_forward(h_prev, drive, alpha, ACT, INSIDE)
            if HAS_LENGTHS:
                h_new = tl.where(t < steps, h_new, h_prev)
            tl.store(h_ptr + cur + offs, h_new, mask=mask)
            if SAVE_DRIVE:
                tl.store(drive_ptr + cur + offs, drive, mask=mask)
        # The next step reads every column of h[t], written by every warp of this program.
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def recurrence_bwd_kernel(
    grad_h_ptr, h_ptr, h0_ptr, drive_ptr, w_ptr, alpha_ptr, len_ptr,
    d_drive_ptr, dh_ptr, d_alpha_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, INSIDE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """The reverse-time loop over this program's batch rows.

    grad_h, h, drive, d_drive: (T, B, H) contiguous; h0, dh: (B, H); alpha: (H,); len: (B,) int64
    when HAS_LENGTHS; an ensemble (grid axis 1 of K) gives every tensor a leading K, contiguous;
    d_alpha: (B, H), each row's partial sum over all steps (summed over rows by
    the launcher: element-wise accumulation in the same layout as the carry, so no replicated
    read-modify-write); M[k, n] = W[k, n]. dh carries the recurrent part of the adjoint of h[t]
    between steps and ends holding dh0.

    Per step, two phases separated by block barriers:
      1. element-wise, per column block: dh = grad_h[t] (0 where the row holds) + carry; d_drive[t] and the d_alpha
         partial; carry <- (1 - alpha) * dz (outside) or (1 - alpha) * dh (inside), or dh itself
         where the row holds its state.
      2. carry <- carry + d_drive[t] @ W, which needs every column of d_drive[t].
    Each element of the carry is read and rewritten by the same statement pair, so one buffer
    suffices.
    """
    H, stride_wk = _aligned(H, ROW_ALIGN), _aligned(stride_wk, ROW_ALIGN)
    # An ensemble's network program_id(1): each tensor holds its K networks one after another.
    net = tl.program_id(1).to(tl.int64)
    grad_h_ptr += net * T * B * H
    h_ptr += net * T * B * H
    drive_ptr += net * T * B * H
    d_drive_ptr += net * T * B * H
    h0_ptr += net * B * H
    dh_ptr += net * B * H
    d_alpha_ptr += net * B * H
    w_ptr += net * H * H
    alpha_ptr += net * H
    if HAS_LENGTHS:
        len_ptr += net * B
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    state_dtype = h0_ptr.dtype.element_ty
    row_ok = rows[:, None] < B
    steps = _row_lengths(len_ptr, rows, B, T, HAS_LENGTHS)
    # The outputs start uninitialised: zero this program's rows of the carry and of d_alpha.
    for n0 in range(0, H, BLOCK_N):
        cols = n0 + rn
        offs = rows[:, None] * H + cols[None, :]
        zero = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
        tl.store(dh_ptr + offs, zero, mask=row_ok & (cols[None, :] < H))
        tl.store(d_alpha_ptr + offs, zero, mask=row_ok & (cols[None, :] < H))
    tl.debug_barrier()
    for i in range(T):
        t = T - 1 - i
        cur, prev_ptr = _step_pointers(t, h0_ptr, h_ptr, B, H)
        live = t < steps
        for n0 in range(0, H, BLOCK_N):
            cols = n0 + rn
            mask = row_ok & (cols[None, :] < H)
            offs = rows[:, None] * H + cols[None, :]
            # A held step's grad_h is ignored: the op's h is a constant zero there.
            dh = tl.load(grad_h_ptr + cur + offs, mask=mask & live, other=0.0) + tl.load(dh_ptr + offs, mask=mask, other=0.0)
            drive = tl.load(drive_ptr + cur + offs, mask=mask, other=0.0)
            h_prev = tl.load(prev_ptr + offs, mask=mask, other=0.0)
            alpha = tl.load(alpha_ptr + cols, mask=cols < H, other=0.0)[None, :]
            d_drive, d_alpha, carry = _step_backward(dh, drive, h_prev, alpha, live, ACT, INSIDE)
            tl.store(d_drive_ptr + cur + offs, d_drive, mask=mask)
            tl.store(dh_ptr + offs, carry, mask=mask)
            tl.store(d_alpha_ptr + offs, tl.load(d_alpha_ptr + offs, mask=mask, other=0.0) + d_alpha, mask=mask)
        # Phase 2 reads every column of d_drive[t].
        tl.debug_barrier()
        for n0 in range(0, H, BLOCK_N):
            cols = n0 + rn
            mask = row_ok & (cols[None, :] < H)
            offs = rows[:, None] * H + cols[None, :]
            acc = tl.load(dh_ptr + offs, mask=mask, other=0.0)
            acc = _row_tile_matmul(d_drive_ptr + cur, w_ptr, rows, cols, B, H, stride_wk, stride_wn, acc,
                                   DOT_PRECISION, DOT_BF16, BLOCK_K, "")
            tl.store(dh_ptr + offs, acc, mask=mask)
        # The next step's phase 1 reads the carry written here by other warps.
        tl.debug_barrier()
