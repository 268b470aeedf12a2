"""Sweeps: grids of runs (conditions x seeds) trained and analysed on Ray, then one report.

    spec.py       what a sweep asks for: the grid, its presets, a TOML/JSON file, validation
    driver.py     run_sweep: the sweep directory, its record (sweep.json), runs here or on Ray
    run.py        one run start to end (train or resume, then analyse): what a Ray task runs
    ray_tasks.py  the Ray session: a local Ray of the sweep's own, or a cluster
    procs.py      the sweep's lock and the local Ray's processes (ended after a killed driver)
    results.py    the runs' results gathered into rows; report.py and study.py write the report
    cli.py        `timescale-kernels sweep`
"""
from .driver import SweepError, load_spec, run_sweep
from .spec import SweepSpec, SweepSpecError

__all__ = ["SweepError", "SweepSpec", "SweepSpecError", "load_spec", "run_sweep"]
