"""A run directory and the files in it; every write is atomic.

    DIR/config.json            settings, seed, versions: everything needed to rerun
    DIR/metrics.csv            one row per completed epoch (rewritten whole, atomically, each epoch)
    DIR/state.pt               the latest completed epoch: model, optimizer, curriculum, generators, metrics
    DIR/state.prev.pt          the epoch before it, kept by a network of an ensemble (see ensemble.align_epochs)
    DIR/checkpoints/N{lo}-N{hi}.pt   the model each time a set of N's passes (io.load_checkpoint reads it)
    DIR/plots/*.png            figures (plots.py)
    DIR/run.lock               held by the `train` command working in DIR (files.DirLock)
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..files import (DirLock, DirLockError, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text,
                     first_line)
from ..ops import resolve_backend
from .config import ConfigError, RunConfig

STATE_FORMAT = "timescale_kernels/run-state"
STATE_VERSION = 1
METRIC_COLUMNS = ("epoch", "N_low", "N_high", "N_reached", "passed", "loss", "mean_acc", "newest_acc", "acc",
                  "tau_mean", "tau_std", "epoch_time", "wall_time", "steps_per_s")
_CONFIG_EXTRAS = ("versions", "written", "argv", "kernels")
_CKPT_NAME = re.compile(r"N(\d+)-N(\d+)\.pt")


class RunDirError(ValueError):
    """A run directory that cannot be used: unwritable, already holding a run, damaged, or in use."""


class RunLockError(RunDirError, DirLockError):
    """Another `train` works in the run directory."""


def run_lock(path) -> DirLock:
    """The lock a `train` command holds on its run directory while it works there."""
    return DirLock(path, "run.lock", "train", RunLockError)


def versions() -> dict:
    return {"timescale_kernels": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


def kernel_choice(config: RunConfig) -> dict:
    """Which kernels the run computes with: {"backend": "cpu" | "triton" | "reference" | "torch" (GRU,
    LSTM)} plus, on the triton backend, "triton_family" ("default" or "persistent"), chosen by a fixed
    rule from the device and the shape (never by timing), so a resumed run computes what it computed."""
    if config.model != "leaky":
        return {"backend": "torch"}
    device = torch.device(config.device)
    backend = resolve_backend(config.backend, device)
    if backend != "triton":
        return {"backend": backend}
    from ..ops import triton_recurrence
    u_like = torch.empty((1, config.batch_size, config.hidden_size), device=device)
    return {"backend": backend, "triton_family": triton_recurrence.resolve_family(u_like, "fp32")}


class RunDir:
    def __init__(self, path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.csv"
        self.state_path = self.path / "state.pt"
        self.previous_state_path = self.path / "state.prev.pt"
        self.checkpoint_dir = self.path / "checkpoints"
        self.plots_dir = self.path / "plots"

    def holds_run(self) -> bool:
        return self.config_path.exists() or self.state_path.exists()

    def prepare_new(self, overwrite: bool = False) -> None:
        """Creates (or, with overwrite, clears the run files of) the directory; checks it is writable
        before anything is removed."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"out: {self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise RunDirError(f"out: cannot write to {self.path} ({err.strerror or err})") from None
        if self.holds_run():
            if not overwrite:
                raise RunDirError(f"out: {self.path} already holds a run; pass --resume {self.path} to continue it "
                                  "or --overwrite to replace it")
            for p in (self.config_path, self.metrics_path, self.state_path, self.previous_state_path,
                      self.path / "summary.json"):
                p.unlink(missing_ok=True)
            for folder in (self.checkpoint_dir, self.plots_dir):
                if folder.is_dir():
                    shutil.rmtree(folder)

    # config.json ------------------------------------------------------------------------------
    def write_config(self, config: RunConfig, argv: list[str] | None = None) -> None:
        """config.json: every setting at the top level (so other tools read e.g. "task" directly),
        plus "versions", "written" and "argv" (the command line, when known)."""
        atomic_write_json(self.config_path, {**config.to_dict(), "versions": versions(),
                                             "kernels": kernel_choice(config),
                                             "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                             "argv": list(argv) if argv is not None else None})

    def read_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise RunDirError(f"resume: {self.path} holds no run (no config.json)")
        try:
            blob = json.loads(self.config_path.read_text())
            return RunConfig.from_dict({k: v for k, v in blob.items() if k not in _CONFIG_EXTRAS})
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise RunDirError(f"resume: {self.config_path} is damaged ({type(err).__name__}: {err})") from None

    # state.pt ---------------------------------------------------------------------------------
    def save_state(self, state: dict, keep_previous: bool = False) -> None:
        """Writes state.pt; keep_previous: first copy the one it replaces to state.prev.pt (each file
        is whole at every moment, so a kill leaves the new or the old state and the one before)."""
        if keep_previous and self.state_path.is_file():
            atomic_write_bytes(self.previous_state_path, self.state_path.read_bytes())
        atomic_torch_save(self.state_path, {"format": STATE_FORMAT, "version": STATE_VERSION, **state})

    def load_previous_state(self) -> dict | None:
        """state.prev.pt (the epoch before state.pt's, where kept), or None."""
        if not self.previous_state_path.is_file():
            return None
        return self._read_state(self.previous_state_path)

    def load_state(self) -> dict | None:
        """The saved state, or None when no epoch completed yet. A run with metrics or checkpoints but
        no state.pt (deleted, or not copied along) cannot go on exactly: RunDirError."""
        if not self.state_path.exists():
            done = len(self.read_metrics()) if self.metrics_path.is_file() else 0
            if done or self.checkpoints():
                raise RunDirError(f"resume: {self.path} has {done} epochs in metrics.csv and "
                                  f"{len(self.checkpoints())} checkpoints but no state.pt, so it cannot go on from "
                                  "where it stopped; restore state.pt, or start over with --out "
                                  f"{self.path} --overwrite")
            return None
        return self._read_state(self.state_path)

    @staticmethod
    def _read_state(path) -> dict:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a damaged file
            raise RunDirError(f"resume: cannot read {path} ({type(err).__name__}: {first_line(err)})") from None
        if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
            raise RunDirError(f"resume: {path} is not a timescale_kernels run state")
        if blob.get("version") != STATE_VERSION:
            raise RunDirError(f"resume: {path} has version {blob.get('version')!r}; expected {STATE_VERSION}")
        return blob

    # metrics.csv ------------------------------------------------------------------------------
    def write_metrics(self, rows: list[dict]) -> None:
        buffer = _stdio.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(k, row.get(k)) for k in METRIC_COLUMNS})
        atomic_write_text(self.metrics_path, buffer.getvalue())

    def read_metrics(self) -> list[dict]:
        """Rows as written by write_metrics, with numbers parsed and acc as {N: accuracy}."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        with open(self.metrics_path, newline="") as f:
            for raw in csv.DictReader(f):
                row = {}
                for key, value in raw.items():
                    if key == "acc":
                        row[key] = {int(n): float(a) for n, a in json.loads(value).items()}
                    elif value in ("", None):
                        row[key] = None
                    elif key in ("epoch", "N_low", "N_high", "N_reached", "passed"):
                        row[key] = int(value)
                    else:
                        row[key] = float(value)
                rows.append(row)
        return rows

    # checkpoints ------------------------------------------------------------------------------
    def checkpoint_path(self, Ns) -> Path:
        return self.checkpoint_dir / f"N{min(Ns)}-N{max(Ns)}.pt"

    def checkpoints(self) -> list[Path]:
        """Checkpoint files in the order they were written (by highest, then lowest N)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(2)), int(m.group(1)), p) for p in self.checkpoint_dir.iterdir()
                 if (m := _CKPT_NAME.fullmatch(p.name))]
        return [p for _, _, p in sorted(found)]


def _cell(key, value):
    if value is None:
        return ""
    if key == "acc":  # {N: accuracy} as JSON, so the CSV keeps one column whatever the number of heads
        return json.dumps({str(n): round(float(a), 6) for n, a in value.items()})
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def check_resume_config(saved: RunConfig, wanted: RunConfig) -> None:
    """ConfigError when wanted differs from saved in anything but RESUMABLE_CHANGES."""
    diffs = saved.identity_differences(wanted)
    if diffs:
        raise ConfigError("resume: settings differ from the saved run (" + "; ".join(diffs) + ")")
