"""Persistent column-split kernels for the triton backend (benchmarks/NOTES.md, design C).

Same contract and results as triton_kernels.py. The grid is (column splits, batch tiles), the
column split being the fastest axis, so that the blocks the hardware dispatches together are the
splits of one batch tile: program (j, i) owns output columns j*BLOCK_N.. and batch rows i*BLOCK_B..
for the whole sequence. Before the time loop it loads its column slice of the step's operand
M (H_PAD x BLOCK_N) as H_PAD / BLOCK_K chunks, which stay in shared memory for the whole sequence
(the compiler keeps the loop-invariant dot operands there); each step reads the tile's previous
state (BLOCK_B x H_PAD) once, chunk by chunk, each chunk feeding its dot, the fp32 and tf32 loads
issued AHEAD chunks ahead of their dots (chunks_ahead: so that many L2 round trips overlap) and
staged in shared memory (loading the whole tile into registers first spills in tf32x3). The
tensor-core precisions run on mma_warps() warps, so that no warp repeats another's products.
tf32x3 runs as three tf32 tensor-core dots per chunk
against M's tf32 part and its remainder, both split once by the launcher and both kept on chip
(Triton's own tf32x3 splits the loop-invariant operand into registers and spills). Every step needs every column of the
previous state, written by the other programs of its batch tile, so those programs meet at a
barrier made of a per-tile int32 counter in global memory:

    debug_barrier                      every warp of the program has issued its stores
    atomic_add(counter, 1, release)    publish them (cumulative over the block by the bar.sync)
    spin atomic_add(counter, 0, acquire) until counter >= (step + 1) * splits
    debug_barrier                      the acquire, done by one thread, now covers every warp

The counter only grows, so a program that is already one step ahead cannot make a slow one
miss its target (no reset, no ABA). The barrier deadlocks unless all programs of a tile are
resident at once, so the launcher asks for a cooperative launch (launch_cooperative_grid=True): a
grid the device cannot hold resident is refused with an error instead of hanging, and the launcher
then runs the default kernels with one warning. Under TRITON_INTERPRET=1 programs run one after
another, so the launcher uses a single split (BLOCK_N >= H): the same code runs, counter and spin
included, but the spin is satisfied at once. The tests run multi-split plans on the CPU too, each
program in a thread of its own (tests/concurrent_grid.py, triton_common.concurrent_programs): that
checks the barrier's counts and the exchange of state between programs; the GPU memory model's
ordering is exercised only on a GPU (tests marked gpu).

Data written by other programs (h[t-1] in the forward, d_drive[t] in the backward) is loaded
after the acquire, which the PTX memory model makes cover every warp through the bar.sync; the
loads ask for L2 (".cg"), and the kernels are compiled with one stage, so that no load is
software-pipelined across the barrier. The program's own columns of the state stay in registers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .triton_common import (_VOLTAGE, _act, _aligned, _dot, _recurrent_gradient, _row_lengths, _step_backward,
                            _step_forward, _step_pointers, interpreting, warn_once)


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Waits until the tile's counter reaches target, after adding this program's arrival."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _tf32_split(x):
    """(hi, lo) with hi = x with its 13 low mantissa bits cleared (a tf32 value) and lo = x - hi,
    exact: x_hi @ m_hi is exact on the tensor cores and the two cross terms carry the rest."""
    hi = (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _column_slice(w_ptr, cols, H, stride_wk, stride_wn, H_PAD: tl.constexpr, BLOCK_K: tl.constexpr):
    """M[:, cols] as a tuple of H_PAD // BLOCK_K (BLOCK_K, BLOCK_N) chunks, zero beyond H: the
    program's operand, loaded once and kept on chip (loop-invariant) for the whole sequence.
    Separate chunks let each step's dots read one chunk at a time rather than the whole slice."""
    rk = tl.arange(0, BLOCK_K)
    chunks = ()
    for kc in tl.static_range(H_PAD // BLOCK_K):
        k = kc * BLOCK_K + rk
        chunks = chunks + (tl.load(w_ptr + k[:, None] * stride_wk + cols[None, :] * stride_wn,
                                   mask=(k[:, None] < H) & (cols[None, :] < H), other=0.0),)
    return chunks


@triton.jit
def _state_chunk(x_ptr, rows, B, H, kc, BLOCK_K: tl.constexpr):
    """x[rows, kc*BLOCK_K : (kc+1)*BLOCK_K] from L2 (".cg": other programs wrote x), zero beyond B and H."""
    k = kc * BLOCK_K + tl.arange(0, BLOCK_K)
    return tl.load(x_ptr + rows[:, None] * H + k[None, :], mask=(rows[:, None] < B) & (k[None, :] < H), other=0.0,
                   cache_modifier=".cg")


@triton.jit
def _tile_matmul(x_ptr, rows, B, H, m_chunks, m_lo_chunks, acc, DOT_PRECISION: tl.constexpr,
                 DOT_BF16: tl.constexpr, H_PAD: tl.constexpr, BLOCK_K: tl.constexpr, AHEAD: tl.constexpr,
                 X_ACT: tl.constexpr = -1):
    """acc + x[rows, :] @ M[:, cols], x a (B, H) row-major buffer written by other programs, read
    from L2 one BLOCK_K chunk per on-chip chunk of M. The load of chunk kc + AHEAD is issued before
    the dot of chunk kc, so AHEAD L2 round trips are in flight while the dots run (with one, as the
    compiler schedules it by itself, every chunk waited for its own load). tf32x3: m_chunks hold M's
    tf32 part and m_lo_chunks the rest, and each chunk takes three tf32 dots, the small terms first.
    X_ACT: a nonlinearity code applied to each x chunk before its dots (the "voltage" forward's f(v);
    M's rows beyond H are zero, so f(0) in the padding adds nothing), or -1."""
    chunks: tl.constexpr = H_PAD // BLOCK_K
    xs = ()
    for kc in tl.static_range(AHEAD):
        xs = xs + (_state_chunk(x_ptr, rows, B, H, kc, BLOCK_K),)
    for kc in tl.static_range(chunks):
        if kc + AHEAD < chunks:
            xs = xs + (_state_chunk(x_ptr, rows, B, H, kc + AHEAD, BLOCK_K),)
        x = xs[kc]
        if X_ACT >= 0:
            x = _act(x, X_ACT)[0]
        if DOT_PRECISION == "tf32x3":
            x_hi, x_lo = _tf32_split(x)
            acc = tl.dot(x_lo, m_chunks[kc], acc, input_precision="tf32")
            acc = tl.dot(x_hi, m_lo_chunks[kc], acc, input_precision="tf32")
            acc = tl.dot(x_hi, m_chunks[kc], acc, input_precision="tf32")
        else:
            acc = _dot(x, m_chunks[kc], acc, DOT_PRECISION, DOT_BF16)
    return acc


@triton.jit(do_not_specialize=["T"])
def persistent_fwd_kernel(
    u_ptr, h0_ptr, w_ptr, alpha_ptr, h_ptr, drive_ptr, len_ptr, w_lo_ptr, counter_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, PLACEMENT: tl.constexpr, SAVE_DRIVE: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, H_PAD: tl.constexpr,
    ROW_ALIGN: tl.constexpr, AHEAD: tl.constexpr,
):
    """u, h, drive: (T, B, H); h0: (B, H); alpha: (H,); M[k, n] = W[n, k] (for tf32x3 its tf32 part,
    the rest at w_lo; w_lo unused otherwise); len: (B,) int64 when HAS_LENGTHS; counter: (tiles,)
    int32, zero. H_PAD: H rounded up to a power of two, a multiple of BLOCK_K. ROW_ALIGN: as in
    triton_kernels.py (divides H and the row stride of M).

    One grid barrier per step: step t+1 reads all columns of h[t] (RAW across programs); every
    step writes its own slice of h, so there is no write-after-read hazard to guard.
    """
    H, stride_wk = _aligned(H, ROW_ALIGN), _aligned(stride_wk, ROW_ALIGN)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    splits = tl.num_programs(0)
    counter = counter_ptr + tl.program_id(1)
    mask = (rows[:, None] < B) & (cols[None, :] < H)
    offs = rows[:, None] * H + cols[None, :]
    state_dtype = h0_ptr.dtype.element_ty
    steps = _row_lengths(len_ptr, rows, B, T, HAS_LENGTHS)
    m = _column_slice(w_ptr, cols, H, stride_wk, stride_wn, H_PAD, BLOCK_K)
    m_lo = m
    if DOT_PRECISION == "tf32x3":
        m_lo = _column_slice(w_lo_ptr, cols, H, stride_wk, stride_wn, H_PAD, BLOCK_K)
    alpha = tl.load(alpha_ptr + cols, mask=cols < H, other=0.0)[None, :]
    h_own = tl.load(h0_ptr + offs, mask=mask, other=0.0)
    for t in range(T):
        cur, prev_ptr = _step_pointers(t, h0_ptr, h_ptr, B, H)
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
        acc = _tile_matmul(prev_ptr, rows, B, H, m, m_lo, acc, DOT_PRECISION, DOT_BF16, H_PAD, BLOCK_K, AHEAD,
                           ACT if PLACEMENT == _VOLTAGE else -1)
        drive = acc + tl.load(u_ptr + cur + offs, mask=mask, other=0.0)
        h_new = _step_forward(h_own, drive, alpha, ACT, PLACEMENT)
        if HAS_LENGTHS:
            h_new = tl.where(t < steps, h_new, h_own)
        h_own = h_new
        tl.store(h_ptr + cur + offs, h_own, mask=mask)
        if SAVE_DRIVE:
            tl.store(drive_ptr + cur + offs, drive, mask=mask)
        _grid_barrier(counter, (t + 1) * splits)


@triton.jit(do_not_specialize=["T"])
def persistent_bwd_kernel(
    grad_h_ptr, h_ptr, h0_ptr, drive_ptr, w_ptr, alpha_ptr, len_ptr,
    d_drive_ptr, dh_ptr, d_alpha_ptr, w_lo_ptr, counter_ptr,
    T, B, H, stride_wk, stride_wn,
    ACT: tl.constexpr, PLACEMENT: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_BF16: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, H_PAD: tl.constexpr,
    ROW_ALIGN: tl.constexpr, AHEAD: tl.constexpr,
):
    """grad_h, h, drive, d_drive: (T, B, H); h0, dh (= dh0 on exit), d_alpha: (B, H) (per-row partials,
    summed by the launcher); alpha: (H,); M[k, n] = W[k, n] (w_lo as in the forward); len: (B,) int64 when HAS_LENGTHS;
    counter: (tiles,) int32, zero.

    Per step t (reverse): phase 1, element-wise on own columns: dh = grad_h[t] (0 where held) + carry, d_drive[t],
    the d_alpha partial, carry = (1 - alpha) dz; phase 2: carry += d_drive[t][rows, :] @ W[:, cols]
    ("voltage": carry += f'(v_{t-1}) * (d_drive[t][rows, :] @ W[:, cols]), v_{t-1} this program's own).
    Phase 2 reads every column of d_drive[t] (RAW across programs): one grid barrier between the
    phases. Nothing else crosses programs: the next phase 1 uses only this program's carry (in
    registers) and inputs, and each step writes its own slice of d_drive, so one barrier per step
    suffices (none at the step's end).
    """
    H, stride_wk = _aligned(H, ROW_ALIGN), _aligned(stride_wk, ROW_ALIGN)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    splits = tl.num_programs(0)
    counter = counter_ptr + tl.program_id(1)
    mask = (rows[:, None] < B) & (cols[None, :] < H)
    offs = rows[:, None] * H + cols[None, :]
    state_dtype = h0_ptr.dtype.element_ty
    steps = _row_lengths(len_ptr, rows, B, T, HAS_LENGTHS)
    m = _column_slice(w_ptr, cols, H, stride_wk, stride_wn, H_PAD, BLOCK_K)
    m_lo = m
    if DOT_PRECISION == "tf32x3":
        m_lo = _column_slice(w_lo_ptr, cols, H, stride_wk, stride_wn, H_PAD, BLOCK_K)
    alpha = tl.load(alpha_ptr + cols, mask=cols < H, other=0.0)[None, :]
    carry = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
    d_alpha_rows = tl.zeros([BLOCK_B, BLOCK_N], dtype=state_dtype)
    for i in range(T):
        t = T - 1 - i
        cur, prev_ptr = _step_pointers(t, h0_ptr, h_ptr, B, H)
        live = t < steps  # a held step's grad_h is ignored: the op's h is a constant zero there
        dh = tl.load(grad_h_ptr + cur + offs, mask=mask & live, other=0.0) + carry
        drive = tl.load(drive_ptr + cur + offs, mask=mask, other=0.0)
        h_prev = tl.load(prev_ptr + offs, mask=mask, other=0.0)
        d_drive, d_alpha, carry = _step_backward(dh, drive, h_prev, alpha, live, ACT, PLACEMENT)
        d_alpha_rows += d_alpha
        tl.store(d_drive_ptr + cur + offs, d_drive, mask=mask)
        _grid_barrier(counter, (i + 1) * splits)
        if PLACEMENT == _VOLTAGE:  # the drive read f(v_{t-1}): its gradient takes f'(v_{t-1})
            product = _tile_matmul(d_drive_ptr + cur, rows, B, H, m, m_lo, tl.zeros_like(carry), DOT_PRECISION,
                                   DOT_BF16, H_PAD, BLOCK_K, AHEAD)
            carry = _recurrent_gradient(carry, product, h_prev, ACT, PLACEMENT)
        else:
            carry = _tile_matmul(d_drive_ptr + cur, rows, B, H, m, m_lo, carry, DOT_PRECISION, DOT_BF16, H_PAD,
                                 BLOCK_K, AHEAD)
    tl.store(dh_ptr + offs, carry, mask=mask)
    tl.store(d_alpha_ptr + offs, d_alpha_rows, mask=mask)


# ---- planning and launching ----

BLOCK_B_CHOICES = (16, 32, 64)  # rows per program; 16 is tl.dot's smallest M
BLOCK_N_CHOICES = (16, 32, 64, 128)  # columns per program
BLOCK_K = 32  # rows of each on-chip chunk of M
NUM_WARPS = 8
# Shared memory the compiler needs besides the operand slice: the state chunks loaded ahead, which
# the fp32 and tf32 dots stage through shared memory (STAGING_BYTES at most), and 4 KB of layout
# conversions (sm_90 compiles at (B, H) = (256, 500): 132 KB with one chunk ahead, 160 KB with 16).
STAGING_BYTES = 32 * 1024
SMEM_RESERVE = STAGING_BYTES + 4 * 1024


@dataclass(frozen=True)
class Plan:
    """grid = (column splits, batch tiles); BLOCK_B rows and BLOCK_N columns per program;
    H_PAD = the dot's K (H rounded up to a power of two, at least BLOCK_K); num_warps per program;
    prefetch: the state chunks loaded ahead of the step's dots (0: chunks_ahead()'s choice)."""
    grid: tuple
    block_b: int
    block_n: int
    h_pad: int
    num_warps: int = NUM_WARPS
    prefetch: int = 0

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1]


def mma_warps(block_b: int, block_n: int) -> int:
    """The most warps a program of the tensor-core precisions (tf32x3, tf32, bf16) can use without two
    warps computing the same products. A step's dots share one accumulator, so Triton lays them out
    as chained dots (warpsPerTileV2): every warp on the tile's longer axis, M where BLOCK_B >= BLOCK_N.
    An MMA tile is 16 rows by 8 columns, so that axis holds BLOCK_B / 16 or BLOCK_N / 8 of them, and
    warps beyond that count repeat the products of others: 8 warps on a 32x32 tile compute each product
    4 times, on the 16x16 tiles of the analysis shape 8 times (sm_90 SASS, triton 3.6)."""
    tiles = block_b // 16 if block_b >= block_n else block_n // 8
    return max(1, min(NUM_WARPS, tiles))


def candidates(batch: int, hidden: int, w_bytes: int, sms: int, smem_per_block: int) -> list[Plan]:
    """Every tiling of (B, H) that can run resident: at most sms programs (one per SM), each
    holding its column slice of M (H_PAD x BLOCK_N, w_bytes per element, counting every copy
    kept: tf32x3 keeps two) plus SMEM_RESERVE within smem_per_block bytes."""
    h_pad = max(BLOCK_K, triton.next_power_of_2(hidden))
    out = []
    for block_n in BLOCK_N_CHOICES:
        for block_b in BLOCK_B_CHOICES:
            grid = (triton.cdiv(hidden, block_n), triton.cdiv(batch, block_b))
            smem = h_pad * block_n * w_bytes + SMEM_RESERVE
            if block_n <= h_pad and grid[0] * grid[1] <= sms and smem <= smem_per_block:
                out.append(Plan(grid, block_b, block_n, h_pad))
    return out


def plan(batch: int, hidden: int, w_bytes: int, sms: int | None, smem_per_block: int | None) -> Plan | None:
    """The persistent grid for (B, H), or None when it cannot run on the device.

    Among the candidates(), the one with the most programs wins (the most column splits: a small
    batch still spreads over many SMs), then the narrowest batch tile (the least state read per
    step). sms None (the interpreter): a single split, since programs then run one after another
    and a tile's splits could never meet at the barrier. Deterministic: a function of its
    arguments only."""
    if sms is None:
        h_pad = max(BLOCK_K, triton.next_power_of_2(hidden))
        return Plan((1, triton.cdiv(batch, BLOCK_B_CHOICES[0])), BLOCK_B_CHOICES[0], h_pad, h_pad)
    found = candidates(batch, hidden, w_bytes, sms, smem_per_block)
    return max(found, key=lambda p: (p.programs, -p.block_b, -BLOCK_N_CHOICES.index(p.block_n)), default=None)


def _refused(err: Exception) -> bool:
    """True for the errors of a launch the device refuses (a cooperative grid it cannot hold
    resident, or a program over its resources): the caller then runs the default kernels."""
    if isinstance(err, OutOfResources):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("cooperative" in text or "too many" in text)


def chunks_ahead(planned: Plan, dot_precision: str, dot_bf16: int, forward: bool = True,
                 lengths: bool = False) -> int:
    """The AHEAD constexpr: how many of the step's H_PAD / BLOCK_K state chunks are loaded before the
    first dot, each a BLOCK_B x BLOCK_K float32 tile from L2 (planned.prefetch when set). The fp32
    and tf32 dots stage each chunk in shared memory of its own, so the loads can be in flight
    together: as many chunks as STAGING_BYTES holds (all 16 of a 16-row tile at H = 500). In flight
    at the step's first wait, sm_90 SASS, triton 3.6, against 2 with the compiler's own schedule:
    11 in the fp32 forward, 4 in the backward, which interleaves the loads with the staging stores.
    Elsewhere 1, the compiler's own schedule: tf32x3 and bf16 pass their chunks through registers
    into one reused staging buffer and load each just before its turn whatever the source order (1
    in flight at every AHEAD), and the backward with lengths gains nothing (2) and spills."""
    chunks = planned.h_pad // BLOCK_K
    if planned.prefetch:
        return min(planned.prefetch, chunks)
    if dot_bf16 or dot_precision == "tf32x3" or (lengths and not forward):
        return 1
    return max(1, min(chunks, STAGING_BYTES // (planned.block_b * BLOCK_K * 4)))


def split_tf32(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) of a float32 tensor: hi rounded toward zero to tf32, lo = m - hi (exact)."""
    hi = (m.view(torch.int32) & -8192).view(torch.float32)
    return hi, m - hi


def launch(kernel, planned: Plan, pointers: tuple, ints: tuple, constexprs: dict, w_index: int) -> bool:
    """kernel[grid](*pointers, w_lo, counter, *ints, **constexprs) as a cooperative launch, with a
    fresh zeroed barrier counter per batch tile; pointers[w_index] is the operand M (replaced by its
    tf32 part, and w_lo by the rest, for tf32x3). False (nothing written) when the device refuses
    the launch, after one warning."""
    w_lo = pointers[w_index]
    if constexprs["DOT_PRECISION"] == "tf32x3":
        w_hi, w_lo = split_tf32(pointers[w_index])
        pointers = pointers[:w_index] + (w_hi,) + pointers[w_index + 1:]
    counter = torch.zeros(planned.grid[1], dtype=torch.int32, device=pointers[0].device)
    try:
        kernel[planned.grid](*pointers, w_lo, counter, *ints, **constexprs, BLOCK_B=planned.block_b,
                             BLOCK_N=planned.block_n, BLOCK_K=BLOCK_K, H_PAD=planned.h_pad,
                             AHEAD=chunks_ahead(planned, constexprs["DOT_PRECISION"], constexprs["DOT_BF16"],
                                                forward=kernel is persistent_fwd_kernel,
                                                lengths=constexprs["HAS_LENGTHS"]),
                             num_warps=1 if interpreting() else planned.num_warps, num_stages=1,
                             launch_cooperative_grid=not interpreting())
    except (RuntimeError, OutOfResources) as err:
        if not _refused(err):
            raise
        warn_once(("refused", planned), f"triton persistent kernels: the device refused a grid of "
                  f"{planned.grid[0]}x{planned.grid[1]} programs ({err}); using the default kernels", stacklevel=4)
        return False
    return True
