"""Ray's overhead in a sweep: runs per hour of a small grid through Ray against the same runs one after
another in one process.

    python benchmarks/cpu/bench_sweep.py --json benchmarks/results/sweep-cpu-2core.json

Three ways, each from a fresh sweep directory, --repeats times in alternating order (median), wall time from the call to its return (Ray's start,
its workers' imports and its shutdown included):
    serial:   run_sweep(use_ray=False), the runs one after another in this process
    ray-1:    a local Ray with one CPU, so one run at a time, as serial: the difference is Ray's overhead
    ray-all:  a local Ray with every CPU, one run per CPU (what a sweep does by default)
Overhead = (ray-1 - serial) / ray-1. Analyses and the report are left out (they are the same work both
ways). The grid is cpu-small's conditions at a shorter epoch budget.

With --gpu-shares 1 2 4 8 (on a machine with CUDA) it measures instead runs per hour with that many
runs sharing one GPU (gpus_per_run = 1 / k, the CPUs split between them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from timescale_kernels.experiments.sweep.driver import run_sweep  # noqa: E402
from timescale_kernels.experiments.sweep.spec import SweepSpec, preset_spec  # noqa: E402


def grid(epochs: int, seeds: int, gpu_share: int | None = None) -> SweepSpec:
    values = preset_spec("cpu-small")
    values["seeds"] = list(range(seeds))
    values["settings"] = {**values["settings"], "max_epochs": epochs}
    values["analyze"] = {"skip": True}
    if gpu_share is not None:
        values.update(gpus_per_run=1.0 / gpu_share, cpus_per_run=max(1, (os.cpu_count() or 1) // gpu_share))
        values["settings"]["device"] = "cuda"
    return SweepSpec.from_dict(values).validate()


def gpu_sharing(shares, epochs: int, seeds: int) -> dict:
    """{k: runs per hour with k runs on one GPU}."""
    out = {}
    for k in shares:
        spec = grid(epochs, seeds, k)
        out[str(k)] = len(spec.runs()) * 3600 / timed(spec, num_gpus=1)
    return out


def timed(spec: SweepSpec, **kwargs) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        start = time.perf_counter()
        runs = run_sweep(spec, out, progress=False, report=False, **kwargs)
        wall = time.perf_counter() - start
        assert all(r["status"] == "done" for r in runs.values()), runs
        return wall
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per condition (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="sweeps per way, in alternating order (default 2)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--gpu-shares", type=int, nargs="+", help="runs sharing one GPU, e.g. 1 2 4 8 (needs CUDA)")
    args = p.parse_args(argv)
    if args.gpu_shares:
        result = {"gpu_runs_per_hour": gpu_sharing(args.gpu_shares, args.epochs, args.seeds)}
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    spec = grid(args.epochs, args.seeds)
    runs = len(spec.runs())
    cpus = os.cpu_count() or 1
    ways = {"serial": {"use_ray": False}, "ray-1": {"num_cpus": 1}, "ray-all": {"num_cpus": cpus}}
    order = list(ways)
    samples = {k: [] for k in ways}
    for i in range(args.repeats):  # ABC CBA ...: a drift in the machine's load falls on every way alike
        for name in (order if i % 2 == 0 else order[::-1]):
            samples[name].append(timed(spec, **ways[name]))
    walls = {k: statistics.median(v) for k, v in samples.items()}
    result = {"runs": runs, "epochs_per_run": args.epochs, "cpus": cpus, "wall_s": walls, "samples_s": samples,
              "runs_per_hour": {k: runs * 3600 / w for k, w in walls.items()},
              "ray_overhead": (walls["ray-1"] - walls["serial"]) / walls["ray-1"],
              "machine": platform.processor() or platform.machine(), "load_average": os.getloadavg()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
