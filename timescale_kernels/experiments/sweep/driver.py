"""The sweep driver: every (condition, seed) of a spec trained and analysed in its own run directory,
on Ray (or one after another in this process), then one report.

    DIR/spec.json        the spec (a rerun must ask for the same one)
    DIR/sweep.json       the record: every run's condition, seed, directory, ensemble group, status,
                         result or error, and the groups with their ensemble size and how it was
                         chosen (written whole, atomically, after every change)
    DIR/sweep.lock       held by the running driver (procs.SweepLock)
    DIR/runs/CONDITION/seed{S}/   one run directory each (rundir.py), with analysis/ (analyze_run)
    DIR/report/          report.md, runs.csv, PNGs (report.py)

Each group of runs (networks of one shape, groups.py) is one Ray task that trains them together as
one ensemble. Rerunning the same command continues: finished runs are skipped, interrupted ones
resume from their saved state, failed ones are tried again.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ...files import atomic_write_json, writable_dir
from ...progress import tqdm
from .procs import SweepLock
from .run import run_group_safely
from .spec import SweepSpec, SweepSpecError

RECORD_FORMAT, RECORD_VERSION = "timescale_kernels/sweep", 1


class SweepError(ValueError):
    """A sweep directory that cannot be used (unwritable, or holding a different sweep)."""


def run_id(condition, seed: int) -> str:
    return f"{condition.name}/seed{seed}"


def prepare_dir(out, spec: SweepSpec) -> Path:
    """Creates out (checking it is writable) and writes spec.json, or checks that the spec already
    there is this one. Nothing is written before the checks pass."""
    out = writable_dir(out, SweepError)
    spec_path = out / "spec.json"
    if spec_path.is_file():
        saved = json.loads(spec_path.read_text())
        asked = json.loads(json.dumps(spec.to_dict()))
        diffs = [k for k in sorted(set(saved) | set(asked)) if k != "preset" and saved.get(k) != asked.get(k)]
        if diffs:
            raise SweepError(f"out: {out} holds a different sweep (differs in {', '.join(diffs)}); rerun it with "
                             "its own settings (sweep --out DIR alone reuses them) or choose another --out")
    else:
        atomic_write_json(spec_path, spec.to_dict())
    return out


def load_spec(out) -> SweepSpec:
    """The spec saved in a sweep directory."""
    path = Path(out) / "spec.json"
    if not path.is_file():
        raise SweepSpecError(f"out: {out} holds no sweep yet; give --preset, --spec or grid flags")
    return SweepSpec.from_dict(json.loads(path.read_text())).validate()


class Record:
    """DIR/sweep.json: the runs and their status, rewritten atomically on every change."""

    def __init__(self, out: Path, spec: SweepSpec, groups: list[dict]):
        self.path = out / "sweep.json"
        self.groups = {g["id"]: {k: v for k, v in g.items() if k != "id"} for g in groups}
        group_of = {rid: g["id"] for g in groups for rid in g["runs"]}
        old = json.loads(self.path.read_text()).get("runs", {}) if self.path.is_file() else {}
        self.runs = {}
        for cond, seed in spec.runs():
            rid = run_id(cond, seed)
            entry = {"condition": cond.name, **cond.to_dict(), "seed": seed, "dir": f"runs/{cond.name}/seed{seed}",
                     "group": group_of[rid], "status": "pending", "attempts": 0}
            self.runs[rid] = {**entry, **{k: v for k, v in old.get(rid, {}).items() if k not in entry or k in ("status", "attempts")}}
        self.started = time.time()

    def save(self) -> None:
        counts = {s: sum(r["status"] == s for r in self.runs.values()) for s in ("pending", "running", "done", "failed")}
        atomic_write_json(self.path, {"format": RECORD_FORMAT, "version": RECORD_VERSION, "counts": counts,
                                      "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "groups": self.groups,
                                      "runs": self.runs})

    def update(self, rid: str, **values) -> None:
        self.runs[rid].update(values)
        self.save()


def _finished_line(run: dict, result: dict) -> str:
    name = f"{run['condition']} seed {run['seed']}"
    if result["status"] == "failed":
        return f"failed   {name}: {result['error']}"
    analysis = f" + {result['analysis_seconds']:.0f} s analysis" if result.get("analysis_seconds") else ""
    reached = result["N_reached"] if result["N_reached"] is not None else "none"
    return (f"finished {name}: N reached {reached}, {result['epochs']} epochs "
            f"({result['stop_reason']}), {result['wall_time']:.0f} s training{analysis}")


def run_sweep(spec: SweepSpec, out, *, address=None, use_ray=True, num_cpus=None, num_gpus=None,
              progress=True, log=None, report=True) -> dict:
    """Runs every run of spec not yet done under out; returns the record's runs {run id: entry}.

    Args:
        spec: a validated SweepSpec. out: the sweep directory (created).
        address: None for a local Ray of the sweep's own; a Ray cluster's address to join it.
        use_ray: False runs the runs one after another in this process.
        num_cpus, num_gpus: the local Ray's resources (default: the machine's).
        progress: an overall tqdm bar. log: a callable for one line per finished run (or None).
        report: write DIR/report when done.
    Raises SweepError (directory), SweepLockError (another driver holds it), RayMissingError.
    """
    if use_ray and address is not None:  # before anything is written
        from .ray_tasks import check_reachable, import_ray
        import_ray()
        check_reachable(address)
    out = prepare_dir(out, spec)
    lock = SweepLock(out)
    lock.acquire()
    try:
        record = Record(out, spec, spec.run_groups())
        todo = [rid for rid, r in record.runs.items() if r["status"] != "done"]
        for rid in todo:
            record.runs[rid]["status"] = "pending"
        record.save()
        bar = tqdm(total=len(record.runs), initial=len(record.runs) - len(todo), desc="sweep", unit="run",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            configs = _configs(spec, record, todo)
            if use_ray and todo:  # a finished sweep starts no Ray: it only rewrites its report
                _run_on_ray(spec, out, record, todo, configs, bar, log, address, num_cpus, num_gpus)
            else:
                _run_here(spec, out, record, todo, configs, bar, log)
        finally:
            bar.close()
        if report:
            from .report import write_report
            path = write_report(out)
            if log:
                log(f"sweep: report written to {path}")
        return record.runs
    finally:
        lock.release()


def _configs(spec, record, todo) -> dict:
    conds = {c.name: c for c in spec.conditions()}
    return {rid: spec.config_for(conds[record.runs[rid]["condition"]], record.runs[rid]["seed"]).to_dict()
            for rid in todo}


def _finish(record, rid, result, bar, log) -> None:
    run = record.runs[rid]
    keep = dict(result)
    if result["status"] == "done":
        keep.update(error=None, traceback=None)
    record.update(rid, **keep, attempts=run["attempts"] + 1, finished=time.time())
    bar.update(1)
    counts = {s: sum(r["status"] == s for r in record.runs.values()) for s in ("running", "failed")}
    bar.set_postfix(running=counts["running"], failed=counts["failed"])
    if log:
        log(_finished_line(run, result))


def _pending_groups(record, todo) -> list[list[str]]:
    """The runs to do, by their groups (in record order): what each task trains together."""
    groups: dict = {}
    for rid in todo:
        groups.setdefault(record.runs[rid]["group"], []).append(rid)
    return list(groups.values())


def _run_here(spec, out, record, todo, configs, bar, log) -> None:
    for rids in _pending_groups(record, todo):
        for rid in rids:
            record.runs[rid].update(status="running", started=time.time())
        record.save()
        bar.set_postfix(running=len(rids), failed=sum(r["status"] == "failed" for r in record.runs.values()))
        results = run_group_safely([out / record.runs[r]["dir"] for r in rids], [configs[r] for r in rids],
                                   spec.analyze)
        for rid, result in zip(rids, results):
            _finish(record, rid, result, bar, log)


def _run_on_ray(spec, out, record, todo, configs, bar, log, address, num_cpus, num_gpus) -> None:
    from .ray_tasks import RaySession
    with RaySession(out, address, num_cpus=num_cpus, num_gpus=num_gpus, cpus_per_run=spec.cpus_per_run,
                    gpus_per_run=spec.gpus_per_run) as session:
        refs = {}
        for rids in _pending_groups(record, todo):
            refs[session.submit([out / record.runs[r]["dir"] for r in rids], [configs[r] for r in rids],
                                spec.analyze)] = rids
        capacity = session.capacity()
        waiting = list(refs)
        # Submitted tasks beyond the cluster's capacity wait in Ray's queue: "running" counts those that fit.
        _mark_running(record, [refs[r] for r in waiting[:capacity]])
        bar.set_postfix(running=sum(len(refs[r]) for r in waiting[:capacity]), failed=0)
        while waiting:
            finished, waiting = session.wait(waiting, timeout=2.0)
            session.note_processes()  # workers started since, in case this driver is killed
            for ref in finished:
                for rid, result in zip(refs[ref], session.result(ref, len(refs[ref]))):
                    _finish(record, rid, result, bar, log)
            _mark_running(record, [refs[r] for r in waiting[:capacity]])


def _mark_running(record, groups: list[list[str]]) -> None:
    for rids in groups:
        for rid in rids:
            if record.runs[rid]["status"] == "pending":
                record.runs[rid].update(status="running", started=time.time())
    record.save()
