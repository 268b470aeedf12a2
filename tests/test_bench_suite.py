"""The pytest-benchmark suite in benchmarks/cpu runs (every benchmark once, at a tiny shape), and the
test suite does not collect it."""
import subprocess
import sys

from conftest import REPO


def test_the_benchmark_suite_runs_at_a_tiny_shape(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/cpu", "--benchmark-disable", "--bench-tiny",
                           "-q", "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'report.xml'}"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = (tmp_path / "report.xml").read_text()
    for name in ("test_forward_backward", "test_training_step", "test_tau_net_simulation"):
        assert name in report
    assert 'failures="0"' in report and 'errors="0"' in report


def test_pytest_without_arguments_collects_the_tests_only():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids and all(line.startswith("tests/") for line in ids), [i for i in ids if not i.startswith("tests/")][:5]
