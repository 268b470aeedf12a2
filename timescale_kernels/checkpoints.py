"""Checkpoints: ours (atomic, self-describing) and the study's (its state_dict layout).

Our format: torch.save of {"format": FORMAT, "version": 1, "model_config": MemoryNet.config,
"num_heads": int, "state_dict": ..., "meta": {...}} written atomically (temporary file, fsync,
rename), so a crash never leaves a half-written file.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .files import atomic_torch_save, first_line
from .models import MemoryNet

FORMAT = "timescale_kernels/checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or not in the expected format."""


def _load(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        first = first_line(err)
        if "Weights only load failed" in first or not first:
            # torch's message suggests weights_only=False, which would run arbitrary pickled code.
            detail = "not a PyTorch checkpoint of tensors, or damaged"
        else:
            detail = f"{type(err).__name__}: {first}"
        raise CheckpointError(f"{what}: cannot read {path} ({detail})") from None


def save_checkpoint(path, model: MemoryNet, meta: dict | None = None) -> None:
    """Atomically saves model (config, heads, weights) and a JSON-able meta dict."""
    atomic_torch_save(path, {"format": FORMAT, "version": VERSION, "model_config": dict(model.config),
                             "num_heads": model.num_heads,
                             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                             "meta": meta or {}})


def load_checkpoint(path, device=None, backend: str | None = None) -> tuple[MemoryNet, dict]:
    """(model, meta) from a file written by save_checkpoint; model on device (default CPU)."""
    blob = _load(path, "checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a timescale_kernels checkpoint "
                              "(for the study's files use load_study_checkpoint)")
    if blob.get("version") != VERSION:
        raise CheckpointError(f"checkpoint: {path} has version {blob.get('version')!r}; this package reads {VERSION}")
    config = dict(blob["model_config"])
    if backend is not None and config.get("core") == "leaky":
        config["backend"] = backend
    model = MemoryNet(num_heads=int(blob["num_heads"]), device=device, **config)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint: {path} does not match its own config ({first_line(err, 300)})") from None
    return model, dict(blob.get("meta", {}))


_STUDY_NAME = re.compile(r"N(\d+)_N(\d+)")
_STUDY_KEYS = ("parameterlist.0", "modulelist.0.weight", "modulelist.0.bias", "modulelist.1.weight",
               "modulelist.1.bias")


def load_study_checkpoint(path, device=None, backend: str = "auto", Ns: list[int] | None = None) -> MemoryNet:
    """A network trained by the study's code, as a MemoryNet with all its stored heads.

    The file is torch.load(path)["state_dict"] with parameterlist.0 = tau (H,), modulelist.0 =
    input weights (H, 1) and bias, modulelist.1 = recurrent weights (H, H) and bias, modulelist.{2+k}
    = readout head k (2, H). The model: leaky ReLU, "outside" placement, no self-connections,
    h0 = 0.1 * U(0, 1).

    The trained N's come from Ns or from the file name (rnn_N{lo}_N{hi}.pt); the model's
    attribute head_for_N maps each N to its head (N - lo, as the study's curricula assign them).
    """
    blob = _load(path, "study checkpoint")
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or any(k not in state for k in _STUDY_KEYS):
        raise CheckpointError(f"study checkpoint: {path} does not hold the study's state_dict "
                              f"(expected keys {', '.join(_STUDY_KEYS)}, ...)")
    w_hh = state["modulelist.1.weight"]
    hidden, in_size = state["modulelist.0.weight"].shape
    heads = sorted(int(k.split(".")[1]) - 2 for k in state if re.fullmatch(r"modulelist\.\d+\.weight", k)
                   and int(k.split(".")[1]) >= 2)
    if tuple(w_hh.shape) != (hidden, hidden) or heads != list(range(len(heads))):
        raise CheckpointError(f"study checkpoint: {path} has inconsistent shapes or heads")
    model = MemoryNet("leaky", hidden, in_size, num_heads=len(heads), h0="study", nonlinearity="leaky_relu",
                      placement="outside", self_connections=False, backend=backend)
    with torch.no_grad():
        model.rnn.tau.copy_(state["parameterlist.0"])
        model.rnn.weight_ih.copy_(state["modulelist.0.weight"])
        model.rnn.bias_ih.copy_(state["modulelist.0.bias"])
        model.rnn.weight_hh.copy_(w_hh)
        model.rnn.bias_hh.copy_(state["modulelist.1.bias"])
        for k in heads:
            model.readout.heads[k].weight.copy_(state[f"modulelist.{k + 2}.weight"])
            model.readout.heads[k].bias.copy_(state[f"modulelist.{k + 2}.bias"])
    if Ns is None:
        match = _STUDY_NAME.search(Path(path).name)
        Ns = list(range(int(match.group(1)), int(match.group(2)) + 1)) if match else []
    model.trained_Ns = list(Ns)
    model.head_for_N = {n: n - Ns[0] for n in Ns} if Ns else {}
    return model.to(device) if device is not None else model
