"""The `timescale-kernels` command (also `python -m timescale_kernels.cli`).

    timescale-kernels train --task parity --curriculum multi --preset quick --out runs/multi
    timescale-kernels train --resume runs/multi            # continue a stopped or killed run
    timescale-kernels demo --out demo_out                  # multi- against single-head, with a report
    timescale-kernels score CHECKPOINT                     # accuracy per N of ours or the study's file
    timescale-kernels analyze runs/multi                   # the study's analyses of every checkpoint
    timescale-kernels report runs/multi runs/single --out report.md
    timescale-kernels retrain CKPT_A CKPT_B --N 12 --epochs 20 --out retrain_out   # learn a new N
    timescale-kernels info                                  # versions, backends, CPU kernel, GPU

Bad input ends with one line on stderr and exit status 2; Ctrl-C during training keeps the last
completed epoch, writes the plots and exits with 130.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .progress import tqdm

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130

# Settings that map one to one onto RunConfig fields (flag name = field name with dashes).
_INT_FLAGS = ("seed", "hidden_size", "batch_size", "steps_per_epoch", "test_batches", "max_epochs", "target_N",
              "n_start", "window", "forget", "threads")
_FLOAT_FLAGS = ("lr", "momentum", "clip", "time_budget", "threshold")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _fail(message: str):
    sys.stderr.write(f"timescale-kernels: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from .curricula import REGISTRY as CURRICULA
    from .experiments.config import PRESETS
    from .models import CORES
    from .ops import BACKENDS, NONLINEARITIES, PLACEMENTS
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="paper: the study's settings (the default); quick: small enough for a CPU. Explicit flags win.")
    _add_task_flag(p)
    p.add_argument("--curriculum", choices=tuple(CURRICULA),
                   help="; ".join(f"{c.name}: {c.description}" for c in CURRICULA.values()))
    p.add_argument("--model", choices=CORES)
    for name in _INT_FLAGS:
        if name != "seed":
            p.add_argument("--" + name.replace("_", "-"), type=int, dest=name)
    p.add_argument("--seed", type=int, nargs="+", metavar="SEED",
                   help="one seed (default 0), or several: they train together as one ensemble into OUT/seedS, as a sweep names its runs")
    for name in _FLOAT_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), type=float, dest=name)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    tau = p.add_mutually_exclusive_group()
    tau.add_argument("--learn-tau", dest="learn_tau", action="store_const", const=True, default=None)
    tau.add_argument("--fixed-tau", dest="learn_tau", action="store_const", const=False,
                     help="keep tau at its initial value (the study's fixed case: --fixed-tau --tau-init 1 1)")
    p.add_argument("--tau-init", nargs=2, type=float, metavar=("LOW", "HIGH"))
    p.add_argument("--nonlinearity", choices=NONLINEARITIES)
    p.add_argument("--placement", choices=PLACEMENTS)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", choices=BACKENDS)


def _add_task_flag(p: argparse.ArgumentParser, help_suffix: str = "") -> None:
    from .tasks import REGISTRY as TASKS
    p.add_argument("--task", choices=tuple(TASKS),
                   help="; ".join(f"{t.name}: {t.description}" for t in TASKS.values()) + help_suffix)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train one network (or one per seed, together) under one curriculum")
    train.add_argument("--out", type=Path, help="the run directory to create")
    train.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its last epoch")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    _add_train_flags(train)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="multi-head against single-head parity on a CPU, with a report")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--budget", type=float, default=600.0, help="seconds for the whole demo (default 600)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--hidden-size", type=int, dest="hidden_size")
    demo.add_argument("--device")
    demo.add_argument("--quiet", action="store_true")


def _add_score(sub) -> None:
    score = sub.add_parser("score", help="accuracy per N of a checkpoint (ours or the study's)")
    score.add_argument("checkpoint", type=Path)
    _add_task_flag(score, " (default: the checkpoint's)")
    score.add_argument("--N", type=int, nargs="+", dest="Ns", help="N's to score (default: the trained ones)")
    score.add_argument("--batch-size", type=int, default=256)
    score.add_argument("--batches", type=int, default=1)
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--backend", default="auto")


def _add_analyze(sub) -> None:
    """analyze RUN_DIR: a thin wrapper over timescale_kernels.analysis.analyze_run."""
    analyze = sub.add_parser("analyze", help="the study's analyses of every checkpoint of a run (or of a "
                                             "folder of the study's files)")
    analyze.add_argument("run_dir", type=Path)
    analyze.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/analysis")
    _add_task_flag(analyze, " (default: the run's)")
    analyze.add_argument("--only", nargs="+", default=None, help="checkpoints to analyse in depth (e.g. N2-N11)")
    analyze.add_argument("--device", default=None)
    analyze.add_argument("--seed", type=int, default=0)
    analyze.add_argument("--trials", type=_positive_int, default=10, help="tau_net: bit streams (default 10)")
    analyze.add_argument("--steps", type=_positive_int, default=100_000,
                         help="tau_net: steps per stream after the burn-in (default 100000)")
    analyze.add_argument("--burn-in", type=_nonnegative_int, default=500, help="default 500")
    analyze.add_argument("--max-lag", type=_positive_int, default=30, help="lags fitted (default 30)")
    analyze.add_argument("--study-tau-net", action=argparse.BooleanOptionalAction, default=True,
                         help="also fit tau_net with the study's estimator (curve_fit from the middle of its "
                              "bounds), recorded as tau_net_study (default: on)")
    analyze.add_argument("--ablate-k", type=_positive_int, default=10,
                         help="neurons silenced from each end of the tau order (default 10)")
    analyze.add_argument("--perturb-trials", type=_positive_int, default=5, help="default 5")
    analyze.add_argument("--study-measures", action=argparse.BooleanOptionalAction, default=True,
                         help="also measure ablation and perturbation as the study does (in-time stream, "
                              "chance-corrected), recorded as ablation_study and perturbation_study (default: on)")
    analyze.add_argument("--study-trials", type=_positive_int, default=10,
                         help="streams per study measurement (default 10, the study's)")
    analyze.add_argument("--eval-batches", type=_positive_int, default=10, help="batches per accuracy (default 10)")
    analyze.add_argument("--batch-size", type=_positive_int, default=256, help="default 256")
    analyze.add_argument("--backend", choices=("auto", "reference", "cpu", "triton"), default=None)
    analyze.add_argument("--quiet", action="store_true")


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="one Markdown report over runs (analysed ones in full)")
    report.add_argument("run_dirs", type=Path, nargs="+")
    report.add_argument("--out", type=Path, required=True, help="the Markdown file to write")


def _add_retrain(sub) -> None:
    """retrain CHECKPOINT...: a thin wrapper over experiments.retrain.compare_retraining."""
    from .experiments.config import PRESETS
    from .ops import BACKENDS
    retrain = sub.add_parser("retrain", help="train trained networks single-head on a new N and compare "
                                             "accuracy per epoch")
    retrain.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT",
                         help="our checkpoints or the study's rnn_N*_N*.pt files (only read)")
    retrain.add_argument("--N", type=int, required=True, dest="N", help="the new memory length")
    retrain.add_argument("--epochs", type=int, required=True)
    retrain.add_argument("--out", type=Path, required=True, help="the folder for retrain.{json,md}, accuracy.png")
    retrain.add_argument("--preset", choices=tuple(PRESETS),
                         help="training settings (default: the study's); explicit flags win")
    _add_task_flag(retrain, " (default: the first checkpoint's)")
    for name in ("seed", "batch_size", "steps_per_epoch", "test_batches", "threads"):
        retrain.add_argument("--" + name.replace("_", "-"), type=int, dest=name)
    for name in ("lr", "momentum", "threshold"):
        retrain.add_argument("--" + name, type=float, dest=name)
    retrain.add_argument("--reuse-head", action="store_true",
                         help="start from the head of the largest trained N <= N (default: a fresh head)")
    retrain.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    retrain.add_argument("--backend", choices=BACKENDS, default="auto")
    retrain.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="timescale-kernels", description="Leaky RNNs with trainable time constants on memory tasks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in _commands():
        command.add_parser(sub)
    return parser


def _messages(quiet: bool):
    """(progress bars?, log function or None): bars on a terminal only; messages unless --quiet."""
    if quiet:
        return False, None
    return sys.stderr.isatty(), lambda msg: tqdm.write(msg, file=sys.stderr)


def _train(args) -> int:
    from .experiments.train_cli import train
    fields = _INT_FLAGS + _FLOAT_FLAGS + ("task", "curriculum", "model", "nesterov", "learn_tau", "tau_init",
                                          "nonlinearity", "placement", "device", "backend")
    overrides = {k: getattr(args, k) for k in fields if k != "seed" and getattr(args, k) is not None}
    progress, log = _messages(args.quiet)
    summaries = train(args, overrides, progress, log)
    if log:
        for seed, summary in summaries.items():
            log(f"seed {seed}: stopped ({summary['stop_reason']}) after {summary['epochs']} epochs, "
                f"{summary['wall_time'] / 60:.1f} min: highest N passed = {summary['N_reached']}")
    return EXIT_INTERRUPTED if any(s["stop_reason"] == "interrupted" for s in summaries.values()) else 0


def _demo(args) -> int:
    from .experiments.demo import run_demo
    progress, log = _messages(args.quiet)
    if args.budget <= 0:
        _fail(f"demo: --budget expected seconds > 0; got {args.budget}")
    overrides = {k: getattr(args, k) for k in ("hidden_size", "device") if getattr(args, k) is not None}
    report = run_demo(args.out, budget=args.budget, seed=args.seed, progress=progress, log=log, **overrides)
    if log:
        log(f"demo: report written to {report}")
    return 0


def _score(args) -> int:
    from .experiments.scoring import load_any_checkpoint, score
    if args.batch_size < 1 or args.batches < 1:
        _fail("score: --batch-size and --batches expected integers >= 1")
    model, meta = load_any_checkpoint(args.checkpoint, backend=args.backend)
    head_for_N = meta.get("head_for_N", {})
    Ns = args.Ns or meta.get("Ns") or sorted(head_for_N)
    if not Ns:
        _fail(f"score: {args.checkpoint} does not say which N's it was trained on; pass --N")
    if any(n < 1 for n in Ns):
        _fail(f"score: --N expected integers >= 1; got {Ns}")
    # N's the network was not trained on are read by the head of the nearest lower trained N (head 0 if none).
    heads = {n: head_for_N.get(n, max((h for m, h in head_for_N.items() if m <= n), default=0)) for n in Ns}
    untrained = [n for n in Ns if n not in head_for_N]
    if untrained and head_for_N:
        sys.stderr.write(f"timescale-kernels: note: N = {', '.join(map(str, untrained))} not trained (trained: "
                         f"{', '.join(map(str, sorted(head_for_N)))}); each is read with the head of the nearest "
                         "lower trained N\n")
    acc = score(model, args.task or meta.get("task", "parity"), heads, batch_size=args.batch_size,
                batches=args.batches, seed=args.seed)
    print(json.dumps({"checkpoint": str(args.checkpoint), "accuracy": {str(n): a for n, a in acc.items()},
                      "head_for_N": {str(n): h for n, h in heads.items()}, "untrained": untrained}))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text}")
    return value


def _analyze(args) -> int:
    from .analysis import analyze_run
    only = [int(o) if o.isdigit() else o for o in args.only] if args.only else None
    try:
        analyze_run(args.run_dir, out_dir=args.out, task=args.task, only=only, device=args.device,
                    seed=args.seed, trials=args.trials, steps=args.steps, burn_in=args.burn_in,
                    max_lag=args.max_lag, ablate_k=args.ablate_k, perturb_trials=args.perturb_trials,
                    eval_batches=args.eval_batches, batch_size=args.batch_size, backend=args.backend,
                    study_tau_net=args.study_tau_net, study_measures=args.study_measures,
                    study_trials=args.study_trials, progress=not args.quiet and sys.stderr.isatty(),
                    log=None if args.quiet or sys.stderr.isatty() else lambda line: print(line, file=sys.stderr))
    except FileNotFoundError as err:
        _fail(str(err))
    if not args.quiet:
        print(f"analysis written to {args.out or args.run_dir / 'analysis'}", file=sys.stderr)
    return 0


def _report(args) -> int:
    from .analysis import write_report
    try:
        path = write_report(args.run_dirs, args.out)
    except FileNotFoundError as err:
        _fail(str(err))
    print(f"report written to {path}", file=sys.stderr)
    return 0


def _retrain(args) -> int:
    from .experiments.retrain import compare_retraining
    _, log = _messages(args.quiet)
    settings = {k: getattr(args, k) for k in ("seed", "batch_size", "steps_per_epoch", "test_batches", "threads",
                                              "lr", "momentum", "threshold", "device")}
    summary = compare_retraining(args.checkpoints, args.N, args.epochs, args.out, task=args.task,
                                 reuse_head=args.reuse_head, backend=args.backend, preset=args.preset, log=log,
                                 **settings)
    if log:
        for r in summary["networks"]:
            reached = r["epochs_to_threshold"]
            log(f"retrain: {r['label']} ({r['pretraining']}): "
                + (f"passed N = {args.N} after {reached} epochs" if reached is not None else "did not pass")
                + (f", final accuracy {r['final_accuracy']:.3f}" if r["final_accuracy"] is not None else ""))
        log(f"retrain: results written to {args.out}")
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


class Command(NamedTuple):
    """A subcommand: add_parser(subparsers) registers its flags, run(args) does it and returns the exit
    status; a ValueError from run ends with one line and status 2 when usage_errors is True."""
    name: str
    add_parser: Callable
    run: Callable
    usage_errors: bool = True


def _commands() -> tuple[Command, ...]:
    """The subcommands in the order --help lists them; one more subcommand is one more line here."""
    return (Command("train", _add_train, _train, usage_errors=False),
            Command("demo", _add_demo, _demo, usage_errors=False),
            Command("score", _add_score, _score),
            Command("analyze", _add_analyze, _analyze),
            Command("report", _add_report, _report),
            Command("retrain", _add_retrain, _retrain),
            Command("sweep", _add_sweep, _sweep),
            Command("info", _add_info, _info))


def _add_info(sub) -> None:
    from . import info
    info.add_arguments(sub.add_parser("info", help="versions, backends, where the CPU kernel came from, the GPU "
                                      "(what a bug report needs); compiles the CPU kernel where it is not cached"))


def _info(args) -> int:
    from . import info
    return info.run(args)


def _add_sweep(sub) -> None:
    from .experiments.sweep import cli as sweep_cli
    sweep_cli.add_parser(sub)


def _sweep(args) -> int:
    from .experiments.sweep import cli as sweep_cli
    return sweep_cli.run(args)


def main(argv=None) -> int:
    """Runs one command; returns 0 (130 after Ctrl-C in training); bad input raises SystemExit(2)."""
    from .checkpoints import CheckpointError
    from .curricula import ConfigError
    from .experiments.rundir import RunDirError
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = ["timescale-kernels", *argv]
    command = next(c for c in _commands() if c.name == args.command)
    try:
        return command.run(args)
    except (ConfigError, RunDirError, CheckpointError) as err:
        _fail(str(err))
    except ValueError as err:  # bad input found deeper, e.g. by the analyses: still one line
        if not command.usage_errors:
            raise
        _fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
