"""`timescale-kernels sweep`: a grid of training runs on Ray, then their analyses and one report.

    timescale-kernels sweep --preset cpu-small --out sweeps/cpu-small          # this machine
    timescale-kernels sweep --spec grid.toml --out /shared/sweep --address auto   # a Ray cluster
    timescale-kernels sweep --task parity --curriculum single multi --tau trained 1 --seeds 0 1 \\
        --train-preset quick --set hidden_size=64 --set max_epochs=50 --out sweeps/small
    timescale-kernels sweep --out sweeps/cpu-small                               # continue it

Exit status: 0 when every run is done; 1 when some failed (each with its error in DIR/sweep.json);
2 for bad input or a directory another sweep is using (one line on stderr, nothing written); 130
after Ctrl-C (rerun the same command to continue).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..config import PRESETS
    from .spec import SWEEP_PRESETS
    p = subparsers.add_parser("sweep", help="train and analyse a grid of conditions x seeds (on Ray), then report")
    p.add_argument("--out", type=Path, required=True, help="the sweep directory (shared storage on a cluster)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=tuple(SWEEP_PRESETS),
                     help="paper: the study's grid and settings (a GPU cluster); cpu-small: about an hour on 2 cores")
    src.add_argument("--spec", type=Path, help="a TOML or JSON file (see timescale_kernels/experiments/sweep/spec.py)")
    p.add_argument("--task", nargs="+", help="grid axis (replaces the preset's or file's grid)")
    p.add_argument("--curriculum", nargs="+", help="grid axis")
    p.add_argument("--model", nargs="+", help="grid axis: leaky, gru, lstm")
    p.add_argument("--tau", nargs="+", help="grid axis: 'trained' and/or fixed values (leaky only)")
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--train-preset", dest="train_preset", choices=tuple(PRESETS), help="every run's RunConfig preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a RunConfig setting for every run, e.g. hidden_size=64 (repeatable)")
    p.add_argument("--analyze-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an analyze setting, e.g. steps=5000 or only=last (repeatable)")
    p.add_argument("--skip-analysis", action="store_true", help="train only")
    p.add_argument("--cpus-per-run", type=float, dest="cpus_per_run")
    p.add_argument("--gpus-per-run", type=float, dest="gpus_per_run", help="a fraction lets runs share a GPU")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="train up to K networks of one shape together in each Ray task (one run's resources); "
                        "default: chosen from the device and shape (see sweep.json's groups); 1: one network per task")
    p.add_argument("--address", help="join this Ray cluster ('auto', HOST:PORT, ray://...) instead of a local Ray")
    p.add_argument("--num-cpus", type=int, help="the local Ray's CPUs (default: all)")
    p.add_argument("--num-gpus", type=int, help="the local Ray's GPUs (default: all)")
    p.add_argument("--no-ray", action="store_true", help="run the runs one after another in this process")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def _pairs(items, flag) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise _usage(f"{flag}: expected KEY=VALUE; got {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text  # a bare word, e.g. only=last or device=cpu
    return out


def _usage(message):
    from .spec import SweepSpecError
    return SweepSpecError(message)


def build_spec(args):
    """The SweepSpec of the command line: preset or file (or the sweep directory's own), then flags."""
    from .driver import load_spec
    from .spec import SweepSpec, preset_spec, read_spec_file
    flags = [args.task, args.curriculum, args.model, args.tau, args.seeds, args.train_preset, args.cpus_per_run,
             args.gpus_per_run] + args.set + args.analyze_set + [args.skip_analysis or None]
    if args.preset is None and args.spec is None and all(f is None for f in flags):
        spec = load_spec(args.out)
        if args.ensemble is not None:  # checked against the saved sweep's own by run_sweep
            spec.ensemble = args.ensemble
        return spec.validate()
    values = preset_spec(args.preset) if args.preset else (read_spec_file(args.spec) if args.spec else
                                                           {"seeds": [0], "grid": [{}]})  # AXIS_DEFAULTS
    values = dict(values)
    axes = {k: getattr(args, k) for k in ("task", "curriculum", "model") if getattr(args, k)}
    if args.tau:
        axes["tau"] = [t if t == "trained" else _number(t) for t in args.tau]
    if axes:
        values["grid"] = [axes]
    for key in ("seeds", "train_preset", "cpus_per_run", "gpus_per_run", "ensemble"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    values["settings"] = {**values.get("settings", {}), **_pairs(args.set, "--set")}
    values["analyze"] = {**values.get("analyze", {}), **_pairs(args.analyze_set, "--analyze-set")}
    if args.skip_analysis:
        values["analyze"]["skip"] = True
    return SweepSpec.from_dict(values).validate()


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise _usage(f"--tau: expected 'trained' or a number; got {text!r}") from None


def run(args) -> int:
    from ...progress import tqdm
    from .driver import SweepError, run_sweep
    from .procs import SweepLockError
    from .ray_tasks import RayMissingError
    from .spec import SweepSpecError
    log = None if args.quiet else (lambda msg: tqdm.write(msg, file=sys.stderr))
    try:
        spec = build_spec(args)
        runs = run_sweep(spec, args.out, address=args.address, use_ray=not args.no_ray, num_cpus=args.num_cpus,
                         num_gpus=args.num_gpus, progress=not args.quiet and sys.stderr.isatty(), log=log,
                         report=not args.no_report)
    except (SweepSpecError, SweepError, SweepLockError, RayMissingError) as err:
        sys.stderr.write(f"timescale-kernels: error: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"timescale-kernels: sweep interrupted; rerun the same command to continue {args.out}\n")
        return EXIT_INTERRUPTED
    failed = sum(r["status"] == "failed" for r in runs.values())
    if log:
        log(f"sweep: {len(runs) - failed} of {len(runs)} runs done, {failed} failed; see {args.out}")
    return 1 if failed else 0
