"""Retraining: a trained network learns one new N single-head, and several networks are compared.

The study asks whether the timescales a curriculum produced help later learning: a network pre-trained
single-head and one pre-trained multi-head are both trained on a new N, and the epochs each needs to
pass it are compared. Retraining reuses the Trainer with the "none" curriculum (one fixed N, head 0).

    OUT/retrain.json             settings and, per network, accuracy per epoch, epochs to the threshold
    OUT/retrain.md               the same as a table
    OUT/accuracy.png             test accuracy on the new N against the epoch, one line per network
    OUT/<label>/metrics.csv      the Trainer's metrics row per epoch (rundir.py's columns)
    OUT/<label>/retrained.pt     the retrained network (io.load_checkpoint reads it)

The source checkpoints are only read.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..checkpoints import save_checkpoint
from ..curricula import curriculum_of
from ..files import atomic_write_json, atomic_write_text, writable_dir
from ..models import MemoryNet
from .config import ConfigError, RunConfig, make_config
from .plots import _save
from .rundir import RunDir, RunDirError
from .scoring import load_any_checkpoint
from .trainer import Trainer


def check_out_dir(out) -> Path:
    """out as a Path, created and probed for writing before any training (RunDirError if it is not)."""
    return writable_dir(out, RunDirError)


def _check_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}: expected an integer >= {low}; got {value!r}")


def pretraining(model: MemoryNet, meta: dict) -> str:
    """A short description of how the network was trained, e.g. "multi N=2..11" (from its metadata)."""
    Ns = sorted(int(n) for n in meta.get("Ns", []))
    kind = (meta.get("curriculum") or {}).get("kind") if isinstance(meta.get("curriculum"), dict) else None
    if kind is None and Ns:  # the study's files name no curriculum: the one whose run ends at these N's
        kind = curriculum_of([(Ns[0], Ns[-1])])
    kind = kind or "single"
    span = "" if not Ns else f" N={Ns[0]}" if len(Ns) == 1 else f" N={Ns[0]}..{Ns[-1]}"
    return f"{model.core} {kind}{span}"


def _head_to_reuse(meta: dict, N: int) -> int:
    """The head of the largest trained N <= N (else of the smallest trained N; head 0 if none known)."""
    head_for_N = {int(n): int(h) for n, h in meta.get("head_for_N", {}).items()}
    if not head_for_N:
        return 0
    below = [n for n in head_for_N if n <= N]
    return head_for_N[max(below) if below else min(head_for_N)]


def retrain_config(model: MemoryNet, N: int, epochs: int, task: str = "parity", preset: str | None = None,
                   **settings) -> RunConfig:
    """The validated RunConfig of retraining model on N: curriculum "none" at N, the model's core and size,
    the preset's (default: the study's) settings, then every setting that is not None."""
    _check_int("N", N)
    _check_int("epochs", epochs)
    leaky = {}
    if model.core == "leaky":
        leaky = {k: model.config[k] for k in ("nonlinearity", "placement", "learn_tau") if k in model.config}
    return make_config(preset, curriculum="none", n_start=N, task=task, model=model.core,
                       hidden_size=model.hidden_size, max_epochs=epochs, **leaky,
                       **{k: v for k, v in settings.items() if v is not None})


def retrain(model: MemoryNet, N: int, epochs: int, *, task: str = "parity", reuse_head: int | None = None,
            preset: str | None = None, log=None, label: str = "network", **settings) -> dict:
    """Trains a copy of model single-head on N for `epochs` epochs; model itself is left unchanged.

    Args:
        model: a MemoryNet (any core, any number of heads).
        N: the new memory length, >= 1.
        epochs: epochs to train (all of them: a pass does not stop the run, so curves have equal length).
        task: "parity" or "dms".
        reuse_head: None: a fresh readout head (seeded from seed, as the Trainer seeds head 0);
            an index: start from a copy of that head of model.
        preset, **settings: RunConfig settings (seed, batch_size, steps_per_epoch, test_batches, lr,
            momentum, nesterov, clip, threshold, device, backend, threads); the study's by default.
            The model's core and hidden size come from model.

    Returns:
        {"label", "N", "task", "head", "accuracy": [epochs + 1] test accuracy on N (index 0: before
        training; shorter after divergence or Ctrl-C), "loss": [epochs] mean training loss, "epochs_to_threshold": first epoch whose accuracy
        exceeds the threshold (0: already before training; None: never), "final_accuracy", "wall_time",
        "interrupted", "rows": the Trainer's metrics rows, "model": the retrained MemoryNet (one head)}.
    """
    config = retrain_config(model, N, epochs, task, preset, **settings)
    if reuse_head is not None and not 0 <= reuse_head < model.num_heads:
        raise ConfigError(f"reuse_head: expected a head index in 0..{model.num_heads - 1}; got {reuse_head!r}")
    net, trainer = _single_head_trainer(model, config, reuse_head)
    accuracy, rows, interrupted = _train_epochs(trainer, config, epochs, N, label, log)
    above = [i for i, a in enumerate(accuracy) if a > config.threshold]
    return {"label": label, "N": N, "task": task, "threshold": config.threshold,
            "head": "fresh" if reuse_head is None else f"copy of head {reuse_head}",
            "accuracy": accuracy, "loss": [r["loss"] for r in rows],
            "epochs_to_threshold": above[0] if above else None,
            "final_accuracy": accuracy[-1] if accuracy else None, "wall_time": trainer.elapsed,
            "diverged": trainer.stop_reason == "diverged", "interrupted": interrupted,
            "config": config.to_dict(), "rows": rows, "model": net}


def _labels(paths) -> list[str]:
    """Short, unique, file-system-safe names: "multi_N2-N6" for RUN/checkpoints/N2-N6.pt, else the stem."""
    out = []
    for p in map(Path, paths):
        name = f"{p.parent.parent.name}_{p.stem}" if p.parent.name == "checkpoints" else p.stem
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "network"
        base, k = name, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def plot_retraining(results: list[dict], path, threshold: float) -> Path:
    """Test accuracy on the new N against the epoch (0: before retraining), one line per network."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for r in results:
        ax.plot(np.arange(len(r["accuracy"])), r["accuracy"], marker="o", ms=3,
                label=f"{r['label']} ({r['pretraining']})")
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:.2f}")
    N = results[0]["N"] if results else "?"
    low = min([0.4] + [a - 0.02 for r in results for a in r["accuracy"]])  # chance is 0.5: show below it
    ax.set(xlabel="retraining epoch", ylabel=f"test accuracy, N = {N}", ylim=(low, 1.02),
           title=f"retraining on N = {N}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, Path(path))


def _markdown(results: list[dict], settings: dict) -> str:
    c = results[0]["config"] if results else {}
    lines = [f"# Retraining on N = {settings['N']} ({settings['task']})", "",
             f"Single-head, {settings['epochs']} epochs of {c.get('steps_per_epoch')} steps (batch "
             f"{c.get('batch_size')}, lr {c.get('lr')}, momentum {c.get('momentum')}), {c.get('test_batches')} "
             f"test batches per epoch, seed {c.get('seed')}; threshold {c.get('threshold')}.", "",
             "| network | pre-trained | head | epochs to threshold | final accuracy | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        reached = "not reached" if r["epochs_to_threshold"] is None else str(r["epochs_to_threshold"])
        final = "-" if r["final_accuracy"] is None else f"{r['final_accuracy']:.3f}"
        lines.append(f"| {r['label']} | {r['pretraining']} | {r['head']} | {reached} | {final} | "
                     f"{r['wall_time']:.1f} |")
    lines += ["", "![accuracy against epoch](accuracy.png)", ""]
    return "\n".join(lines)


def compare_retraining(paths, N: int, epochs: int, out, *, task: str | None = None, reuse_head: bool = False,
                       backend: str = "auto", log=None, **settings) -> dict:
    """Retrains each checkpoint (ours or the study's) on N with the same seed, so every network sees the
    same training and test batches, and writes OUT's files (module docstring).

    Args:
        paths: checkpoint files. N, epochs: as retrain(). out: the output folder.
        task: default: the first checkpoint's task ("parity" for the study's files).
        reuse_head: start from the head of the largest trained N <= N instead of a fresh one.
        backend: the leaky op backend. **settings: as retrain().

    Returns:
        {"N", "epochs", "task", "networks": [per network: retrain()'s dict without rows and model, plus
        "source" and "pretraining"], "interrupted"}.
    """
    _check_int("N", N)
    _check_int("epochs", epochs)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("checkpoints: expected at least one file")
    # Every file read and every setting checked before anything is written.
    loaded = [load_any_checkpoint(p, backend=backend) for p in paths]
    task = task or loaded[0][1].get("task", "parity")
    for model, _ in loaded:
        retrain_config(model, N, epochs, task, backend=backend, **settings)
    out = check_out_dir(out)
    summary = {"N": N, "epochs": epochs, "task": task, "networks": [], "interrupted": False}
    for path, label, (model, meta) in zip(paths, _labels(paths), loaded):
        head = _head_to_reuse(meta, N) if reuse_head else None
        r = retrain(model, N, epochs, task=task, reuse_head=head, log=log, label=label, backend=backend, **settings)
        r.update(source=str(path), pretraining=pretraining(model, meta))
        run = RunDir(out / label)
        run.write_metrics(r.pop("rows"))
        save_checkpoint(run.path / "retrained.pt", r.pop("model"),
                        {"Ns": [N], "head_for_N": {N: 0}, "task": task, "source": str(path),
                         "pretraining": r["pretraining"], "epochs": len(r["loss"])})
        summary["networks"].append(r)
        if r["interrupted"]:
            summary["interrupted"] = True
            break
    results = summary["networks"]
    threshold = results[0]["threshold"] if results else 0.98
    plot_retraining(results, out / "accuracy.png", threshold)
    atomic_write_json(out / "retrain.json", summary)
    atomic_write_text(out / "retrain.md", _markdown(results, summary))
    return summary


def _single_head_trainer(model: MemoryNet, config: RunConfig, reuse_head: int | None):
    """A Trainer for the "none" curriculum at N, training a copy of the network whose new N is read
    by head 0, as "none" expects; head 0 is fresh (seeded like the Trainer's own) or a copy of reuse_head."""
    net = copy.deepcopy(model).to(config.device)
    if net.core == "leaky" and config.backend != "auto":
        net.rnn.backend = config.backend
    kept = None
    if reuse_head is not None:  # copied out: clear() empties the table the views point into
        source = net.readout.heads[reuse_head]
        kept = [source.weight.detach().clone(), source.bias.detach().clone()]
    net.readout.clear()
    trainer = Trainer(config, num_heads=0, model=net)
    trainer.ensure_heads()
    if kept is not None:
        with torch.no_grad():
            net.readout.heads[0].weight.copy_(kept[0])
            net.readout.heads[0].bias.copy_(kept[1])
    return net, trainer


def _train_epochs(trainer, config: RunConfig, epochs: int, N: int, label: str, log):
    """Test accuracy before training and after each epoch, the metrics rows, and whether Ctrl-C ended it."""
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    total = config.test_batches * config.batch_size
    accuracy, rows, interrupted = [], [], False
    try:
        accuracy.append(float(trainer.evaluate()[0].item()) / total)
        for _ in range(epochs):
            row = trainer.run_epoch()
            rows.append(row)
            accuracy.append(row["newest_acc"])
            if log:
                log(f"retrain {label}: epoch {row['epoch']} N={N} accuracy {row['newest_acc']:.3f} "
                    f"loss {row['loss']:.3f}")
            if trainer.stop_reason == "diverged":
                break
    except KeyboardInterrupt:  # keep the epochs completed so far
        interrupted = True
    finally:
        torch.set_num_threads(threads)
    return accuracy, rows, interrupted
