"""The sweep: specs and their errors, the lock, a failing run, the report, and a sweep on a local Ray
whose driver is killed with SIGKILL, then a worker killed during the rerun."""
import json
import socket
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from timescale_kernels.cli import main
from timescale_kernels.experiments.rundir import RunDir
from timescale_kernels.experiments.sweep.procs import LOCK_NAME, LocalRayProcesses, _start_time, _with_argument
from timescale_kernels.experiments.sweep.ray_tasks import local_temp_dir
from timescale_kernels.experiments.sweep.run import read_events
from timescale_kernels.experiments.sweep.spec import SweepSpec, SweepSpecError

# Tiny runs: a 2 x 2 grid of 32-neuron networks, a few epochs each.
TINY = ["--task", "parity", "--curriculum", "single", "multi", "--seeds", "0", "1", "--train-preset", "quick",
        "--set", "hidden_size=24", "--set", "steps_per_epoch=30", "--set", "test_batches=2", "--quiet"]
TINY_ANALYSIS = ["--analyze-set", "only=last", "--analyze-set", "steps=300", "--analyze-set", "trials=1",
                 "--analyze-set", "perturb_trials=1", "--analyze-set", "eval_batches=1", "--analyze-set",
                 "batch_size=16", "--analyze-set", "eps=[0, 0.215]", "--analyze-set", "ablate_k=2", "--analyze-set",
                 "study_ablate_k=2", "--analyze-set", "study_eps=[0, 0.215]"]
TIMING = ("epoch_time", "wall_time", "steps_per_s")


def sweep(argv):
    return main(["sweep", *argv])


def fails(argv, capsys, match):
    """The sweep command exits with status 2 and one stderr line containing match."""
    code = main(["sweep", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and match in err, err
    return err


def metrics_without_timing(run_path):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in RunDir(run_path).read_metrics()]


# specs ------------------------------------------------------------------------------------------------
def test_spec_grid_expands_conditions_and_fixed_tau():
    spec = SweepSpec.from_dict({"seeds": [0, 1], "train_preset": "quick",
                                "grid": [{"task": ["parity"], "curriculum": ["multi"], "model": ["leaky", "gru"],
                                          "tau": ["trained", 2]}]}).validate()
    names = [c.name for c in spec.conditions()]
    assert names == ["parity-multi-leaky-tau_trained", "parity-multi-leaky-tau2", "parity-multi-gru"]
    assert len(spec.runs()) == 6
    cfg = spec.config_for(spec.conditions()[1], 1)
    assert (cfg.learn_tau, cfg.tau_init, cfg.seed, cfg.hidden_size) == (False, [2.0, 2.0], 1, 64)


@pytest.mark.parametrize("values, match", [
    ({"seeds": [0], "grid": [{"task": ["parity"]}], "colour": 1}, "unknown keys ['colour']"),
    ({"seeds": [0], "grid": [{"task": ["sorting"]}]}, "grid[0].task"),
    ({"seeds": [0], "grid": [{"tau": [0.5]}]}, "grid[0].tau"),
    ({"seeds": [0], "grid": []}, "grid: empty"),
    ({"seeds": [], "grid": [{}]}, "seeds"),
    ({"seeds": [0], "grid": [{}], "settings": {"hidden_sizes": 3}}, "unknown settings"),
    ({"seeds": [0], "grid": [{}], "settings": {"seed": 3}}, "settings: ['seed']"),
    ({"seeds": [0], "grid": [{}], "analyze": {"stepz": 3}}, "analyze: unknown settings"),
    ({"seeds": [0], "grid": [{}], "gpus_per_run": -1}, "gpus_per_run"),
    ({"seeds": 3, "grid": [{}]}, "seeds: expected a list"),
    ({"seeds": [0], "grid": [{}], "settings": [1]}, "settings: expected a table"),
    ({"seeds": [0], "grid": "parity"}, "grid: expected a list"),
    ({"seeds": [0], "grid": [{}], "analyze": {"only": "some"}}, "analyze.only"),
    ({"seeds": [0], "grid": [{}], "analyze": {"steps": -1}}, "analyze.steps: expected an integer >= 2"),
    ({"seeds": [0], "grid": [{}], "analyze": {"steps": 30}}, "more than max_lag"),
    ({"seeds": [0], "grid": [{}], "analyze": {"eps": [0.1, -1]}}, "analyze.eps"),
    ({"seeds": [0], "grid": [{}], "analyze": {"metric": "loss"}}, "analyze.metric"),
    ({"seeds": [0], "grid": [{}], "analyze": {"study_measures": "yes"}}, "analyze.study_measures"),
])
def test_bad_spec_values(values, match):
    with pytest.raises(SweepSpecError, match=match.replace("[", r"\[").replace("]", r"\]")):
        SweepSpec.from_dict(values).validate()


def test_bad_specs_end_with_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('seeds = [0]\nflavour = "x"\n[[grid]]\ntask = ["parity"]\n')
    fails(["--spec", str(bad), "--out", str(tmp_path / "a")], capsys, "unknown keys ['flavour']")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"seeds": [0], "grid": []}))
    fails(["--spec", str(empty), "--out", str(tmp_path / "b")], capsys, "grid: empty")
    fails(["--task", "sorting", "--out", str(tmp_path / "c")], capsys, "grid[0].task")
    fails(["--tau", "fast", "--out", str(tmp_path / "c")], capsys, "--tau")
    fails(["--set", "hidden_size", "--out", str(tmp_path / "c")], capsys, "KEY=VALUE")
    fails(["--out", str(tmp_path / "d")], capsys, "holds no sweep yet")
    (tmp_path / "file").write_text("x")
    fails([*TINY, "--out", str(tmp_path / "file" / "sweep")], capsys, "cannot write")
    fails([*TINY, "--out", str(tmp_path / "file")], capsys, "not a directory")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_setting_errors_show_without_grid_flags_and_before_any_work(tmp_path, capsys):
    """No grid flag: the default grid (AXIS_DEFAULTS), so a bad --set or --analyze-set names itself
    rather than an empty grid; out-of-range analysis values fail before training; an address where
    nothing answers fails at once. Nothing is written in any case."""
    out = tmp_path / "s"
    fails(["--set", "bogus=1", "--seeds", "0", "--out", str(out)], capsys, "unknown settings ['bogus']")
    fails(["--set", "hidden_size=abc", "--out", str(out)], capsys, "hidden_size")
    fails(["--analyze-set", "foo=1", "--out", str(out)], capsys, "analyze: unknown settings ['foo']")
    fails(["--task", "parity", "--analyze-set", "steps=-1", "--out", str(out)], capsys, "analyze.steps")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fails([*TINY, "--address", f"127.0.0.1:{port}", "--out", str(out)], capsys, "nothing answers")
    assert not out.exists()


# one process: a failing run, the report, the lock ---------------------------------------------------
@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A 2 x 2 tiny sweep run in this process with analyses, where one run's directory is a file (so
    that run raises)."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    (out / "runs" / "parity-multi-leaky-tau_trained").mkdir(parents=True)
    (out / "runs" / "parity-multi-leaky-tau_trained" / "seed1").write_text("in the way")
    code = sweep([*TINY, *TINY_ANALYSIS, "--set", "max_epochs=4", "--no-ray", "--out", str(out)])
    return out, code


def test_a_failing_run_is_recorded_and_the_others_finish(local_sweep):
    out, code = local_sweep
    assert code == 1
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    status = {rid: r["status"] for rid, r in runs.items()}
    assert status.pop("parity-multi-leaky-tau_trained/seed1") == "failed"
    assert set(status.values()) == {"done"} and len(status) == 3
    bad = runs["parity-multi-leaky-tau_trained/seed1"]
    assert bad["error"].startswith(("FileExistsError", "NotADirectoryError", "RunDirError")), bad["error"]
    report = (out / "report" / "report.md").read_text()
    assert "## Failed runs" in report and "parity-multi-leaky-tau_trained seed 1" in report


def test_report_table_and_csv_match_the_runs(local_sweep):
    out, _ = local_sweep
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    report = (out / "report" / "report.md").read_text()
    for t in range(1, 12):
        assert f"| T{t} " in report
    rows = (out / "report" / "runs.csv").read_text().splitlines()
    header = rows[0].split(",")
    for rid, run in runs.items():
        if run["status"] != "done":
            continue
        metrics = RunDir(out / run["dir"]).read_metrics()
        passed = sorted({m["N_high"] for m in metrics if m["passed"]})
        mine = [dict(zip(header, r.split(","))) for r in rows[1:]]
        mine = [r for r in mine if r["condition"] == run["condition"] and r["seed"] == str(run["seed"])]
        assert [int(r["N"]) for r in mine] == passed
        assert run["N_reached"] == (max(passed) if passed else None)


def test_a_second_sweep_on_a_locked_directory_is_refused(local_sweep, capsys):
    out, _ = local_sweep
    before = (out / "sweep.json").read_bytes()
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"}))
    try:
        fails([*TINY, *TINY_ANALYSIS, "--set", "max_epochs=4", "--no-ray", "--out", str(out)], capsys,
              f"in use by another sweep (pid {os.getpid()}")
    finally:
        (out / LOCK_NAME).unlink()
    assert (out / "sweep.json").read_bytes() == before


def test_a_stale_lock_is_taken_over_and_a_different_spec_refused(local_sweep, capsys):
    out, _ = local_sweep
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "then"}))
    before = {p: p.read_bytes() for p in (out / "spec.json", out / "sweep.json")}
    fails([*TINY, *TINY_ANALYSIS, "--set", "max_epochs=5", "--no-ray", "--out", str(out)], capsys,
          "holds a different sweep (differs in settings)")
    assert {p: p.read_bytes() for p in before} == before
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "then"}))
    code = sweep(["--out", str(out), "--quiet", "--no-ray"])  # the saved spec, the stale lock taken over
    assert code == 1  # the run in the way still fails; the others are skipped
    assert not (out / LOCK_NAME).exists()
    for run in json.loads((out / "sweep.json").read_text())["runs"].values():
        if run["status"] == "done":
            assert [e["event"] for e in read_events(out / run["dir"])].count("trained") == 1


# on Ray: the driver killed, then a worker --------------------------------------------------------------
# Enough epochs that the workers a killed driver leaves behind cannot finish their runs before the rerun
# ends them (on a quiet machine an epoch of these networks takes about a tenth of a second). The two
# seeds of a condition train as one ensemble; one CPU runs the two ensembles one after the other, so
# that one has finished while the other is part-way through.
RAY_TINY = [*TINY, "--set", "max_epochs=80", "--skip-analysis", "--no-report", "--ensemble", "2", "--num-cpus", "1"]


def _driver(out):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "timescale_kernels.cli", "sweep", *RAY_TINY, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(check, proc, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before the point to kill it: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("timed out waiting for the sweep")


def _run_dirs(out):
    return sorted((out / "runs").glob("*/seed*"))


def _epochs_done(run):
    return len(RunDir(run).read_metrics())


@pytest.mark.slow
def test_sigkill_then_rerun_on_ray_finishes_every_run_once(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "killed"
    drivers = []
    try:
        _kill_and_rerun(out, drivers, tmp_path)
    finally:  # whatever failed, leave no driver and no Ray of this test behind
        for proc in drivers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        LocalRayProcesses(out).end_recorded(grace=1.0)


def _kill_and_rerun(out, drivers, tmp_path):
    drivers.append(_driver(out))
    # Kill the driver once one run has finished and another is part-way through.
    _wait_for(lambda: any("trained" in [e["event"] for e in read_events(r)] for r in _run_dirs(out))
              and any(2 <= _epochs_done(r) <= 40 and not (r / "summary.json").exists() for r in _run_dirs(out)),
              drivers[0])
    os.kill(drivers[0].pid, signal.SIGKILL)
    drivers[0].wait()
    left = json.loads((out / "ray_local.json").read_text())["processes"]

    # The rerun: first kill the worker training one of the remaining runs; Ray retries its task.
    rerun = _driver(out)
    drivers.append(rerun)
    t_rerun = time.time()

    def resumed_run():
        for r in _run_dirs(out):
            starts = [e for e in read_events(r) if e["event"] == "start" and e["time"] > t_rerun]
            if starts and _epochs_done(r) > starts[-1]["epoch"] + 1 and not (r / "summary.json").exists():
                return r, starts[-1]["pid"]
        return None

    lost_run, worker = _wait_for(resumed_run, rerun)
    os.kill(worker, signal.SIGKILL)
    assert rerun.wait(timeout=600) == 0, rerun.stdout.read().decode()[-3000:]

    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert {r["status"] for r in runs.values()} == {"done"} and len(runs) == 4
    for r in _run_dirs(out):
        events = read_events(r)
        assert [e["event"] for e in events].count("trained") == 1, events
    assert len({e["pid"] for e in read_events(lost_run) if e["event"] == "start" and e["time"] > t_rerun}) == 2
    # Nothing of the sweep's own Ray is left: not what the killed driver left, nor the rerun's.
    assert not [p for p, t in left.items() if _start_time(int(p)) == t]
    assert not (out / "ray_local.json").exists()
    assert not _with_argument(local_temp_dir(out)) and not os.path.exists(local_temp_dir(out))

    # The results equal an uninterrupted sweep's (run here in one process).
    ref = tmp_path / "uninterrupted"
    assert sweep([*RAY_TINY[:-2], "--no-ray", "--out", str(ref)]) == 0
    for r in _run_dirs(out):
        twin = ref / r.relative_to(out)
        assert metrics_without_timing(r) == metrics_without_timing(twin)
        assert sorted(p.name for p in RunDir(r).checkpoints()) == sorted(p.name for p in RunDir(twin).checkpoints())

def test_benchmark_script_parses():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu" / "bench_sweep.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr[-2000:]


def test_study_span_reads_once_where_every_seed_shares_one_N():
    """T4/T5's span: from the study's first N to its last where every seed has both, else the nearest
    common N's; one common N is said once, not as a span from an N to itself."""
    from timescale_kernels.experiments.sweep.study import _View, _span
    runs = {f"r{s}": {"status": "done", "condition": "c", "seed": s} for s in (0, 1)}
    rows = [{"condition": "c", "seed": s, "N": n, "tau": 1.0 + n / 10} for s in (0, 1) for n in (5, 9)]
    rows.append({"condition": "c", "seed": 0, "N": 15, "tau": 2.5})
    text = _span(_View(runs, rows), "c", "tau", 15, 32, "single", "tau mean")
    assert text.startswith("single tau mean: N = 5: ") and " -> N = 9: " in text and "not both reached" in text
    rows = [r for r in rows if r["N"] == 9]
    text = _span(_View(runs, rows), "c", "tau", 15, 32, "single", "tau mean")
    assert text.startswith("single tau mean: only N = 9 in every seed: ") and "->" not in text, text


def test_the_report_divides_an_ensembles_training_time_among_its_networks():
    from timescale_kernels.experiments.sweep.report import condition_table
    runs = {f"c/seed{s}": {"status": "done", "condition": "c", "seed": s, "group": "group0", "wall_time": 400.0,
                           "epochs": 3, "N_reached": 5, "stop_reason": "max_epochs"} for s in range(4)}
    runs["c/seed4"] = {"status": "done", "condition": "c", "seed": 4, "group": "group1", "wall_time": 100.0,
                       "epochs": 3, "N_reached": 5, "stop_reason": "max_epochs"}
    row = [line for line in condition_table(runs) if line.startswith("| c |")][0]
    assert "| 100 ± 0 (n=5) |" in row
