"""The benchmark scripts stay runnable: the GPU command's rehearsal (--dry-run), its time limits, and each
script's CLI."""
import json
import re
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO

SCRIPTS = ["bench_cpu.py", "bench_ensemble_training.py", "bench_gpu.py", "bench_steps.py", "bench_training.py",
           "bench_tau_net.py", "gpu_check.py", "triton_compile.py"]
BENCH_FOLDER = {script.name: script.parent.name for script in (REPO / "benchmarks").glob("*/*.py")}


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / BENCH_FOLDER[script] / script), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_cuda(tmp_path):
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu" / "gpu_check.py"), "--out-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 1 and "no CUDA device" in refused.stderr and "--dry-run" in refused.stderr
    assert not list(tmp_path.iterdir())


def test_gpu_check_group_time_limit_ends_the_group(tmp_path):
    """A group past its limit is killed with its subprocesses; its output so far is kept in the log."""
    sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
    import gpu_check
    log = tmp_path / "log.txt"
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print('started', flush=True); time.sleep(60)")
    start = time.monotonic()
    status = gpu_check.run_group("tests", ["-c", script], 3, False, log)
    assert time.monotonic() - start < 30
    assert status["status"] == "timed out after 3 s"
    assert "started" in log.read_text()


def test_results_are_rewritten_whole_after_every_measurement(tmp_path):
    sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
    from gpu_results import load, record
    path = tmp_path / "results.json"
    record(path, ["table", "400,256,500", "eager"], {"fwd_ms": 1.5})
    record(path, ["table", "400,256,500", "cudnn"], {"fwd_ms": 0.5})
    record(path, ["seconds"], 3.0)
    assert load(path) == {"table": {"400,256,500": {"eager": {"fwd_ms": 1.5}, "cudnn": {"fwd_ms": 0.5}}},
                          "seconds": 3.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_gpu_check_rejects_unknown_groups(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu" / "gpu_check.py"), "--dry-run", "--groups",
                          "table,tabel", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert run.returncode == 2 and "--groups" in run.stderr and "tabel" in run.stderr


def dry_run(script: str, prefix: str, out_dir, timeout: int):
    """(the finished process, its results JSON) of one GPU command's --dry-run into out_dir, after
    checking that it exited 0 and wrote exactly its three files, flat, with plain names."""
    path = REPO / "benchmarks" / BENCH_FOLDER[script] / script
    run = subprocess.run([sys.executable, str(path), "--dry-run", "--out-dir", str(out_dir)], capture_output=True,
                         text=True, timeout=timeout, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == [f"{prefix}-dry-run-cpu.{ext}" for ext in ("json", "log", "md")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) and (out_dir / n).is_file() for n in names)
    return run, json.loads((out_dir / f"{prefix}-dry-run-cpu.json").read_text())


@pytest.mark.slow
def test_gpu_check_dry_run_contract(tmp_path):
    """The rehearsal on the CPU: every group runs in its own subprocess, the files land flat in
    --out-dir (at most 8, plain names), and the JSON and the table hold every kind of figure."""
    sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
    import gpu_check
    run, results = dry_run("gpu_check.py", "gpu", tmp_path, timeout=900)
    assert set(results["groups"]) == {name for name, _, _ in gpu_check.GROUPS}
    for name, status in results["groups"].items():
        assert status["status"] == "ok" or status["status"].startswith("skipped: dry run"), (name, status)
    stretch = gpu_check.DRY_RUN_STRETCH
    assert results["seconds"] <= gpu_check.DEFAULT_BUDGET_S * stretch + 30
    for shape in ("4,16,16", "2,16,16"):
        rows = {**results["table"][shape], **results["persistent"][shape], **results["torch-compile"][shape]}
        for name in ["triton-default-fp32", "triton-persistent-bf16", "eager-study", "eager", "cudnn",
                     "torch.compile"]:
            assert rows[name]["fwd_ms"] > 0 and rows[name]["fwd_bwd_ms"] > 0, (shape, name, rows[name])
        assert rows["triton-persistent-bf16"]["family_ran"] == "persistent", rows["triton-persistent-bf16"]
    assert results["analysis"]["op default fp32"]["seconds_at_full"] > 0
    assert results["analysis"]["analysis.simulate"]["seconds"] > 0
    for family in ("default", "persistent"):
        assert results["defect-ab"][family]["max_abs_difference"] == 0.0, results["defect-ab"][family]
        assert results["defect-ab"][family]["family_ran"] == family, results["defect-ab"][family]
    launches = results["training"]["launches"]
    assert set(launches) == {"2..3", "2..4"} and all(r["aten_calls"] > 0 for r in launches.values())
    assert results["training"]["headline_hours"]["ours"] > 0
    ensemble = results["ensemble"]["K=3 of 3,16,16"]
    for name in ("ensemble triton fp32", "separate triton fp32", "vmap eager"):
        assert ensemble[name]["fwd_ms"] > 0 and ensemble[name]["fwd_bwd_ms"] > 0, (name, ensemble[name])
    assert set(results["tests"]) == {"tests", "tests-persistent"}
    assert all(t["tests"] > 0 and not t["failed"] for t in results["tests"].values())
    table = (tmp_path / "gpu-dry-run-cpu.md").read_text()
    assert table == results_table(results)
    assert run.stdout.count("| triton-default-fp32 |") == 1
    for heading in ("Per step", "Targets (fp32)", "Analysis simulation", "Defect A/B", "Training steps",
                    "Ensembles: K networks in one call", "Checks and groups"):
        assert f"## {heading}" in table
    # every target has a figure (the CUDA-graph loop is CUDA-only) and a verdict
    from gpu_report import target_lines
    targets = target_lines(results)[2:]
    assert len(targets) == 8, targets
    for line in targets:
        cells = line.strip("|").split(" | ")
        assert cells[2].strip() in ("yes", "**no**") or "cuda-graph" in cells[1], line


def results_table(results):
    from gpu_report import markdown
    return markdown(results)


def test_cpu_benchmark_runs_at_a_tiny_shape(tmp_path):
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu" / "bench_cpu.py"), "--repeats", "1",
                           "--steps", "3", "--batch", "2", "--hidden", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cpu backend" in proc.stdout and out.is_file()


JOBS_SCRIPT = """
import json, sys
sys.path[:0] = ["benchmarks/kernel_tools", "benchmarks/gpu"]
import bench_tune
from timescale_kernels.ops import triton_recurrence as tr
from triton_capture import DEVICE_PROPERTIES
jobs = bench_tune.compile_jobs()
study = tr.persistent_plan(DEVICE_PROPERTIES, 256, 500, "fp32")
tilings = tr.persistent_tilings(DEVICE_PROPERTIES, 256, 500, "fp32")
print(json.dumps([{"group": g, "shape": s, "label": label, "family": pin.get("family"),
                   "config_in_use": pin.get("config") == tr.GPU_CONFIG,
                   "aligned_rows": pin["config"].aligned_rows if "config" in pin else None,
                   "plan": None if "plan" not in pin else {"rule": pin["plan"] == study, "warps": pin["plan"].num_warps,
                       "tiling": any(pin["plan"].grid == t.grid and pin["plan"].block_b == t.block_b for t in tilings)}}
                  for g, s, label, pin in jobs]))
"""


def test_gpu_tune_compiles_what_each_group_launches():
    """The compile jobs pin what the timing groups launch (planned on the stand-in H200, as the
    compile group plans them without a GPU): the default group's tiles on the default family, the
    tiles in use first; the persistent group's resident tilings, the rule's pick first, in 8 and 4
    warps; both families per crossover shape; labels unique per group and shape."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", JOBS_SCRIPT], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(env, PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])))
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = json.loads(run.stdout)
    keys = [(j["group"], tuple(j["shape"]), j["label"]) for j in jobs]
    assert len(keys) == len(set(keys))
    default = [j for j in jobs if j["group"] == "default"]
    assert all(j["family"] == "default" for j in default) and default[0]["config_in_use"]
    assert sum(j["config_in_use"] for j in default) == 2  # one per shape
    for shape in ([100, 256, 500], [100, 10, 500]):  # the tiles in use, then the same with 4-byte rows
        pair = [j for j in default if j["shape"] == shape][:2]
        assert [j["aligned_rows"] for j in pair] == [True, False] and pair[1]["label"].endswith(" 4-byte rows")
    persistent = [j for j in jobs if j["group"] == "persistent" and j["shape"] == [100, 256, 500]]
    study_jobs = [j for j in persistent if not j["label"].startswith("tf32x3 ")]
    # last, tf32x3 with the rule's warps (2 on its 32x32 tile), then the same tiling with 8
    assert [j["label"] for j in persistent if j not in study_jobs] == ["tf32x3 16x8 b32 n32 w2", "tf32x3 16x8 b32 n32 w8"]
    assert [j["aligned_rows"] for j in study_jobs[:3]] == [None, False, None] and study_jobs[1]["plan"]["rule"]
    assert study_jobs[2]["label"].endswith(" 1 chunk ahead")
    study = [j["plan"] for j in study_jobs]
    assert study[0] == {"rule": True, "warps": 8, "tiling": True}
    assert all(p["tiling"] for p in study) and {p["warps"] for p in study} == {4, 8} and len(study) >= 4
    crossover = [j for j in jobs if j["group"] == "crossover"]
    assert {j["family"] for j in crossover} == {"default", "persistent"}
    assert len(crossover) == 2 * 6 * 5


@pytest.mark.slow
def test_gpu_tune_dry_run_contract(tmp_path):
    """The tuning command rehearsed on the CPU: three flat files, every group ok, every candidate
    timed and equal to the tiles in use, the report generated from the JSON."""
    sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
    import gpu_tune
    _, results = dry_run("gpu_tune.py", "gpu-tune", tmp_path, timeout=600)
    assert set(results["groups"]) == {name for name, _, _ in gpu_tune.GROUPS}
    for name, status in results["groups"].items():
        assert status["status"] == "ok" or status["status"].startswith("skipped: dry run"), (name, status)
    for group in ("default", "persistent"):
        for shape, rows in results[group].items():
            assert sum(r["current"] for r in rows.values()) == 1 and len(rows) >= 2, (group, shape)
            for label, r in rows.items():
                assert r["fwd_us"] > 0 and r["bwd_us"] > 0 and r["max_abs_difference"] < 1e-5, (group, label, r)
                assert r["family_ran"] == group, (group, label, r)
    assert len(results["crossover"]) == 4
    assert all(r["faster"] in ("default", "persistent") and r["default"] > 0 for r in results["crossover"].values())
    bidi = results["bidi"]["3,16,16"]
    assert set(bidi) == {f"{family}: {row}" for family in ("default", "persistent")
                         for row in ("module", "directions one after the other", "directions on two streams")}
    assert all(r["fwd_bwd_ms"] > 0 and r["max_abs_difference"] < 1e-5 for r in bidi.values()), bidi
    report = (tmp_path / "gpu-tune-dry-run-cpu.md").read_text()
    assert report == gpu_tune.markdown(results)
    for heading in ("Predictions against the measurements", "Default family: tiles", "Persistent family: tilings",
                    "Kernel family by shape", "One bidirectional layer", "Groups"):
        assert f"## {heading}" in report
    # every prediction the tune rows test found both of its rows and a ratio
    predictions = [line for line in gpu_tune.prediction_lines(results) if line.startswith("| ") and "---" not in line]
    assert len(predictions) == len(gpu_tune.PREDICTIONS) + 1  # the header
    assert all(line.split(" | ")[3] != "-" for line in predictions[1:]), predictions


@pytest.mark.parametrize("name", ["triton-persistent-fp32", "cudnn-fp32", "nn.RNN 1 layer (cudnn-fp32)", "cudnn"])
def test_measure_holds_a_rows_setting_over_the_backward(name):
    """A row's setting (a triton row's kernel family, a cuDNN fp32 row's TF32 off) holds in its
    backward too: autograd runs the backward after the row's function has returned, and both the
    triton launchers and cuDNN's RNN backward read their settings when they run."""
    import os
    sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
    import bench_gpu
    from timescale_kernels.ops import triton_recurrence as tr
    seen = []

    def state(where):
        seen.append((where, os.environ.get(tr.FAMILY_ENV), torch.backends.cudnn.allow_tf32))

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            state("forward")
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            state("backward")
            return grad * 2

    before = (os.environ.get(tr.FAMILY_ENV), torch.backends.cudnn.allow_tf32)
    x = torch.ones(3, requires_grad=True)
    row = bench_gpu.measure(lambda: Spy.apply(x), "cpu", [x], setting=bench_gpu.row_setting(name))
    assert row["fwd_bwd_ms"] > 0 and row["fwd_ms"] > 0
    assert "backward" in {where for where, _, _ in seen}
    family = "persistent" if name.startswith("triton-") else before[0]
    tf32 = False if "cudnn-fp32" in name else before[1]
    assert all((f, t) == (family, tf32) for _, f, t in seen), seen
    assert (os.environ.get(tr.FAMILY_ENV), torch.backends.cudnn.allow_tf32) == before


def test_epoch_timing_gives_both_implementations_the_same_lengths(monkeypatch):
    """bench_training.measure (gpu-check's epoch figures): our trainer and the study's code run
    the same sequence lengths call by call, within the curriculum's range, and the row records them."""
    import types
    sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
    import bench_training
    seen = {"ours": [], "study": []}
    study_batch, our_batch = bench_training.study_batch, bench_training.Trainer._batch
    monkeypatch.setattr(bench_training, "study_batch",
                        lambda Ns, b, length=None: seen["study"].append(length) or study_batch(Ns, b, length))
    monkeypatch.setattr(bench_training.Trainer, "_batch",
                        lambda self, gen, length: seen["ours"].append(length) or our_batch(self, gen, length))
    args = types.SimpleNamespace(hidden=8, batch=4, device="cpu", backend="auto", steps=3, rounds=2)
    row = bench_training.measure(5, args)
    assert seen["ours"] == seen["study"] and len(seen["ours"]) == 2 * 2 * (3 + 1)
    assert all(7 <= t <= 21 for t in seen["ours"])
    assert row["timed_lengths"] == seen["ours"][1:4] and len(set(seen["ours"])) > 1


def _epochs(fixed, per_network, lone_network, sizes):
    return {k: {"ensemble_s": [0.0, fixed + k * per_network], "lone_s": [0.0, k * lone_network]} for k in sizes}


def test_ensemble_sizes_fit():
    """The ensemble's epoch as fixed + K * per_network, and what a ratio of 0.5 would need."""
    sys.path[:0] = [str(REPO / "benchmarks" / "cpu")]
    from bench_ensemble_training import fit_sizes
    fit = fit_sizes(_epochs(0.02, 0.07, 0.09, [1, 2, 4, 8]))
    assert fit["fixed_s"] == pytest.approx(0.02) and fit["per_network_s"] == pytest.approx(0.07)
    assert fit["lone_network_s"] == pytest.approx(0.09) and fit["ratio_limit"] == pytest.approx(0.07 / 0.09)
    # at K = 4 the ratio is (0.02 + 4 p) / (4 * 0.09): 0.5 at p = 0.045 - 0.005
    assert fit["per_network_needed_s"]["4"] == pytest.approx(0.04)
    with pytest.raises(ValueError, match="at least two ensemble sizes"):
        fit_sizes(_epochs(0.02, 0.07, 0.09, [4]))


def test_ensemble_sizes_refused():
    script = REPO / "benchmarks" / "cpu" / "bench_ensemble_training.py"
    proc = subprocess.run([sys.executable, str(script), "--seeds", "4", "4"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "expected distinct sizes" in proc.stderr


def test_ensemble_sizes_fit_reads_wall_time_for_several_threads():
    sys.path[:0] = [str(REPO / "benchmarks" / "cpu")]
    from bench_ensemble_training import fit_sizes
    epochs = {k: {"ensemble_s": [0.01 + 0.05 * k, 0.02 + 0.1 * k], "lone_s": [0.08 * k, 0.16 * k]} for k in (2, 4)}
    wall, cpu = fit_sizes(epochs, column=0), fit_sizes(epochs)
    assert wall["time"] == "wall" and wall["per_network_s"] == pytest.approx(0.05)
    assert wall["fixed_s"] == pytest.approx(0.01)
    assert cpu["time"] == "CPU" and cpu["per_network_s"] == pytest.approx(0.1)
    assert cpu["lone_network_s"] == pytest.approx(0.16)


def test_ensemble_sizes_plot(tmp_path):
    sys.path[:0] = [str(REPO / "benchmarks" / "cpu")]
    from bench_ensemble_training import fit_sizes, plot_sizes
    epochs = _epochs(0.02, 0.07, 0.09, [2, 4, 8])
    out = {"threads": 1, "n_max": 12, "sizes": {str(k): v for k, v in epochs.items()}, "fit": fit_sizes(epochs)}
    plot_sizes(out, tmp_path / "sizes.png")
    assert (tmp_path / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    script = REPO / "benchmarks" / "cpu" / "bench_ensemble_training.py"
    proc = subprocess.run([sys.executable, str(script), "--seeds", "4", "--plot", str(tmp_path / "one.png")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "two or more --seeds" in proc.stderr and not (tmp_path / "one.png").exists()


def test_ensemble_sizes_run_each_in_its_own_process(tmp_path):
    script = REPO / "benchmarks" / "cpu" / "bench_ensemble_training.py"
    out = tmp_path / "sizes.json"
    tiny = ["--steps", "1", "--rounds", "1", "--n-max", "2"]
    proc = subprocess.run([sys.executable, str(script), "--seeds", "1", "2", *tiny, "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert sorted(result["sizes"]) == ["1", "2"] and result["epoch"] == result["sizes"]["1"]
    assert all(len(result["sizes"][k]["rounds"]["ensemble"]) == 1 for k in ("1", "2"))
    assert result["fit"]["time"] == "CPU" and "networks at N = 2..2" in proc.stdout
