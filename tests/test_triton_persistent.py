"""The opt-in persistent column-split kernels (triton_persistent.py) against the default triton kernels
and the reference. Under TRITON_INTERPRET=1 they run with one column split (programs run one at a
time, so a multi-program barrier would wait forever); the multi-split barrier runs only in the
tests marked gpu, each in a subprocess with a timeout so that a deadlock fails instead of hanging.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402

from timescale_kernels.ops import triton_recurrence as tr  # noqa: E402

from conftest import REPO, rel_err  # noqa: E402
from test_triton_backend import make_core, reference_grads  # noqa: E402

pytestmark = pytest.mark.skipif(not tr.is_available(), reason=f"triton backend: {tr.unavailable_reason()}")
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(tr, "poison_outputs", True)


def run_core(c, nonlinearity, placement, precision, persistent, monkeypatch):
    """(h, drive, d_drive, dh0, d_alpha) from the triton backend with the persistent path on or off."""
    monkeypatch.setattr(tr, "persistent", persistent)
    h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], nonlinearity, placement, True, precision)
    grads = tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], nonlinearity, placement, precision)
    return (h, drive, *grads)


NAMES = ("h", "drive", "d_drive", "dh0", "d_alpha")


@pytest.mark.parametrize("T,B,H,nonlinearity,placement", [
    (5, 3, 20, "leaky_relu", "outside"),
    (5, 3, 20, "tanh", "inside"),
    (4, 1, 50, "sigmoid", "outside"),
    (6, 19, 50, "tanh", "outside"),
    (4, 19, 20, "leaky_relu", "inside"),
    (3, 1, 20, "sigmoid", "inside"),
])
def test_persistent_matches_default_and_reference(T, B, H, nonlinearity, placement, monkeypatch):
    from timescale_kernels.ops import triton_persistent as tp
    c = make_core(T, B, H, seed=T + B + H)
    got = run_core(c, nonlinearity, placement, "fp32", True, monkeypatch)
    assert tp.last_launch == "persistent"
    default = run_core(c, nonlinearity, placement, "fp32", False, monkeypatch)
    h_ref, du, dh0, dalpha = reference_grads(c, nonlinearity, placement)
    drive_ref = c["u"].double() + torch.cat([c["h0"][None].double(), h_ref[:-1]]) @ c["w"].double().t()
    for name, a, b, want in zip(NAMES, got, default, (h_ref, drive_ref, du, dh0, dalpha)):
        assert a.shape == want.shape, name
        assert rel_err(a, b) <= 1e-5, name
        assert rel_err(a, want) <= 1e-5, name


@pytest.mark.parametrize("precision,tol", [("tf32x3", 1e-5), ("bf16", 1e-2)])
def test_persistent_reduced_precision(precision, tol, monkeypatch):
    c = make_core(4, 5, 50)
    got = run_core(c, "tanh", "outside", precision, True, monkeypatch)
    h_ref, du, dh0, dalpha = reference_grads(c, "tanh", "outside")
    for name, a, want in zip(("h", "d_drive", "dh0", "d_alpha"), (got[0], *got[2:]), (h_ref, du, dh0, dalpha)):
        assert rel_err(a, want) <= tol, name


def test_grid_too_large_falls_back_with_one_warning(monkeypatch):
    from timescale_kernels.ops import triton_persistent as tp
    monkeypatch.setattr(tp, "sm_count", lambda device: 1)  # 2 batch tiles x 1 split > 1 SM
    monkeypatch.setattr(tp, "_warned", set())
    c = make_core(3, 19, 20)
    with pytest.warns(UserWarning, match="SMs"):
        got = run_core(c, "tanh", "outside", "fp32", True, monkeypatch)
    assert tp.last_launch == "fallback"
    default = run_core(c, "tanh", "outside", "fp32", False, monkeypatch)
    for name, a, b in zip(NAMES, got, default):
        assert torch.equal(a, b), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough
        run_core(c, "tanh", "outside", "fp32", True, monkeypatch)


def _subprocess(script: str, timeout: float, interpret: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)


def test_persistent_kernels_compile_for_h100():
    """sm_90 compile without a GPU: the barrier lowers to a gpu-scope release (red/atom) and a
    gpu-scope acquire (ld/atom), bracketed by bar.sync; nothing goes through the read-only path."""
    script = (
        "import re, torch\n"
        "from timescale_kernels.ops import triton_persistent as tp\n"
        "for p, d, nl, pl in (('fp32', torch.float32, 'tanh', 'outside'),"
        " ('tf32x3', torch.float32, 'sigmoid', 'inside'),"
        " ('tf32', torch.float32, 'leaky_relu', 'outside'), ('bf16', torch.float32, 'tanh', 'inside'),"
        " ('fp32', torch.float64, 'relu', 'inside')):\n"
        "    for k, c in tp.compile_for_target(90, p, d, nl, pl).items():\n"
        "        ptx = c.asm['ptx']\n"
        "        assert re.search(r'(red|atom)\\.global\\.gpu\\.release', ptx), (p, k)\n"
        "        assert re.search(r'(ld|atom)\\.global\\.gpu\\.acquire', ptx), (p, k)\n"
        "        assert 'bar.sync' in ptx and 'ld.global.nc' not in ptx, (p, k)\n"
        "print('ok')\n")
    run = _subprocess(script, timeout=300)
    if run.returncode != 0 and "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("ptxas not available")
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]


# ---- GPU only: the multi-program barrier (8 column splits at H = 500) ----

GPU_SCRIPT = """
import torch
from timescale_kernels.ops import triton_recurrence as tr, triton_persistent as tp
from test_triton_backend import make_core, reference_grads
from conftest import rel_err
tr.poison_outputs = True
tr.persistent = True
for placement in ("outside", "inside"):
    c = make_core(100, 256, 500, device="cuda")
    h, drive = tr.forward(c["u"], c["h0"], c["w"], c["alpha"], "leaky_relu", placement, True, "{precision}")
    assert tp.last_launch == "persistent", tp.last_launch
    grads = tr.backward(c["grad_h"], h, c["h0"], drive, c["w"], c["alpha"], "leaky_relu", placement, "{precision}")
    assert tp.last_launch == "persistent", tp.last_launch
    torch.cuda.synchronize()
    h_ref, *want = reference_grads(c, "leaky_relu", placement)
    errs = [rel_err(h, h_ref)] + [rel_err(a, b) for a, b in zip(grads, want)]
    assert max(errs) <= 1e-5, (placement, errs)
print("ok")
"""


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32x3"])
def test_persistent_study_shape_on_gpu(precision):
    if torch.cuda.get_device_properties(0).multi_processor_count < 16 * 8:
        pytest.skip("needs 128 SMs for 16 batch tiles x 8 column splits")
    try:
        run = _subprocess(GPU_SCRIPT.replace("{precision}", precision), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("persistent kernels did not finish in 60 s: the grid barrier deadlocked")
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
