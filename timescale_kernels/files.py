"""Atomic file writes (a path holds either its old or its new content, never half of it), and the
lock that keeps a second process out of a directory in use."""
from __future__ import annotations

import functools
import io
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message for a one-line report, cut at a word boundary with " ..."
    when longer than limit ("" for an empty message)."""
    lines = str(err).splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


@functools.lru_cache(maxsize=None)
def _file_mode() -> int:
    """The mode open() gives a new file under the process's umask (mkstemp's own is 0600, which would
    hide run files from the other users of a shared cluster disk). Read once: os.umask sets it to
    read it."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path, data: bytes) -> None:
    """Writes data to path so that path holds either its old or its new content, never half. The file
    gets the permissions a plain open() would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), _file_mode())
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


# directory locks --------------------------------------------------------------------------------------
def process_alive(pid: int) -> bool:
    """True while a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLockError(RuntimeError):
    """Another process works in the same directory."""


class DirLock:
    """DIR/name, held while one process works in DIR: it holds the owner's pid, host and start time.
    acquire() (or `with`) raises `error` while the owner lives, and takes over a lock whose owner
    (on this host) is gone, so a killed process leaves nothing to clean up by hand. `user` names the
    command in the refusal ("sweep", "train"); `error` is the DirLockError subclass a refusal raises."""

    def __init__(self, directory, name: str, user: str, error: type = DirLockError):
        self.path = Path(directory) / name
        self.user, self.error = user, error
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._clear_stale():
                    raise self.error(self._refusal()) from None
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return
        raise self.error(self._refusal())

    def __enter__(self) -> "DirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _clear_stale(self) -> bool:
        """Removes a lock whose owner was on this host and is gone; True if removed (or vanished)."""
        holder = self._holder()
        if not self.path.exists():
            return True
        pid = holder.get("pid")
        if holder.get("host") == self.owner["host"] and isinstance(pid, int) and not process_alive(pid):
            self.path.unlink(missing_ok=True)
            return True
        if not holder and time.time() - self.path.stat().st_mtime > 60:  # damaged and old: its writer died
            self.path.unlink(missing_ok=True)
            return True
        return False

    def _refusal(self) -> str:
        h = self._holder()
        return (f"{self.user}: {self.path.parent} is in use by another {self.user} (pid {h.get('pid', '?')} on host "
                f"{h.get('host', '?')} since {h.get('started', '?')}); wait for it to end, or remove {self.path} "
                "if that process is gone")

    def release(self) -> None:
        holder = self._holder()
        if holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            self.path.unlink(missing_ok=True)
