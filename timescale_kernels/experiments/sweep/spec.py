"""A sweep's grid: conditions x seeds, from flags, a TOML/JSON file or a preset, validated before
anything runs.

A condition is one (task, curriculum, model, tau) with tau "trained" or a fixed value (leaky model
only; GRU and LSTM have no tau). A spec is the union of one or more grids, each the product of its
axes, times the seeds. Every run's RunConfig is the training preset, then `settings`, then the
condition and the seed. File format (TOML shown; JSON holds the same keys):

    seeds = [0, 1, 2]
    train_preset = "quick"                 # RunConfig preset ("paper" or "quick")
    cpus_per_run = 1
    gpus_per_run = 0
    [settings]                             # any RunConfig field, for every run
    hidden_size = 64
    [[grid]]
    task = ["parity", "dms"]
    curriculum = ["single", "multi"]
    model = ["leaky"]
    tau = ["trained", 1]
    [analyze]                              # analyze_run's settings, and
    steps = 5000                           # only: "all", "last" or N's (and the last), skip: true

and optionally `ensemble = 4` (networks of one shape per Ray task; default: chosen from the device and
shape, groups.py) and `groups = [["parity-multi-leaky-tau_trained/seed0", ...]]` (runs that must train
together; each group of one shape).
"""
from __future__ import annotations

import inspect
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CURRICULA, PRESETS, ConfigError, RunConfig, make_config

AXES = ("task", "curriculum", "model", "tau")
AXIS_DEFAULTS = {"task": ["parity"], "curriculum": ["single", "multi"], "model": ["leaky"], "tau": ["trained"]}
SPEC_KEYS = ("seeds", "train_preset", "settings", "grid", "analyze", "cpus_per_run", "gpus_per_run", "preset",
             "ensemble", "groups")
# Settings a condition or seed sets itself: not allowed in `settings`.
_CONDITION_FIELDS = ("task", "curriculum", "model", "seed", "learn_tau", "tau_init")


class SweepSpecError(ValueError):
    """A sweep spec that cannot run; the message names the key and what was wrong."""


@dataclass(frozen=True)
class Condition:
    task: str
    curriculum: str
    model: str
    tau: str | float | None   # "trained", a fixed value, or None (GRU/LSTM)

    @property
    def name(self) -> str:
        base = f"{self.task}-{self.curriculum}-{self.model}"
        if self.tau is None:
            return base
        return base + ("-tau_trained" if self.tau == "trained" else f"-tau{_fmt(self.tau)}")

    def overrides(self) -> dict:
        out = {"task": self.task, "curriculum": self.curriculum, "model": self.model}
        if self.tau not in (None, "trained"):
            out.update(learn_tau=False, tau_init=[float(self.tau), float(self.tau)])
        return out

    def to_dict(self) -> dict:
        return {"task": self.task, "curriculum": self.curriculum, "model": self.model, "tau": self.tau}


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass
class SweepSpec:
    grids: list                       # [{axis: [values]}]
    seeds: list
    train_preset: str | None = None
    settings: dict = field(default_factory=dict)
    analyze: dict = field(default_factory=dict)
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    preset: str | None = None         # the sweep preset this came from, for the record only
    ensemble: int | None = None       # networks per Ray task (None: chosen per shape, groups.default_ensemble)
    groups: list = field(default_factory=list)   # lists of run ids that train together

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict) -> "SweepSpec":
        if not isinstance(values, dict):
            raise SweepSpecError(f"spec: expected a table of settings; got {type(values).__name__}")
        unknown = sorted(set(values) - set(SPEC_KEYS))
        if unknown:
            raise SweepSpecError(f"spec: unknown keys {unknown}; expected some of {list(SPEC_KEYS)}")
        grids = values.get("grid", [])
        grids = [grids] if isinstance(grids, dict) else grids
        for key, kind in (("grid", list), ("seeds", list), ("settings", dict), ("analyze", dict)):
            found = grids if key == "grid" else values.get(key, kind())
            if not isinstance(found, kind):
                raise SweepSpecError(f"{key}: expected a {'list' if kind is list else 'table'}; got {found!r}")
        return cls(grids=list(grids), seeds=list(values.get("seeds", [])), train_preset=values.get("train_preset"),
                   settings=dict(values.get("settings", {})), analyze=dict(values.get("analyze", {})),
                   cpus_per_run=values.get("cpus_per_run", 1.0), gpus_per_run=values.get("gpus_per_run", 0.0),
                   preset=values.get("preset"), ensemble=values.get("ensemble"),
                   groups=list(values.get("groups", [])) if isinstance(values.get("groups", []), list)
                   else values["groups"])

    def to_dict(self) -> dict:
        return {"grid": self.grids, "seeds": self.seeds, "train_preset": self.train_preset,
                "settings": self.settings, "analyze": self.analyze, "cpus_per_run": self.cpus_per_run,
                "gpus_per_run": self.gpus_per_run, "preset": self.preset,
                # Only when set, so that a sweep directory written without them reads the same.
                **({"ensemble": self.ensemble} if self.ensemble is not None else {}),
                **({"groups": self.groups} if self.groups else {})}

    # the runs ------------------------------------------------------------------------------------
    def conditions(self) -> list[Condition]:
        """Every condition of every grid, in grid order, without repeats."""
        seen = {}
        for grid in self.grids:
            axes = {a: list(grid.get(a, AXIS_DEFAULTS[a])) for a in AXES}
            for task, curriculum, model, tau in itertools.product(*(axes[a] for a in AXES)):
                tau = None if model != "leaky" else ("trained" if tau == "trained" else float(tau))
                cond = Condition(task, curriculum, model, tau)
                seen.setdefault(cond.name, cond)
        return list(seen.values())

    def runs(self) -> list[tuple[Condition, int]]:
        return [(c, s) for c in self.conditions() for s in self.seeds]

    def config_for(self, condition: Condition, seed: int, device: str | None = None) -> RunConfig:
        """The run's RunConfig; device (default: settings' device, else cuda when gpus_per_run > 0)."""
        values = {**self.settings, **condition.overrides(), "seed": seed}
        values.setdefault("device", device or ("cuda" if self.gpus_per_run > 0 else "cpu"))
        return make_config(self.train_preset, **values)

    # validation ----------------------------------------------------------------------------------
    def validate(self) -> "SweepSpec":
        """Raises SweepSpecError naming the first bad key; returns self. Builds every run's config
        (with device cpu, so a driver without a GPU can check a GPU sweep)."""
        if self.train_preset is not None and self.train_preset not in PRESETS:
            raise SweepSpecError(f"train_preset: expected one of {list(PRESETS)}; got {self.train_preset!r}")
        _check_seeds(self.seeds)
        _check_resources(self.cpus_per_run, self.gpus_per_run)
        _check_ensemble(self.ensemble, self.groups)
        bad = sorted(set(self.settings) & set(_CONDITION_FIELDS))
        if bad:
            raise SweepSpecError(f"settings: {bad} are set by the grid and the seeds; put them in [[grid]] or seeds")
        _check_grids(self.grids)
        _check_analyze(self.analyze)
        if not self.conditions():
            raise SweepSpecError("grid: empty; expected at least one condition")
        for cond in self.conditions():
            try:
                self.config_for(cond, self.seeds[0], device="cpu")
            except ConfigError as err:
                raise SweepSpecError(f"condition {cond.name}: {err}") from None
        self.run_groups()
        return self

    def run_groups(self) -> list[dict]:
        """The runs grouped into ensembles (groups.group_runs): [{"id", "runs", "ensemble", "chosen_by"}]."""
        from .groups import group_runs
        # Built for the CPU (a driver without a GPU groups a GPU sweep), then given the runs' device.
        device = self.settings.get("device", "cuda" if self.gpus_per_run > 0 else "cpu")
        runs = {f"{c.name}/seed{s}": self.config_for(c, s, device="cpu") for c, s in self.runs()}
        for config in runs.values():
            config.device = device
        try:
            return group_runs(list(runs), runs, self.ensemble, self.groups)
        except ConfigError as err:
            raise SweepSpecError(str(err)) from None


def _check_seeds(seeds) -> None:
    if not isinstance(seeds, list) or not seeds:
        raise SweepSpecError(f"seeds: expected a non-empty list of integers >= 0; got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SweepSpecError(f"seeds: expected integers >= 0; got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepSpecError(f"seeds: expected distinct seeds; got {seeds}")


def _check_ensemble(ensemble, groups) -> None:
    if ensemble is not None and (isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1):
        raise SweepSpecError(f"ensemble: expected an integer >= 1 (networks per Ray task); got {ensemble!r}")
    if not isinstance(groups, list) or not all(isinstance(g, list) and g and all(isinstance(r, str) for r in g)
                                               for g in groups):
        raise SweepSpecError(f"groups: expected lists of run ids (CONDITION/seedS); got {groups!r}")


def _check_resources(cpus, gpus) -> None:
    for name, value, low in (("cpus_per_run", cpus, 0.0), ("gpus_per_run", gpus, 0.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            raise SweepSpecError(f"{name}: expected a number >= {low}; got {value!r}")
    if cpus == 0 and gpus == 0:
        raise SweepSpecError("cpus_per_run: expected > 0 when gpus_per_run is 0 (a run needs something to run on)")
    if gpus > 1 and not float(gpus).is_integer():
        raise SweepSpecError(f"gpus_per_run: expected a fraction <= 1 or a whole number; got {gpus}")


def _check_grids(grids) -> None:
    from ...models import CORES
    from ...tasks import TASKS
    choices = {"task": TASKS, "curriculum": CURRICULA, "model": CORES}
    if not isinstance(grids, list) or not grids:
        raise SweepSpecError("grid: empty; expected at least one [[grid]] table of task, curriculum, model, tau")
    for i, grid in enumerate(grids):
        if not isinstance(grid, dict):
            raise SweepSpecError(f"grid[{i}]: expected a table of axes; got {grid!r}")
        unknown = sorted(set(grid) - set(AXES))
        if unknown:
            raise SweepSpecError(f"grid[{i}]: unknown axes {unknown}; expected some of {list(AXES)}")
        for axis, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SweepSpecError(f"grid[{i}].{axis}: expected a non-empty list; got {values!r}")
            for v in values:
                if axis == "tau":
                    ok = v == "trained" or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                            and math.isfinite(v) and v >= 1)
                    if not ok:
                        raise SweepSpecError(f"grid[{i}].tau: expected 'trained' or a fixed tau >= 1; got {v!r}")
                elif v not in choices[axis]:
                    raise SweepSpecError(f"grid[{i}].{axis}: expected one of {list(choices[axis])}; got {v!r}")


def analyze_options() -> set:
    """analyze_run's keyword arguments a spec may set (plus "only" and "skip")."""
    from ...analysis.analyze import analyze_run
    params = inspect.signature(analyze_run).parameters
    return (set(params) - {"run_dir", "out_dir", "device", "progress", "log", "only", "task"}) | {"only", "skip"}


def _check_analyze(analyze: dict) -> None:
    if not isinstance(analyze, dict):
        raise SweepSpecError(f"analyze: expected a table of analyze settings; got {analyze!r}")
    unknown = sorted(set(analyze) - analyze_options())
    if unknown:
        raise SweepSpecError(f"analyze: unknown settings {unknown}; expected some of {sorted(analyze_options())}")
    only = analyze.get("only", "all")
    if not (only in ("all", "last") or (isinstance(only, list) and only
                                         and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in only))):
        raise SweepSpecError(f"analyze.only: expected 'all', 'last' or a list of N's >= 1; got {only!r}")
    if not isinstance(analyze.get("skip", False), bool):
        raise SweepSpecError(f"analyze.skip: expected true or false; got {analyze['skip']!r}")
    from ...analysis.analyze import analyze_run, check_settings
    defaults = {k: p.default for k, p in inspect.signature(analyze_run).parameters.items()}
    try:  # with analyze_run's defaults for the rest, so that e.g. steps is checked against max_lag
        check_settings(**{k: analyze.get(k, defaults[k]) for k in analyze_options() - {"only", "skip"}})
    except ValueError as err:
        raise SweepSpecError(f"analyze.{err}") from None


def read_spec_file(path) -> dict:
    """The table in a .toml or .json file; SweepSpecError for a missing or unreadable file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SweepSpecError(f"spec: cannot read {path} ({err.strerror or err})") from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            return json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise SweepSpecError(f"spec: {path} is not valid {path.suffix[1:].upper()} ({err})") from None
    raise SweepSpecError(f"spec: expected a .toml or .json file; got {path}")


# Sweep presets ---------------------------------------------------------------------------------------
_STUDY_GRIDS = [
    {"task": ["parity"], "curriculum": ["single", "multi"], "model": ["leaky"], "tau": ["trained", 1, 2, 3]},
    {"task": ["dms"], "curriculum": ["single", "multi"], "model": ["leaky"], "tau": ["trained"]},
    {"task": ["parity"], "curriculum": ["single", "multi"], "model": ["gru", "lstm"]},
]
SWEEP_PRESETS = {
    # The study's grid at its settings (500 neurons, batch 256, 1000 epochs, 4 networks per condition;
    # analyses at analyze_run's defaults, the study's): a job for a GPU cluster, four runs per GPU.
    "paper": {"train_preset": "paper", "seeds": [0, 1, 2, 3], "grid": _STUDY_GRIDS, "settings": {},
              "analyze": {}, "cpus_per_run": 1, "gpus_per_run": 0.25},
    # About 55 minutes on 2 CPU cores (estimated from measured epoch costs, see benchmarks/NOTES.md):
    # 64 neurons, every run the same epoch budget; 50 test batches of 64 (3,200 sequences per head, so a
    # 97% network passes the 98% rule by luck about once in 2,000 epochs, where the quick preset's 256
    # let it pass about one epoch in six; normal approximation).
    "cpu-small": {"train_preset": "quick", "seeds": [0, 1, 2, 3],
                  "grid": [{"task": ["parity", "dms"], "curriculum": ["single", "multi"], "model": ["leaky"],
                            "tau": ["trained", 1]},
                           {"task": ["parity"], "curriculum": ["single", "multi"], "model": ["gru", "lstm"]}],
                  "settings": {"hidden_size": 64, "batch_size": 64, "steps_per_epoch": 100, "test_batches": 50,
                               "max_epochs": 150, "threads": 1},
                  "analyze": {"only": [5, 10, 15, 20, 30], "trials": 2, "steps": 5000, "perturb_trials": 2,
                              "eval_batches": 4, "batch_size": 128,
                              "eps": [0.0, 0.01, 0.0215, 0.0464, 0.1, 0.215, 0.464, 1.0]},
                  "cpus_per_run": 1, "gpus_per_run": 0},
}


def preset_spec(name: str) -> dict:
    if name not in SWEEP_PRESETS:
        raise SweepSpecError(f"preset: expected one of {list(SWEEP_PRESETS)}; got {name!r}")
    return json.loads(json.dumps({**SWEEP_PRESETS[name], "preset": name}))  # a deep copy
