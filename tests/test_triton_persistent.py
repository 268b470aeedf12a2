"""The persistent column-split kernels (triton_persistent.py) against the default triton kernels
and the reference, their grid plan, the family rule, and the fallbacks. Under TRITON_INTERPRET=1
they run with one column split per batch tile (programs run one at a time, so a multi-program
barrier would wait forever); test_triton_persistent_splits.py runs multi-split plans with a thread
per program, and the tests marked gpu run them on a GPU, each in a subprocess with a timeout so
that a deadlock fails instead of hanging.
"""
import dataclasses
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402

from timescale_kernels.ops import triton_common, triton_persistent as tp, triton_recurrence as tr  # noqa: E402

from conftest import REPO, rel_err  # noqa: E402
from helpers import drive_from_states  # noqa: E402
from test_triton_backend import (DEVICE, check_lengths, check_rows_alone, make_core,  # noqa: E402
                                 make_lengths, reference_grads)

pytestmark = pytest.mark.skipif(not tr.is_available(), reason=f"triton backend: {tr.unavailable_reason()}")
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")
H200 = types.SimpleNamespace(major=9, minor=0, multi_processor_count=132, shared_memory_per_block_optin=227 * 1024)


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(tr, "poison_outputs", True)
    monkeypatch.setattr(triton_common, "_warned", set())


def run_core(c, nonlinearity, placement, precision, family):
    """(h, drive, d_drive, dh0, d_alpha) from the triton backend with a pinned kernel family."""
    h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], nonlinearity, placement, True, precision,
                          family=family)
    grads = tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], nonlinearity, placement, precision,
                        family=family)
    return (h, drive, *grads)


NAMES = ("h", "drive", "d_drive", "dh0", "d_alpha")


@pytest.mark.parametrize("T,B,H,nonlinearity,placement", [
    (5, 3, 20, "leaky_relu", "outside"),
    (5, 3, 20, "tanh", "inside"),
    (4, 1, 50, "sigmoid", "outside"),
    (6, 19, 50, "tanh", "outside"),
    (4, 19, 20, "leaky_relu", "inside"),
    (3, 1, 20, "sigmoid", "inside"),
    (3, 17, 33, "leaky_relu", "outside"),  # H odd: ROW_ALIGN 1 (20: 4, 50: 2)
    (3, 2, 24, "tanh", "outside"),         # ROW_ALIGN 8
    (3, 2, 48, "leaky_relu", "inside"),    # ROW_ALIGN 16
    (4, 19, 50, "tanh", "voltage"),
    (3, 17, 33, "sigmoid", "voltage"),
])
def test_persistent_matches_default_and_reference(T, B, H, nonlinearity, placement):
    c = make_core(T, B, H, seed=T + B + H)
    got = run_core(c, nonlinearity, placement, "fp32", "persistent")
    assert tr.last_family == "persistent"
    default = run_core(c, nonlinearity, placement, "fp32", "default")
    assert tr.last_family == "default"
    h_ref, du, dh0, dalpha = reference_grads(c, nonlinearity, placement)
    drive_ref = drive_from_states(c["u"], c["h0"], h_ref, c["w"], nonlinearity, placement)
    for name, a, b, want in zip(NAMES, got, default, (h_ref, drive_ref, du, dh0, dalpha)):
        assert a.shape == want.shape, name
        assert rel_err(a, b) <= 1e-5, name
        assert rel_err(a, want) <= 1e-5, name


@pytest.mark.parametrize("precision,tol", [("tf32x3", 1e-5), ("tf32", 1e-3), ("bf16", 1e-2)])
def test_persistent_reduced_precision(precision, tol):
    c = make_core(4, 5, 50)
    got = run_core(c, "tanh", "outside", precision, "persistent")
    h_ref, du, dh0, dalpha = reference_grads(c, "tanh", "outside")
    for name, a, want in zip(("h", "d_drive", "dh0", "d_alpha"), (got[0], *got[2:]), (h_ref, du, dh0, dalpha)):
        assert rel_err(a, want) <= tol, name


def test_persistent_float64():
    c = make_core(4, 3, 20, dtype=torch.float64)
    got = run_core(c, "relu", "inside", "fp32", "persistent")
    h_ref, du, dh0, dalpha = reference_grads(c, "relu", "inside")
    for name, a, want in zip(("h", "d_drive", "dh0", "d_alpha"), (got[0], *got[2:]), (h_ref, du, dh0, dalpha)):
        assert rel_err(a, want) <= 1e-12, name


def test_tf32_split_is_exact():
    m = torch.randn(50, 30)
    hi, lo = tp.split_tf32(m)
    assert torch.equal(hi + lo, m)
    assert torch.equal(hi.view(torch.int32) & 8191, torch.zeros_like(hi, dtype=torch.int32))  # a tf32 value
    assert (lo.abs() <= m.abs() * 2.0 ** -10).all()


@pytest.mark.parametrize("placement", ["outside", "inside", "voltage"])
def test_persistent_lengths(placement):
    check_lengths(make_core(6, 19, 33, seed=5), make_lengths(6, 19, seed=2), "tanh", placement, "persistent")
    check_rows_alone(make_core(5, 4, 20, seed=8), torch.tensor([5, 1, 3, 5], device=DEVICE), "leaky_relu",
                     placement, "persistent")


# ---- the grid plan and the family rule (pure functions of the device's properties and the shape) ----

def test_plan_study_shape_fills_the_device_column_split_first():
    planned = tr.persistent_plan(H200, 256, 500, "fp32")
    assert planned.grid == (8, 16) and (planned.block_b, planned.block_n, planned.h_pad) == (16, 64, 512)
    # tf32x3 keeps M twice on chip: 64-column slices would not fit, so 32 columns of 32-row tiles.
    planned = tr.persistent_plan(H200, 256, 500, "tf32x3")
    assert planned.grid == (16, 8) and (planned.block_b, planned.block_n) == (32, 32)


def test_plan_small_batch_uses_many_splits():
    """The analysis simulation (B = 10 trials) still spreads each step over at least 32 programs."""
    for precision in ("fp32", "tf32x3", "tf32", "bf16"):
        planned = tr.persistent_plan(H200, 10, 500, precision)
        assert planned.programs >= 32 and planned.grid[1] == 1, precision


def test_plan_refuses_what_cannot_be_resident():
    assert tr.persistent_plan(H200, 4096, 500, "fp32") is None  # more programs than SMs
    assert tr.persistent_plan(H200, 16, 8000, "fp32") is None  # W's column slice exceeds shared memory
    small = types.SimpleNamespace(major=8, minor=0, multi_processor_count=16, shared_memory_per_block_optin=0)
    assert tr.persistent_plan(small, 256, 500, "fp32") is None
    for B in (1, 10, 100, 256, 1000):
        planned = tr.persistent_plan(H200, B, 500, "tf32x3")
        assert planned is None or (planned.programs <= 132 and planned.h_pad * planned.block_n * 8
                                   + tp.SMEM_RESERVE <= 227 * 1024), B


def test_choose_family_is_a_function_of_device_and_shape():
    assert tr.choose_family(H200, 256, 500, "fp32") == "persistent"
    assert tr.choose_family(H200, 10, 500, "tf32x3") == "persistent"
    assert tr.choose_family(H200, 4096, 500, "fp32") == "default"
    assert tr.choose_family(H200, 256, 8000, "fp32") == "default"
    assert tr.choose_family(H200, 10, 500, "fp32", torch.float64) == "default"  # float64: the default kernels
    assert [tr.choose_family(H200, 256, 500, "fp32") for _ in range(3)] == ["persistent"] * 3


def test_tilings_hold_every_resident_plan_and_the_rule_picks_among_them():
    for B, H, precision in ((256, 500, "fp32"), (10, 500, "fp32"), (256, 500, "tf32x3"), (64, 1000, "bf16")):
        tilings = tr.persistent_tilings(H200, B, H, precision)
        picked = tr.persistent_plan(H200, B, H, precision)
        assert dataclasses.replace(picked, num_warps=tp.NUM_WARPS) in tilings
        assert picked.num_warps == (tp.NUM_WARPS if precision == "fp32" else tp.mma_warps(picked.block_b,
                                                                                          picked.block_n))
        assert len(set(tilings)) == len(tilings) > 1
        w_bytes = {"fp32": 4, "tf32x3": 8, "bf16": 2}[precision]
        for p in tilings:
            assert p.programs <= 132 and p.h_pad * p.block_n * w_bytes + tp.SMEM_RESERVE <= 227 * 1024, p
            assert p.grid == (-(-H // p.block_n), -(-B // p.block_b)) and p.num_warps == tp.NUM_WARPS
        assert max(p.programs for p in tilings) == tr.persistent_plan(H200, B, H, precision).programs
    assert tr.persistent_tilings(H200, 4096, 500, "fp32") == []
    assert tr.persistent_tilings(H200, 10, 500, "fp32", torch.float64) == []


@pytest.mark.parametrize("block_b,block_n,warps", [(16, 64, 8), (32, 32, 2), (16, 16, 1), (64, 32, 4), (16, 128, 8),
                                                   (32, 64, 8), (64, 16, 4), (128, 16, 8), (16, 32, 4)])
def test_mma_warps_put_no_two_warps_on_one_mma_tile(block_b, block_n, warps):
    """Triton's chained-dot layout puts every warp on the tile's longer axis (rows where BLOCK_B >=
    BLOCK_N), in MMA tiles of 16 rows or 8 columns; mma_warps is their count, at most NUM_WARPS."""
    assert tp.mma_warps(block_b, block_n) == warps


def test_a_pinned_plan_runs_the_persistent_kernels_with_its_tiles():
    """plan= (for benchmarks that compare tilings) pins the persistent family; under the
    interpreter a one-split plan runs and a multi-split one is refused before it could hang."""
    c = make_core(4, 20, 24, seed=3)
    expected = run_core(c, "tanh", "outside", "fp32", "default")
    for block_b in (16, 32):
        planned = tp.Plan((1, -(-20 // block_b)), block_b, 32, 32, num_warps=4)
        h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", True, "fp32", plan=planned)
        assert tr.last_family == "persistent"
        grads = tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], "tanh", "outside", "fp32",
                            plan=planned)
        for name, a, b in zip(NAMES, (h, drive, *grads), expected):
            assert rel_err(a, b) < 1e-5, (block_b, name)
    if not CUDA:
        with pytest.raises(ValueError, match="column splits"):
            tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", True, "fp32",
                       plan=tp.Plan((2, 2), 16, 16, 32))


# ---- fallbacks: each warns once and gives the default kernels' results ----

def test_no_plan_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(tr, "persistent_plan", lambda *args: None)
    c = make_core(3, 19, 20)
    with pytest.warns(UserWarning, match="does not fit"):
        got = run_core(c, "tanh", "outside", "fp32", "persistent")
    assert tr.last_family == "default"
    default = run_core(c, "tanh", "outside", "fp32", "default")
    for name, a, b in zip(NAMES, got, default):
        assert torch.equal(a, b), name
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # once is enough
        run_core(c, "tanh", "outside", "fp32", "persistent")


class _RefusingKernel:
    """Stands in for a persistent kernel whose launch the device refuses with the given error."""

    def __init__(self, error):
        self.error, self.launches = error, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            raise self.error
        return launch


def test_refused_cooperative_launch_falls_back_with_one_warning(monkeypatch):
    refusing = _RefusingKernel(RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch"))
    monkeypatch.setattr(tp, "persistent_fwd_kernel", refusing)
    c = make_core(3, 5, 20)
    with pytest.warns(UserWarning, match="refused"):
        h, _ = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32", family="persistent")
    assert tr.last_family == "default" and len(refusing.launches) == 1
    want, _ = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32", family="default")
    assert torch.equal(h, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # once is enough
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32", family="persistent")


def test_other_launch_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(tp, "persistent_fwd_kernel", _RefusingKernel(RuntimeError("illegal memory access")))
    c = make_core(3, 5, 20)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "tanh", "outside", False, "fp32", family="persistent")


# ---- GPU only: the multi-program barrier ----

GPU_SCRIPT = """
import torch
from timescale_kernels.ops import triton_recurrence as tr
from test_triton_backend import check_lengths, make_core, make_lengths, reference_grads
from conftest import rel_err
tr.poison_outputs = True
for B in (256, 10):
    for placement in ("outside", "inside", "voltage"):
        c = make_core(100, B, 500, device="cuda")
        h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "leaky_relu", placement, True, "{precision}",
                              family="persistent")
        assert tr.last_family == "persistent", tr.last_family
        grads = tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], "leaky_relu", placement,
                            "{precision}", family="persistent")
        assert tr.last_family == "persistent", tr.last_family
        torch.cuda.synchronize()
        h_ref, *want = reference_grads(c, "leaky_relu", placement)
        errs = [rel_err(h, h_ref)] + [rel_err(a, b) for a, b in zip(grads, want)]
        assert max(errs) <= 1e-5, (B, placement, errs)
    if "{precision}" == "fp32" and B == 256:  # per-row lengths (kernels in the warm cache): held rows,
        # their gradient ignored, the barrier kept
        check_lengths(make_core(30, B, 500, device="cuda"), make_lengths(30, B, seed=B), "leaky_relu", "outside",
                      family="persistent")
print("ok")
"""


# A healthy run takes a few seconds (the kernels come from the warm cache); two of these fit within
# the tests-persistent group's 60 s in `make gpu-check`, so a deadlock is reported, not killed.
DEADLOCK_S = 25


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32x3"])
def test_persistent_study_shape_on_gpu(precision):
    props = torch.cuda.get_device_properties(0)
    if tr.persistent_plan(props, 256, 500, precision) is None:
        pytest.skip(f"{props.name}: the persistent grid for (256, 500) does not fit")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    try:
        run = subprocess.run([sys.executable, "-c", GPU_SCRIPT.replace("{precision}", precision)], env=env,
                             capture_output=True, text=True, timeout=DEADLOCK_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"persistent kernels did not finish in {DEADLOCK_S} s: the grid barrier deadlocked")
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
