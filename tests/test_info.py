"""`timescale-kernels info` and `python -m timescale_kernels.info`: what a bug report needs, exit 0."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from timescale_kernels import __version__, info
from timescale_kernels.ops import cpu, triton_recurrence


def test_json_names_versions_backends_and_the_cpu_kernel(capsys):
    assert info.main(["--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["versions"]["timescale_kernels"] == __version__
    assert facts["versions"]["torch"] == torch.__version__
    assert set(facts["versions"]) == {"timescale_kernels", "python", "torch", "triton", "numpy"}
    assert set(facts["backends"]) == {"reference", "cpu", "triton"}
    assert facts["backends"]["reference"] == "available"
    kernel = facts["cpu_kernel"]
    assert kernel["threads"] == torch.get_num_threads()
    if cpu.is_available():
        assert facts["backends"]["cpu"] == "available"
        assert kernel["origin"] in ("prebuilt", "cache", "compiled", "waited") and kernel["path"].endswith(".so")
    else:
        assert facts["backends"]["cpu"].startswith("not available: ") and kernel["origin"] == ""
    if not torch.cuda.is_available():
        assert facts["gpu"] == "no CUDA"


@pytest.mark.parametrize("command", [["-m", "timescale_kernels.cli", "info"], ["-m", "timescale_kernels.info"]])
def test_both_commands_print_the_report_and_exit_0(command):
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for heading in ("timescale_kernels", "torch", "backends", "C++ CPU kernel", "threads", "GPU"):
        assert heading in proc.stdout, proc.stdout
    if not torch.cuda.is_available():
        assert "no CUDA" in proc.stdout


def _fake_h100(monkeypatch):
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                            shared_memory_per_block_optin=227 * 1024)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    return props


@pytest.mark.skipif(triton_recurrence._kernels is None, reason="triton is not importable")
def test_a_gpu_is_reported_with_its_capability_and_the_family_at_the_study_shape(monkeypatch):
    props = _fake_h100(monkeypatch)
    monkeypatch.delenv(triton_recurrence.FAMILY_ENV, raising=False)
    gpu = info.collect(trial=False)["gpu"]
    assert gpu["name"] == props.name and gpu["compute_capability"] == "9.0" and gpu["multiprocessors"] == 132
    expected = triton_recurrence.choose_family(props, 256, 500, "fp32")
    assert gpu["triton_family_at_study_shape"] == expected and expected in triton_recurrence.FAMILIES
    text = info.format_report(info.collect(trial=False))
    assert "  compute_capability 9.0\n" in text and f"  name             {props.name}\n" in text
    assert f"triton family at (B, H) = (256, 500): {expected}" in text
    other = next(f for f in triton_recurrence.FAMILIES if f != expected)
    monkeypatch.setenv(triton_recurrence.FAMILY_ENV, other)
    pinned = info.collect(trial=False)["gpu"]["triton_family_at_study_shape"]
    assert pinned == f"{expected} ({triton_recurrence.FAMILY_ENV}={other} pins another)"


def test_a_gpu_without_triton_says_why_there_is_no_family(monkeypatch):
    _fake_h100(monkeypatch)
    monkeypatch.setattr(triton_recurrence, "is_available", lambda: False)
    monkeypatch.setattr(triton_recurrence, "unavailable_reason", lambda: "triton is not importable (test)")
    assert info.collect(trial=False)["gpu"]["triton_family_at_study_shape"] == "- (triton is not importable (test))"
