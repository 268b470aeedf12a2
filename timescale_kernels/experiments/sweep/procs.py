"""The processes a sweep owns: its lock file and the local Ray it started.

The lock (DIR/sweep.lock, a files.DirLock) holds the owner's pid, host and start time; a second driver on the same
directory is refused while the owner lives, and takes over a lock whose owner (on this host) is gone.

A local Ray started by a driver leaves agents behind when the driver is killed with SIGKILL (its
dashboard and runtime-env agents are reparented and keep running). So the driver records every
process it started (pid and start time, from /proc) in DIR/ray_local.json while it runs; the next
driver, and the driver itself at the end, ends exactly those still alive (same pid and start time),
and no other Ray instance.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from ...files import DirLock, DirLockError, atomic_write_json

LOCK_NAME, RAY_PROCS_NAME = "sweep.lock", "ray_local.json"


class SweepLockError(DirLockError):
    """Another driver runs a sweep on the same directory."""


class SweepLock(DirLock):
    """Held while a driver works on a sweep directory. acquire() raises SweepLockError when held."""

    def __init__(self, sweep_dir):
        super().__init__(sweep_dir, LOCK_NAME, "sweep", SweepLockError)


# processes ------------------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None when
    it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """{pid: start time} of every living descendant of pid (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _start_time(child)
            if start is not None:
                found[child] = start
                todo.append(child)
    return found


class LocalRayProcesses:
    """The record (DIR/ray_local.json) of the processes a local Ray of this sweep started."""

    def __init__(self, sweep_dir):
        self.path = Path(sweep_dir) / RAY_PROCS_NAME
        self.known: dict[int, int] = {}

    def note(self, temp_dir: str) -> None:
        """Adds the driver's living descendants to the record (call after ray.init and now and then)."""
        self.known.update(descendants(os.getpid()))
        atomic_write_json(self.path, {"driver": os.getpid(), "host": socket.gethostname(), "temp_dir": temp_dir,
                                      "processes": {str(p): t for p, t in sorted(self.known.items())}})

    def end_recorded(self, grace: float = 5.0) -> list[int]:
        """Ends the recorded processes still alive (same pid and start time; SIGTERM, then SIGKILL
        after grace seconds), removes the record; returns the pids ended."""
        try:
            blob = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        if blob.get("host") != socket.gethostname():
            return []  # another host's processes: not ours to end from here
        targets = {int(p) for p, t in blob.get("processes", {}).items()
                   if int(p) != os.getpid() and _start_time(int(p)) == t}
        for pid in list(targets):  # workers started after the last note are children of the raylet
            targets.update(descendants(pid))
        targets.update(_with_argument(blob.get("temp_dir")))
        targets.discard(os.getpid())
        for pid in targets:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_start_time(p) is not None for p in targets):
            time.sleep(0.1)
        for pid in targets:
            if _start_time(pid) is not None:
                _signal(pid, signal.SIGKILL)
        self.path.unlink(missing_ok=True)
        self.known.clear()
        return sorted(targets)


def _with_argument(text) -> set[int]:
    """Processes whose command line contains text (the sweep's own Ray temp dir), or none."""
    if not text or not Path("/proc").is_dir():
        return set()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _signal(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
