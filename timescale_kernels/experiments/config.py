"""A run's settings: one flat dataclass, the study's defaults, presets, validation.

Every field is JSON-able, so config.json alone (with the seed) reruns a run.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..curricula import CURRICULA, ConfigError
from ..models import CORES
from ..ops import BACKENDS, NONLINEARITIES, PLACEMENTS, resolve_backend
from ..tasks import TASKS

# Fields that only say when to stop or which kernel computes the op: a resumed run may change them
# (to extend a run, or to continue on a newly built backend) without changing what it computes.
RESUMABLE_CHANGES = ("max_epochs", "target_N", "time_budget", "backend", "threads")


@dataclass
class RunConfig:
    """Everything a training run depends on. Defaults are the study's (500 neurons, batch 256,
    600 steps and 50 test batches per epoch, SGD lr 0.05 momentum 0.1 Nesterov, clip 2.0,
    promotion above 98% accuracy, up to 1000 epochs)."""

    task: str = "parity"
    curriculum: str = "multi"
    model: str = "leaky"
    seed: int = 0
    hidden_size: int = 500
    batch_size: int = 256
    steps_per_epoch: int = 600
    test_batches: int = 50
    lr: float = 0.05
    momentum: float = 0.1
    nesterov: bool = True
    clip: float = 2.0
    max_epochs: int = 1000
    target_N: int | None = None
    time_budget: float | None = None   # seconds of training wall time, summed over resumes
    n_start: int = 2
    window: int = 5                    # sliding: how many N's are active at once
    forget: int = 1                    # sliding: how many N's leave (and enter) per slide
    threshold: float = 0.98
    learn_tau: bool = True
    tau_init: list = field(default_factory=lambda: [1.0, 2.0])
    nonlinearity: str = "leaky_relu"
    placement: str = "outside"
    device: str = "cpu"
    backend: str = "auto"
    threads: int | None = None         # CPU threads for torch during the run (None: torch's default)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"config: unknown settings {unknown}")
        cfg = cls(**values)
        cfg.tau_init = [float(v) for v in cfg.tau_init]
        return cfg

    def validate(self) -> "RunConfig":
        """Raises ConfigError naming the first bad setting; returns self."""
        _choice("task", self.task, TASKS)
        _choice("curriculum", self.curriculum, CURRICULA)
        _choice("model", self.model, CORES)
        _choice("nonlinearity", self.nonlinearity, NONLINEARITIES)
        _choice("placement", self.placement, PLACEMENTS)
        _choice("backend", self.backend, BACKENDS)
        for name in ("seed",):
            _int(name, getattr(self, name), 0)
        for name in ("hidden_size", "batch_size", "steps_per_epoch", "test_batches", "max_epochs", "n_start",
                     "window", "forget"):
            _int(name, getattr(self, name), 1)
        for name in ("target_N", "threads"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        if self.curriculum == "sliding" and self.forget > self.window:
            raise ConfigError(f"forget: expected at most window = {self.window}; got {self.forget}")
        _float("lr", self.lr, 0.0, strict=True)
        _float("momentum", self.momentum, 0.0)
        _float("clip", self.clip, 0.0, strict=True)
        if self.time_budget is not None:
            _float("time_budget", self.time_budget, 0.0, strict=True)
        _float("threshold", self.threshold, 0.0)
        if self.threshold >= 1.0:
            raise ConfigError(f"threshold: expected an accuracy fraction below 1 (e.g. 0.98); got {self.threshold}")
        if (not isinstance(self.tau_init, (list, tuple)) or len(self.tau_init) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.tau_init)
                or self.tau_init[0] > self.tau_init[1]):
            raise ConfigError(f"tau_init: expected LOW HIGH with LOW <= HIGH; got {self.tau_init!r}")
        if self.model != "leaky" and (self.placement != "outside" or self.nonlinearity != "leaky_relu"):
            raise ConfigError(f"model: {self.model!r} has no leaky-RNN options; drop --placement/--nonlinearity")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device: expected e.g. 'cpu' or 'cuda'; got {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device: {self.device!r} asked for, but CUDA is not available here")
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device: expected 'cpu' or 'cuda'; got {self.device!r}")
        if self.model == "leaky":
            try:
                resolve_backend(self.backend, device)
            except ValueError as err:  # e.g. "triton" asked for where it is not installed
                raise ConfigError(str(err)) from None
        return self

    def identity_differences(self, other: "RunConfig") -> list[str]:
        """Settings (other than RESUMABLE_CHANGES) whose values differ, as 'name: saved X, asked Y'
        (self is the saved config, other the asked one)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: saved {mine[k]!r}, asked {theirs[k]!r}" for k in mine
                if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]]


PRESETS = {
    # The study's settings (the dataclass defaults).
    "paper": {},
    # Small enough for a laptop CPU: multi-head parity passes N = 2..6 in seconds. A larger step than
    # the study's (lr 0.1, momentum 0.5): with 64 neurons and batch 64 the study's lr 0.05 and momentum
    # 0.1 needed about 30 epochs for N = 2..6, these about 12.
    "quick": {"hidden_size": 64, "batch_size": 64, "steps_per_epoch": 100, "test_batches": 4,
              "lr": 0.1, "momentum": 0.5, "max_epochs": 300,
              # Small matrices: a second thread costs more in synchronisation than it gains.
              "threads": 1},
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_config(preset: str | None = None, **overrides) -> RunConfig:
    """The preset's settings (default: the study's), then every override that is not None."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"preset: expected one of {', '.join(map(repr, PRESETS))}; got {preset!r}")
    values = dict(PRESETS[preset or "paper"])
    values.setdefault("device", default_device())
    values.update({k: v for k, v in overrides.items() if v is not None})
    if "tau_init" in values:
        values["tau_init"] = list(values["tau_init"])
    try:
        return RunConfig.from_dict(values).validate()
    except TypeError as err:
        raise ConfigError(f"config: {err}") from None


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(map(repr, choices))}; got {value!r}")


def _int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: expected an integer >= {low}; got {value!r}")


def _float(name, value, low, strict=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ConfigError(f"{name}: expected a finite number {'>' if strict else '>='} {low}; got {value!r}")
