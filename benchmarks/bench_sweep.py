"""Ray's overhead in a sweep: runs per hour of a small grid through Ray against the same runs one after
another in one process.

    python benchmarks/bench_sweep.py --json benchmarks/results/sweep-cpu-2core.json

Three ways, each from a fresh sweep directory, wall time from the call to its return (Ray's start,
its workers' imports and its shutdown included):
    serial:   run_sweep(use_ray=False), the runs one after another in this process
    ray-1:    a local Ray with one CPU, so one run at a time, as serial: the difference is Ray's overhead
    ray-all:  a local Ray with every CPU, one run per CPU (what a sweep does by default)
Overhead = (ray-1 - serial) / ray-1. Analyses and the report are left out (they are the same work both
ways). The grid is cpu-small's conditions at a shorter epoch budget.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timescale_kernels.experiments.sweep import run_sweep  # noqa: E402
from timescale_kernels.experiments.sweep_spec import SweepSpec, preset_spec  # noqa: E402


def grid(epochs: int, seeds: int) -> SweepSpec:
    values = preset_spec("cpu-small")
    values["seeds"] = list(range(seeds))
    values["settings"] = {**values["settings"], "max_epochs": epochs}
    values["analyze"] = {"skip": True}
    return SweepSpec.from_dict(values).validate()


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
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    spec = grid(args.epochs, args.seeds)
    runs = len(spec.runs())
    cpus = os.cpu_count() or 1
    walls = {"serial": timed(spec, use_ray=False),
             "ray-1": timed(spec, num_cpus=1),
             "ray-all": timed(spec, num_cpus=cpus)}
    result = {"runs": runs, "epochs_per_run": args.epochs, "cpus": cpus, "wall_s": walls,
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
