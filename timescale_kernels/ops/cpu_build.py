"""Compiling the C++ CPU kernel at first use, where no prebuilt timescale_kernels._C loads.

The kernel is compiled by torch.utils.cpp_extension (ninja) against the torch that is installed and
kept in a cache: CACHE/KEY/timescale_kernels_cpu.so. CACHE is $TIMESCALE_KERNELS_CACHE_DIR, else
$XDG_CACHE_HOME/timescale_kernels, else ~/.cache/timescale_kernels. KEY names the torch version and
Python and hashes everything that changes the binary (torch's version and commit, its C++ ABI, the
compiler, the flags with the CPU features they select, the sources), so a torch upgrade or an edited
source compiles afresh and a machine with other CPU features gets its own entry; old entries stay
until the directory is removed.

Two processes starting at once (a sweep's workers) are serialised by an exclusive flock on KEY/lock:
the first compiles in a directory of its own and renames the library into place, the others wait
and load it. The kernel releases a flock when its process ends, however it ends, so a compile that
is killed blocks no one (cpp_extension's own lock file would stay behind and make every later
compile in that directory wait forever), and no half-written library is ever at the final path.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from . import cpu_flags

CACHE_ENV = "TIMESCALE_KERNELS_CACHE_DIR"
JIT_ENV = "TIMESCALE_KERNELS_JIT"  # "0": never compile at first use (a cached kernel still loads)
VERBOSE_ENV = "TIMESCALE_KERNELS_BUILD_VERBOSE"  # "1": show the compiler's commands and output
LIBRARY = "timescale_kernels_cpu"  # the library's file name, and cpp_extension's name for it
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


class BuildUnavailable(RuntimeError):
    """The kernel cannot be compiled here; the message says why and the command that fixes it."""


def cache_root() -> Path:
    """The directory that holds compiled kernels, one subdirectory per cache_key."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "timescale_kernels"


def source_dir() -> Path | None:
    """The C++ sources: timescale_kernels/csrc in an installed wheel (setup.py copies them there), the
    repository's csrc/ in a checkout or an editable install; None where neither holds any."""
    for candidate in (_PACKAGE_DIR / "csrc", _PACKAGE_DIR.parent / "csrc"):
        if any(candidate.glob("*.cpp")):
            return candidate
    return None


def compile_flags() -> list[str]:
    # -DNDEBUG: a build ahead of time gets it from Python's own CFLAGS (c10's debug-only checks off).
    return cpu_flags.compile_args() + ["-DNDEBUG"]


def cache_key(src: Path, cflags: list[str]) -> str:
    """The cache entry's name for the sources in src compiled with cflags against this torch."""
    digest = hashlib.sha256()
    parts = [torch.__version__, str(torch.version.git_version), str(torch._C._GLIBCXX_USE_CXX11_ABI),
             sys.version, platform.machine(), os.environ.get("CXX", "c++"), *cflags, *cpu_flags.LINK_ARGS]
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in sorted(src.glob("*.cpp")) + sorted(src.glob("*.h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"torch-{torch.__version__}-{python}-{digest.hexdigest()[:16]}"


def _ninja_dir() -> str | None:
    """The directory of a ninja executable: on PATH, else the one the ninja package installs (a venv's
    bin/ is not on PATH when its python is run without activating it)."""
    found = shutil.which("ninja")
    if found:
        return os.path.dirname(found)
    try:
        import ninja
    except ImportError:
        return None
    bin_dir = getattr(ninja, "BIN_DIR", None)
    return bin_dir if bin_dir and os.path.isfile(os.path.join(bin_dir, "ninja")) else None


def missing_tool() -> str:
    """Why the kernel cannot be compiled here, with the command that fixes it ('' where it can)."""
    if os.environ.get(JIT_ENV) == "0":
        return f"compiling at first use is turned off by {JIT_ENV}=0; unset it to compile the kernel"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return (f"no C++ compiler: {compiler!r} is not on PATH (CXX names another); "
                "install one with: sudo apt-get install g++")
    if _ninja_dir() is None:
        return "ninja is not installed; install it with: pip install ninja"
    return ""


@contextlib.contextmanager
def _timed_line(text: str) -> Iterator[None]:
    """Prints text on stderr, then on the same line the seconds until the block ends."""
    print(text, end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f" failed after {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        raise
    print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _exclusive(lock_path: Path, wait_message: str) -> Iterator[bool]:
    """Holds an exclusive flock on lock_path; yields whether it had to wait for another process."""
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            with _timed_line(wait_message):
                fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_library(key_dir: Path, build: Callable[[Path], Path], load: Callable[[Path], None]) -> tuple[Path, str]:
    """Loads key_dir/LIBRARY.so into this process, building it first where it is absent.

    build(tmp) compiles into tmp (an empty directory of this process's own under key_dir), loads the
    result and returns its path; load(path) loads a library built earlier. Returns (path, how): how is
    "cache" (it was there), "compiled" (this process built it) or "waited" (another process built it
    while this one waited for the lock).
    """
    final = key_dir / f"{LIBRARY}.so"
    if final.is_file():
        load(final)
        return final, "cache"
    key_dir.mkdir(parents=True, exist_ok=True)
    wait_message = f"timescale_kernels: waiting for another process compiling the C++ CPU kernel in {key_dir} ..."
    with _exclusive(key_dir / "lock", wait_message) as waited:
        if final.is_file():
            load(final)
            return final, "waited" if waited else "cache"
        for stale in key_dir.glob("build-*"):  # a killed compile's leftovers (the lock is ours)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=key_dir))
        try:
            os.replace(build(tmp), final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final, "compiled"


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """cpp_extension runs `ninja` from PATH: put the ninja package's directory there while it builds."""
    saved = os.environ.get("PATH", "")
    ninja_dir = _ninja_dir()
    if ninja_dir and shutil.which("ninja") is None:
        os.environ["PATH"] = ninja_dir + os.pathsep + saved
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _compile(build_dir: Path, src: Path, cflags: list[str]) -> Path:
    """Compiles src's sources into build_dir and loads the library (which registers
    torch.ops.timescale_kernels_cpu); returns its path."""
    from torch.utils import cpp_extension
    sources = [str(p) for p in sorted(src.glob("*.cpp"))]
    line = (f"timescale_kernels: compiling the C++ CPU kernel for torch {torch.__version__} "
            f"(first use; cached in {build_dir.parent}) ...")
    with _ninja_on_path(), _timed_line(line):
        path = cpp_extension.load(LIBRARY, sources, extra_cflags=cflags, extra_ldflags=list(cpu_flags.LINK_ARGS),
                                  build_directory=str(build_dir), verbose=os.environ.get(VERBOSE_ENV) == "1",
                                  is_python_module=False)
    return Path(path)


def load_or_compile() -> tuple[Path, str]:
    """Loads the kernel from the cache, compiling it there first where it is absent (one line on
    stderr says so, and how long it took). Returns (path, how) as cached_library; raises
    BuildUnavailable (no sources, compiler or ninja) or cpp_extension's error (a failed compile)."""
    src = source_dir()
    if src is None:
        raise BuildUnavailable("the installed package holds no C++ sources (csrc); reinstall it with: "
                               "pip install --force-reinstall --no-deps timescale_kernels")
    cflags = compile_flags()
    key_dir = cache_root() / cache_key(src, cflags)
    if not (key_dir / f"{LIBRARY}.so").is_file():
        reason = missing_tool()  # asked before anything is written: no compiler leaves no trace
        if reason:
            raise BuildUnavailable(reason)
    return cached_library(key_dir, lambda tmp: _compile(tmp, src, cflags), torch.ops.load_library)
