"""The C++ CPU kernel compiled at first use: where the cache lives, what its key covers, the lock
that lets two processes start at once, and the sources a wheel ships. The compile itself (a minute
or more) is exercised by `make test-install` in a fresh environment; here a stand-in build (a file
written after a pause) runs the same cache protocol."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from timescale_kernels.ops import cpu_build, cpu_flags

REPO = Path(__file__).resolve().parents[1]

# A child process that runs cached_library on KEY_DIR with a build that waits (up to PAUSE seconds)
# until another child is about to ask for the lock, then writes its pid; it prints how the library
# came to it, the pid found in it and how many times load() was called.
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from timescale_kernels.ops import cpu_build
    key_dir, pause = Path(sys.argv[1]), float(sys.argv[2])
    def build(tmp):
        (key_dir.parent / f"started-{os.getpid()}").touch()
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not any(
                p.name != f"ready-{os.getpid()}" for p in key_dir.parent.glob("ready-*")):
            time.sleep(0.05)
        time.sleep(1.0)  # the other child's next step is the flock
        out = tmp / "lib.so"
        out.write_text(str(os.getpid()))
        return out
    loaded = []
    key_dir.parent.mkdir(parents=True, exist_ok=True)
    (key_dir.parent / f"ready-{os.getpid()}").touch()
    path, how = cpu_build.cached_library(key_dir, build, loaded.append)
    print(how, path.read_text(), len(loaded))
""")


def _child(key_dir: Path, pause: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(key_dir), str(pause)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_cache_root_follows_the_override_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv(cpu_build.CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cpu_build.cache_root() == tmp_path / "home" / ".cache" / "timescale_kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cpu_build.cache_root() == tmp_path / "xdg" / "timescale_kernels"
    monkeypatch.setenv(cpu_build.CACHE_ENV, str(tmp_path / "mine"))
    assert cpu_build.cache_root() == tmp_path / "mine"


def test_cache_key_changes_with_torch_sources_and_flags(monkeypatch, tmp_path):
    src = tmp_path / "csrc"
    src.mkdir()
    for path in cpu_build.source_dir().iterdir():
        (src / path.name).write_bytes(path.read_bytes())
    flags = cpu_build.compile_flags()
    key = cpu_build.cache_key(src, flags)
    assert key == cpu_build.cache_key(src, flags) and key.startswith(f"torch-{torch.__version__}-py")
    assert cpu_build.cache_key(src, flags[:-1]) != key  # other flags (e.g. no -mavx2 elsewhere)
    (src / "loops.h").write_text((src / "loops.h").read_text() + "\n// edited\n")
    edited = cpu_build.cache_key(src, flags)
    assert edited != key
    monkeypatch.setattr(torch, "__version__", "9.9.9")  # a torch upgrade
    assert cpu_build.cache_key(src, flags) not in (key, edited)
    monkeypatch.setattr(torch.version, "git_version", "0" * 40)


def test_compile_args_follow_the_cpu_and_the_portable_switch(monkeypatch, tmp_path):
    monkeypatch.delenv(cpu_flags.PORTABLE_ENV, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_flags.cpu_flags(str(info)) == {"fpu", "sse2", "avx2", "fma"}
    assert "-mavx2" in cpu_flags.compile_args(frozenset({"avx2", "fma"}))
    assert "-mavx2" not in cpu_flags.compile_args(frozenset({"avx2"}))
    assert cpu_flags.cpu_flags(str(tmp_path / "absent")) == frozenset()
    monkeypatch.setenv(cpu_flags.PORTABLE_ENV, "1")
    assert "-mavx2" not in cpu_flags.compile_args(frozenset({"avx2", "fma"}))


def test_the_checkout_reads_the_repository_sources():
    assert cpu_build.source_dir() in (REPO / "csrc", REPO / "timescale_kernels" / "csrc")
    assert (cpu_build.source_dir() / "leaky_rnn.cpp").is_file()


def test_two_processes_at_once_build_once_and_both_load(tmp_path):
    key_dir = tmp_path / "cache" / "key"
    first = _child(key_dir, 120.0)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "cache").glob("started-*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the second starts while the first is building
    second = _child(key_dir, 120.0)
    results = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [err for _, err in results]
    hows = sorted(out.split()[0] for out, _ in results)
    assert hows == ["compiled", "waited"], results
    assert len(list((tmp_path / "cache").glob("started-*"))) == 1  # one build only
    assert {out.split()[1] for out, _ in results} == {str(first.pid)}  # both read the first one's library
    assert all(out.split()[2] == ("1" if out.startswith("waited") else "0") for out, _ in results)
    assert "waiting for another process compiling the C++ CPU kernel" in results[1][1]
    assert sorted(p.name for p in key_dir.iterdir()) == ["lock", f"{cpu_build.LIBRARY}.so"]
    loaded = []
    assert cpu_build.cached_library(key_dir, lambda tmp: pytest.fail("built again"), loaded.append)[1] == "cache"
    assert loaded == [key_dir / f"{cpu_build.LIBRARY}.so"]


def test_a_killed_build_blocks_no_one_and_leaves_nothing_at_the_final_path(tmp_path):
    key_dir = tmp_path / "cache" / "key"
    stuck = _child(key_dir, 600.0)
    deadline = time.monotonic() + 60
    while not list(key_dir.glob("build-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(key_dir.glob("build-*")), stuck.stderr.read() if stuck.poll() is not None else "no build started"
    os.kill(stuck.pid, signal.SIGKILL)
    stuck.wait(timeout=30)
    assert not (key_dir / f"{cpu_build.LIBRARY}.so").exists()

    def build(tmp):
        (tmp / "lib.so").write_text("fresh")
        return tmp / "lib.so"
    path, how = cpu_build.cached_library(key_dir, build, lambda p: None)
    assert how == "compiled" and path.read_text() == "fresh"
    assert not list(key_dir.glob("build-*"))  # the killed build's directory was cleared


def test_a_failed_build_leaves_no_library_and_the_next_one_builds(tmp_path):
    key_dir = tmp_path / "key"

    def failing(tmp):
        (tmp / "half.o").write_text("partial")
        raise RuntimeError("Error building extension: compiler says no")
    with pytest.raises(RuntimeError, match="compiler says no"):
        cpu_build.cached_library(key_dir, failing, lambda p: None)
    assert sorted(p.name for p in key_dir.iterdir()) == ["lock"]


def test_missing_tools_are_named_with_the_command_that_fixes_them(monkeypatch):
    monkeypatch.delenv(cpu_build.JIT_ENV, raising=False)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert "sudo apt-get install g++" in cpu_build.missing_tool()
    monkeypatch.setenv(cpu_build.JIT_ENV, "0")
    assert f"{cpu_build.JIT_ENV}=0" in cpu_build.missing_tool()
    monkeypatch.delenv(cpu_build.JIT_ENV)
    monkeypatch.setenv("CXX", sys.executable)  # any executable stands in for the compiler here
    monkeypatch.setattr(cpu_build, "_ninja_dir", lambda: None)
    assert cpu_build.missing_tool() == "ninja is not installed; install it with: pip install ninja"


def test_without_tools_nothing_is_written_to_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_build.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(cpu_build.BuildUnavailable, match="no C\\+\\+ compiler"):
        cpu_build.load_or_compile()
    assert not (tmp_path / "cache").exists()


def test_a_built_package_carries_the_sources(tmp_path):
    """setup.py's build_py copies csrc/ into the package, as every wheel then ships it."""
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TIMESCALE_KERNELS_NO_EXT": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped = tmp_path / "timescale_kernels" / "csrc"
    expected = sorted(p.name for p in (REPO / "csrc").iterdir() if p.suffix in (".cpp", ".h"))
    assert sorted(p.name for p in shipped.iterdir()) == expected
    assert all((shipped / name).read_bytes() == (REPO / "csrc" / name).read_bytes() for name in expected)
    assert (tmp_path / "timescale_kernels" / "ops" / "cpu_flags.py").is_file()


class _Loaded:
    __file__ = "/site/timescale_kernels/_C.so"


def _find_with(monkeypatch, prebuilt, built):
    """cpu._find_kernel with the prebuilt import and the cache replaced: prebuilt is a module or an
    exception to raise, built a (path, how) pair or an exception. Returns (KernelSource, cache calls)."""
    from timescale_kernels.ops import cpu
    calls = []

    def import_module(name):
        assert name == cpu.PREBUILT
        if isinstance(prebuilt, BaseException):
            raise prebuilt
        return prebuilt

    def load_or_compile():
        calls.append(1)
        if isinstance(built, BaseException):
            raise built
        return built
    monkeypatch.setattr(cpu.importlib, "import_module", import_module)
    monkeypatch.setattr(cpu_build, "load_or_compile", load_or_compile)
    return cpu._find_kernel(), calls


def test_a_prebuilt_extension_that_loads_is_used_first(monkeypatch):
    source, calls = _find_with(monkeypatch, _Loaded(), AssertionError("not reached"))
    assert (source.origin, source.path, source.error, calls) == ("prebuilt", _Loaded.__file__, "", [])


def test_a_stale_prebuilt_extension_gives_way_to_the_cache(monkeypatch):
    stale = OSError("_C.so: undefined symbol: _ZN3c104impl8GPUTrace")  # built against another torch
    source, calls = _find_with(monkeypatch, stale, (Path("/cache/k/timescale_kernels_cpu.so"), "compiled"))
    assert source.origin == "compiled" and source.error == "" and calls == [1]
    assert "did not load" in source.prebuilt and "undefined symbol" in source.prebuilt
    source, _ = _find_with(monkeypatch, ModuleNotFoundError("No module named 'timescale_kernels._C'"),
                           (Path("/cache/k/timescale_kernels_cpu.so"), "cache"))
    assert (source.origin, source.prebuilt) == ("cache", "no prebuilt timescale_kernels._C")


def test_a_failed_compile_is_reported_by_the_end_of_its_log(monkeypatch):
    log = "\n".join(f"line {i}" for i in range(40)) + "\nloops.h:12: error: expected ';'"
    source, _ = _find_with(monkeypatch, ModuleNotFoundError("no"), RuntimeError(log))
    assert source.origin == "" and "compiling it failed" in source.error
    assert "loops.h:12: error" in source.error and "line 0 " not in source.error
    assert cpu_build.VERBOSE_ENV + "=1" in source.error
    source, _ = _find_with(monkeypatch, ModuleNotFoundError("no"), cpu_build.BuildUnavailable("no C++ compiler: x"))
    assert source.error == "no prebuilt timescale_kernels._C, and no C++ compiler: x"
