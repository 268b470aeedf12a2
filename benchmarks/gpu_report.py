"""The compact markdown table of `make gpu-check`, from its results JSON (see gpu_check.py)."""
from __future__ import annotations

TRITON_ROWS = [f"triton-{family}-{prec}" for family in ("default", "persistent")
               for prec in ("fp32", "tf32x3", "tf32", "bf16")]
BASELINE_ROWS = ["torch.compile", "cuda-graph", "cudnn", "cudnn-fp32", "eager", "eager-study"]
TABLE_GROUPS = ("table", "persistent", "torch-compile")


def fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def table_rows(results: dict) -> dict:
    """{shape key: {row name: row}} merged over the groups that time per-shape rows."""
    merged = {}
    for group in TABLE_GROUPS:
        for shape, rows in results.get(group, {}).items():
            merged.setdefault(shape, {}).update(rows)
    return merged


def per_step_table(results: dict) -> list[str]:
    """Rows x (fwd, fwd+bwd) per-step microseconds at every shape, peak MB, and eager-study / row."""
    merged = table_rows(results)
    shapes = list(merged)
    if not shapes:
        return ["(no per-step measurements)"]
    first = shapes[0]
    head = ["row"] + [f"{m} us/step {s}" for s in shapes for m in ("fwd", "fwd+bwd")]
    head += [f"peak MB fwd+bwd {first}", f"eager-study / row, fwd+bwd {first}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    study = merged[first].get("eager-study", {}).get("fwd_bwd_ms")
    for name in TRITON_ROWS + BASELINE_ROWS:
        if not any(name in merged[s] for s in shapes):
            continue
        cells, note = [name], ""
        for s in shapes:
            T = int(s.split(",")[0])
            row = merged[s].get(name, {})
            note = note or row.get("skipped") or row.get("fwd_bwd_ms_error") or row.get("fwd_ms_error") or ""
            note = note or ("cut off by the group time limit" if row.get("started") else "")
            for mode in ("fwd_ms", "fwd_bwd_ms"):
                cells.append(fmt(row[mode] * 1e3 / T if row.get(mode) else None))
        row = merged[first].get(name, {})
        cells.append(fmt(row.get("peak_mb")))
        cells.append(fmt(study / row["fwd_bwd_ms"]) + "x" if study and row.get("fwd_bwd_ms") else "-")
        if row.get("family_ran") and not name.startswith(f"triton-{row['family_ran']}-"):
            note = note or f"ran the {row['family_ran']} kernels (fallback)"
        lines.append("| " + " | ".join(cells) + " |" + (f" {note[:100]}" if note else ""))
    return lines


# The targets, fp32 fwd+bwd at the first shape ((T, B, H) = (400, 256, 500) on a GPU): (what, the
# baseline row, the least speed-up over it); then the per-step floor, the analysis and the headline run.
SPEEDUP_TARGETS = (("at least 20x faster than the eager loop as the study writes it", "eager-study", 20.0),
                   ("at least 3x faster than torch.compile", "torch.compile", 3.0),
                   ("at least 3x faster than the eager loop in a CUDA graph", "cuda-graph", 3.0),
                   ("no slower than cuDNN's nn.RNN (tanh, TF32 off)", "cudnn-fp32", 1.0),
                   ("no slower than cuDNN's nn.RNN (tanh, as torch sets it)", "cudnn", 1.0))
STEP_FLOOR_US, FLOOR_FACTOR = 2.0, 3.0  # the synchronisation floor per step, and the factor allowed
ANALYSIS_TARGET_S, HEADLINE_TARGET_H = 2.0, 1.0


def _ours(rows: dict, prefix: str) -> tuple[str, dict] | tuple[None, None]:
    """The fp32 row of the kernel family the launchers pick: the persistent one where it ran its own
    kernels, else the default one."""
    for family in ("persistent", "default"):
        for name in (f"{prefix}{family}-fp32", f"{prefix}{family} fp32"):
            row = rows.get(name)
            if row and row.get("family_ran", family) == family and (row.get("fwd_bwd_ms") or row.get("seconds_at_full")):
                return name, row
    return None, None


def target_lines(results: dict) -> list[str]:
    """Each of the issue's targets with what was measured and whether it was met."""
    merged = table_rows(results)
    lines = ["| target | measured | met |", "|---|---|---|"]
    verdict = lambda ok: "-" if ok is None else ("yes" if ok else "**no**")  # noqa: E731
    if merged:
        shape = next(iter(merged))
        T = int(shape.split(",")[0])
        name, ours = _ours(merged[shape], "triton-")
        for what, baseline, least in SPEEDUP_TARGETS:
            theirs = merged[shape].get(baseline, {}).get("fwd_bwd_ms")
            ratio = theirs / ours["fwd_bwd_ms"] if ours and theirs else None
            lines.append(f"| fwd+bwd at ({shape}): {what} | {baseline} / {name}: {fmt(ratio)}{'x' * (ratio is not None)} | "
                         f"{verdict(None if ratio is None else ratio >= least)} |")
        per_step = ours["fwd_bwd_ms"] * 1e3 / T if ours else None
        limit = STEP_FLOOR_US * FLOOR_FACTOR
        lines.append(f"| fwd+bwd per step within {FLOOR_FACTOR:g}x of the synchronisation floor (about "
                     f"{STEP_FLOOR_US:g} us): at most {limit:g} us | {name}: {fmt(per_step)} us | "
                     f"{verdict(None if per_step is None else per_step <= limit)} |")
    name, row = _ours(results.get("analysis", {}), "op ")
    seconds = row.get("seconds_at_full") if row else None
    lines.append(f"| the analysis simulation of one network under {ANALYSIS_TARGET_S:g} s | {name}: {fmt(seconds)} s | "
                 f"{verdict(None if seconds is None else seconds < ANALYSIS_TARGET_S)} |")
    hours = (results.get("training", {}).get("headline_hours") or {}).get("ours")
    lines.append(f"| the study's headline run projected under {HEADLINE_TARGET_H:g} h | {fmt(hours)} h | "
                 f"{verdict(None if hours is None else hours < HEADLINE_TARGET_H)} |")
    return lines


def dropin_lines(results: dict) -> list[str]:
    """LeakyRNN against torch.nn.RNN as modules: per-step microseconds, and nn.RNN (cudnn) / LeakyRNN."""
    lines = []
    for shape, rows in results.get("dropin", {}).items():
        T = int(shape.split(",")[0])
        for name, row in rows.items():
            if not row.get("fwd_bwd_ms"):
                why = row.get('skipped') or row.get('fwd_bwd_ms_error') or ("cut off by the group time limit"
                                                                            if row.get("started") else "failed")
                lines.append(f"- {shape} {name}: {why}")
                continue
            line = (f"- {shape} {name}: fwd {fmt(row['fwd_ms'] * 1e3 / T if row.get('fwd_ms') else None)}, "
                    f"fwd+bwd {fmt(row['fwd_bwd_ms'] * 1e3 / T)} us/step")
            if name.startswith("LeakyRNN"):
                theirs = rows.get(name.replace("LeakyRNN", "nn.RNN").replace("(triton fp32)", "(cudnn)"), {})
                if theirs.get("fwd_bwd_ms"):
                    line += f"; nn.RNN (cudnn) / LeakyRNN, fwd+bwd: {fmt(theirs['fwd_bwd_ms'] / row['fwd_bwd_ms'])}x"
                if row.get("family_ran"):
                    line += f" (triton {row['family_ran']} kernels)"
            lines.append(line)
    return lines


def analysis_lines(results: dict) -> list[str]:
    lines = []
    for name, row in results.get("analysis", {}).items():
        ran = f", the {row['family_ran']} kernels ran" if row.get("family_ran") else ""
        if "seconds_at_full" in row:
            how = "measured" if row.get("measured_full") else f"projected from {row['probe_steps']} steps"
            lines.append(f"- {name}: {fmt(row['seconds_at_full'])} s for {row['steps']} steps x {row['trials']} "
                         f"trials, H = {row['hidden']} ({fmt(row['us_per_step'])} us/step, {how}{ran})")
        elif "seconds" in row:
            lines.append(f"- {name}: {fmt(row['seconds'])} s (op, autocorrelation and covariance sums{ran})")
        else:
            lines.append(f"- {name}: {row.get('error') or row.get('skipped')}")
    return lines


def defect_ab_lines(results: dict) -> list[str]:
    lines = []
    for family, row in results.get("defect-ab", {}).items():
        strided, contiguous = row.get("strided W us/step"), row.get("contiguous W^T us/step")
        if strided and contiguous:
            lines.append(f"- {family} (ran {row['family_ran']}, {row['T']}x{row['B']}x{row['H']} fp32): strided W "
                         f"{fmt(strided)} us/step, contiguous W^T {fmt(contiguous)} us/step "
                         f"({fmt(strided / contiguous)}x; max |difference| {fmt(row['max_abs_difference'])})")
        else:
            lines.append(f"- {family}: {row.get('error') or row.get('skipped')}")
    return lines


def training_lines(results: dict) -> list[str]:
    training, lines = results.get("training", {}), []
    for key, row in training.get("launches", {}).items():
        if "step_ms" in row and "recurrence_ms" in row:
            lines.append(f"- N = {key} ({row['backend']}): {fmt(row['gpu_kernels'])} GPU kernels, "
                         f"{fmt(row['launch_calls'])} launch calls, {fmt(row['aten_calls'])} aten calls per step; "
                         f"step {fmt(row['step_ms'])} ms against {fmt(row['recurrence_ms'])} ms for the recurrence "
                         f"alone at T = {row['mean_T']} ({fmt(row['step_over_recurrence'])}x)")
        else:
            lines.append(f"- N = {key}: {row.get('error') or row.get('skipped')}")
    for N, row in training.get("epochs", {}).items():
        if "ours" in row:
            lines.append(f"- epoch at N = 2..{N}: ours {fmt(row['ours']['epoch_s'])} s ({row['ours']['backend']}), "
                         f"the study's code {fmt(row['study']['epoch_s'])} s ({fmt(row['speedup'])}x)")
        else:
            lines.append(f"- epoch at N = 2..{N}: {row.get('error') or row.get('skipped')}")
    hours = training.get("headline_hours")
    if hours:
        lines.append(f"- headline run projected (1000 epochs, N rising 2 -> 100): ours {fmt(hours['ours'])} h, "
                     f"the study's code {fmt(hours['study'])} h")
    return lines


def check_lines(results: dict) -> list[str]:
    lines = []
    for name, tests in results.get("tests", {}).items():
        lines.append(f"- {name} (pytest -m gpu): {tests.get('tests', 0)} run, {tests.get('failures', 0)} failed, "
                     f"{tests.get('errors', 0)} errors, {tests.get('skipped', 0)} skipped"
                     + "".join(f"\n  - failed: {f}" for f in tests.get("failed", [])))
    comp = results.get("compile")
    if comp:
        lines.append(f"- compile (triton {comp['triton']}, sm_90): {comp['kernels']} kernels, "
                     f"{len(comp['failed'])} failed, {len(comp['static_check'])} with a reduction-axis bank "
                     "conflict (controls included): "
                     + ", ".join(f"{case} {ways}-way" for case, (ways, _) in comp["static_check"].items()))
    for name, status in results.get("groups", {}).items():
        lines.append(f"- group {name}: {status['status']}"
                     + (f" ({status['seconds']} s of {status['limit_s']} s)" if "seconds" in status else ""))
    return lines


def ensemble_lines(results: dict) -> list[str]:
    """K networks in one call: fwd+bwd ms of each row, and K calls / one call, vmap / one call."""
    lines = []
    for key, rows in results.get("ensemble", {}).items():
        ours = (rows.get("ensemble triton fp32") or {}).get("fwd_bwd_ms")
        for name, row in rows.items():
            ms = row.get("fwd_bwd_ms")
            if not ms:
                lines.append(f"- {key} {name}: {row.get('skipped') or row.get('fwd_bwd_ms_error') or 'failed'}")
                continue
            line = f"- {key} {name}: fwd {fmt(row.get('fwd_ms'))} ms, fwd+bwd {fmt(ms)} ms"
            if ours and name != "ensemble triton fp32":
                line += f"; {name} / one call: {fmt(ms / ours)}x"
            lines.append(line)
    return lines


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    out = [f"# gpu_check: {env.get('device', '?')} ({env.get('date', '?')})", "",
           ", ".join(f"{k} {env[k]}" for k in ("torch", "triton", "cuda", "cudnn", "sms", "git_commit", "git_dirty")
                     if k in env), "", "## Per step, microseconds (median)", ""]
    out += per_step_table(results)
    for title, lines in (("Targets (fp32)", target_lines(results)),
                         ("Analysis simulation (forward only)", analysis_lines(results)),
                         ("Defect A/B: forward kernel, strided W against contiguous W^T", defect_ab_lines(results)),
                         ("Training steps and the headline run", training_lines(results)),
                         ("Drop-in modules: LeakyRNN against torch.nn.RNN", dropin_lines(results)),
                         ("Ensembles: K networks in one call", ensemble_lines(results)),
                         ("Checks and groups", check_lines(results))):
        out += ["", f"## {title}", ""] + (lines or ["(not measured)"])
    out += ["", f"Total: {results.get('seconds', '-')} s"]
    return "\n".join(out) + "\n"
