"""The runs of one sweep task, start to end: train (or resume, or skip when trained), then analyse.

A task holds one run or a group of runs of one shape, which train together as one ensemble
(experiments/ensemble.py), each leaving it when it stops. It is what a Ray task runs, and what the
one-process mode runs in a loop; it depends on nothing but the run directories, so a retried task
(a lost worker) or a rerun sweep continues where the last attempt stopped: each trainer resumes from
its state.pt bit for bit, a trained run is not trained again, and an analysed one is not analysed
again. A run that cannot start (its directory in the way) fails alone; an error while the group
trains fails the group. Each attempt appends to DIR/sweep_events.jsonl ("start" with the epoch it
starts from, "trained" with the epochs and stop reason, "analysed").
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from ...files import atomic_write_json, first_line
from ..config import RunConfig
from ..rundir import RunDir, check_resume_config

EVENTS_NAME = "sweep_events.jsonl"
FINAL_STOPS = ("target_N", "max_epochs", "time_budget", "finished", "diverged")


def log_event(run_path: Path, event: str, **values) -> None:
    """Appends one JSON line to the run's event log (one short write, so lines never interleave)."""
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
                       **values}) + "\n"
    with open(Path(run_path) / EVENTS_NAME, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_events(run_path) -> list[dict]:
    path = Path(run_path) / EVENTS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trained_summary(run_dir: RunDir) -> dict | None:
    """summary.json of a run whose training ended on a final stop and matches state.pt; else None."""
    try:
        summary = json.loads((run_dir.path / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("stop_reason") not in FINAL_STOPS:
        return None
    metrics = run_dir.read_metrics()
    return summary if metrics and metrics[-1]["epoch"] == summary.get("epochs") else None


def prepare_run(path, config: RunConfig):
    """A trained run's summary (a dict), or the Trainer that goes on with it: resumed from its state
    when it has one, else fresh (clearing a checkpoint written before a kill); its config written and
    a "start" event logged."""
    from ..trainer import Trainer
    run_dir = RunDir(path)
    done = trained_summary(run_dir) if run_dir.holds_run() else None
    if done is not None:
        return done
    state = run_dir.load_state()
    if state is not None:
        check_resume_config(run_dir.read_config(), config)
        trainer = Trainer.from_state(config, state, run_dir)
    else:  # nothing completed yet: start afresh (clears a checkpoint written before a kill)
        trainer = Trainer(config, run_dir)
        run_dir.prepare_new(overwrite=True)
    run_dir.write_config(config, ["timescale-kernels", "sweep"])
    (run_dir.path / "summary.json").unlink(missing_ok=True)
    log_event(run_dir.path, "start", epoch=trainer.epoch)
    return trainer


def finish_training(trainer) -> dict:
    """Plots, summary.json and the "trained" event of a run that stopped; returns its summary."""
    from ..plots import write_plots
    summary = trainer.summary()
    run_dir = trainer.run_dir
    try:
        write_plots(run_dir, trainer.metrics)
    except Exception as err:  # a failed plot must not cost the training result
        sys.stderr.write(f"sweep: plots of {run_dir.path} not written ({type(err).__name__}: {err})\n")
    atomic_write_json(run_dir.path / "summary.json", summary)
    log_event(run_dir.path, "trained", epochs=summary["epochs"], stop_reason=summary["stop_reason"])
    return summary


def train_prepared(prepared: list) -> list[dict]:
    """Trains the prepared runs (prepare_run's results) to a stop; returns their summaries. Runs
    already trained are returned as they are; the others train alone (one) or as one ensemble
    (several, of one shape), each leaving it when it stops. KeyboardInterrupt when interrupted."""
    from ..ensemble import EnsembleTrainer, align_epochs
    pending = align_epochs([t for t in prepared if not isinstance(t, dict)])
    aligned = iter(pending)
    prepared = [t if isinstance(t, dict) else next(aligned) for t in prepared]
    if len(pending) == 1:
        pending[0].run()
    elif pending:
        EnsembleTrainer(pending, on_stop=finish_training).run()
    if any(t.stop_reason == "interrupted" for t in pending):
        raise KeyboardInterrupt
    if len(pending) == 1:
        finish_training(pending[0])
    return [t if isinstance(t, dict) else t.summary() for t in prepared]


def train_run(path, config: RunConfig) -> dict:
    """Trains the run in path under config to a stop, resuming from its state when it has one;
    returns the trainer's summary. A run already trained is returned as it is."""
    return train_prepared([prepare_run(path, config)])[0]


def analyze_settings(analyze: dict, summary: dict, device: str) -> dict | None:
    """analyze_run's keyword arguments for a trained run, or None when there is nothing to analyse."""
    if analyze.get("skip") or summary.get("N_reached") is None:
        return None
    kwargs = {k: v for k, v in analyze.items() if k not in ("only", "skip")}
    only = analyze.get("only", "all")
    if only == "last":
        kwargs["only"] = [summary["N_reached"]]
    elif isinstance(only, list):  # the N's asked for, and always the last one reached
        kwargs["only"] = sorted({n for n in only if n <= summary["N_reached"]} | {summary["N_reached"]})
    return {**kwargs, "device": device, "progress": False}


def analyse(path: Path, config: RunConfig, summary: dict, analyze: dict) -> dict:
    """Analyses a trained run (unless analysed already); returns its result {status: "done", N_reached,
    epochs, stop_reason, wall_time, analysis_seconds, host, pid}."""
    analysis_seconds = None
    kwargs = analyze_settings(analyze, summary, config.device)
    if kwargs is not None and not (path / "analysis" / "analysis.json").is_file():
        from ...analysis.analyze import analyze_run
        start = time.perf_counter()
        analyze_run(path, **kwargs)
        analysis_seconds = time.perf_counter() - start
        log_event(path, "analysed", seconds=analysis_seconds)
    return {"status": "done", "N_reached": summary.get("N_reached"), "epochs": summary.get("epochs"),
            "stop_reason": summary.get("stop_reason"), "wall_time": summary.get("wall_time"),
            "analysis_seconds": analysis_seconds, "host": socket.gethostname(), "pid": os.getpid()}


def run_one(path, config_dict: dict, analyze: dict) -> dict:
    """Trains and analyses one run; returns {status: "done", N_reached, epochs, stop_reason,
    wall_time, analysis_seconds, host, pid}, or the failed result of a run that cannot start."""
    return run_group([path], [config_dict], analyze)[0]


def _prepare(path, config_dict: dict):
    """(path, config, prepare_run's result) of one run; raises what preparing it raises."""
    config = RunConfig.from_dict(config_dict).validate()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path, config, prepare_run(path, config)


def run_group(paths, config_dicts: list, analyze: dict) -> list[dict]:
    """Trains the runs together (an ensemble) and analyses each; returns one result per run. A run
    that cannot start (its directory in the way, a damaged state) or whose analysis raises is failed
    on its own; the others go on. Raises what the training raises."""
    results, prepared = [None] * len(paths), {}
    for i, (path, config_dict) in enumerate(zip(paths, config_dicts)):
        try:
            prepared[i] = _prepare(path, config_dict)
        except Exception as err:
            results[i] = failure(err)
    summaries = train_prepared([item[2] for item in prepared.values()])
    for (i, (path, config, _)), summary in zip(prepared.items(), summaries):
        try:
            results[i] = analyse(path, config, summary, analyze)
        except Exception as err:
            results[i] = failure(err)
    return results


def failure(err: Exception) -> dict:
    """The result of a run that raised err (in an exception handler)."""
    return {"status": "failed", "error": f"{type(err).__name__}: {first_line(err, 300)}",
            "traceback": "".join(traceback.format_exc().splitlines(keepends=True)[-12:]),
            "host": socket.gethostname(), "pid": os.getpid()}


def run_one_safely(path, config_dict: dict, analyze: dict) -> dict:
    """run_one, with an exception turned into {status: "failed", error, traceback} so that the sweep
    records it and goes on."""
    return run_group_safely([path], [config_dict], analyze)[0]


def run_group_safely(paths, config_dicts: list, analyze: dict) -> list[dict]:
    """run_group, with an exception in training turned into a failed result for every run of the
    group, so that the sweep records it and goes on (a rerun resumes each from its last epoch)."""
    try:
        return run_group(paths, config_dicts, analyze)
    except Exception as err:
        return [failure(err)] * len(paths)
