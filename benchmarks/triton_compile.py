"""Compile the Triton kernels for sm_90 exactly as their launchers launch them, without a GPU.

    python benchmarks/triton_compile.py [--table] [--check] [--json PATH] [--quick]
    python benchmarks/triton_compile.py --warm-cache [--jobs N]      (on a GPU machine)

capture(case) runs the real launchers (triton_recurrence.forward / backward, with the case's kernel
family and LaunchConfig) under triton_capture.capturing() and returns the recorded launches;
compile_case() compiles each with triton_capture.compile_launch() (the JIT's own specialisation,
sm_90) and reports registers, spills, shared memory, launch options, a few PTX facts, the hot loop
(sass_loops.py: its instructions and their dot share) and the
static check. unswizzled_reduction_operands() is that check on the TTGIR: a dot operand staged in
shared memory with an unswizzled layout (vec = 1, perPhase = 1, maxPhase = 1) whose fastest axis
is the reduction axis makes the lanes of a warp that span the other axis read one bank (32-way for
a warp's 32 lanes: defect 1). --check fails on a conflict over CONFLICT_LIMIT ways, and on a
strided-W control that is not flagged. --warm-cache compiles every kernel `make gpu-check`
launches, in parallel processes, into triton's cache on the GPU machine, so that the benchmarks'
first launches find their kernels compiled.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ptx_checks import ptx_facts  # noqa: E402
from sass_loops import hot_loop_of  # noqa: E402
from triton_capture import (ARCH, DEVICE_PROPERTIES, Launch, capturing, compile_launch,  # noqa: E402,F401
                            resources, specialised_arguments, stand_in)

STUDY_SHAPE = (400, 256, 500)      # (T, B, H): the study's training batch
ANALYSIS_SHAPE = (100_500, 10, 500)  # the analysis simulation: 10 trials, forward only
PRECISIONS = ("fp32", "tf32x3", "tf32", "bf16")
FAMILIES = ("default", "persistent")


# ---- the cases: every family, precision and dtype at the study's shapes -----------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    family: str = "default"
    precision: str = "fp32"
    dtype: str = "float32"
    direction: str = "forward"       # "forward" (drive saved, as in training), "backward", "simulate"
    nonlinearity: str = "leaky_relu"
    placement: str = "outside"
    lengths: bool = False            # per-row lengths (HAS_LENGTHS) as the study's variable-length batches
    contiguous_wt: bool = True       # False: the forward reads W through its strides (defect 1's control)
    batch: int = 0                   # B; 0: the direction's shape's
    hidden: int = 0                  # H; 0: the direction's shape's
    networks: int = 0                # K networks in one launch (an ensemble: grid axis 1); 0: one network

    @property
    def label(self) -> str:
        extra = "" if self.nonlinearity == "leaky_relu" else f"/{self.nonlinearity}"
        extra += "" if self.placement == "outside" else f"/{self.placement}"
        extra += "/lengths" if self.lengths else ""
        extra += "" if self.contiguous_wt else "/strided-W"
        extra += f"/B={self.batch}" if self.batch else ""
        extra += f"/H={self.hidden}" if self.hidden else ""
        extra += f"/K={self.networks}" if self.networks else ""
        return f"{self.family}/{self.direction}/{self.precision}/{self.dtype}{extra}"

    @property
    def shape(self):
        T, B, H = ANALYSIS_SHAPE if self.direction == "simulate" else STUDY_SHAPE
        return T, self.batch or B, self.hidden or H


def all_cases(quick: bool = False) -> list[Case]:
    """Each family x direction x precision in float32; float64 (fp32, default family: the persistent
    family never runs float64 on CUDA); per-row lengths (fp32 at B = 256 in each family, tf32x3 at
    B = 10 in the persistent one); the other nonlinearities and the inside placement; and the
    controls(). quick: the default family's fp32 forward and backward, the persistent fp32 forward
    and the default family's control."""
    if quick:
        return [Case(), Case(direction="backward"), Case("persistent"), Case(contiguous_wt=False)]
    cases = []
    for family in FAMILIES:
        for direction in ("forward", "backward", "simulate"):
            cases += [Case(family, p, "float32", direction) for p in PRECISIONS]
    cases += [Case("default", "fp32", "float64", direction) for direction in ("forward", "backward", "simulate")]
    for direction in ("forward", "backward"):
        cases += [Case("default", direction=direction, lengths=True),
                  Case("persistent", direction=direction, lengths=True),
                  Case("persistent", "tf32x3", direction=direction, lengths=True, batch=10),
                  Case("default", "fp32", direction=direction, nonlinearity="tanh", placement="inside"),
                  Case("default", "tf32", direction=direction, nonlinearity="sigmoid", placement="inside"),
                  Case("default", "fp32", "float64", direction, nonlinearity="relu", placement="inside")]
    return cases + ensemble_cases() + controls()


def ensemble_cases() -> list[Case]:
    """The ensembles of benchmarks/NOTES.md's predictions, as the launchers launch them (the default
    family, the network a grid axis): K = 4 of the study's (B, H) = (256, 500) and K = 64 of
    (64, 64), forward and backward, fp32 and tf32x3; with lengths at K = 4."""
    cases = []
    for direction in ("forward", "backward"):
        cases += [Case(direction=direction, precision=p, networks=4) for p in ("fp32", "tf32x3")]
        cases += [Case(direction=direction, precision=p, networks=64, batch=64, hidden=64) for p in ("fp32", "tf32x3")]
        cases.append(Case(direction=direction, lengths=True, networks=4))
    return cases


def controls() -> list[Case]:
    """The forward reading W through its strides (LaunchConfig(contiguous_wt=False)), each family:
    the layout of defect 1, which the static check must flag (so that it cannot pass vacuously)."""
    return [Case(family, contiguous_wt=False) for family in FAMILIES]


def warm_cases() -> list[Case]:
    """all_cases(), the forward without the drive at B = 256 (the benchmarks' forward-only rows, the
    strided control of defect-ab, tanh), the GPU tests' other placement ("inside") and small batch,
    and the drop-in modules' tanh (fp32), forward and backward: the kernels that `make gpu-check`
    launches."""
    no_drive = [Case(family, p, "float32", "simulate", batch=STUDY_SHAPE[1]) for family in FAMILIES for p in PRECISIONS]
    inside = [Case(family, p, "float32", direction, placement="inside")
              for family in FAMILIES for p in PRECISIONS for direction in ("forward", "backward")]
    tanh = [Case(family, "fp32", "float32", direction, nonlinearity="tanh")
            for family in FAMILIES for direction in ("forward", "backward", "simulate")]
    # the persistent GPU test's small batch (B = 10, both placements, fp32 and tf32x3)
    small = [Case("persistent", p, "float32", direction, placement=placement, batch=10)
             for p in ("fp32", "tf32x3") for direction in ("forward", "backward") for placement in ("outside", "inside")]
    # the forward without the drive at B = 256: defect-ab's strided control, the drop-in rows' and the
    # bidirectional tuning rows' tanh forward
    more = [Case(family, "fp32", "float32", "simulate", batch=STUDY_SHAPE[1], **kind) for family in FAMILIES
            for kind in ({"contiguous_wt": False}, {"nonlinearity": "tanh"})]
    cases = all_cases()
    return cases + no_drive + inside + [c for c in tanh + small + more if c not in cases]


def capture(case: Case) -> list[Launch]:
    """The launches the launchers make for one case at its shape (usually one), through
    triton_recurrence.forward / backward with family= pinned and, for contiguous_wt=False, the
    GPU config with the strided W read."""
    from timescale_kernels.ops import triton_recurrence as tr
    T, B, H = case.shape
    lead = (case.networks,) if case.networks else ()
    dtype = getattr(torch, case.dtype)
    config = dataclasses.replace(tr.GPU_CONFIG, contiguous_wt=case.contiguous_wt)
    common = dict(nonlinearity=case.nonlinearity, placement=case.placement, precision=case.precision,
                  config=config, family=case.family)
    with capturing() as launches:
        u, h0 = stand_in((*lead, T, B, H), dtype), stand_in((*lead, B, H), dtype)
        w, alpha = stand_in((*lead, H, H), dtype), stand_in((*lead, H), dtype)
        lengths = stand_in((*lead, B), torch.int64) if case.lengths else None
        if case.direction == "backward":
            h, drive, grad_h = (stand_in((*lead, T, B, H), dtype) for _ in range(3))
            tr.backward(grad_h=grad_h, h=h, h0=h0, drive=drive, w=w, alpha=alpha, lengths=lengths, **common)
        else:
            tr.forward(u=u, h0=h0, w=w, alpha=alpha, save_drive=case.direction == "forward", lengths=lengths,
                       **common)
    return launches


# ---- the static check on the TTGIR -------------------------------------------------------------------

_SHARED = re.compile(r"^#(\w+) = #ttg\.swizzled_shared<\{vec = (\d+), perPhase = (\d+), maxPhase = (\d+), "
                     r"order = \[(\d+), \d+\]", re.M)
_BLOCKED = re.compile(r"^#(\w+) = #ttg\.blocked<\{[^}]*threadsPerWarp = \[(\d+), (\d+)\]", re.M)
_LOCAL_LOAD = re.compile(r"ttg\.local_load .*!ttg\.memdesc<[\dx]+x(\w+), #(\w+)[^>]*> -> "
                         r"tensor<[^,]+, #ttg\.dot_op<\{opIdx = (\d), parent = #(\w+)")
_WGMMA = re.compile(r"ttng\.warp_group_dot .*: !ttg\.memdesc<[\dx]+x(\w+), #(\w+)[^>]*> \* "
                    r"!ttg\.memdesc<[\dx]+x(\w+), #(\w+)")


MMA_ROWS = 8      # an MMA fragment spreads a warp's lanes over 8 rows of either operand
CONFLICT_LIMIT = 2  # the most ways of bank conflict the static check lets pass


def unswizzled_reduction_operands(ttgir: str, element_types=("f32",)) -> list[tuple[int, str]]:
    """[(ways, line)]: the TTGIR lines that stage a dot operand of one of element_types in an
    unswizzled shared layout (vec = perPhase = maxPhase = 1) whose fastest axis (order[0]) is the
    reduction axis (axis 1 of operand A, axis 0 of operand B), read by a warp whose lanes span the
    operand's other axis; ways = the lanes on that axis (MMA_ROWS for an MMA parent, 32 for a
    warp-group MMA reading shared memory): those lanes read addresses one row of the tile apart,
    all in one bank for a tile row of 32 words or a multiple. (A warp whose lanes all share the
    other index, as operand A of the FMA dot with threadsPerWarp = [1, 32], reads one address: a
    broadcast, not a conflict, and is not listed.)"""
    unswizzled = {name: int(fastest) for name, vec, per_phase, max_phase, fastest in _SHARED.findall(ttgir)
                  if (vec, per_phase, max_phase) == ("1", "1", "1")}
    lanes = {name: (int(a), int(b)) for name, a, b in _BLOCKED.findall(ttgir)}
    found = []
    for line in ttgir.splitlines():
        m = _LOCAL_LOAD.search(line)
        if m and m.group(1) in element_types:
            op_idx = int(m.group(3))
            reduction_axis, other_axis = (1, 0) if op_idx == 0 else (0, 1)
            ways = lanes[m.group(4)][other_axis] if m.group(4) in lanes else MMA_ROWS
            if unswizzled.get(m.group(2)) == reduction_axis and ways > 1:
                found.append((ways, line.strip()))
        m = _WGMMA.search(line)
        if m:
            for op_idx, (etype, layout) in enumerate(((m.group(1), m.group(2)), (m.group(3), m.group(4)))):
                if etype in element_types and unswizzled.get(layout) == (1 if op_idx == 0 else 0):
                    found.append((32, line.strip()))
    return found


def conflict_ways(row: dict) -> int:
    """The worst bank conflict the static check found in a compiled row (0: none)."""
    return max((ways for ways, _ in row.get("unswizzled_reduction_operands", [])), default=0)


# ---- reports -------------------------------------------------------------------------------------------

LAUNCH_OPTIONS = ("num_warps", "num_stages", "launch_cooperative_grid")


def compile_case(case: Case) -> list[dict]:
    """One row per launch of the case: kernel, grid, launch options, specialisation, resources,
    PTX facts, static-check findings."""
    rows = []
    for launch in capture(case):
        compiled = compile_launch(launch)
        rows.append({"case": case.label, "kernel": launch.name, "grid": list(launch.grid),
                     "options": {k: launch.kwargs[k] for k in LAUNCH_OPTIONS if k in launch.kwargs},
                     "ptx": ptx_facts(compiled.asm["ptx"], 32 * compiled.metadata.num_warps),
                     "dynamic_smem": int(compiled.metadata.shared),
                     "arguments": specialised_arguments(launch), **resources(compiled),
                     "hot_loop": hot_loop_of(compiled.asm["cubin"]),
                     "unswizzled_reduction_operands": unswizzled_reduction_operands(
                         compiled.asm["ttgir"], ("f32",) if case.dtype == "float32" else ("f64",))})
    return rows


def markdown_table(rows: list[dict], version: str) -> str:
    """The register table for benchmarks/NOTES.md."""
    lines = [f"triton {version}, sm_90, specialised from the launchers' arguments at (T, B, H) = {STUDY_SHAPE} "
             f"(simulate: {ANALYSIS_SHAPE}, forward without the drive); generated by "
             "`python benchmarks/triton_compile.py --table`.", "",
             "| family / direction / precision / dtype | kernel | grid | warps | registers | spills (B) | smem (KB) "
             "| hot loop: instructions (dot share, L2 loads in flight, MMA chain) | reduction-axis bank conflict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            error = r["error"].replace("`", "")[:100]
            lines.append(f"| {r['case']} | - | - | - | - | - | - | - | compile failed: {error} |")
            continue
        loop = r.get("hot_loop")
        ahead = f", {loop['l2_loads_ahead']} in flight" if loop and r["kernel"].startswith("persistent") else ""
        chain = f", MMA chain {loop['mma_chain']}" if loop and loop.get("mma_chain") else ""
        hot = f"{loop['instructions']} ({loop['dot_share']:.2f}{ahead}{chain})" if loop else "-"
        lines.append(f"| {r['case']} | {r['kernel']} | {'x'.join(map(str, r['grid']))} | {r['num_warps']} | "
                     f"{r['registers']} | {r['spills']} | {r['smem'] / 1024:.1f} | {hot} | "
                     f"{f'{conflict_ways(r)}-way' if conflict_ways(r) else 'no'} |")
    return "\n".join(lines) + "\n"


def _compile_case_safely(case: Case) -> list[dict]:
    try:
        return compile_case(case)
    except Exception as err:  # one failing case must not hide the others' rows
        return [{"case": case.label, "error": describe_error(err)}]


def describe_error(err: BaseException) -> str:
    """The innermost source line a compile error points at, and the root exception: one line."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    where = ""
    for e in chain:
        lines = [line.strip() for line in str(e).splitlines() if line.strip().strip("^")]
        if lines and type(e).__name__ == "CompilationError":
            where = lines[-1]
    root = chain[-1]
    return f"{type(root).__name__}: {str(root).strip()[:200] or '(no message)'}" + (f" at `{where}`" if where else "")


def warm_cache(cases, jobs: int, json_path: str | None = None) -> list[dict]:
    """Compiles the cases in `jobs` processes (each into triton's on-disk cache); their rows, also
    written to json_path as they arrive (a run killed by its time limit keeps what it compiled)."""
    import multiprocessing
    import triton
    rows = []
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for found in pool.imap(_compile_case_safely, cases):
            rows += found
            if json_path:
                write_rows(json_path, triton.__version__, rows)
    return rows


def write_rows(json_path: str, version: str, rows: list[dict]) -> None:
    """{'triton': version, 'rows': rows} written whole (write, then rename)."""
    tmp = Path(json_path).with_name(Path(json_path).name + ".tmp")
    tmp.write_text(json.dumps({"triton": version, "rows": rows}, indent=1))
    os.replace(tmp, json_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="three cases instead of every one")
    parser.add_argument("--table", action="store_true", help="print the markdown register table")
    parser.add_argument("--check", action="store_true", help="exit 1 when the static check finds an operand")
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--warm-cache", action="store_true", help="(GPU machine) compile every case in parallel")
    args = parser.parse_args(argv)
    import triton
    os.environ.pop("TRITON_INTERPRET", None)
    cases = warm_cases() if args.warm_cache else all_cases(args.quick)
    jobs = max(1, min(len(cases), os.cpu_count() or 1)) if args.warm_cache and args.jobs == 1 else args.jobs
    rows = warm_cache(cases, jobs, args.json) if jobs > 1 else [r for c in cases for r in _compile_case_safely(c)]
    if args.json:
        write_rows(args.json, triton.__version__, rows)
    if args.table:
        print(markdown_table(rows, triton.__version__))
    failed = [r for r in rows if "error" in r]
    flagged = [r for r in rows if conflict_ways(r) > CONFLICT_LIMIT and not is_control(r)]
    missed = [r for r in rows if is_control(r) and "error" not in r and conflict_ways(r) <= CONFLICT_LIMIT]
    for r in flagged:
        ways, line = max(r["unswizzled_reduction_operands"])
        print(f"static check: {r['case']} {r['kernel']}: {ways}-way: {line}", file=sys.stderr)
    for r in missed:
        print(f"static check: the control {r['case']} was not flagged", file=sys.stderr)
    print(f"triton {triton.__version__}: {len(rows)} kernels, {len(failed)} failed to compile, "
          f"{len(flagged)} with a reduction-axis bank conflict over {CONFLICT_LIMIT}-way, "
          f"{len(missed)} control(s) not flagged",
          file=sys.stderr)
    return 1 if failed or (args.check and (flagged or missed)) else 0


def is_control(row: dict) -> bool:
    """True for a row of a strided-W control (its case label holds /strided-W)."""
    return "/strided-W" in row["case"]


if __name__ == "__main__":
    sys.exit(main())
