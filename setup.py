"""Builds the package; with torch in the build environment also the C++ CPU kernels ahead of time
(timescale_kernels._C).

Every wheel carries the C++ sources as package data (timescale_kernels/csrc, copied from the
repository's csrc/ at build time, so csrc/ stays their only copy): where no prebuilt extension loads
(an isolated build has no torch, or torch was upgraded since), the kernel is compiled at first use
against the installed torch and cached (timescale_kernels/ops/cpu_build.py).
"""
import importlib.util
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


def _cpu_flags():
    # By path: importing the package would import torch, which the build environment may lack.
    spec = importlib.util.spec_from_file_location("cpu_flags", os.path.join(HERE, "timescale_kernels", "ops",
                                                                            "cpu_flags.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithSources(build_py):
    """Copies csrc/*.cpp and *.h into the built package as timescale_kernels/csrc (not in editable
    installs, which read the repository's csrc/ in place)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.join(self.build_lib, "timescale_kernels", "csrc")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(CSRC)):
            if name.endswith((".cpp", ".h")):
                shutil.copy2(os.path.join(CSRC, name), os.path.join(target, name))


def _ext_modules():
    if os.environ.get("TIMESCALE_KERNELS_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("torch is not importable: the C++ kernel will be compiled at first use", file=sys.stderr)
        return [], {}
    sources = sorted(os.path.join("csrc", f) for f in os.listdir(CSRC) if f.endswith(".cpp"))
    flags = _cpu_flags()
    ext = CppExtension(name="timescale_kernels._C", sources=sources,
                       extra_compile_args={"cxx": flags.compile_args()}, extra_link_args=list(flags.LINK_ARGS))

    class OptionalBuildExtension(BuildExtension.with_options(use_ninja=True)):
        """A failed compile leaves the package installable: the kernel is then compiled at first use
        (or, without a compiler there either, CPU runs use the reference loop and say why)."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # compiler missing or failing: report, do not abort the install
                if os.environ.get("TIMESCALE_KERNELS_REQUIRE_EXT") == "1":
                    raise
                print(f"WARNING: timescale_kernels._C was not built ({err}); the kernel will be compiled at "
                      "first use", file=sys.stderr)

    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
