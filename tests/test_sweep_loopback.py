"""A sweep's own local Ray listens on loopback only, with its dashboard off and token authentication on."""
import ipaddress
import os

import pytest

from timescale_kernels.experiments.sweep.procs import descendants
from timescale_kernels.experiments.sweep.ray_tasks import RaySession

ray = pytest.importorskip("ray")


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.0.0.1, how a dual-stack socket shows it)."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.parametrize("ip,loopback", [("127.0.0.1", True), ("::ffff:127.0.0.1", True), ("::1", True),
                                         ("0.0.0.0", False), ("::", False), ("192.0.2.2", False),
                                         ("::ffff:10.0.0.1", False)])
def test_is_loopback(ip, loopback):
    assert is_loopback(ip) is loopback


def listening(pids) -> list[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket (IPv4 or IPv6) of these processes."""
    import psutil  # Ray's dependency (importable once ray is imported)
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            sockets = process.net_connections(kind="inet")
            name = process.name()
        except psutil.NoSuchProcess:
            continue
        found += [(pid, name, c.laddr.ip, c.laddr.port) for c in sockets if c.status == psutil.CONN_LISTEN]
    return found


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(tmp_path):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    with RaySession(tmp_path, num_cpus=1) as session:
        # a worker, started and used (a lambda: pickled by value, as the workers cannot import this file)
        worker = session.ray.get(session.ray.remote(lambda: os.getpid()).remote())
        pids = {os.getpid(), *descendants(os.getpid())}
        sockets = listening(pids)
        names = {name for _, name, _, _ in sockets}
        commands = [open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace") for pid in pids
                    if os.path.exists(f"/proc/{pid}/cmdline")]
        auth = is_token_auth_enabled()
    assert worker in pids
    # the GCS, the raylet (node manager and object manager), the driver's and the worker's servers
    assert {"gcs_server", "raylet"} <= names, sockets
    assert worker in {pid for pid, _, _, _ in sockets}, sockets
    assert [s for s in sockets if not is_loopback(s[2])] == []
    # include_dashboard=False: Ray still starts its minimal dashboard head (usage stats), without the web frontend
    dashboards = [c for c in commands if "dashboard/dashboard.py" in c]
    assert all("--disable-frontend" in c.split("\x00") for c in dashboards), dashboards
    assert auth
