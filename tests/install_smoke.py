"""Checks an installed wheel the way a user meets it: `make test-install` builds the sdist and the
wheel with plain commands, installs the wheel into a fresh venv that holds only torch (and the
wheel's own dependencies), and runs this file with that venv's python, with an empty kernel cache
(TIMESCALE_KERNELS_CACHE_DIR):

1. the package comes from the venv, ships its C++ sources and no prebuilt extension;
2. two processes start at once: both get the cpu backend, one compiles the kernel (one line, with
   its time), the other waits for it;
3. a third loads it from the cache without compiling;
4. the cpu backend equals the reference on a small case (outputs and every gradient, fp32 <= 1e-5);
5. `timescale-kernels info` and `python -m timescale_kernels.info` exit 0 and name the cache.

Prints one line per check, with the compile and cached-load times. Exit status 0 when all pass.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Run in a child: the backend it gets, where its kernel came from, the error against the reference.
CHILD = r"""
import json, time
start = time.perf_counter()
import torch
import timescale_kernels as tk
from timescale_kernels.ops import cpu
imported = time.perf_counter()
available = tk.available_backends()
found = time.perf_counter()
g = torch.Generator().manual_seed(0)
T, B, I, H = 7, 3, 2, 13
x = torch.randn(T, B, I, generator=g)
h0 = torch.randn(B, H, generator=g)
params = [torch.randn(H, I, generator=g) * 0.5, torch.randn(H, H, generator=g) / H ** 0.5,
          torch.randn(H, generator=g) * 0.1, torch.randn(H, generator=g) * 0.1, 0.5 + 2.5 * torch.rand(H, generator=g)]
errors = {}
results = {}
for backend in ("reference", "cpu"):
    leaves = [t.clone().requires_grad_() for t in [x, h0, *params]]
    out, h_n = tk.leaky_rnn(*leaves, backend=backend)
    (out.sum() + (h_n ** 2).sum()).backward()
    results[backend] = [out, h_n] + [t.grad for t in leaves]
for name, a, b in zip(["output", "h_n", "input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "tau"],
                      results["cpu"], results["reference"]):
    errors[name] = ((a - b).norm() / b.norm()).item()
source = cpu.kernel_source()
print(json.dumps({"file": tk.__file__, "available": available, "origin": source.origin, "path": source.path,
                  "errors": errors, "import_s": imported - start, "find_s": found - imported}))
"""


def _run_children(count: int, env: dict) -> list[tuple[dict, str]]:
    """Starts count children at once; returns each one's JSON line and stderr."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(count)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"install smoke: a child failed (exit {proc.returncode}):\n{err[-3000:]}")
        results.append((json.loads(out.strip().splitlines()[-1]), err))
    return results


def check_layout() -> None:
    import timescale_kernels
    package = Path(timescale_kernels.__file__).resolve().parent
    if not package.is_relative_to(Path(sys.prefix).resolve()):
        raise SystemExit(f"install smoke: timescale_kernels was imported from {package}, not from {sys.prefix}")
    sources = sorted(p.name for p in (package / "csrc").glob("*.cpp"))
    prebuilt = sorted(p.name for p in package.glob("_C*"))
    if not sources or prebuilt:
        raise SystemExit(f"install smoke: expected C++ sources and no prebuilt extension in {package}; "
                         f"sources {sources}, prebuilt {prebuilt}")
    print(f"install smoke: package at {package}, sources {sources}, no prebuilt extension")


def check_first_use(env: dict, cache: Path) -> dict:
    start = time.perf_counter()
    (first, err1), (second, err2) = _run_children(2, env)
    wall = time.perf_counter() - start
    for facts in (first, second):
        if "cpu" not in facts["available"] or not Path(facts["path"]).is_relative_to(cache):
            raise SystemExit(f"install smoke: no cpu backend from the cache: {facts}\n{err1[-2000:]}\n{err2[-2000:]}")
    lines = [line for line in (err1 + err2).splitlines() if "compiling the C++ CPU kernel for torch" in line]
    if sorted([first["origin"], second["origin"]]) != ["compiled", "waited"] or len(lines) != 1:
        raise SystemExit(f"install smoke: expected one compile and one wait; origins {first['origin']}, "
                         f"{second['origin']}; stderr:\n{err1}\n{err2}")
    print(f"install smoke: two processes at once: one compiled, one waited ({wall:.1f} s for both); {lines[0]}")
    return first


def check_cached(env: dict) -> dict:
    (facts, err), = _run_children(1, env)
    if facts["origin"] != "cache" or "compiling" in err or "cpu" not in facts["available"]:
        raise SystemExit(f"install smoke: expected the cached kernel: {facts}\n{err[-2000:]}")
    print(f"install smoke: from the cache: found and loaded in {facts['find_s']:.3f} s "
          f"(import {facts['import_s']:.1f} s)")
    return facts


def check_equals_reference(facts: dict) -> None:
    worst = max(facts["errors"].values())
    if not worst <= 1e-5:  # NaN fails too
        raise SystemExit(f"install smoke: cpu backend against the reference: {facts['errors']}")
    print(f"install smoke: cpu backend equals the reference (largest relative error {worst:.1e})")


def check_info(env: dict, cache: Path) -> None:
    script = Path(sys.executable).parent / "timescale-kernels"
    for command in ([str(script), "info"], [sys.executable, "-m", "timescale_kernels.info"]):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0 or str(cache) not in proc.stdout:
            raise SystemExit(f"install smoke: {' '.join(command)} exited {proc.returncode}:\n{proc.stdout}\n"
                             f"{proc.stderr[-2000:]}")
    print(f"install smoke: `timescale-kernels info` and `python -m timescale_kernels.info` exit 0:\n{proc.stdout}")


def main() -> int:
    if not os.environ.get("TIMESCALE_KERNELS_CACHE_DIR"):
        raise SystemExit("install smoke: set TIMESCALE_KERNELS_CACHE_DIR to an empty directory")
    cache = Path(os.environ["TIMESCALE_KERNELS_CACHE_DIR"]).resolve()
    if cache.exists() and any(cache.iterdir()):
        raise SystemExit(f"install smoke: the kernel cache {cache} must start empty")
    env = {**os.environ, "TIMESCALE_KERNELS_CACHE_DIR": str(cache)}
    check_layout()
    check_first_use(env, cache)
    check_equals_reference(check_cached(env))
    check_info(env, cache)
    print("install smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
