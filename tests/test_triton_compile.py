"""The kernels compile for sm_90 as they launch, under the GPU machine's triton (3.6.0) and the newest.

benchmarks/triton_compile.py runs the real launchers on stand-in CUDA tensors, records each
`kernel[grid](...)`, specialises the arguments with triton's own launch-time code and compiles for
sm_90 (no GPU needed: triton ships ptxas). Triton 3.6.0 is installed beside the newest by
`make triton-3.6` (into .venv/triton-3.6.0, or the folder named by TIMESCALE_KERNELS_TRITON36); the
compiles run in subprocesses with that folder first on PYTHONPATH and TRITON_INTERPRET unset.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import triton_compile as tc  # noqa: E402

SIDE = Path(os.environ.get("TIMESCALE_KERNELS_TRITON36", REPO / ".venv" / "triton-3.6.0"))
needs_side = pytest.mark.skipif(not (SIDE / "triton").is_dir(),
                                reason=f"triton 3.6.0 is not installed beside the newest at {SIDE} (make triton-3.6)")


def compile_rows(tmp_path, side=None, quick=False, jobs=2) -> dict:
    """{'triton': version, 'rows': [...]} from triton_compile.py in a subprocess."""
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (side, REPO) if p] + [env.get("PYTHONPATH", "")])
    argv = [sys.executable, str(REPO / "benchmarks" / "triton_compile.py"), "--json", str(out), "--jobs", str(jobs)]
    run = subprocess.run(argv + (["--quick"] if quick else []), env=env, capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert out.is_file(), run.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def rows36(tmp_path_factory):
    """Every case (family x direction x precision x dtype) compiled under triton 3.6.0."""
    if not (SIDE / "triton").is_dir():
        pytest.skip(f"triton 3.6.0 is not installed beside the newest at {SIDE} (make triton-3.6)")
    result = compile_rows(tmp_path_factory.mktemp("t36"), side=SIDE)
    assert result["triton"] == "3.6.0"
    return result["rows"]


def by_case(rows):
    return {r["case"]: r for r in rows}


@pytest.mark.slow
def test_every_float32_kernel_compiles_under_triton_36(rows36):
    cases = by_case(rows36)
    want = [c.label for c in tc.all_cases() if c.dtype == "float32"]
    assert sorted(want) == sorted(k for k in cases if k.endswith("/float32"))
    failed = {k: r["error"] for k, r in cases.items() if k.endswith("/float32") and "error" in r}
    assert not failed, failed
    for r in rows36:
        if "error" not in r:
            assert 0 < r["registers"] <= 255 and r["smem"] > 0, r


@pytest.mark.slow
@pytest.mark.xfail(strict=True,
                   reason="tl.dot with a float64 accumulator needs out_dtype=acc.dtype under triton 3.6")
def test_float64_kernels_compile_under_triton_36(rows36):
    failed = {r["case"]: r["error"] for r in rows36 if r["case"].endswith("/float64") and "error" in r}
    assert not failed, failed


@pytest.mark.slow
def test_specialisation_is_the_launch_one(rows36):
    """Derived from the arguments as the JIT does: W's unit stride is the constant 1, B = 256 and the
    pointers are divisible by 16, B = 10 and H = 500 are not, T is never specialised."""
    for r in rows36:
        if "error" in r:
            continue
        args = r["arguments"]
        assert args["T"] == "i32", r["case"]
        assert args["H"] == "i32", r["case"]
        assert args["B"] == ("i32" if "/simulate/" in r["case"] else "i32:16"), r["case"]
        assert all(v.endswith(":16") for k, v in args.items() if k.endswith("_ptr")), args
        assert "=1" in (args["stride_wk"], args["stride_wn"]), args


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the forward stages W read through its unit stride (M[k, n] = W[n, k], "
                                       "stride_wk = 1) k-major and unswizzled: a 32-way bank conflict")
def test_no_float32_dot_operand_is_unswizzled_along_the_reduction_axis(rows36):
    flagged = {r["case"]: r["unswizzled_reduction_operands"][0] for r in rows36
               if r.get("unswizzled_reduction_operands")}
    assert not flagged, json.dumps(flagged, indent=1)


def test_newest_triton_compiles_the_quick_cases(tmp_path):
    result = compile_rows(tmp_path, quick=True)
    assert len(result["rows"]) == len(tc.all_cases(quick=True))
    failed = {r["case"]: r["error"] for r in result["rows"] if "error" in r}
    assert not failed, failed
    assert {r["kernel"] for r in result["rows"]} >= {"recurrence_fwd_kernel", "recurrence_bwd_kernel"}


# ---- the static check on hand-written TTGIR ----

LAYOUTS = """#blocked2 = #ttg.blocked<{sizePerThread = [2, 2], threadsPerWarp = [1, 32], warpsPerCTA = [8, 1], order = [1, 0]}>
#lanes_on_m = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [32, 1], warpsPerCTA = [8, 1], order = [0, 1]}>
#shared = #ttg.swizzled_shared<{vec = 1, perPhase = 1, maxPhase = 1, order = [1, 0]}>
#shared1 = #ttg.swizzled_shared<{vec = 1, perPhase = 1, maxPhase = 1, order = [0, 1]}>
#swz = #ttg.swizzled_shared<{vec = 4, perPhase = 1, maxPhase = 8, order = [0, 1]}>
"""


def load(layout, op_idx, parent="blocked2", etype="f32"):
    return (f"%m = ttg.local_load %a token %t : !ttg.memdesc<64x64x{etype}, #{layout}, #smem, mutable> -> "
            f"tensor<64x64x{etype}, #ttg.dot_op<{{opIdx = {op_idx}, parent = #{parent}}}>> loc(#loc1)")


@pytest.mark.parametrize("line,caught", [
    (load("shared1", 1), True),                      # B k-major, lanes along n: the forward's W today
    (load("shared", 1), False),                      # B n-major: the backward's W
    (load("swz", 1), False),                         # swizzled
    (load("shared1", 1, etype="bf16"), False),       # not a float32 operand
    (load("shared", 0), False),                      # A k-major, every lane on one row: a broadcast
    (load("shared", 0, parent="lanes_on_m"), True),  # A k-major, lanes along m
    (load("shared1", 0, parent="lanes_on_m"), False),
    (load("shared", 0, parent="mma"), True),         # an MMA parent spreads lanes on both axes
])
def test_static_check_on_hand_written_ttgir(line, caught):
    found = tc.unswizzled_reduction_operands(LAYOUTS + line + "\n")
    assert found == ([line] if caught else [])

