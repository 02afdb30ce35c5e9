"""`labkit registry start|stop|status` as a user types it: a registry on 127.0.0.1 that outlives
the command, takes a push of the offline busybox and gives it back to another data root.

The CLI runs as a subprocess (the registry must survive it); all traffic is to 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from labkit import doctor
from labkit.registry import service
from labkit.registry.local import free_port
from labkit.runtime.store import proc_start_time

# Host only: a registry does not depend on the cgroup version.
pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"),
                                reason="needs docker-registry (apt-get install docker-registry)")


@pytest.fixture
def roots(lab_tmp):
    """Two empty data roots (a pusher's and a puller's), removed afterwards; the registry is
    stopped whatever happens (the session's run root holds its pid file)."""
    top = tempfile.mkdtemp(prefix="labkit-registry-cli-", dir=lab_tmp)
    paths = [os.path.join(top, name) for name in ("data-a", "data-b", "data-c")]
    for path in paths:
        os.makedirs(path)
    yield paths
    service.stop(timeout=5)
    shutil.rmtree(top, ignore_errors=True)


def lk(*args: str, data_root: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABKIT_DATA_ROOT": data_root}
    return subprocess.run([sys.executable, "-m", "labkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def listening_addresses(port: int) -> list[str]:
    """The local addresses a TCP socket LISTENs on `port` (from /proc/net/tcp{,6})."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hexport = local.rpartition(":")
                if state == "0A" and int(hexport, 16) == port:
                    found.append(address)
    return found


def image_digests(data_root: str) -> dict[str, str]:
    lines = lk("images", data_root=data_root).stdout.splitlines()[1:]
    return {line.split()[0]: line.split()[1] for line in lines}


def test_start_push_pull_stop(roots):
    pusher, puller, third = roots
    port = free_port()
    address = f"127.0.0.1:{port}"
    started = lk("registry", "start", "--port", str(port), data_root=pusher)
    assert started.returncode == 0 and address in started.stdout, started.stderr
    state = service.status()
    assert state.running and state.port == port and state.storage == os.path.join(pusher, "registry")
    assert listening_addresses(port) == ["0100007F"]  # 127.0.0.1 only, never all interfaces

    again = lk("registry", "start", data_root=pusher)
    assert again.returncode == 0 and "already running" in again.stdout and address in again.stdout
    elsewhere = lk("registry", "start", "--port", str(free_port()), data_root=pusher)
    assert elsewhere.returncode == 1 and "labkit registry stop" in elsewhere.stderr
    assert service.status().pid == state.pid
    status = lk("registry", "status", data_root=pusher)
    assert status.returncode == 0 and f"running on {address}" in status.stdout
    assert f"registry pid {state.pid} " in lk("doctor", "--leaks", data_root=pusher).stdout

    ref = f"{address}/demo/busybox:1"
    pushed = lk("push", "busybox", ref, data_root=pusher)  # an empty store: busybox is built first
    assert pushed.returncode == 0 and "busybox: not in the store; built it" in pushed.stderr, pushed.stderr
    pulled = lk("pull", ref, data_root=puller)
    assert pulled.returncode == 0, pulled.stderr
    assert image_digests(puller) == {ref: image_digests(pusher)["busybox"]}

    stopped = lk("registry", "stop", data_root=pusher)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert proc_start_time(state.pid) is None  # gone (the registry's parent, init, reaped it)
    assert listening_addresses(port) == []
    assert lk("registry", "status", data_root=pusher).returncode == 1
    assert lk("registry", "stop", data_root=pusher).stdout.strip() == "registry: not running"

    # the storage outlives stop and start, like a volume
    assert lk("registry", "start", "--port", str(port), data_root=pusher).returncode == 0
    again_pulled = lk("pull", ref, data_root=third)
    assert again_pulled.returncode == 0, again_pulled.stderr
    assert image_digests(third) == image_digests(puller)


def test_reset_stops_a_started_registry(roots):
    """`labkit reset` removes every leak on the machine; this test removes only its registry,
    through the same code path (doctor.reset(only=...))."""
    data_root = roots[0]
    assert lk("registry", "start", "--port", str(free_port()), data_root=data_root).returncode == 0
    pid = service.status().pid
    mine = [leak for leak in doctor.leaks() if leak.pid == pid]
    assert [leak.kind for leak in mine] == ["process"]
    assert doctor.reset(only=mine)[0].startswith(f"killed registry pid {pid} ")
    deadline = time.monotonic() + 10  # SIGKILL takes effect asynchronously
    while proc_start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    status = lk("registry", "status", data_root=data_root)
    assert status.returncode == 1 and status.stdout.strip() == "registry: stopped"
    assert os.path.isdir(os.path.join(data_root, "registry"))  # reset ends the process, not the storage


def test_a_port_in_use_says_so(roots):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = lk("registry", "start", "--port", str(port), data_root=roots[0])
    assert r.returncode == 1 and "--port" in r.stderr, r.stderr
    assert not service.status().running
    assert not os.path.exists(os.path.join(os.environ["LABKIT_RUN_ROOT"], "registry", service.PID_FILE))
