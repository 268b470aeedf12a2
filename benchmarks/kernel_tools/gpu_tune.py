"""The second GPU command: the triton backend's tuning choices, measured (`make gpu-tune`).

    python benchmarks/kernel_tools/gpu_tune.py [--out-dir DIR] [--budget-s 210] [--dry-run] [--groups a,b]

Run it after `make gpu-check`, in the GPU time left: it measures what the launchers choose without
a GPU, so that each choice can be set from measurements. Groups (benchmarks/kernel_tools/bench_tune.py), each in
its own subprocess under its own time limit (cut to what is left of --budget-s):

  compile     every candidate below compiled in parallel into triton's cache (registers, spills)
  default     the default family's tiles at the study's batch (256) and the analysis batch (10)
  persistent  the persistent family's tilings and warps at the same shapes
  crossover   both families over B in 10..512 and H in 64..1000, against the family the rule picks
  bidi        one bidirectional layer: the module, its directions one after the other, on two streams

Writes gpu-tune-<device>.json (every figure, rewritten after each measurement), gpu-tune-<device>.md
(the tables, and which choice each measurement favours) and gpu-tune-<device>.log to --out-dir (or
$GPU_CHECK_OUT_DIR, or $OUT_DIR; default benchmarks/results/). --dry-run rehearses it on the CPU
at tiny shapes under the Triton interpreter. Exit status 1 when a group failed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "gpu")]
from gpu_check import run_command  # noqa: E402
from gpu_report import fmt  # noqa: E402
from gpu_results import load  # noqa: E402

BENCH = Path(__file__).resolve().parent
TUNE = str(BENCH / "bench_tune.py")
# (group, seconds on an H100/H200, argv after the interpreter)
GROUPS = (
    ("compile", 60, [TUNE, "compile", "--json", "{tmp}/compile.json"]),
    ("default", 40, [TUNE, "default", "--results", "{results}"]),
    ("persistent", 30, [TUNE, "persistent", "--results", "{results}"]),
    ("crossover", 50, [TUNE, "crossover", "--results", "{results}"]),
    ("bidi", 20, [TUNE, "bidi", "--results", "{results}"]),
)
DEFAULT_BUDGET_S = 210


def compile_summary(path: Path) -> dict:
    """{'triton', 'kernels', 'failed': [...], 'spilling': {label: {kernel: spills}}} of the compile group."""
    data = load(path)
    rows = data.get("rows", [])
    spilling = {}
    for r in rows:
        spills = {k: v["spills"] for k, v in r.items() if isinstance(v, dict) and v.get("spills")}
        if spills:
            spilling[f"{r['group']} {','.join(map(str, r['shape']))} {r['label']}"] = spills
    barrier = [f"{r['group']} {r['label']} {k}" for r in rows for k, v in r.items()
               if isinstance(v, dict) and v.get("one_arrival") is False]
    return {"triton": data.get("triton"), "kernels": len(rows), "failed": [r for r in rows if "error" in r],
            "spilling": spilling, "barrier_not_one_arrival": barrier}


def candidate_lines(results: dict, group: str, title: str) -> list[str]:
    """One table per shape: us/step of each candidate, the one in use and the fastest marked."""
    lines = []
    for key, rows in results.get(group, {}).items():
        timed = {label: r["fwd_us"] + r["bwd_us"] for label, r in rows.items() if "fwd_us" in r}
        fastest = min(timed, key=timed.get) if timed else None
        current = next((label for label, r in rows.items() if r.get("current")), None)
        lines += [f"## {title}, (T, B, H) = ({key}), fp32", "",
                  "| candidate | fwd us/step | bwd us/step | fwd+bwd | / in use | max abs difference |",
                  "|---|---|---|---|---|---|"]
        for label, r in rows.items():
            marks = " (in use)" * (label == current) + " **fastest**" * (label == fastest)
            if "fwd_us" not in r:
                lines.append(f"| {label}{marks} | {r.get('error') or r.get('skipped', '-')} | | | | |")
                continue
            ratio = timed[label] / timed[current] if current in timed else None
            lines.append(f"| {label}{marks} | {fmt(r['fwd_us'])} | {fmt(r['bwd_us'])} | {fmt(timed[label])} | "
                         f"{fmt(ratio)} | {fmt(r.get('max_abs_difference'))} |")
        if fastest and current in timed and fastest != current:
            lines.append(f"\nFastest: {fastest}, {1 - timed[fastest] / timed[current]:.0%} below the tiles in use.")
        lines.append("")
    return lines


# The predictions the tune rows test directly (benchmarks/NOTES.md): (what, group, shape (0: the
# study's batch, B = 256; 1: the analysis batch, B = 10), the row the launchers use, the row without
# the change, the measure, the predicted ratio in use / without).
# Rows are named from the group's row in use: "+ suffix" appends to its label; "tf32x3 first" and
# "tf32x3 second" are the group's tf32x3 rows in order (its own warps, then 8).
PREDICTIONS = (
    ("16-byte rows (ROW_ALIGN), default family", "default", 0, "in use", "+ 4-byte rows", "fwd+bwd", (0.80, 0.90)),
    ("16-byte rows (ROW_ALIGN), default family", "default", 1, "in use", "+ 4-byte rows", "fwd+bwd", (0.80, 0.90)),
    ("16-byte rows (ROW_ALIGN), persistent family", "persistent", 0, "in use", "+ 4-byte rows", "fwd+bwd",
     (0.97, 1.00)),
    ("state chunks ahead (chunks_ahead), persistent forward", "persistent", 0, "in use", "+ 1 chunk ahead", "fwd",
     (0.25, 0.75)),
    ("state chunks ahead (chunks_ahead), persistent forward", "persistent", 1, "in use", "+ 1 chunk ahead", "fwd",
     (0.30, 0.60)),
    ("state chunks ahead (chunks_ahead), persistent backward", "persistent", 0, "in use", "+ 1 chunk ahead", "bwd",
     (0.60, 0.95)),
    ("tf32x3 on mma_warps() warps, not 8", "persistent", 0, "tf32x3 first", "tf32x3 second", "fwd", (0.50, 0.90)),
    ("tf32x3 on mma_warps() warps, not 8", "persistent", 1, "tf32x3 first", "tf32x3 second", "fwd", (0.70, 1.00)),
)


def _tune_row(rows: dict, name: str):
    current = next((label for label, r in rows.items() if r.get("current")), None)
    if name == "in use":
        return rows.get(current)
    if name.startswith("+ "):
        return rows.get(f"{current} {name[2:]}") if current else None
    tf32x3 = [r for label, r in rows.items() if label.startswith("tf32x3 ")]
    index = {"tf32x3 first": 0, "tf32x3 second": 1}[name]
    return tf32x3[index] if len(tf32x3) > index else None


def prediction_lines(results: dict) -> list[str]:
    """One table: each prediction of PREDICTIONS beside the ratio measured, and whether it fell inside."""
    lines = ["## Predictions against the measurements", "",
             "Ratio = the row the launchers use / the row without the change (below 1: the change is faster).", "",
             "| change | (T, B, H) | measure | measured ratio | predicted | inside |", "|---|---|---|---|---|---|"]
    for what, group, shape, used, without, measure, (lo, hi) in PREDICTIONS:
        shapes = list(results.get(group, {}).items())
        key, rows = shapes[shape] if shape < len(shapes) else ("not run", {})
        a, b = _tune_row(rows, used), _tune_row(rows, without)
        ratio = None
        if a and b and "fwd_us" in a and "fwd_us" in b:
            pick = {"fwd": lambda r: r["fwd_us"], "bwd": lambda r: r["bwd_us"],
                    "fwd+bwd": lambda r: r["fwd_us"] + r["bwd_us"]}[measure]
            ratio = pick(a) / pick(b)
        inside = "-" if ratio is None else ("yes" if lo <= ratio <= hi else "**no**")
        lines.append(f"| {what} | ({key}) | {measure} | {fmt(ratio)} | {lo:.2f}-{hi:.2f} | {inside} |")
    return lines + [""]


def crossover_lines(results: dict) -> list[str]:
    rows = results.get("crossover", {})
    if not rows:
        return []
    batches = sorted({int(k.split(",")[0]) for k in rows})
    hiddens = sorted({int(k.split(",")[1]) for k in rows})
    steps = next((r["T"] for r in rows.values() if "T" in r), "?")
    lines = [f"## Kernel family by shape: fwd+bwd us/step, default / persistent (fp32, T = {steps})", "",
             "Each cell: the default family, the persistent family (- where no tiling fits), and the "
             "family the rule picks, marked ok where it is the faster one.", "",
             "| B \\ H | " + " | ".join(map(str, hiddens)) + " |", "|---" * (len(hiddens) + 1) + "|"]
    agree = total = 0
    for B in batches:
        cells = []
        for H in hiddens:
            r = rows.get(f"{B},{H}", {})
            if "rule" not in r:
                cells.append(r.get("skipped", "-"))
                continue
            faster = r.get("faster")
            total += faster is not None
            agree += faster == r["rule"]
            verdict = "ok" if faster == r["rule"] else f"**{faster} faster**"
            cells.append(f"{fmt(r.get('default'))} / {fmt(r.get('persistent'))}: {r['rule']} {verdict}")
        lines.append(f"| {B} | " + " | ".join(cells) + " |")
    lines += ["", f"The rule picks the faster family at {agree} of {total} shapes.", ""]
    return lines


def bidi_lines(results: dict) -> list[str]:
    lines = []
    for key, rows in results.get("bidi", {}).items():
        lines += [f"## One bidirectional layer (triton, tanh, fp32), (T, B, H) = ({key})", "",
                  "| run | fwd ms | fwd+bwd ms | max abs difference from the module |", "|---|---|---|---|"]
        for name, r in rows.items():
            if "fwd_ms" not in r:
                lines.append(f"| {name} | {r.get('error') or r.get('skipped', '-')} | | |")
                continue
            lines.append(f"| {name} | {fmt(r['fwd_ms'])} | {fmt(r['fwd_bwd_ms'])} | {fmt(r['max_abs_difference'])} |")
        lines.append("")
    return lines


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    lines = [f"# gpu_tune: {env.get('device', '?')}", "",
             f"torch {env.get('torch')}, triton {env.get('triton')}, Python {env.get('python')}, "
             f"commit {str(env.get('git_commit', '?'))[:10]}{' (dirty)' if env.get('git_dirty') else ''}, "
             f"{env.get('date')}, {fmt(results.get('seconds'))} s", ""]
    lines += prediction_lines(results)
    lines += candidate_lines(results, "default", "Default family: tiles")
    lines += candidate_lines(results, "persistent", "Persistent family: tilings (grid splits x tiles)")
    lines += crossover_lines(results) + bidi_lines(results)
    compiled = results.get("compile")
    if compiled:
        lines += ["## Compile", "", f"triton {compiled['triton']}: {compiled['kernels']} candidates, "
                  f"{len(compiled['failed'])} failed; more than one arrival per program at the grid barrier: "
                  f"{compiled.get('barrier_not_one_arrival') or 'none'}; spilling: {compiled['spilling'] or 'none'}", ""]
    lines += ["## Groups", "", "| group | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {s['status']} | {s.get('seconds', '-')} |" for name, s in results.get("groups", {}).items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    done = run_command(argv, command="gpu_tune", prefix="gpu-tune", groups=GROUPS, budget_s=DEFAULT_BUDGET_S,
                       report=markdown, summarise_compile=compile_summary, description=__doc__.split("\n")[0])
    return 0 if done is not None and done[0] else 1


if __name__ == "__main__":
    sys.exit(main())
