"""The kernels compile for sm_90 as they launch, under the GPU machine's triton (3.6.0) and the newest.

benchmarks/kernel_tools/triton_compile.py runs the real launchers on stand-in CUDA tensors, records each
`kernel[grid](...)`, specialises the arguments with triton's own launch-time code and compiles for
sm_90 (no GPU needed: triton ships ptxas). Triton 3.6.0 is installed beside the newest by
`make triton-3.6` (into .venv/triton-3.6.0, or the folder named by TIMESCALE_KERNELS_TRITON36); the
compiles run in subprocesses with that folder first on PYTHONPATH and TRITON_INTERPRET unset.
Under 3.6.0 every case compiles (every family x direction x precision, float64, lengths, other
nonlinearities and placements, the strided-W controls); under the newest, the quick cases.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, compile_script_rows, triton36_side
from timescale_kernels.ops import triton_persistent as tp
from timescale_kernels.ops import triton_recurrence as tr

sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
import ptx_checks  # noqa: E402
import sass_loops  # noqa: E402
import triton_compile as tc  # noqa: E402

@pytest.fixture(scope="module")
def rows36(tmp_path_factory):
    """Every case compiled under triton 3.6.0."""
    result = compile_script_rows("triton_compile.py", tmp_path_factory.mktemp("t36"), side=triton36_side())
    assert result["triton"] == "3.6.0"
    return result["rows"]


@pytest.fixture(scope="module")
def rows_newest(tmp_path_factory):
    """The quick cases compiled under the newest triton installed."""
    return compile_script_rows("triton_compile.py", tmp_path_factory.mktemp("newest"), quick=True)["rows"]


def _label_value(row, key: str):
    """The value of a row's case label part /key=..., or None."""
    found = re.search(rf"/{key}=(\d+)", row["case"])
    return int(found.group(1)) if found else None


def batch_of(row) -> int:
    """B of a row's case: its /B=... label, else the direction's shape's."""
    if _label_value(row, "B") is not None:
        return _label_value(row, "B")
    return tc.ANALYSIS_SHAPE[1] if "/simulate/" in row["case"] else tc.STUDY_SHAPE[1]


def hidden_of(row) -> int:
    """H of a row's case: its /H=... label, else the study's 500."""
    return _label_value(row, "H") or tc.STUDY_SHAPE[2]


def networks_of(row) -> int:
    """K networks of a row's case (grid axis 1): its /K=... label, else 1."""
    return _label_value(row, "K") or 1


def check_compiled(rows, cases):
    """Every case has a row, none failed, resources are plausible."""
    labels = {r["case"] for r in rows}
    assert labels == {c.label for c in cases}, labels ^ {c.label for c in cases}
    failed = {r["case"]: r["error"] for r in rows if "error" in r}
    assert not failed, failed
    for r in rows:
        assert 0 < r["registers"] <= 255 and r["smem"] > 0, r


@pytest.mark.slow
def test_every_kernel_compiles_under_triton_36(rows36):
    check_compiled(rows36, tc.all_cases())
    assert {r["case"].split("/")[3] for r in rows36} == {"float32", "float64"}


def test_newest_triton_compiles_the_quick_cases(rows_newest):
    check_compiled(rows_newest, tc.all_cases(quick=True))
    assert {r["kernel"] for r in rows_newest} == {"recurrence_fwd_kernel", "recurrence_bwd_kernel",
                                                  "persistent_fwd_kernel"}
    for r in rows_newest:  # one arrival per program at the grid barrier under this compiler too
        assert ("barrier by thread 0" in r["ptx"]) == r["kernel"].startswith("persistent"), r


@pytest.mark.slow
def test_voltage_kernels_spill_no_more_than_the_outside_ones_under_triton_36(rows36):
    """The "voltage" placement (f on each state chunk before the dot, f'(v) on the backward's product)
    compiles for sm_90 in each family, direction and precision it is listed in, within the registers, with
    no more spill bytes than the "outside" kernel of the same family, direction, precision and dtype."""
    rows = {(r["case"], r["kernel"]): r for r in rows36}
    voltage = [r for r in rows36 if "/voltage" in r["case"]]
    ensembles = [r for r in voltage if "/K=" in r["case"]]
    assert len(voltage) - len(ensembles) == 2 * len(tc.voltage_cases("forward"))
    assert len(ensembles) == 2  # K = 4 networks, forward and backward (ensemble_cases)
    for r in voltage:
        base = "/".join(r["case"].split("/")[:4])  # family/direction/precision/dtype: the outside leaky_relu case
        if "/K=" in r["case"]:  # the outside case of the same ensemble
            base += "/" + r["case"].split("/")[-1]
        outside = rows[(base, r["kernel"])]
        assert r["registers"] <= 255 and r["spills"] <= outside["spills"], (r["case"], r, outside)
    # the persistent fp32 forward applies f to each state chunk as it reaches its dot: 6 loads in flight at
    # the step's first wait under triton 3.6.0 (the outside kernel: 11)
    forward = rows[("persistent/forward/fp32/float32/voltage", "persistent_fwd_kernel")]
    assert forward["hot_loop"]["l2_loads_ahead"] >= 4, forward["hot_loop"]


@pytest.mark.slow
def test_specialisation_is_the_launch_one(rows36):
    """Derived from the arguments as the JIT does: the operand's unit stride is the constant 1 (stride_wn
    for the contiguous W^T and the backward's W, stride_wk for the strided control), B = 256 and the
    pointers are divisible by 16, B = 10 and H = 500 are not (H = 64 is), T is never specialised."""
    for r in rows36:
        args = r["arguments"]
        by_16 = "i32:16" if hidden_of(r) % 16 == 0 else "i32"
        assert args["T"] == "i32" and args["H"] == by_16, r["case"]
        assert args["B"] == ("i32:16" if batch_of(r) % 16 == 0 else "i32"), r["case"]
        assert all(v.endswith(":16") for k, v in args.items() if k.endswith("_ptr")), args
        unit = "stride_wk" if tc.is_control(r) else "stride_wn"
        other = ({"stride_wk", "stride_wn"} - {unit}).pop()
        assert args[unit] == "=1" and args[other] == by_16, args  # 500: not a multiple of 16


def one_value_per_thread(row) -> bool:
    """A persistent row whose (BLOCK_B, BLOCK_N) tile holds one value per thread (the analysis shape's
    16x16 tiles on 256 threads), where every row access is 4 bytes whatever the alignment."""
    if not row["kernel"].startswith("persistent"):
        return False
    precision = row["case"].split("/")[2]
    planned = tr.persistent_plan(tc.DEVICE_PROPERTIES, batch_of(row), tc.STUDY_SHAPE[2], precision)
    return planned.block_b * planned.block_n <= 32 * planned.num_warps


@pytest.mark.slow
def test_rows_are_read_and_written_16_bytes_at_a_time_under_triton_36(rows36):
    """At H = 500 (a multiple of 4, not of 16, so the JIT marks nothing) the launchers pass ROW_ALIGN = 4
    and every float32 row moves in 16-byte copies, loads and stores, as it does at H = 512: no 4-byte
    copy and no scalar row load or store. The strided-W controls (row stride 1: ROW_ALIGN = 1) keep
    their 4-byte accesses, so the fact can be seen."""
    check_row_access(rows36)


def test_rows_are_read_and_written_16_bytes_at_a_time_under_newest(rows_newest):
    check_row_access(rows_newest)


# Multiply-adds per dot instruction of each float32 precision: an FFMA one per thread (32 per warp);
# tf32 HMMA.1688 16x8x8; bf16 HMMA.16816 16x8x16. tf32x3 issues three tf32 products.
MACS_PER_WARP_INSTRUCTION = {"fp32": 32, "tf32": 1024, "tf32x3": 1024 / 3, "bf16": 2048}


def check_hot_loops(rows):
    """The hot loop (sass_loops.hot_loop) of every float32 kernel holds its warp's share of the dot
    once: BLOCK_B x BLOCK_N x K multiply-adds over the warps, K = BLOCK_K per chunk in the default
    kernels and H_PAD per step in the persistent ones, in FFMA (fp32) or HMMA (the tensor-core
    precisions), plus at most two element-wise FFMA per value of the tile and 8 more. So no warp
    repeats another's products (8 warps on the persistent tf32x3 32x32 tile did each one 4 times).
    Every kernel that compiled has a hot loop."""
    for r in rows:
        assert r["hot_loop"] and r["hot_loop"]["instructions"] >= r["hot_loop"]["dot"] > 0, r["case"]
        precision, dtype = r["case"].split("/")[2:4]
        if dtype != "float32":
            continue
        warps = r["num_warps"]
        if r["kernel"].startswith("persistent"):
            p = tr.persistent_plan(tc.DEVICE_PROPERTIES, batch_of(r), tc.STUDY_SHAPE[2], precision)
            tile, k = (p.block_b, p.block_n), p.h_pad
        else:
            c = tr.GPU_CONFIG
            tile, k = (c.block_b, c.block_n), c.block_k
        expected = round(tile[0] * tile[1] * k / MACS_PER_WARP_INSTRUCTION[precision] / warps)
        element_wise = 2 * tile[0] * tile[1] // (32 * warps) + 8
        assert expected <= r["hot_loop"]["dot"] <= expected + element_wise, (r["case"], expected, r["hot_loop"])


@pytest.mark.slow
def test_persistent_forward_has_its_state_chunks_in_flight_together_under_triton_36(rows36):
    """The persistent fp32 forward (and tf32's at B = 256) loads the step's state chunks ahead of its
    dots (chunks_ahead): 8 or more L2 loads in flight at the step's first wait for one, where the
    compiler's own schedule (AHEAD = 1) has 2, each chunk then waiting for its own round trip; the
    fp32 backward without lengths 4 or more."""
    rows = [r for r in rows36 if r["kernel"] == "persistent_fwd_kernel" and not tc.is_control(r)
            and "/voltage" not in r["case"]  # f on each chunk: 6 ahead (benchmarks/NOTES.md, "voltage")
            and (r["case"].split("/")[2] == "fp32" or r["case"] == "persistent/forward/tf32/float32")]
    assert len(rows) >= 4
    for r in rows:
        assert r["hot_loop"]["l2_loads_ahead"] >= 8, (r["case"], r["hot_loop"])
    # the backward without lengths interleaves its loads with the staging stores: 4 against 2
    backward = next(r for r in rows36 if r["case"] == "persistent/backward/fp32/float32")
    assert backward["hot_loop"]["l2_loads_ahead"] >= 4, backward["hot_loop"]


@pytest.mark.slow
def test_hot_loops_do_the_dot_once_under_triton_36(rows36):
    check_hot_loops(rows36)


def test_hot_loops_do_the_dot_once_under_newest(rows_newest):
    check_hot_loops(rows_newest)


MISALIGNED_SCRIPT = """
import dataclasses, json, re, sys
sys.path[:0] = ["benchmarks/kernel_tools", "benchmarks/gpu"]
import triton_compile as tc
from triton_capture import Pointer, compile_launch
launch = tc.capture(tc.Case(family="default", direction="forward"))[0]
args = list(launch.args)
args[0] = Pointer(args[0].dtype, args[0].address + 4)  # u starts 4 bytes past a 16-byte boundary
ptx = compile_launch(dataclasses.replace(launch, args=tuple(args))).asm["ptx"]
print(json.dumps({"row_align": launch.kwargs["ROW_ALIGN"], "loads": sorted(set(re.findall(r"ld\\.global\\.[.a-z0-9]+", ptx)))}))
"""


@pytest.mark.slow
def test_row_align_promises_nothing_of_the_pointers():
    """ROW_ALIGN speaks of H and the row stride only: a tensor that starts off a 16-byte boundary (a
    view into a larger buffer) is read 4 bytes at a time by the same ROW_ALIGN = 4 kernel, and the
    aligned tensors beside it keep their 16-byte loads (triton 3.6.0, sm_90)."""
    side = triton36_side()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(side), str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", MISALIGNED_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["row_align"] == 4
    assert "ld.global.b32" in found["loads"] and "ld.global.v4.b32" in found["loads"], found


def check_row_access(rows):
    for r in rows:
        if r["case"].split("/")[3] != "float32" or one_value_per_thread(r):
            continue
        aligned = "=16" if hidden_of(r) % 16 == 0 else "=4"
        assert r["arguments"]["ROW_ALIGN"] == ("=1" if tc.is_control(r) else aligned), r["case"]
        assert ("4-byte row access" in r["ptx"]) == tc.is_control(r), (r["case"], r["ptx"])


def check_static(rows):
    """No float32 (float64) dot operand unswizzled along the reduction axis with a bank conflict over
    CONFLICT_LIMIT ways, except in the strided-W controls, which must show defect 1's 32-way conflict:
    the check sees defect 1 and the kernels no longer have it."""
    flagged = {r["case"]: max(r["unswizzled_reduction_operands"]) for r in rows
               if tc.conflict_ways(r) > tc.CONFLICT_LIMIT and not tc.is_control(r)}
    assert not flagged, json.dumps(flagged, indent=1)
    controls = [r for r in rows if tc.is_control(r)]
    assert controls and all(tc.conflict_ways(r) == 32 for r in controls), [(r["case"], tc.conflict_ways(r))
                                                                           for r in controls]


@pytest.mark.slow
def test_static_check_passes_and_sees_the_strided_control_under_triton_36(rows36):
    check_static(rows36)
    assert {r["case"] for r in rows36 if tc.is_control(r)} == {c.label for c in tc.controls()}


def test_static_check_passes_and_sees_the_strided_control_under_newest(rows_newest):
    check_static(rows_newest)


@pytest.mark.slow
def test_default_kernels_launch(rows36):
    """One program per 16-row batch tile and network; a block barrier; nothing through the read-only path."""
    for r in rows36:
        if r["kernel"].startswith("recurrence"):
            assert r["grid"] == [-(-batch_of(r) // tr.GPU_CONFIG.block_b), networks_of(r)], r
            assert r["options"] == {"num_warps": tr.GPU_CONFIG.num_warps, "num_stages": tr.GPU_CONFIG.num_stages}, r
            assert "bar.sync" in r["ptx"] and "ld.global.nc" not in r["ptx"], r


@pytest.mark.slow
def test_persistent_kernels_launch(rows36):
    """A cooperative launch of the plan's grid, the column split first; the barrier as a gpu-scope
    release and acquire bracketed by bar.sync, each done by thread 0 alone; nothing through the read-only path and no asynchronous
    copy (nothing prefetched across the barrier); tf32x3, tf32 and bf16 on the tensor cores; shared
    memory within the plan's estimate."""
    rows = [r for r in rows36 if r["kernel"].startswith("persistent")]
    assert {r["case"].split("/")[2] for r in rows} == set(tc.PRECISIONS)
    for r in rows:
        precision = r["case"].split("/")[2]
        planned = tr.persistent_plan(tc.DEVICE_PROPERTIES, batch_of(r), tc.STUDY_SHAPE[2], precision)
        assert r["grid"] == list(planned.grid) and planned.grid[0] >= 2, r
        assert r["options"] == {"num_warps": planned.num_warps, "num_stages": 1, "launch_cooperative_grid": True}, r
        assert planned.num_warps == (tp.NUM_WARPS if precision == "fp32" else tp.mma_warps(planned.block_b,
                                                                                         planned.block_n)), r
        assert {"gpu release", "gpu acquire", "bar.sync", "barrier by thread 0"} <= set(r["ptx"]), r
        assert not {"ld.global.nc", "cp.async"} & set(r["ptx"]), r
        assert precision == "fp32" or "mma" in r["ptx"], r
        w_bytes = {"tf32x3": 8, "bf16": 2}.get(precision, 4)
        assert r["dynamic_smem"] <= planned.h_pad * planned.block_n * w_bytes + tp.SMEM_RESERVE, r


# ---- the static check on hand-written TTGIR ----

LAYOUTS = """#blocked2 = #ttg.blocked<{sizePerThread = [2, 2], threadsPerWarp = [1, 32], warpsPerCTA = [8, 1], order = [1, 0]}>
#lanes_on_m = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [32, 1], warpsPerCTA = [8, 1], order = [0, 1]}>
#two_rows = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [2, 16], warpsPerCTA = [8, 1], order = [1, 0]}>
#shared = #ttg.swizzled_shared<{vec = 1, perPhase = 1, maxPhase = 1, order = [1, 0]}>
#shared1 = #ttg.swizzled_shared<{vec = 1, perPhase = 1, maxPhase = 1, order = [0, 1]}>
#swz = #ttg.swizzled_shared<{vec = 4, perPhase = 1, maxPhase = 8, order = [0, 1]}>
"""


def load(layout, op_idx, parent="blocked2", etype="f32"):
    return (f"%m = ttg.local_load %a token %t : !ttg.memdesc<64x64x{etype}, #{layout}, #smem, mutable> -> "
            f"tensor<64x64x{etype}, #ttg.dot_op<{{opIdx = {op_idx}, parent = #{parent}}}>> loc(#loc1)")


@pytest.mark.parametrize("line,caught", [
    (load("shared1", 1), 32),                      # B k-major, lanes along n: the forward's strided W
    (load("shared", 1), 0),                        # B n-major: W^T contiguous, and the backward's W
    (load("swz", 1), 0),                           # swizzled
    (load("shared1", 1, etype="bf16"), 0),         # not a float32 operand
    (load("shared", 0), 0),                        # A k-major, every lane on one row: a broadcast
    (load("shared", 0, parent="lanes_on_m"), 32),  # A k-major, lanes along m
    (load("shared", 0, parent="two_rows"), 2),     # A k-major, lanes on two rows: 2-way
    (load("shared1", 0, parent="lanes_on_m"), 0),
    (load("shared", 0, parent="mma"), tc.MMA_ROWS),  # an MMA parent spreads lanes on both axes
])
def test_static_check_on_hand_written_ttgir(line, caught):
    found = tc.unswizzled_reduction_operands(LAYOUTS + line + "\n")
    assert found == ([(caught, line)] if caught else [])


# ---- the one-arrival check on hand-written PTX ----

PTX_HEAD = """\tmov.u32 \t%r1, %tid.x;
\tmov.u32 \t%r40, %ctaid.x;
\tand.b32 \t%r15, %r1, 255;
\tand.b32 \t%r16, %r1, 15;
\tand.b32 \t%r2, %r1, 31;
\tbfe.u32 \t%r51, %r1, 5, 3;
\tor.b32 \t%r33, %r51, %r2;
\tsetp.eq.b32 \t%p7, %r15, 0;
\tsetp.eq.b32 \t%p8, %r1, 0;
\tsetp.lt.s32 \t%p9, %r15, 16;
\tsetp.eq.b32 \t%p10, %r16, 0;
\tsetp.eq.b32 \t%p11, %r33, 0;
\tsetp.eq.b32 \t%p12, %r40, 0;
\tsetp.ne.b32 \t%p13, %r1, 0;
"""
RELEASE = "\t@{} atom.global.gpu.release.add.u32 %r5, [ %rd3 + 0 ], %r6;\n"
ACQUIRE = "\t@{} ld.global.gpu.acquire.b32 %r9, [ %rd3 + 0 ];\n"


@pytest.mark.parametrize("body,threads,one_arrival", [
    (RELEASE.format("%p7") + ACQUIRE.format("%p7"), 256, True),    # tid & 255 == 0
    (RELEASE.format("%p8") + ACQUIRE.format("%p8"), 128, True),    # tid == 0
    (RELEASE.format("%p11") + ACQUIRE.format("%p11"), 256, True),  # lane | warp == 0, as triton 3.6 writes it
    (RELEASE.format("!%p13") + ACQUIRE.format("%p8"), 256, True),  # not (tid != 0)
    (RELEASE.format("%p10") + ACQUIRE.format("%p7"), 256, False),  # tid & 15 == 0: 16 threads arrive
    (RELEASE.format("%p7") + ACQUIRE.format("%p9"), 256, False),   # 16 threads acquire
    (RELEASE.format("%p11") + ACQUIRE.format("%p11"), 512, False),  # lane | warp covers 8 warps of 16
    (RELEASE.format("%p12") + ACQUIRE.format("%p12"), 256, False),  # depends on the program id: unknown
    ("\tatom.global.gpu.release.add.u32 %r5, [ %rd3 + 0 ], %r6;\n" + ACQUIRE.format("%p7"), 256, False),
    ("", 256, False),                                                # no barrier at all
])
def test_barrier_check_on_hand_written_ptx(body, threads, one_arrival):
    assert ptx_checks.barrier_by_thread_zero(PTX_HEAD + body, threads) is one_arrival


@pytest.mark.slow
def test_every_persistent_tuning_candidate_compiles_with_one_arrival_per_program(tmp_path):
    """`make gpu-tune` times persistent tilings the rule does not pick (other grids, 4 warps): under
    triton 3.6.0 each compiles within an H200's shared memory, and each kernel's grid barrier is
    passed by one thread per program."""
    side = triton36_side()
    out = tmp_path / "tune.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(side), str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_tools" / "bench_tune.py"), "compile", "--only",
                          "persistent", "--jobs", "2", "--json", str(out)], env=env, capture_output=True, text=True,
                         timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["triton"] == "3.6.0"
    kernels = [(r["label"], name, k) for r in result["rows"] for name, k in r.items() if name.startswith("persistent")]
    assert len(result["rows"]) >= 10 and len(kernels) == 2 * len(result["rows"])
    warps = {label: next(w for w in label.split() if w.startswith("w")) for label, _, _ in kernels}
    assert {w for label, w in warps.items() if not label.startswith("tf32x3")} == {"w4", "w8"}
    assert {w for label, w in warps.items() if label.startswith("tf32x3")} == {"w1", "w2", "w8"}
    assert all(k["one_arrival"] for _, _, k in kernels), [x for x in kernels if not x[2]["one_arrival"]]
    # as compiled, every tiling (its state chunks staged ahead included) fits an H200's 227 KB per block
    assert all(k["smem"] <= 227 * 1024 for _, _, k in kernels), [x for x in kernels if x[2]["smem"] > 227 * 1024]


# ---- the SASS readers on hand-written SASS ----

def sass_text(*lines):
    """cuobjdump-style lines, addresses 0x0000, 0x0010, ..."""
    return "\n".join(f"        /*{16 * i:04x}*/                   {line} ;" for i, line in enumerate(lines))


def test_mma_chain_follows_the_accumulator():
    text = sass_text("HMMA.1688.F32.TF32 R4, R8, R12, RZ", "HMMA.1688.F32.TF32 R20, R8, R14, RZ",
                     "HMMA.1688.F32.TF32 R4, R9, R12, R4", "HMMA.1688.F32.TF32 R4, R10, R12, R4",
                     "MOV R20, RZ", "HMMA.1688.F32.TF32 R20, R8, R14, R20")
    assert sass_loops.mma_chain(text, 0, 0x50) == 3      # R4: three links; R20 restarts after the MOV
    assert sass_loops.mma_chain(text, 0x20, 0x50) == 2   # the window starts mid-chain


def test_l2_loads_ahead_counts_loads_not_yet_waited_for():
    text = sass_text("LDG.E.64.STRONG.GPU R12, desc[UR10][R98.64]", "LDG.E.STRONG.GPU R29, desc[UR10][R72.64]",
                     "CCTL.IVALL", "LDG.E.64.STRONG.GPU R14, desc[UR10][R98.64+0x80]",
                     "LDG.E.128.STRONG.GPU R16, desc[UR10][R98.64+0x100]", "STS.64 [R152], R13",
                     "LDG.E.64.STRONG.GPU R24, desc[UR10][R98.64+0x180]", "FFMA R1, R18, R2, R1")
    # R12..13, R14..15, R16..19 in flight (the acquire before CCTL is not counted); the STS names R13
    # (waits for the first), the FFMA names R18 (the third): at most 3 at once
    assert sass_loops.l2_loads_ahead(text, 0, 0x70) == 3


def test_hot_loop_is_the_innermost_loop_holding_the_dot():
    text = sass_text("LDG.E.64.STRONG.GPU R12, desc[UR10][R98.64]", "FFMA R1, R12, R2, R1", "FFMA R3, R13, R2, R3",
                     "@P0 BRA 0x10", "LDG.E.STRONG.GPU R29, desc[UR10][R72.64]", "CCTL.IVALL", "@P1 BRA 0x40",
                     "@P2 BRA 0x0")
    loop = sass_loops.hot_loop(text)
    assert loop["instructions"] == 3 and loop["dot"] == 2 and loop["dot_share"] == round(2 / 3, 3)
    assert sass_loops.hot_loop(sass_text("MOV R1, RZ", "@P0 BRA 0x0")) is None
