"""Triton kernels for the serial leaky-RNN core: one launch per direction covers all T steps.

Design ("one program per batch tile"): the grid runs over tiles of BLOCK_B batch rows. Rows of
different tiles never interact, so the programs need no synchronisation with one another. Each
program loops over time itself; within a step it sweeps output column blocks of BLOCK_N and, for
each, reduction blocks of BLOCK_K, streaming W from L2 and the previous state from its own
output buffer (L1/L2). A block barrier (``tl.debug_barrier``, a ``__syncthreads`` on the GPU)
after each step's stores makes the new state visible to every warp of the program before the
next step reads it. Only the block sizes, the nonlinearity and the modes are compile-time
constants; T, B and H are runtime values, so a new sequence length never recompiles.

The operand matrix of each step's matmul is addressed as M[k, n] = w_ptr + k * stride_wk +
n * stride_wn, so the same loads serve the forward pass (M = W^T) and the backward (M = W)
without a transposed copy.

DOT_BF16: 0 dots in the state dtype with DOT_PRECISION; 1 bf16 operands, fp32 accumulation;
2 the same numbers by an fp32 dot of bf16-rounded operands (for the interpreter).

Nonlinearity codes (ACT): 0 leaky_relu (slope 0.01), 1 relu, 2 tanh, 3 sigmoid, 4 identity.
"""
from __future__ import annotations

import triton
import triton.language as tl

LEAKY_SLOPE = tl.constexpr(0.01)  # must match reference.LEAKY_SLOPE
ACT_CODES = {"leaky_relu": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "identity": 4}


@triton.jit
def _act(z, ACT: tl.constexpr):
    """f(z), element-wise."""
    if ACT == 0:
        y = tl.where(z > 0, z, z * LEAKY_SLOPE)
    elif ACT == 1:
        y = tl.where(z > 0, z, 0.0)
    elif ACT == 2:
        # tanh via exp(-2|z|): no overflow for any z, accurate to a few ulp near zero in absolute terms.
        e = tl.exp(-2.0 * tl.abs(z))
        r = (1.0 - e) / (1.0 + e)
        y = tl.where(z < 0, -r, r)
    elif ACT == 3:
        y = 1.0 / (1.0 + tl.exp(-z))
    else:
        y = z
    return y


@triton.jit
def _act_backward(g, y, ACT: tl.constexpr):
    """g * f'(z), with f' written through the output y = f(z) (as autograd does for tanh and
    sigmoid; for the ReLUs y > 0 exactly when z > 0)."""
    if ACT == 0:
        r = tl.where(y > 0, g, g * LEAKY_SLOPE)
    elif ACT == 1:
        r = tl.where(y > 0, g, 0.0)
    elif ACT == 2:
        r = g * (1.0 - y * y)
    elif ACT == 3:
        r = g * (y * (1.0 - y))
    else:
        r = g
    return r


@triton.jit
def _step_forward(h_prev, drive, alpha, ACT: tl.constexpr, INSIDE: tl.constexpr):
    """h_t from h_{t-1} and drive_t, element-wise; alpha broadcasts over rows."""
    if INSIDE:
        h_new = (1.0 - alpha) * h_prev + alpha * _act(drive, ACT)
    else:
        h_new = _act((1.0 - alpha) * h_prev + alpha * drive, ACT)
    return h_new


@triton.jit
def _step_backward(dh, drive, h_prev, h_t_ptrs, mask, alpha, ACT: tl.constexpr, INSIDE: tl.constexpr):
    """One reverse step, element-wise: (d_drive_t, this step's d_alpha term, the carry
    (1 - alpha) * dz or (1 - alpha) * dh, to which d_drive_t @ W is added). h_t is loaded from
    h_t_ptrs only where it is needed (the "outside" placement writes f' through it)."""
    if INSIDE:
        f_drive = _act(drive, ACT)
        d_drive = alpha * _act_backward(dh, f_drive, ACT)
        d_alpha = dh * (f_drive - h_prev)
        carry = (1.0 - alpha) * dh
    else:
        h_t = tl.load(h_t_ptrs, mask=mask, other=0.0)
        dz = _act_backward(dh, h_t, ACT)
        d_drive = alpha * dz
        d_alpha = dz * (drive - h_prev)
        carry = (1.0 - alpha) * dz
    return d_drive, d_alpha, carry


@triton.jit
def _row_tile_matmul(x_ptr, w_ptr, rows, cols, B, H, stride_wk, stride_wn, acc,
                     DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr, BLOCK_K: tl.constexpr,
                     X_CACHE: tl.constexpr):
    """acc + x[rows, :] @ M[:, cols] over all H reduction indices, in BLOCK_K slices.
    x is a (B, H) row-major slice; masked elements load as zero so padding adds nothing.
    X_CACHE: the cache modifier of the x loads ("" by default; ".cg", L2 only, where other
    programs wrote x)."""
    rk = tl.arange(0, BLOCK_K)
    row_ok = rows[:, None] < B
    col_ok = cols[None, :] < H
    for k0 in range(0, H, BLOCK_K):
        k = k0 + rk
        x = tl.load(x_ptr + rows[:, None] * H + k[None, :], mask=row_ok & (k[None, :] < H), other=0.0,
                    cache_modifier=X_CACHE)
        m = tl.load(w_ptr + k[:, None] * stride_wk + cols[None, :] * stride_wn,
                    mask=(k[:, None] < H) & col_ok, other=0.0)
        if DOT_BF16 == 1:
            acc = tl.dot(x.to(tl.bfloat16), m.to(tl.bfloat16), acc)
        elif DOT_BF16 == 2:
            # The interpreter's bf16 dot is wrong; bf16-rounded operands in an fp32 dot give the
            # same products (exact in fp32) with fp32 accumulation.
            acc = tl.dot(x.to(tl.bfloat16).to(tl.float32), m.to(tl.bfloat16).to(tl.float32), acc,
                         input_precision="ieee")
        else:
            acc = tl.dot(x, m, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit(do_not_specialize=["T"])
def recurrence_fwd_kernel(
    u_ptr, h0_ptr, w_ptr, alpha_ptr, h_ptr, drive_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, INSIDE: tl.constexpr, SAVE_DRIVE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """h[t] = step(h[t-1]) for t = 0..T-1 over this program's batch rows.

    u, h, drive: (T, B, H) contiguous; h0: (B, H); alpha: (H,); M[k, n] = W[n, k] (W^T).
    drive[t] = u[t] + h[t-1] W^T is written only when SAVE_DRIVE.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    state_dtype = h0_ptr.dtype.element_ty
    for t in range(T):
        # 64-bit offsets: T * B * H exceeds 2**31 for long analysis runs.
        cur = tl.cast(t, tl.int64) * B * H
        if t == 0:
            prev_ptr = h0_ptr
        else:
            prev_ptr = h_ptr + (cur - B * H)
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
            tl.store(h_ptr + cur + offs, h_new, mask=mask)
            if SAVE_DRIVE:
                tl.store(drive_ptr + cur + offs, drive, mask=mask)
        # The next step reads every column of h[t], written by every warp of this program.
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def recurrence_bwd_kernel(
    grad_h_ptr, h_ptr, h0_ptr, drive_ptr, w_ptr, alpha_ptr,
    d_drive_ptr, dh_ptr, d_alpha_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, INSIDE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The reverse-time loop over this program's batch rows.

    grad_h, h, drive, d_drive: (T, B, H) contiguous; h0, dh: (B, H); alpha: (H,);
    d_alpha: (B, H), each row's partial sum over all steps (summed over rows by the launcher:
    element-wise accumulation in the same layout as the carry, so no replicated read-modify-write);
    M[k, n] = W[k, n]. dh carries the recurrent part of the adjoint of h[t] between steps and
    ends holding dh0.

    Per step, two phases separated by block barriers:
      1. element-wise, per column block: dh = grad_h[t] + carry; d_drive[t] and the d_alpha
         partial; carry <- (1 - alpha) * dz (outside) or (1 - alpha) * dh (inside).
      2. carry <- carry + d_drive[t] @ W, which needs every column of d_drive[t].
    Each element of the carry is read and rewritten by the same statement pair, so one buffer
    suffices.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rn = tl.arange(0, BLOCK_N)
    state_dtype = h0_ptr.dtype.element_ty
    row_ok = rows[:, None] < B
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
        cur = tl.cast(t, tl.int64) * B * H
        if t == 0:
            prev_ptr = h0_ptr
        else:
            prev_ptr = h_ptr + (cur - B * H)
        for n0 in range(0, H, BLOCK_N):
            cols = n0 + rn
            mask = row_ok & (cols[None, :] < H)
            offs = rows[:, None] * H + cols[None, :]
            dh = tl.load(grad_h_ptr + cur + offs, mask=mask, other=0.0) + tl.load(dh_ptr + offs, mask=mask, other=0.0)
            drive = tl.load(drive_ptr + cur + offs, mask=mask, other=0.0)
            h_prev = tl.load(prev_ptr + offs, mask=mask, other=0.0)
            alpha = tl.load(alpha_ptr + cols, mask=cols < H, other=0.0)[None, :]
            d_drive, d_alpha, carry = _step_backward(dh, drive, h_prev, h_ptr + cur + offs, mask, alpha,
                                                     ACT, INSIDE)
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
