"""`timescale-kernels train`: one network into --out, or several seeds as one ensemble.

    train --seed 0 --out DIR             DIR is the run directory (rundir.py)
    train --seed 0 1 2 3 --out DIR       the seeds train together (ensemble.py) into DIR/seed0 ... (as a sweep names its runs)
    train --resume DIR                   either layout: a run directory, or a folder of seed* runs

Every run directory is a lone run's: `train --resume DIR/seed1` also goes on alone. Bad input
raises ConfigError or RunDirError before anything is written (the command line prints one line).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..curricula import ConfigError
from ..files import atomic_write_json, first_line, writable_dir
from .config import PRESETS, RunConfig, make_config
from .ensemble import EnsembleTrainer, align_epochs, check_one_shape
from .rundir import RunDir, RunDirError, check_resume_config, run_lock
from .trainer import Trainer

SEED_DIR = "seed{}"  # as a sweep names its runs: runs/CONDITION/seed{S}


def seed_dirs(path) -> list[Path]:
    """The seed* run directories of an ensemble's folder, by seed."""
    found = [p for p in Path(path).glob("seed*") if p.is_dir() and p.name[4:].isdigit()
             and (p / "config.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[4:]))


def check_seeds(seeds) -> list[int]:
    """seeds as a list, or ConfigError for a repeated one."""
    seeds = list(seeds)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"seed: each seed once; got {', '.join(map(str, repeated))} more than once in {seeds}")
    return seeds


def resume_trainer(path, args, overrides: dict, held: contextlib.ExitStack, **kwargs) -> Trainer:
    """The Trainer of the run in path, from its last completed epoch, under its saved settings with
    the stop settings of this command; its lock taken (released by held)."""
    run_dir = RunDir(path)
    saved = run_dir.read_config()
    held.enter_context(run_lock(run_dir.path))  # before the state is read: another train may be writing it
    wanted = RunConfig.from_dict({**saved.to_dict(), **(PRESETS[args.preset] if args.preset else {}),
                                  **overrides}).validate()
    check_resume_config(saved, wanted)
    state = run_dir.load_state()
    if state is None:
        return Trainer(wanted, run_dir, **kwargs)
    try:
        check_resume_config(RunConfig.from_dict(state["config"]), wanted)
        return Trainer.from_state(wanted, state, run_dir, **kwargs)
    except (KeyError, RuntimeError, TypeError) as err:
        raise RunDirError(f"resume: {run_dir.state_path} does not match {run_dir.config_path} "
                          f"({type(err).__name__}: {first_line(err, 160)})") from None


def start_runs(paths, configs, args, held: contextlib.ExitStack, **kwargs) -> list[Trainer]:
    """Fresh Trainers writing into paths; every one is built (and checked) before anything is written."""
    trainers = [Trainer(c, RunDir(p), **kwargs) for p, c in zip(paths, configs)]
    for trainer in trainers:
        writable_dir(trainer.run_dir.path, RunDirError)
        if trainer.run_dir.holds_run() and not args.overwrite:
            trainer.run_dir.prepare_new(False)  # raises: the directory holds a run
    for trainer in trainers:
        held.enter_context(run_lock(trainer.run_dir.path))
        trainer.run_dir.prepare_new(args.overwrite)
        trainer.run_dir.write_config(trainer.config, args.argv)
    return trainers


def write_results(trainer: Trainer) -> None:
    """plots/ and summary.json of a run, whatever happened (a failed plot only warns)."""
    from .plots import write_plots
    try:
        write_plots(trainer.run_dir, trainer.metrics)
    except Exception as err:  # a failed plot must not hide the training result
        sys.stderr.write(f"timescale-kernels: warning: plots not written ({type(err).__name__}: {err})\n")
    atomic_write_json(trainer.run_dir.path / "summary.json", trainer.summary())


def _trainers(args, overrides, held, kwargs) -> list[Trainer]:
    """The Trainers this command runs: resumed, one new run, or one new run per seed."""
    seeds = check_seeds(args.seed or [])
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise ConfigError(f"train: --out {args.out} and --resume {args.resume} name different directories")
        if len(seeds) == 1:  # checked against the saved run's seed, as every other setting
            overrides = {**overrides, "seed": seeds[0]}
        elif seeds:
            raise ConfigError("train: --resume takes the seeds of the runs it finds; got --seed "
                              f"{' '.join(map(str, seeds))}")
        folders = [args.resume] if (args.resume / "config.json").is_file() else seed_dirs(args.resume) or [args.resume]
        trainers = align_epochs([resume_trainer(p, args, overrides, held, **kwargs) for p in folders])
        for trainer in trainers:
            trainer.run_dir.write_config(trainer.config, args.argv)  # a resumed run may carry new stop settings
        return trainers
    if args.out is None:
        raise ConfigError("train: --out DIR is required (or --resume DIR)")
    if len(seeds) <= 1:
        return start_runs([args.out], [make_config(args.preset, **overrides, seed=(seeds or [None])[0])], args, held,
                          **kwargs)
    configs = [make_config(args.preset, **overrides, seed=s) for s in seeds]
    return start_runs([args.out / SEED_DIR.format(s) for s in seeds], configs, args, held, **kwargs)


def train(args, overrides: dict, progress: bool, log) -> dict:
    """Runs the command; returns {seed: summary}. Plots and summary.json are written for every run
    whatever happens (a network of an ensemble writes them when it stops)."""
    with contextlib.ExitStack() as held:  # the run directories' locks, released however the runs end
        trainers = _trainers(args, overrides, held, {"progress": progress, "log": log})
        check_one_shape([t.config for t in trainers])
        written = set()
        if len(trainers) > 1 and log is not None:
            for trainer in trainers:  # each network's messages name its seed
                trainer.log = lambda msg, seed=trainer.config.seed: log(f"seed {seed}: {msg}")
        for trainer in trainers:
            if log:
                c = trainer.config
                log(f"{'resuming' if trainer.epoch else 'training'} {c.model} ({c.hidden_size} neurons) on {c.task} "
                    f"with the {c.curriculum} curriculum, seed {c.seed}, from epoch {trainer.epoch} at "
                    f"{trainer.curriculum.describe()}, on {c.device} (backend: {trainer.backend}) -> "
                    f"{trainer.run_dir.path}")

        def finished(trainer):
            write_results(trainer)
            written.add(id(trainer))
        try:
            if len(trainers) == 1:
                summaries = [trainers[0].run()]
            else:
                summaries = EnsembleTrainer(trainers, progress=progress, log=log, on_stop=finished).run()
        finally:
            for trainer in trainers:
                if id(trainer) not in written:
                    write_results(trainer)
    return {t.config.seed: s for t, s in zip(trainers, summaries)}
