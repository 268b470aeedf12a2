"""What a bug report needs: versions, the backends that run here and why the others do not, where
the C++ CPU kernel came from, and the GPU with the Triton kernel family chosen for it.

    timescale-kernels info            # or: python -m timescale_kernels.info   (--json: the same as JSON)

A small forward and backward with backend="auto" (first_use_trial) shows what runs at first use and
which triton kernel, if any, failed there and fell back to the reference. Looking for the CPU kernel
loads it, compiling it first where it is neither prebuilt nor cached, so running this once also builds
the cache ahead of time (e.g. before a sweep starts its workers).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys

import torch

from . import __version__
from .ops import backends, cpu, cpu_build, triton_recurrence

STUDY_SHAPE = (256, 500)  # (B, H) of the study's training runs: the shape the family is reported for
_ORIGINS = {"prebuilt": "prebuilt extension", "cache": "compiled earlier, from the cache",
            "compiled": "compiled by this process", "waited": "compiled by another process, from the cache"}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _backend_rows() -> dict[str, str]:
    """Each backend: 'available' or 'not available: why'."""
    rows = {"reference": "available"}
    for name in backends.COMPILED:
        reason = backends.unavailable_reason(name)
        rows[name] = f"not available: {reason}" if reason else "available"
    return rows


def _cpu_kernel() -> dict:
    """origin: cpu.KernelSource's ('' where none loaded); prebuilt: why timescale_kernels._C was not used."""
    source = cpu.kernel_source()
    return {"origin": source.origin, "path": source.path, "prebuilt": source.prebuilt or "used",
            "cache": str(cpu_build.cache_root()), "threads": torch.get_num_threads()}


def _gpu() -> dict | str:
    """The CUDA device and the kernel family the rule picks at STUDY_SHAPE; a string without CUDA."""
    if not torch.cuda.is_available():
        return "no CUDA"
    props = torch.cuda.get_device_properties(0)
    gpu = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
           "multiprocessors": props.multi_processor_count, "devices": torch.cuda.device_count()}
    if not triton_recurrence.is_available():
        gpu["triton_family_at_study_shape"] = f"- ({triton_recurrence.unavailable_reason()})"
        return gpu
    family = triton_recurrence.choose_family(props, *STUDY_SHAPE, "fp32")
    pinned = os.environ.get(triton_recurrence.FAMILY_ENV)
    if pinned and pinned not in ("auto", family):
        family += f" ({triton_recurrence.FAMILY_ENV}={pinned} pins another)"
    gpu["triton_family_at_study_shape"] = family
    return gpu


TRIAL_SHAPE = (4, 8, 64)  # (T, B, H) of the first-use trial: small, but every kernel of a training step


def first_use_trial(device: str) -> dict:
    """One forward and backward with backend="auto" on `device` at TRIAL_SHAPE: what ran ("triton",
    "cpu", "reference") and every triton kernel that failed at first use in this process (each such call
    runs on the reference from then on, with one warning). A compiled backend that raises a bad-argument
    error is reported as it is, not hidden."""
    from .ops import leaky_rnn, resolve_backend
    steps, batch, hidden = TRIAL_SHAPE
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(steps, batch, 1, generator=gen), torch.zeros(batch, hidden),
               torch.randn(hidden, 1, generator=gen), 0.1 * torch.randn(hidden, hidden, generator=gen),
               torch.zeros(hidden), torch.zeros(hidden), 1 + torch.rand(hidden, generator=gen)]
    tensors = [t.to(device).requires_grad_() for t in tensors]
    before = len(backends.triton_failures())
    try:
        output, h_n = leaky_rnn(*tensors, backend="auto")
        (output.sum() + h_n.sum()).backward()
    except Exception as err:  # reported, not raised: info must exit 0 on a broken install
        return {"ran": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                "failures": []}
    failures = backends.triton_failures()
    ran = "reference (a triton kernel failed)" if len(failures) > before else resolve_backend("auto", torch.device(device))
    return {"ran": ran, "failures": [f"{f.kernel} on {f.device}: {f.error}" for f in failures]}


def collect(trial: bool = True) -> dict:
    """Everything the report shows, as plain values (the --json output); trial: run first_use_trial."""
    return {
        "versions": {"timescale_kernels": __version__, "python": f"{platform.python_version()} ({sys.executable})",
                     "torch": torch.__version__, "triton": _version("triton"), "numpy": _version("numpy")},
        "platform": platform.platform(),
        "backends": _backend_rows(),
        "cpu_kernel": _cpu_kernel(),
        "gpu": _gpu(),
        "first_use": first_use_trial("cuda" if torch.cuda.is_available() else "cpu") if trial else {},
    }


def format_report(info: dict) -> str:
    """info (collect()'s dict) as aligned text, one fact a line."""
    lines = [f"{name:<18} {value}" for name, value in info["versions"].items()]
    lines.append(f"{'platform':<18} {info['platform']}")
    lines += ["", "backends"] + [f"  {name:<16} {state}" for name, state in info["backends"].items()]
    kernel = info["cpu_kernel"]
    lines += ["", "C++ CPU kernel", f"  {'loaded':<16} {_ORIGINS.get(kernel['origin'], 'no')}",
              f"  {'path':<16} {kernel['path'] or '-'}", f"  {'prebuilt':<16} {kernel['prebuilt']}",
              f"  {'cache':<16} {kernel['cache']}", f"  {'threads':<16} {kernel['threads']}"]
    gpu = info["gpu"]
    if isinstance(gpu, str):
        lines += ["", f"GPU                {gpu}"]
    else:
        b, h = STUDY_SHAPE
        lines += ["", "GPU"] + [f"  {name:<16} {value}" for name, value in gpu.items()
                                if name != "triton_family_at_study_shape"]
        lines.append(f"  triton family at (B, H) = ({b}, {h}): {gpu.get('triton_family_at_study_shape', '-')}")
    trial = info.get("first_use") or {}
    if trial:
        t, b, h = TRIAL_SHAPE
        lines += ["", f"first use, backend='auto' at (T, B, H) = ({t}, {b}, {h})", f"  {'ran on':<16} {trial['ran']}"]
        if trial.get("error"):
            lines.append(f"  {'error':<16} {trial['error']}")
        lines += [f"  {'triton failed':<16} {failure}" for failure in trial["failures"]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the facts as one JSON object")


def run(args) -> int:
    info = collect()
    print(json.dumps(info, indent=1) if args.json else format_report(info))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timescale_kernels.info", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
