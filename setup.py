"""Builds the C++ CPU kernels as timescale_kernels._C.

If torch's C++ extension tooling is missing, the package is installed without the
extension and falls back to the reference backend (with one warning at import).
"""
import os
import sys

from setuptools import setup


def _cpu_has(flag):
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and f" {flag} " in line + " " for line in f)
    except OSError:
        return False


def _ext_modules():
    if os.environ.get("TIMESCALE_KERNELS_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("torch is not importable: building without the C++ extension", file=sys.stderr)
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(
        os.path.join("csrc", f) for f in os.listdir(os.path.join(here, "csrc")) if f.endswith(".cpp")
    )
    # C++20: torch's own headers use it. No trapping math / errno (value-preserving, as torch itself is
    # built): lets the compiler turn the element-wise selects into vector blends instead of branches.
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    if _cpu_has("avx2") and _cpu_has("fma") and not os.environ.get("TIMESCALE_KERNELS_PORTABLE"):
        cxx += ["-mavx2", "-mfma"]
    ext = CppExtension(
        name="timescale_kernels._C",
        sources=sources,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )

    class OptionalBuildExtension(BuildExtension.with_options(use_ninja=True)):
        """A failed compile leaves the package installable: it then runs on the reference backend
        and says at import how to build the kernel."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # compiler missing or failing: report, do not abort the install
                if os.environ.get("TIMESCALE_KERNELS_REQUIRE_EXT") == "1":
                    raise
                print(f"WARNING: timescale_kernels._C was not built ({err}); the CPU backend will be "
                      "unavailable", file=sys.stderr)

    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
