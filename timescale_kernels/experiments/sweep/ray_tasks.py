"""Runs of a sweep as Ray tasks: a local Ray owned by the sweep, or an existing cluster.

Local: ray.init(address="local") with a temp dir of this sweep's own (so it never joins or ends
another Ray on the machine); its processes are recorded in the sweep directory (procs.py) and
ended at the end, or by the next driver if this one was killed. A local Ray never leaves the
machine, so it listens on loopback only: its node address is 127.0.0.1, which its GCS, raylet,
object manager, agents and workers bind to (Ray binds its servers to the node's address); its
dashboard is off and its token authentication on (Ray's default for a new local cluster, which the
sweep leaves alone; RAY_AUTH_MODE in the environment would turn it off). Cluster:
ray.init(address=...), nothing is started or ended and nothing of the above is set; the sweep
directory must be on storage every node shares.

A task that loses its worker (the process or its node dies) is retried by Ray (max_retries) and
resumes from the run's saved state; an exception inside a run is returned as its result, not retried.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

from ...files import first_line
from .procs import LocalRayProcesses
from .run import run_group_safely

MAX_RETRIES = 3
LOOPBACK = "127.0.0.1"


class RayMissingError(RuntimeError):
    """Ray is not installed, or the cluster asked for cannot be joined."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissingError("sweep: Ray is not installed; pip install 'timescale_kernels[sweep]' "
                              "(or run the runs one after another with --no-ray)") from None
    return ray


def check_reachable(address, timeout: float = 10.0) -> None:
    """RayMissingError unless something answers at a HOST:PORT or ray://HOST:PORT address within
    timeout seconds (Ray itself would retry for minutes). "auto" and other forms are left to Ray."""
    if not isinstance(address, str):
        return
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise RayMissingError(f"address: nothing answers at {address!r} ({err.strerror or err}); is the Ray head "
                              "running there, and is the port open from this machine?") from None


def local_temp_dir(sweep_dir) -> str:
    """A short temp dir (Ray's socket paths must stay under 107 characters) unique to the sweep dir."""
    digest = hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:10]
    return os.path.join(tempfile.gettempdir(), f"tk-sweep-ray-{digest}")


@contextlib.contextmanager
def local_ray_environment(ray):
    """Inside: what a local Ray started by ray.init inherits. PYTHONPATH leads with this copy of the
    package (e.g. one run from a source tree, uninstalled), which its workers must import; and Ray
    takes 127.0.0.1 as the node's address: on Linux ray.init replaces a loopback
    _node_ip_address by the machine's outward address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is
    off (read into ray_constants at import, so the driver's copy is set too), and its servers bind
    to the node's address."""
    from ray._private import ray_constants
    package_root = str(Path(__file__).resolve().parents[3])
    values = {"PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
              ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}
    saved = {name: os.environ.get(name) for name in values}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(values)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RaySession:
    """A connection to Ray for one sweep; use as a context manager.

    Args:
        sweep_dir: the sweep directory (records the local Ray's processes there).
        address: None for a local Ray of the sweep's own, or a cluster address ("auto", "ray://...",
            "HOST:6379").
        num_cpus, num_gpus: the local Ray's resources (default: the machine's); ignored for a cluster.
        cpus_per_run, gpus_per_run: what one task reserves, whether it trains one run or an ensemble of
            them (a GPU fraction lets tasks share a GPU).
    """

    def __init__(self, sweep_dir, address=None, *, num_cpus=None, num_gpus=None, cpus_per_run=1.0,
                 gpus_per_run=0.0):
        self.ray = import_ray()
        self.sweep_dir, self.address = Path(sweep_dir), address
        self.local = address is None
        self.processes = LocalRayProcesses(sweep_dir)
        self.temp_dir = local_temp_dir(sweep_dir)
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.options = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run, "max_retries": MAX_RETRIES,
                        "retry_exceptions": False}
        self._task = None

    def __enter__(self) -> "RaySession":
        ray = self.ray
        if self.local:
            self.processes.end_recorded()  # what a killed driver of this sweep left behind
            with local_ray_environment(ray):
                ray.init(address="local", _temp_dir=self.temp_dir, num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                         _node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            self.processes.note(self.temp_dir)
        else:
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                first = first_line(err, 300) or type(err).__name__
                raise RayMissingError(f"address: cannot join the Ray cluster at {self.address!r} ({first})") from None
        self._task = ray.remote(run_group_safely).options(**self.options)
        return self

    def __exit__(self, *exc) -> None:
        if self.local:
            self.processes.note(self.temp_dir)
        self.ray.shutdown()
        if self.local:  # the agents ignore SIGTERM: a short grace, then SIGKILL
            self.processes.end_recorded(grace=1.0)
            shutil.rmtree(self.temp_dir, ignore_errors=True)  # its sessions' logs and sockets

    def capacity(self) -> int:
        """How many tasks (each one run's resources, training one run or an ensemble) fit at once."""
        total = self.ray.cluster_resources()
        fits = []
        for key, per in (("CPU", self.options["num_cpus"]), ("GPU", self.options["num_gpus"])):
            if per:
                fits.append(int(total.get(key, 0) / per + 1e-9))
        return max(1, min(fits)) if fits else 1

    def submit(self, paths: list, config_dicts: list[dict], analyze: dict):
        """One task training the runs in paths together (one ensemble); its result is one per run."""
        return self._task.remote([str(p) for p in paths], config_dicts, analyze)

    def wait(self, refs: list, timeout: float):
        """(finished refs, refs still running) after at most timeout seconds."""
        return self.ray.wait(refs, num_returns=1, timeout=timeout)

    def result(self, ref, runs: int) -> list[dict]:
        """The results of a task's runs; a task that failed in Ray itself (retries used up) as that
        many failed runs."""
        try:
            return self.ray.get(ref)
        except Exception as err:  # e.g. WorkerCrashedError after MAX_RETRIES lost workers
            first = first_line(err, 300)
            return [{"status": "failed", "error": f"{type(err).__name__}: {first}"}] * runs

    def note_processes(self) -> None:
        if self.local:
            self.processes.note(self.temp_dir)
