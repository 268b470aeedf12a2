"""The one GPU command: GPU tests, the benchmark table, and a results file.

    python benchmarks/gpu_check.py [--budget-s 540] [--skip-tests] [--skip-bench] [--allow-no-gpu]

On a machine with CUDA: runs `pytest -m gpu tests/` and the rest of tests/test_triton_backend.py
(on the GPU), then benchmarks/bench_gpu.py's table and launch-config sweep, and writes
benchmarks/results/gpu-<device>-<date>.json and .md (device, versions, date, every figure, test
outcomes). Everything is bounded by --budget-s (default 9 minutes): rows that would start after
the deadline are recorded as skipped. Exit code 1 when a test fails or there is no CUDA device
(0 with --allow-no-gpu, which only prints what would run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import torch  # noqa: E402

TEST_RUNS = (("gpu-marked", ["-m", "gpu", "tests/"]),
             ("triton-file", ["-m", "not gpu", "tests/test_triton_backend.py"]))


def environment() -> dict:
    import triton
    props = torch.cuda.get_device_properties(0)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout)
    except OSError:
        commit, dirty = "", None
    return {"device": props.name, "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2 ** 30, 1), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "host": platform.node(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "git_commit": commit, "git_dirty": dirty}


def run_tests(name: str, args: list[str], timeout: float) -> dict:
    """One pytest run in a subprocess; counts and failing test ids from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "junit.xml"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        env.pop("TRITON_INTERPRET", None)
        start = time.monotonic()
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   f"--junitxml={xml_path}", *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            return {"name": name, "ok": False, "error": f"timed out after {timeout:.0f}s"}
        result = {"name": name, "command": "pytest " + " ".join(args), "returncode": proc.returncode,
                  "seconds": round(time.monotonic() - start, 1), "tail": (proc.stdout + proc.stderr)[-2000:]}
        if xml_path.exists():
            suite = ET.parse(xml_path).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            for key in ("tests", "failures", "errors", "skipped"):
                result[key] = int(suite.get(key, 0))
            result["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                                if case.find("failure") is not None or case.find("error") is not None]
        # pytest exits 5 when every test was deselected: not a failure.
        result["ok"] = proc.returncode in (0, 5)
        return result


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _fmt(v, digits=3):
    return "-" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))


def markdown(report: dict) -> str:
    env, lines = report["environment"], []
    lines.append(f"# GPU check: {env['device']} ({env['date']})\n")
    lines.append(", ".join(f"{k} {env[k]}" for k in ("torch", "triton", "cuda", "cudnn", "capability", "sms",
                                                      "git_commit", "git_dirty")) + "\n")
    lines.append("## Tests\n")
    for t in report.get("tests", []):
        counts = ", ".join(f"{k} {t[k]}" for k in ("tests", "failures", "errors", "skipped") if k in t)
        lines.append(f"- {t['name']}: {'PASS' if t['ok'] else 'FAIL'} ({counts}; {t.get('seconds', '-')}s) "
                     f"`{t.get('command', '')}`" + "".join(f"\n  - failed: {f}" for f in t.get("failed", [])))
    bench = report.get("bench")
    if bench:
        rates = bench.get("rates", {})
        lines.append("\n## Benchmarks (float32, I = 1; ratio = row / triton-fp32, > 1 means triton is faster)\n")
        if rates:
            lines.append("Measured: " + ", ".join(f"{k} {v / 1e12:.1f} T/s" for k, v in rates.items()) + "\n")
        for e in bench["shapes"]:
            lines.append(f"### T={e['T']} B={e['B']} H={e['H']}  (triton vs eager rel err "
                         f"{_fmt(e.get('triton_rel_err_vs_eager'))})\n")
            lines.append("| row | fwd+bwd ms | fwd ms | ratio fwd+bwd | ratio fwd | ms/step fwd+bwd | ms/step fwd "
                         "| note |")
            lines.append("|---|---|---|---|---|---|---|---|")
            for name, r in e["rows"].items():
                note = r.get("skipped") or r.get("fwd_bwd_ms_error") or r.get("fwd_ms_error") or ""
                lines.append(f"| {name} | {_fmt(r.get('fwd_bwd_ms'))} | {_fmt(r.get('fwd_ms'))} | "
                             f"{_fmt(e.get('ratio_fwd_bwd', {}).get(name))} | "
                             f"{_fmt(e.get('ratio_fwd', {}).get(name))} | "
                             f"{_fmt(e.get('per_step_fwd_bwd_ms', {}).get(name))} | "
                             f"{_fmt(e.get('per_step_fwd_ms', {}).get(name))} | {note[:120]} |")
            if e.get("floor_per_step"):
                floor = ", ".join(f"{k} {_fmt(v)}" for k, v in e["floor_per_step"].items())
                lines.append(f"\nFloors per step (us): {floor}")
            lines.append("")
        if bench.get("sweep"):
            lines.append("### Launch configs, triton fwd+bwd at T=400 B=256 H=500\n")
            lines.append("| block_b | block_n | block_k | warps | stages | precision | ms | rel err | note |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for row in bench["sweep"]:
                c = row["config"]
                lines.append(f"| {c['block_b']} | {c['block_n']} | {c['block_k']} | {c['num_warps']} | "
                             f"{c['num_stages']} | {row['precision']} | {_fmt(row.get('fwd_bwd_ms'))} | "
                             f"{_fmt(row.get('rel_err_vs_default_fp32'))} | {row.get('error', '')[:120]} |")
    for extra in report.get("extra", []):
        lines.append(f"\n## {extra['name']} benchmark\n")
        if "output" in extra:
            lines.append("```\n" + extra["output"].strip() + "\n```")
        else:
            lines.append(extra.get("error") or extra.get("skipped", ""))
    return "\n".join(lines) + "\n"


# The study-level benchmarks, shortened to fit what is left of the budget: the tau_net simulation
# (extrapolated from 10,000 steps) and epochs per hour of the multi-head curriculum at the study's shapes.
EXTRA_BENCHMARKS = (
    ("tau_net", ["bench_tau_net.py", "--device", "cuda", "--steps", "10000", "--repeats", "1"]),
    ("training", ["bench_training.py", "--paper", "--device", "cuda", "--steps", "20", "--rounds", "1"]),
)


def run_extra_benchmarks(deadline: float, stem: Path) -> list[dict]:
    """Each extra benchmark in a subprocess with what is left of the budget; its JSON is kept."""
    results = []
    for name, argv in EXTRA_BENCHMARKS:
        remaining = deadline - time.monotonic() - 15
        if remaining < 60:
            results.append({"name": name, "skipped": "budget spent"})
            continue
        json_path = Path(f"{stem}-{name}.json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(REPO / "benchmarks" / argv[0]), *argv[1:], "--json", str(json_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=remaining, cwd=REPO)
            entry = {"name": name, "returncode": proc.returncode, "output": proc.stdout[-4000:],
                     "stderr": proc.stderr[-2000:] if proc.returncode else ""}
            if json_path.is_file():
                entry["results"] = json.loads(json_path.read_text())
        except subprocess.TimeoutExpired:
            entry = {"name": name, "error": f"timed out after {remaining:.0f} s"}
        print(f"extra benchmark {name}: {entry.get('returncode', entry.get('error'))}")
        results.append(entry)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=540, help="wall-clock bound for the whole check")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--allow-no-gpu", action="store_true", help="without CUDA: print the plan, exit 0")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget_s
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
              "Run this on a machine with an NVIDIA GPU and a CUDA build of torch and triton.", file=sys.stderr)
        if args.allow_no_gpu:
            print("would run: " + "; ".join("pytest " + " ".join(a) for _, a in TEST_RUNS)
                  + "; bench_gpu.run() over " + str(__import__("bench_gpu").SHAPES) + "; sweep_configs()")
            return 0
        return 1
    report = {"environment": environment(), "budget_s": args.budget_s}
    print(f"gpu_check on {report['environment']['device']}")
    out_dir = Path(args.out_dir)
    stem = f"gpu-{slug(report['environment']['device'])}-{datetime.date.today().isoformat()}"

    def save(bench=None):
        """Written after the tests, before the compile rows and at the end: an overrun keeps the rest."""
        if bench is not None:
            report["bench"] = bench
        report["seconds"] = round(time.monotonic() - start, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
        (out_dir / f"{stem}.md").write_text(markdown(report))

    if not args.skip_tests:
        report["tests"] = []
        for name, test_args in TEST_RUNS:
            # Tests get at most 45% of the budget so that the table always runs.
            remaining = start + 0.45 * args.budget_s - time.monotonic()
            report["tests"].append(run_tests(name, test_args, remaining))
            t = report["tests"][-1]
            print(f"tests {name}: {'PASS' if t['ok'] else 'FAIL'} {t.get('failed') or ''} {t.get('error', '')}")
        save()
    if not args.skip_bench:
        import bench_gpu
        try:
            save(bench_gpu.run(deadline=deadline - 20, checkpoint=save))
        except Exception as err:
            report["bench_error"] = repr(err)
    if not args.skip_bench:
        report["extra"] = run_extra_benchmarks(deadline, out_dir / f"{stem}-extra")
    save()
    print(f"wrote {out_dir / stem}.json and .md in {report['seconds']}s")
    return 0 if all(t["ok"] for t in report.get("tests", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
