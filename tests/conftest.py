"""Shared fixtures. Without CUDA, Triton kernels run under the interpreter on the CPU."""
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import rel_err  # noqa: F401  (tests that import it from here)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

warnings.filterwarnings("ignore", message="timescale_kernels: the C\\+\\+ CPU kernel is not available")

# The files that need the plotting and fitting packages are not collected where those are missing
# (a GPU machine's python with only torch, triton and pytest; none of these files has GPU tests).
NEED_PLOTS_AND_FITS = ["test_analysis.py", "test_cli.py", "test_experiments.py", "test_report_models.py",
                       "test_retrain.py", "test_study_measures.py"]
collect_ignore = [] if all(importlib.util.find_spec(m) for m in ("matplotlib", "scipy")) else NEED_PLOTS_AND_FITS

REPO = Path(__file__).resolve().parents[1]
STUDY_CHECKPOINTS = Path(os.environ.get("STUDY_CHECKPOINTS", REPO.parent / "shared" / "reference_checkpoints"))


@pytest.fixture(scope="module")
def one_thread():
    """Small shapes run faster on one thread when cores are shared; use with pytest.mark.usefixtures."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def study_checkpoints():
    if not STUDY_CHECKPOINTS.is_dir():
        pytest.skip(f"the study's checkpoints are not at {STUDY_CHECKPOINTS}")
    return STUDY_CHECKPOINTS


def cli_fails(argv, capsys, match):
    """Runs the CLI in-process on argv; asserts exit status 2 and one stderr line containing match."""
    from timescale_kernels.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and match in err, err
    return err


def triton36_side() -> Path:
    """Where triton 3.6.0 (the GPU machine's) is installed beside the newest (make triton-3.6;
    TIMESCALE_KERNELS_TRITON36 overrides); the calling test is skipped where it is not."""
    side = Path(os.environ.get("TIMESCALE_KERNELS_TRITON36", REPO / ".venv" / "triton-3.6.0"))
    if not (side / "triton").is_dir():
        pytest.skip(f"triton 3.6.0 is not installed beside the newest at {side} (make triton-3.6)")
    return side


def compile_script_rows(script: str, tmp_path, side=None, quick=False, jobs=2, timeout=900) -> dict:
    """{'triton': version, 'rows': [...]} from benchmarks/kernel_tools/<script> (triton_compile.py,
    triton_cards.py) run with --json in a subprocess, `side` (a triton installed aside) first on
    PYTHONPATH and TRITON_INTERPRET unset, so that it compiles for real."""
    out = tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (side, REPO) if p] + [env.get("PYTHONPATH", "")])
    argv = [sys.executable, str(REPO / "benchmarks" / "kernel_tools" / script), "--json", str(out), "--jobs", str(jobs)]
    run = subprocess.run(argv + (["--quick"] if quick else []), env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=REPO)
    assert out.is_file(), run.stderr[-3000:]
    return json.loads(out.read_text())
