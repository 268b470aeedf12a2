"""What the Triton kernels and their launchers share: the element-wise step, the tile matmul, the
previous-state prologue, the dot precisions, the interpreter switch and the once-only warnings.

Imported by triton_kernels.py (default kernels), triton_persistent.py (persistent kernels and their
launcher) and triton_recurrence.py (the backend's launchers); imports nothing of theirs.

Nonlinearity codes (ACT) are indices in choices.NONLINEARITIES; adding a nonlinearity means adding a
branch to _act below, which gives f and f' from the pre-activation z.

DOT_BF16: 0 dots in the state dtype with DOT_PRECISION; 1 bf16 operands, fp32 accumulation;
2 the same numbers by an fp32 dot of bf16-rounded operands (for the interpreter).
"""
from __future__ import annotations

import math
import os
import warnings

import triton
import triton.language as tl

from .choices import LEAKY_SLOPE as _LEAKY_SLOPE
from .choices import nonlinearity_code, placement_code

LEAKY_SLOPE = tl.constexpr(_LEAKY_SLOPE)

# tl.dot's input_precision for each precision name of choices.PRECISIONS ("bf16" casts the
# operands instead and dots them exactly).
DOT_PRECISION = {"fp32": "ieee", "tf32x3": "tf32x3", "tf32": "tf32", "bf16": "ieee"}

# The codes the element-wise helpers branch on, spelled through the one table.
_LEAKY_RELU = tl.constexpr(nonlinearity_code("leaky_relu"))
_RELU = tl.constexpr(nonlinearity_code("relu"))
_TANH = tl.constexpr(nonlinearity_code("tanh"))
_SIGMOID = tl.constexpr(nonlinearity_code("sigmoid"))
# The placement codes (the kernels' PLACEMENT constexpr); "outside" is the remaining case.
_INSIDE = tl.constexpr(placement_code("inside"))
_VOLTAGE = tl.constexpr(placement_code("voltage"))

_warned: set = set()  # keys of the warnings already given in this process

# True while a harness runs the interpreter's programs concurrently, one thread each
# (tests/concurrent_grid.py): the persistent kernels' programs can then meet at their barrier, so
# a plan with several column splits may run under TRITON_INTERPRET=1.
concurrent_programs = False


def interpreting() -> bool:
    """True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1, on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def warn_once(key, message: str, stacklevel: int = 3) -> None:
    """A UserWarning the first time key is seen in this process; nothing afterwards."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, stacklevel=stacklevel)


def dot_modes(precision: str) -> tuple[str, int]:
    """(DOT_PRECISION, DOT_BF16) constexprs for a precision name of choices.PRECISIONS."""
    dot_bf16 = 0 if precision != "bf16" else (2 if interpreting() else 1)
    return DOT_PRECISION[precision], dot_bf16


@triton.jit
def _act(z, ACT: tl.constexpr):
    """(f(z), f'(z)), element-wise, from the pre-activation z (tanh and sigmoid write f' through
    f(z), as autograd does). A caller that uses only f(z) pays nothing for f': it is dead code."""
    one = tl.full(z.shape, 1.0, z.dtype)
    if ACT == _LEAKY_RELU:
        y = tl.where(z > 0, z, z * LEAKY_SLOPE)
        dy = tl.where(z > 0, one, tl.full(z.shape, LEAKY_SLOPE, z.dtype))
    elif ACT == _RELU:
        y = tl.where(z > 0, z, 0.0)
        dy = tl.where(z > 0, one, 0.0)
    elif ACT == _TANH:
        # tanh via exp(-2|z|): no overflow for any z, accurate to a few ulp near zero in absolute terms.
        e = tl.exp(-2.0 * tl.abs(z))
        r = (1.0 - e) / (1.0 + e)
        y = tl.where(z < 0, -r, r)
        dy = 1.0 - y * y
    elif ACT == _SIGMOID:
        y = 1.0 / (1.0 + tl.exp(-z))
        dy = y * (1.0 - y)
    else:
        y = z
        dy = one
    return y, dy


@triton.jit
def _step_forward(h_prev, drive, alpha, ACT: tl.constexpr, PLACEMENT: tl.constexpr):
    """h_t from h_{t-1} and drive_t, element-wise; alpha broadcasts over rows. "voltage": h is v, and
    the drive (formed from f(v_{t-1}) by the caller's matmul) enters without f."""
    if PLACEMENT == _INSIDE:
        h_new = (1.0 - alpha) * h_prev + alpha * _act(drive, ACT)[0]
    elif PLACEMENT == _VOLTAGE:
        h_new = (1.0 - alpha) * h_prev + alpha * drive
    else:
        h_new = _act((1.0 - alpha) * h_prev + alpha * drive, ACT)[0]
    return h_new


@triton.jit
def _step_backward(dh, drive, h_prev, alpha, live, ACT: tl.constexpr, PLACEMENT: tl.constexpr):
    """One reverse step, element-wise: (d_drive_t, this step's d_alpha term, the carry
    (1 - alpha) * dz or (1 - alpha) * dh, to which d_drive_t @ W is added; for "voltage",
    (1 - alpha) * dv, to which f'(v_{t-1}) * (d_drive_t @ W) is added: see _recurrent_gradient).

    live: bool (rows, 1) or a scalar True; where False the row holds its state at this step
    (t >= its length): d_drive and the d_alpha term are 0 and dh passes to h_{t-1} unchanged.
    The activation is recomputed from the saved drive and h_{t-1} (bitwise the forward's z)."""
    if PLACEMENT == _INSIDE:
        f_drive, df = _act(drive, ACT)
        d_drive = alpha * (dh * df)
        d_alpha = dh * (f_drive - h_prev)
        carry = (1.0 - alpha) * dh
    elif PLACEMENT == _VOLTAGE:  # dh is dv, the adjoint of v_t: v_t is linear in v_{t-1} and drive_t
        d_drive = alpha * dh
        d_alpha = dh * (drive - h_prev)
        carry = (1.0 - alpha) * dh
    else:
        dz = dh * _act((1.0 - alpha) * h_prev + alpha * drive, ACT)[1]
        d_drive = alpha * dz
        d_alpha = dz * (drive - h_prev)
        carry = (1.0 - alpha) * dz
    d_drive = tl.where(live, d_drive, 0.0)
    d_alpha = tl.where(live, d_alpha, 0.0)
    carry = tl.where(live, carry, dh)
    return d_drive, d_alpha, carry


@triton.jit
def _recurrent_gradient(carry, product, h_prev, ACT: tl.constexpr, PLACEMENT: tl.constexpr):
    """The adjoint of h_{t-1}: carry + product (product = d_drive_t @ W), or for "voltage", whose
    drive read f(v_{t-1}), carry + f'(v_{t-1}) * product."""
    if PLACEMENT == _VOLTAGE:
        carry = carry + _act(h_prev, ACT)[1] * product
    else:
        carry = carry + product
    return carry


def row_align(hidden: int, stride_wk: int) -> int:
    """The ROW_ALIGN constexpr of a launch: the largest of 16, 8, 4, 2, 1 that divides both H and
    the operand's row stride. The JIT marks an integer argument divisible by 16 or not at all, so
    at H = 500 (divisible by 4) it knows nothing, and every (B, H) row offset defeats vector loads:
    each thread issues a 4-byte copy per element. Told H = 4k, the compiler issues 16-byte ones."""
    g = math.gcd(int(hidden), int(stride_wk))
    return next(a for a in (16, 8, 4, 2, 1) if g % a == 0)


@triton.jit
def _aligned(x, ROW_ALIGN: tl.constexpr):
    """x, known to the compiler as a multiple of ROW_ALIGN (which the launcher checked divides x).
    (x // a) * a is x itself then; the product carries the divisibility that tl.multiple_of cannot
    attach to a kernel argument."""
    if ROW_ALIGN > 1:
        x = (x // ROW_ALIGN) * ROW_ALIGN
    return x


@triton.jit
def _step_pointers(t, h0_ptr, h_ptr, B, H):
    """(offset of step t in a (T, B, H) buffer, pointer to the (B, H) state h_{t-1}): h0 at t = 0,
    else h[t-1]. 64-bit offsets: T * B * H exceeds 2**31 for long analysis runs."""
    cur = tl.cast(t, tl.int64) * B * H
    if t == 0:
        prev_ptr = h0_ptr
    else:
        prev_ptr = h_ptr + (cur - B * H)
    return cur, prev_ptr


@triton.jit
def _row_lengths(len_ptr, rows, B, T, HAS_LENGTHS: tl.constexpr):
    """(BLOCK_B, 1) int64 steps each row runs: lengths[rows], or T for every row without lengths."""
    if HAS_LENGTHS:
        n = tl.load(len_ptr + rows, mask=rows < B, other=0).to(tl.int64)
    else:
        n = tl.zeros_like(rows).to(tl.int64) + T
    return n[:, None]


@triton.jit
def _dot(x, m, acc, DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr):
    """acc + x @ m in the requested precision; the accumulator keeps acc's dtype (float64 included)."""
    if DOT_BF16 == 1:
        acc = tl.dot(x.to(tl.bfloat16), m.to(tl.bfloat16), acc)
    elif DOT_BF16 == 2:
        # The interpreter's bf16 dot is wrong; bf16-rounded operands in an fp32 dot give the
        # same products (exact in fp32) with fp32 accumulation.
        acc = tl.dot(x.to(tl.bfloat16).to(tl.float32), m.to(tl.bfloat16).to(tl.float32), acc,
                     input_precision="ieee")
    else:
        acc = tl.dot(x, m, acc, input_precision=DOT_PRECISION, out_dtype=acc.dtype)
    return acc


@triton.jit
def _row_tile_matmul(x_ptr, w_ptr, rows, cols, B, H, stride_wk, stride_wn, acc,
                     DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr, BLOCK_K: tl.constexpr,
                     X_CACHE: tl.constexpr, X_ACT: tl.constexpr = -1):
    """acc + x[rows, :] @ M[:, cols] over all H reduction indices, in BLOCK_K slices, where
    M[k, n] = w_ptr[k * stride_wk + n * stride_wn]. x is a (B, H) row-major slice; masked elements
    load as zero so padding adds nothing (M's rows beyond H load as zero too, so f(0) there adds
    nothing either). X_CACHE: the cache modifier of the x loads ("" by default; ".cg", L2 only,
    where other programs wrote x). X_ACT: a nonlinearity code to apply to x before the dot (the
    "voltage" forward's operand f(v)), or -1 for x itself."""
    rk = tl.arange(0, BLOCK_K)
    row_ok = rows[:, None] < B
    col_ok = cols[None, :] < H
    for k0 in range(0, H, BLOCK_K):
        k = k0 + rk
        x = tl.load(x_ptr + rows[:, None] * H + k[None, :], mask=row_ok & (k[None, :] < H), other=0.0,
                    cache_modifier=X_CACHE)
        if X_ACT >= 0:
            x = _act(x, X_ACT)[0]
        m = tl.load(w_ptr + k[:, None] * stride_wk + cols[None, :] * stride_wn,
                    mask=(k[:, None] < H) & col_ok, other=0.0)
        acc = _dot(x, m, acc, DOT_PRECISION, DOT_BF16)
    return acc
