"""Atomic file writes: a path holds either its old or its new content, never half of it."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import torch


def atomic_write_bytes(path, data: bytes) -> None:
    """Writes data to path so that path holds either its old or its new content, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def writable_dir(out, error=ValueError) -> Path:
    """out as a Path, created if absent and probed for writing; raises error("out: ...") if it is not a
    writable directory, before anything else is written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"out: {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise error(f"out: cannot write to {out} ({err.strerror or err})") from None
    return out
