"""benchmarks/cpu/bench_dropin.py stays runnable: a tiny shape, its JSON written."""
import json
import subprocess
import sys

from conftest import REPO


def test_dropin_benchmark_runs_at_a_tiny_shape(tmp_path):
    out = tmp_path / "dropin.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cpu" / "bench_dropin.py"), "--repeats", "1",
                           "--threads", "1", "--steps", "3", "--batch", "2", "--hidden", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "ratio" in proc.stdout and result["ratio_leaky_over_torch"] > 0
    assert set(result["median_ms"]) == {"LeakyRNN (cpu backend)", "torch.nn.RNN (tanh, oneDNN)"}
