"""Compile the kernels for each card of timescale_kernels.ops.devices.CARDS as their launchers launch them there.

    python benchmarks/kernel_tools/triton_cards.py [--cards T4 A100 ...] [--quick] [--jobs N] [--json PATH] [--table]
    python benchmarks/kernel_tools/triton_cards.py --table --from-json PATH     (the tables of a saved run)

The cards stand for the architectures the field trains on: sm_75 (T4), 80 (A100), 86 (RTX 3090), 89
(L40), 90 (H100) and 120 (RTX 5090). Each case is captured through the real launchers with the card's
DeviceProperties standing for torch's (triton_capture.capturing(card)): the persistent plan is the
one choose_family / persistent_plan pick from that card's SM count and shared memory, the compile
target is the card's sm_XX, and ptxas reports registers, spills and shared memory for it.

card_cases(card) enumerates the kernels from the project's own tables (choices.PRECISIONS and
PLACEMENTS, triton_recurrence.FAMILIES and MMA_PRECISIONS, the rule itself), so a new precision,
placement or family is compiled on every card once it is in them:
  - the default family: forward and backward in every precision the card runs, float64, and every
    placement beyond the first;
  - the persistent family: at each of TABLE_SHAPES where the rule picks it, the fp32 plan's forward
    and backward; at the study shape, every other precision's plan the rule picks, forward and backward.
A precision the card cannot run (the tensor-core ones before sm_80) is captured too and must be
refused by the launcher (a row with "refused"). On sm_90 the cases triton_compile.py's full set already
compiles with the same plan are left out (compiled_by_triton_compile); the other cards compile only
these, and their hot loops are not read (the SASS readers know sm_90's instructions).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, *(REPO / "benchmarks" / d for d in ("gpu", "kernel_tools", "cpu"))):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import triton_compile as tc  # noqa: E402
from timescale_kernels.ops import choices, devices  # noqa: E402
from timescale_kernels.ops import triton_recurrence as tr  # noqa: E402

TABLE_SHAPES = ((256, 500), (10, 500), (64, 64))  # (B, H): the study's batch, the analysis runs, a small network


def runs(card: devices.DeviceProperties, precision: str) -> bool:
    """Whether the launchers run this precision on the card (triton_recurrence.check_precision)."""
    try:
        tr.check_precision(card, precision)
    except ValueError:
        return False
    return True


def card_cases(name: str, quick: bool = False, skip_compiled: bool = True) -> list[tc.Case]:
    """The kernels compiled for one card of devices.CARDS (see the module docstring). quick: the default
    family's fp32 forward and backward, and the persistent fp32 plan's at the last (smallest) table shape.
    skip_compiled: leave out what triton_compile.py's full set compiles already (compiled_by_triton_compile)."""
    card = devices.CARDS[name]
    precisions = [p for p in choices.PRECISIONS if runs(card, p)]
    if quick:
        batch, hidden = TABLE_SHAPES[-1]
        families = ["default"] + (["persistent"] if tr.choose_family(card, batch, hidden, "fp32") == "persistent" else [])
        return [tc.Case(f, direction=d, card=name, **({"batch": batch, "hidden": hidden} if f == "persistent" else {}))
                for f in families for d in ("forward", "backward")]
    cases = []
    for direction in ("forward", "backward"):
        cases += [tc.Case("default", p, direction=direction, card=name) for p in precisions]
        cases.append(tc.Case("default", "fp32", "float64", direction, card=name))
        cases += [tc.Case("default", "fp32", direction=direction, placement=placement, card=name)
                  for placement in choices.PLACEMENTS[1:]]
    for batch, hidden in TABLE_SHAPES:
        study = (batch, hidden) == tc.STUDY_SHAPE[1:]
        for p in precisions if study else ["fp32"]:
            if tr.choose_family(card, batch, hidden, p) == "persistent":
                size = {} if study else {"batch": batch, "hidden": hidden}
                cases += [tc.Case("persistent", p, direction=d, card=name, **size) for d in ("forward", "backward")]
    return [c for c in cases if not (skip_compiled and compiled_by_triton_compile(c))]


def compiled_by_triton_compile(case: tc.Case) -> bool:
    """True when triton_compile.py's full set already compiles this case as launched on its card: same
    arch and the same plan rule inputs (SM count, shared memory per block) as its H200 stand-in."""
    card, stand_in = devices.CARDS[case.card], tc.DEVICE_PROPERTIES
    same = (card.arch, card.multi_processor_count, card.shared_memory_per_block_optin) == (
        tc.ARCH, stand_in.multi_processor_count, stand_in.shared_memory_per_block_optin)
    return same and dataclasses.replace(case, card="") in set(tc.all_cases())


def refused_cases(name: str) -> list[tc.Case]:
    """The default family's forward in each precision the card cannot run: the launcher must refuse it."""
    card = devices.CARDS[name]
    return [tc.Case("default", p, card=name) for p in choices.PRECISIONS if not runs(card, p)]


def compile_or_refuse(case: tc.Case) -> list[dict]:
    """compile_case's rows; for a case the launcher refuses with a ValueError, one row with "refused"."""
    try:
        tc.capture(case)
    except ValueError as err:
        return [{"case": case.label, "card": case.card, "refused": str(err)}]
    except Exception:
        pass  # compile_case reports it as an error row
    return [dict(row, card=case.card) for row in tc._compile_case_safely(case)]


def compile_cards(names, jobs: int, quick: bool = False) -> list[dict]:
    """Every card's rows (card_cases and refused_cases), compiled in `jobs` processes."""
    import multiprocessing
    cases = [c for name in names for c in card_cases(name, quick) + refused_cases(name)]
    if jobs <= 1:
        return [row for c in cases for row in compile_or_refuse(c)]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return [row for rows in pool.imap(compile_or_refuse, cases) for row in rows]


def family_cell(card: devices.DeviceProperties, batch: int, hidden: int, precision: str) -> str:
    """What the rule picks for (B, H) in a precision on a card: 'default', 'persistent GxT (BxN, w warps)'
    or 'refused'."""
    if not runs(card, precision):
        return "refused"
    plan = tr.persistent_plan(card, batch, hidden, precision)
    if plan is None:
        return "default"
    return f"persistent {plan.grid[0]}x{plan.grid[1]} ({plan.block_b}x{plan.block_n}, {plan.num_warps} w)"


def family_table(names) -> str:
    """Per card: its properties and the family the rule picks at TABLE_SHAPES, per precision."""
    head = "| card | arch | SMs | smem/block (KB) | precision | " + " | ".join(f"(B, H) = {s}" for s in TABLE_SHAPES)
    lines = [head + " |", "|" + "---|" * (5 + len(TABLE_SHAPES))]
    for name in names:
        card = devices.CARDS[name]
        for p in choices.PRECISIONS:
            cells = [family_cell(card, b, h, p) for b, h in TABLE_SHAPES]
            lines.append(f"| {name} | sm_{card.arch} | {card.multi_processor_count} | "
                         f"{card.shared_memory_per_block_optin // 1024} | {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def resource_table(rows: list[dict]) -> str:
    """Per compiled kernel: card, case, grid, warps, registers, spills, shared memory and whether it fits the card."""
    lines = ["| card | case | kernel | grid | warps | registers | spills (B) | smem (KB) | fits the card |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        case = r["case"].split("@")[0]
        if "refused" in r or "error" in r:
            what = f"refused: {r['refused']}" if "refused" in r else f"compile failed: {r['error']}"
            lines.append(f"| {r['card']} | {case} | - | - | - | - | - | - | {what[:120]} |")
            continue
        limit = devices.CARDS[r["card"]].shared_memory_per_block_optin
        lines.append(f"| {r['card']} | {case} | {r['kernel']} | {'x'.join(map(str, r['grid']))} | {r['num_warps']} | "
                     f"{r['registers']} | {r['spills']} | {r['smem'] / 1024:.1f} | "
                     f"{'yes' if r['smem'] <= limit else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cards", nargs="+", default=list(devices.CARDS), choices=list(devices.CARDS))
    parser.add_argument("--quick", action="store_true", help="card_cases(quick=True): a few cheap kernels per card")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--json", default=None, help="write {'triton': version, 'rows': [...]} here")
    parser.add_argument("--table", action="store_true", help="print the markdown tables for benchmarks/NOTES.md")
    parser.add_argument("--from-json", default=None, help="read the rows of a saved run instead of compiling")
    args = parser.parse_args(argv)
    import triton
    os.environ.pop("TRITON_INTERPRET", None)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        version, rows = saved["triton"], [r for r in saved["rows"] if r["card"] in args.cards]
    else:
        version, rows = triton.__version__, compile_cards(args.cards, args.jobs, args.quick)
    if args.json and not args.from_json:
        tc.write_rows(args.json, version, rows)
    if args.table:
        print(f"triton {version}; generated by `python benchmarks/kernel_tools/triton_cards.py --table`.\n")
        print(family_table(args.cards))
        print(resource_table(rows))
    failed = [r for r in rows if "error" in r]
    print(f"triton {version}: {len(rows)} rows on {len(args.cards)} cards, {len(failed)} failed to "
          f"compile, {sum('refused' in r for r in rows)} refused", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
