"""The C++ CPU kernel's compile and link flags, one list for both ways of building it: ahead of time
(setup.py, with torch in the build environment) and at first use (cpu_build.py), so that both give
the same binary. Standard library only: setup.py loads this file by its path, before torch or the
package can be imported.
"""
from __future__ import annotations

import os

PORTABLE_ENV = "TIMESCALE_KERNELS_PORTABLE"  # set: no instructions beyond x86-64's baseline (a cluster of mixed CPUs)
LINK_ARGS = ["-fopenmp"]


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags this CPU reports (empty where /proc/cpuinfo is absent)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def compile_args(flags: frozenset[str] | None = None) -> list[str]:
    """The C++ compiler's arguments for this CPU (flags: cpu_flags() unless given)."""
    # C++20: torch's own headers use it. No trapping math / errno (value-preserving, as torch itself is
    # built): lets the compiler turn the element-wise selects into vector blends instead of branches.
    args = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    flags = cpu_flags() if flags is None else flags
    if {"avx2", "fma"} <= flags and not os.environ.get(PORTABLE_ENV):
        args += ["-mavx2", "-mfma"]
    return args
