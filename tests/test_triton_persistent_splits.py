"""The persistent kernels' plans with several column splits, run on the CPU.

Under TRITON_INTERPRET=1 the interpreter runs programs one after another, where the splits of a batch
tile could never meet at their per-step barrier. concurrent_grid.py runs each program in a thread of
its own instead, so these tests run the multi-split launches the GPU will run: the barrier's counts,
each program's columns and rows, ragged last splits and tiles, the chunks loaded ahead, lengths, the
tensor-core precisions' split operands, and the rule's own plans. Each is checked against the float64
reference and against the same kernel with one split. Two controls show the harness can fail: with
the barrier removed the results are wrong, and a barrier that cannot be met raises instead of hanging.
What only a GPU can show (the memory model's ordering, a cooperative launch) stays in the gpu tests.
"""
import os
import types

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402,F401 (the interpreter patches the jit functions' tl)

from timescale_kernels.ops import triton_common, triton_persistent as tp, triton_recurrence as tr  # noqa: E402

from concurrent_grid import concurrent_programs  # noqa: E402
from conftest import rel_err  # noqa: E402
from helpers import drive_from_states  # noqa: E402
from test_triton_backend import check_lengths, make_core, make_lengths, reference_grads  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not tr.is_available(), reason=f"triton backend: {tr.unavailable_reason()}"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU harness for the interpreter; a GPU runs these "
                       "plans itself (test_triton_persistent.py, marked gpu)"),
]
H200 = types.SimpleNamespace(major=9, minor=0, multi_processor_count=132, shared_memory_per_block_optin=227 * 1024)
NAMES = ("h", "drive", "d_drive", "dh0", "d_alpha")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Outputs start as NaN, so a program that reads a column before its writer stored it gets NaN."""
    monkeypatch.setattr(tr, "poison_outputs", True)
    monkeypatch.setattr(triton_common, "_warned", set())


def run(c, nonlinearity, placement, precision, plan):
    """(h, drive, d_drive, dh0, d_alpha) of the persistent kernels with this plan."""
    h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], nonlinearity, placement, True, precision, plan=plan)
    assert tr.last_family == "persistent"
    grads = tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], nonlinearity, placement, precision,
                        plan=plan)
    return (h, drive, *grads)


def one_split(plan: tp.Plan) -> tp.Plan:
    """The same tiles of rows with all columns in one program (what the interpreter runs by itself)."""
    return tp.Plan((1, plan.grid[1]), plan.block_b, plan.h_pad, plan.h_pad, plan.num_warps, plan.prefetch)


def check_plan(c, nonlinearity, placement, precision, plan, tol):
    with concurrent_programs():
        got = run(c, nonlinearity, placement, precision, plan)
    alone = run(c, nonlinearity, placement, precision, one_split(plan))
    h_ref, du, dh0, dalpha = reference_grads(c, nonlinearity, placement)
    drive_ref = drive_from_states(c["u"], c["h0"], h_ref, c["w"], nonlinearity, placement)
    for name, a, b, want in zip(NAMES, got, alone, (h_ref, drive_ref, du, dh0, dalpha)):
        assert not a.isnan().any(), name
        assert rel_err(a, b) <= 1e-6, name
        assert rel_err(a, want) <= tol, name


@pytest.mark.parametrize("T,B,H,plan,precision,nonlinearity,placement,tol", [
    # ragged last split (50 = 3 x 16 + 2 columns) and last tile (20 = 16 + 4 rows)
    (4, 20, 50, tp.Plan((4, 2), 16, 16, 64), "fp32", "tanh", "outside", 1e-5),
    # every chunk ahead (AHEAD = 4), and the compiler's own schedule (prefetch 1)
    (3, 10, 100, tp.Plan((4, 1), 16, 32, 128), "fp32", "leaky_relu", "inside", 1e-5),
    (3, 10, 100, tp.Plan((4, 1), 16, 32, 128, prefetch=1), "fp32", "sigmoid", "outside", 1e-5),
    # 32-row tiles, the second one ragged
    (3, 40, 64, tp.Plan((2, 2), 32, 32, 64), "fp32", "relu", "inside", 1e-5),
    # the study's column tiling at H = 500: 8 splits of 64 columns, 12 padding rows of M
    (2, 16, 500, tp.Plan((8, 1), 16, 64, 512), "fp32", "tanh", "outside", 1e-5),
    # the tensor-core precisions: tf32x3's two parts of M, bf16's rounded operands
    (3, 10, 64, tp.Plan((4, 1), 16, 16, 64, 1), "tf32x3", "tanh", "outside", 1e-5),
    (3, 10, 64, tp.Plan((4, 1), 16, 16, 64, 1), "tf32", "tanh", "inside", 1e-3),
    (3, 10, 64, tp.Plan((2, 1), 16, 32, 64, 2), "bf16", "tanh", "outside", 1e-2),
    # "voltage": f applied to the state chunks each program reads from the others
    (4, 20, 50, tp.Plan((4, 2), 16, 16, 64), "fp32", "sigmoid", "voltage", 1e-5),
    (3, 10, 64, tp.Plan((4, 1), 16, 16, 64, 1), "tf32x3", "tanh", "voltage", 1e-5),
])
def test_multi_split_plans_match_one_split_and_reference(T, B, H, plan, precision, nonlinearity, placement, tol):
    check_plan(make_core(T, B, H, seed=T + B + H), nonlinearity, placement, precision, plan, tol)


def test_the_rules_plan_for_the_analysis_simulation():
    """B = 10 trials at H = 500: the rule's 32 programs of 16 columns, every chunk ahead."""
    plan = tr.persistent_plan(H200, 10, 500, "fp32")
    assert plan.grid == (32, 1) and (plan.block_b, plan.block_n) == (16, 16)
    check_plan(make_core(2, 10, 500, seed=4), "tanh", "outside", "fp32", plan, 1e-5)


@pytest.mark.parametrize("placement", ["outside", "inside", "voltage"])
def test_multi_split_plans_with_lengths(placement):
    lengths = make_lengths(6, 19, seed=2)
    with concurrent_programs():
        check_lengths(make_core(6, 19, 33, seed=5), lengths, "tanh", placement, plan=tp.Plan((3, 2), 16, 16, 64))


@triton.jit
def _no_barrier(counter_ptr, target):
    pass


_barrier = tp._grid_barrier


@triton.jit
def _unmeetable_barrier(counter_ptr, target):
    _barrier(counter_ptr, target + 1)


def test_without_the_barrier_a_program_reads_unwritten_columns(monkeypatch):
    """The control: the first program of each tile runs ahead (the others start 1 s late) and reads
    columns of h that nobody has stored yet (NaN), so the barrier is what makes the tests pass."""
    c = make_core(4, 20, 50, seed=1)
    plan = tp.Plan((4, 2), 16, 16, 64)
    with concurrent_programs(delay_s=1.0):
        good = run(c, "tanh", "outside", "fp32", plan)
    assert not any(x.isnan().any() for x in good)
    monkeypatch.setattr(tp, "_grid_barrier", _no_barrier)
    with concurrent_programs(delay_s=1.0):
        h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", True, "fp32", plan=plan)
    assert h.isnan().any() and not torch.equal(h.nan_to_num(), good[0])


def test_a_barrier_that_cannot_be_met_fails_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(tp, "_grid_barrier", _unmeetable_barrier)
    c = make_core(3, 10, 50, seed=1)
    with pytest.raises(TimeoutError, match="programs still running"):
        with concurrent_programs(timeout_s=3.0):
            tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", True, "fp32",
                       plan=tp.Plan((4, 1), 16, 16, 64))


def test_outside_the_harness_a_multi_split_plan_is_still_refused():
    c = make_core(2, 4, 24, seed=3)
    with pytest.raises(ValueError, match="column splits"):
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", True, "fp32",
                   plan=tp.Plan((2, 1), 16, 16, 32))
    with concurrent_programs():
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", True, "fp32",
                   plan=tp.Plan((2, 1), 16, 16, 32))
    assert tr.last_family == "persistent" and not triton_common.concurrent_programs
