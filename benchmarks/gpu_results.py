"""What the GPU command's groups share: the shapes (GPU and dry run), timing, peak memory, and the
results file, rewritten atomically after every measurement so that a run cut short keeps what it
measured."""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

PRECISIONS = ("fp32", "tf32x3", "tf32", "bf16")
FAMILIES = ("default", "persistent")

# What each group measures, on a GPU and in the CPU rehearsal (--dry-run: tiny shapes, the
# Triton interpreter, torch.compile with its "eager" backend).
SETTINGS = {
    "gpu": {"device": "cuda", "shapes": [(400, 256, 500), (100, 256, 500)], "analysis": (100_500, 10, 500),
            "analysis_probe_steps": 10_050, "hidden": 500, "batch": 256, "epoch_Ns": (30, 100),
            "launch_Ns": (10, 100), "compile_backend": "inductor", "train_steps": 8,
            "ensembles": [(64, (100, 64, 64)), (4, (100, 256, 500))]},
    "dry-run": {"device": "cpu", "shapes": [(4, 16, 16), (2, 16, 16)], "analysis": (8, 2, 16),
                "analysis_probe_steps": 4, "hidden": 16, "batch": 8, "epoch_Ns": (3, 4), "launch_Ns": (3, 4),
                "compile_backend": "eager", "train_steps": 1, "ensembles": [(3, (3, 16, 16))]},
}


def settings(dry_run: bool) -> dict:
    return SETTINGS["dry-run" if dry_run else "gpu"]


def load(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_atomic(path: Path, text: str) -> None:
    """Write then rename: a reader (or a run cut off mid-write) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record(path: Path, keys: list[str], value) -> None:
    """results[keys[0]][keys[1]]... = value in the JSON at path, rewritten atomically."""
    data = load(path)
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    write_atomic(path, json.dumps(data, indent=1, default=str))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: str, grads=None) -> float:
    """Median milliseconds of fn(): triton's do_bench on CUDA, a few wall-clock runs on the CPU.
    On CUDA the repetition time is scaled to the call (5 calls' worth, 50 ms to 1 s), so that a slow
    call is still the median of several runs (do_bench's fixed 50 ms gives one run of a 50 ms call)."""
    if device == "cuda":
        import triton.testing
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        rep = min(1000.0, max(50.0, 5e3 * (time.perf_counter() - start)))
        return triton.testing.do_bench(fn, warmup=10, rep=rep, grad_to_none=grads, return_mode="median")
    times = []
    for _ in range(1 if os.environ.get("TRITON_INTERPRET") == "1" else 3):  # the interpreter: seconds per call
        for g in grads or ():
            g.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def peak_memory(device: str, out: dict, key: str):
    """out[key] = MB allocated at the peak inside the block beyond what was allocated before it (CUDA)."""
    if device != "cuda":
        yield
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    yield
    sync(device)
    out[key] = round((torch.cuda.max_memory_allocated() - before) / 2 ** 20, 1)


@contextlib.contextmanager
def family_pinned(family: str | None):
    """Inside, every triton call runs the kernel family `family` ("default" or "persistent"; None:
    no pin): the environment variable triton_recurrence.FAMILY_ENV, which each forward and each
    backward reads when it runs, restored afterwards. Wrap the backward too: an autograd backward
    outside the block would choose its family afresh."""
    if family is None:
        yield
        return
    from timescale_kernels.ops import triton_recurrence as tr
    saved = os.environ.get(tr.FAMILY_ENV)
    os.environ[tr.FAMILY_ENV] = family
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(tr.FAMILY_ENV, None)
        else:
            os.environ[tr.FAMILY_ENV] = saved


def call_with_family(fn, family: str, *args, **kwargs):
    """fn(*args, **kwargs) with the triton backend's kernel family pinned ("default" or "persistent"):
    through fn's family= keyword where it takes one (triton_recurrence.forward / backward), else
    inside family_pinned (leaky_rnn and the layers above it; a backward run later is not pinned)."""
    if "family" in inspect.signature(fn).parameters:
        return fn(*args, family=family, **kwargs)
    with family_pinned(family):
        return fn(*args, **kwargs)


def short_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).strip()[:300]}"


def deadline_passed(deadline: float | None, reserve_s: float = 0.0) -> bool:
    return deadline is not None and time.monotonic() + reserve_s > deadline
