"""The one GPU command: warm compile, benchmarks, GPU tests, one compact table (`make gpu-check`).

    python benchmarks/gpu_check.py [--out-dir DIR] [--budget-s 330] [--dry-run]

Runs from the checkout (PYTHONPATH=., no C++ build, no network). Each group runs in its own
subprocess under its own time limit (cut further to what is left of --budget-s), in this order:

  compile      benchmarks/triton_compile.py --warm-cache: every kernel the benchmarks launch, compiled
               in parallel into triton's cache (and the static check of the TTGIR)
  table        bench_gpu.py table: default kernel family x precision, eager loops, CUDA graph, cuDNN
  defect-ab    bench_gpu.py defect-ab: the forward with strided W against a contiguous W^T
  persistent   bench_gpu.py persistent: the persistent kernel family x precision
  analysis     bench_gpu.py analysis: forward only, B = 10, H = 500, 100,500 steps
  training     bench_steps.py: launches per training step (N = 2..10, 2..100), step time against
               the recurrence alone, epochs at N = 30 and 100, the headline run projected
  tests        pytest -m gpu tests/, but for the persistent kernels' file
  tests-persistent  pytest -m gpu tests/test_triton_persistent.py (each test has its own deadlock timeout,
               25 s, within the group's limit)
  torch-compile  bench_gpu.py torch-compile: torch.compile of the study's step (slow to compile)
  dropin       bench_gpu.py dropin: LeakyRNN against torch.nn.RNN (cuDNN) as modules, 1 layer and
               2 layers bidirectional
  ensemble     bench_gpu.py ensemble: K networks in one call against K calls and vmap over the
               eager loop (last: it runs when the budget allows)

Writes three files to --out-dir (or $GPU_CHECK_OUT_DIR, or $OUT_DIR; default benchmarks/results/):
gpu-<device>.json (every figure, rewritten atomically after each measurement), gpu-<device>.md (the
table, rewritten after each group) and gpu-<device>.log (each group's output). --dry-run rehearses
all of it on the CPU at tiny shapes under the Triton interpreter (device name "dry-run-cpu").
Exit status 1 when a group failed or a test failed.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_report import markdown  # noqa: E402
from gpu_results import REPO, load, record, write_atomic  # noqa: E402

BENCH = REPO / "benchmarks"
# A test file that cannot import here (a package the GPU machine lacks) must not stop the GPU tests.
PYTEST = ["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--continue-on-collection-errors", "-m", "gpu"]
# (group, seconds on an H100/H200, argv after the interpreter). {results} is the JSON file, {tmp} a
# folder of the run's own.
GROUPS = (
    ("compile", 40, [str(BENCH / "triton_compile.py"), "--warm-cache", "--json", "{tmp}/compile.json"]),
    ("table", 70, [str(BENCH / "bench_gpu.py"), "table", "--results", "{results}"]),
    ("defect-ab", 20, [str(BENCH / "bench_gpu.py"), "defect-ab", "--results", "{results}"]),
    ("persistent", 40, [str(BENCH / "bench_gpu.py"), "persistent", "--results", "{results}"]),
    ("analysis", 30, [str(BENCH / "bench_gpu.py"), "analysis", "--results", "{results}"]),
    ("training", 40, [str(BENCH / "bench_steps.py"), "--results", "{results}"]),
    ("tests", 40, PYTEST + ["tests/", "--ignore=tests/test_triton_persistent.py", "--junitxml", "{tmp}/junit.xml"]),
    ("tests-persistent", 60, PYTEST + ["tests/test_triton_persistent.py", "--junitxml", "{tmp}/junit.xml"]),
    ("torch-compile", 45, [str(BENCH / "bench_gpu.py"), "torch-compile", "--results", "{results}"]),
    ("dropin", 25, [str(BENCH / "bench_gpu.py"), "dropin", "--results", "{results}"]),
    ("ensemble", 30, [str(BENCH / "bench_gpu.py"), "ensemble", "--results", "{results}"]),
)
DEFAULT_BUDGET_S = 330
MIN_GROUP_S = 10
# The rehearsal's limits are stretched: the interpreter on a shared CI core is slower than its tiny
# shapes suggest. Its times show the contract's shape, not the GPU's.
DRY_RUN_STRETCH = 2.0


def out_dir_default() -> str:
    return os.environ.get("GPU_CHECK_OUT_DIR") or os.environ.get("OUT_DIR") or str(REPO / "benchmarks" / "results")


def environment(dry_run: bool) -> dict:
    import torch
    env = {"torch": torch.__version__, "python": platform.python_version(), "host": platform.node(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "dry_run": dry_run}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as err:
        env["triton"] = f"not importable: {err}"
    if not dry_run:
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["device"] = "dry-run-cpu"
    try:
        git = ["git", "-C", str(REPO)]
        env["git_commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        env["git_dirty"] = bool(subprocess.run(git + ["status", "--porcelain"], capture_output=True, text=True).stdout)
    except OSError:
        pass
    return env


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def child_env(dry_run: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               TQDM_DISABLE="1")
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def run_group(name, argv, limit, dry_run, log_path) -> dict:
    """Runs one group's subprocess under `limit` seconds; appends its output to the log."""
    if name != "compile" and not name.startswith("tests"):  # the benchmark groups
        argv = argv + ["--budget-s", str(max(1, limit - 8))] + (["--dry-run"] if dry_run else [])
    start = time.monotonic()
    status = {"limit_s": round(limit)}
    # A session of its own, so that a timeout ends the group's own subprocesses (compile workers) too.
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=child_env(dry_run), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=limit)
        status["returncode"] = proc.returncode
        status["status"] = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status["status"] = f"timed out after {limit:.0f} s"
    status["seconds"] = round(time.monotonic() - start, 1)
    with open(log_path, "a") as log:
        log.write(f"\n===== {name}: {status['status']} in {status['seconds']} s =====\n{output[-20000:]}\n")
    if status["status"] != "ok":
        status["tail"] = output[-1500:]
    return status


def junit_summary(path: Path) -> dict:
    """Counts and failing test ids from pytest's JUnit XML."""
    if not path.is_file():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    out = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    out["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                     if case.find("failure") is not None or case.find("error") is not None]
    return out


def compile_summary(path: Path) -> dict:
    data = load(path)
    rows = data.get("rows", [])
    return {"triton": data.get("triton"), "kernels": len(rows), "failed": [r for r in rows if "error" in r],
            "static_check": {r["case"]: max(r["unswizzled_reduction_operands"]) for r in rows
                             if r.get("unswizzled_reduction_operands")},
            "resources": {r["case"]: {k: r[k] for k in ("registers", "spills", "smem")} for r in rows
                          if "error" not in r}}


def run_groups(wanted, args, results, md_path, log_path, start, groups=GROUPS, report=markdown,
               summarise_compile=compile_summary, command="gpu_check") -> bool:
    """Runs the wanted groups in order within the budget, recording each and rewriting the
    report after each; False when one failed. groups, report, summarise_compile and command (the
    name its lines start with): gpu_check's own unless another command (gpu_tune.py) brings its own."""
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, limit_s, template in groups:
            if name not in wanted:
                continue
            stretch = DRY_RUN_STRETCH if args.dry_run else 1.0
            remaining = args.budget_s * stretch - (time.monotonic() - start)
            limit_s *= stretch
            if args.dry_run and name == "compile":
                status = {"status": "skipped: dry run (the interpreter compiles nothing)"}
            elif remaining < MIN_GROUP_S:
                status = {"status": "skipped: budget spent"}
            else:
                argv_ = [a.format(results=results, tmp=tmp) for a in template]
                status = run_group(name, argv_, min(limit_s, remaining), args.dry_run, log_path)
            if name.startswith("tests"):
                record(results, ["tests", name], junit_summary(Path(tmp) / "junit.xml"))
                (Path(tmp) / "junit.xml").unlink(missing_ok=True)
            if name == "compile" and (Path(tmp) / "compile.json").is_file():  # whole, or up to a time limit
                record(results, ["compile"], summarise_compile(Path(tmp) / "compile.json"))
            ok &= status["status"] in ("ok",) or status["status"].startswith("skipped")
            record(results, ["groups", name], status)
            record(results, ["seconds"], round(time.monotonic() - start, 1))
            write_atomic(md_path, report(load(results)))
            print(f"{command}: {name}: {status['status']} ({status.get('seconds', 0)} s)", flush=True)
    return ok


def run_command(argv, *, command: str, prefix: str, groups, budget_s: float, report, summarise_compile,
                description: str) -> tuple[bool, dict] | None:
    """The whole of a GPU command (gpu_check.py, gpu_tune.py): its flags, the result files
    <prefix>-<device>.json / .md / .log in --out-dir, every group run within the budget, the report
    printed. (ok, results), or None where there is no CUDA device and no --dry-run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-dir", default=out_dir_default(), help="where the three result files go")
    parser.add_argument("--budget-s", type=float, default=budget_s, help="wall-clock bound for all groups")
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU: tiny shapes, interpreter")
    parser.add_argument("--groups", default=None,
                        help="comma-separated subset of the groups (default: all); keeps the others' results")
    args = parser.parse_args(argv)
    names = [g[0] for g in groups]
    wanted = set(args.groups.split(",")) if args.groups else set(names)
    unknown = wanted - set(names)
    if unknown:
        parser.error(f"--groups: expected names from {', '.join(names)}; got {', '.join(sorted(unknown))}")
    start = time.monotonic()
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print(f"{command}: no CUDA device (torch {torch.__version__}); rehearse with --dry-run", file=sys.stderr)
        return None
    env = environment(args.dry_run)
    out_dir = Path(args.out_dir)
    stem = out_dir / f"{prefix}-{slug(env['device'])}"
    results, log_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".log"), stem.with_suffix(".md")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.groups:  # a rerun of some groups keeps the other groups' figures
        write_atomic(results, "{}")
        log_path.write_text("")
    with open(log_path, "a") as log:
        log.write(f"{command} {env}\n")
    record(results, ["environment"], env)
    ok = run_groups(wanted, args, results, md_path, log_path, start, groups=groups, report=report,
                    summarise_compile=summarise_compile, command=command)
    text = report(load(results))
    write_atomic(md_path, text)
    print(text)
    print(f"{command}: wrote {results.name}, {md_path.name}, {log_path.name} to {out_dir} "
          f"in {time.monotonic() - start:.0f} s")
    return ok, load(results)


def main(argv=None) -> int:
    done = run_command(argv, command="gpu_check", prefix="gpu", groups=GROUPS, budget_s=DEFAULT_BUDGET_S,
                       report=markdown, summarise_compile=compile_summary, description=__doc__.split("\n")[0])
    if done is None:
        return 1
    ok, results = done
    return 0 if ok and not any(t.get("failed") for t in results.get("tests", {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
