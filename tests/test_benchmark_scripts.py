"""The benchmark scripts stay runnable: the GPU command's dry run, and each script's CLI parses."""
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPTS = ["bench_cpu.py", "bench_gpu.py", "bench_training.py", "bench_tau_net.py", "gpu_check.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_gpu_check_dry_run_without_cuda():
    script = REPO / "benchmarks" / "gpu_check.py"
    plan = subprocess.run([sys.executable, str(script), "--allow-no-gpu"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert plan.returncode == 0 and "would run" in plan.stdout, plan.stderr[-2000:]
    refused = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 1 and "no CUDA device" in refused.stderr


def test_cpu_benchmark_runs_at_a_tiny_shape(tmp_path):
    out = tmp_path / "cpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cpu.py"), "--repeats", "1",
                           "--steps", "3", "--batch", "2", "--hidden", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cpu backend" in proc.stdout and out.is_file()
