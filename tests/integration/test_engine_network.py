"""Engine networks as a Docker user drives them: `labkit network …`, `run --network/-p/--ip`,
DNS by name, isolation, host/none/container modes — on the real kernel.

Traffic goes only to 127.0.0.1 and to addresses inside namespaces the lab made (the
containers'); every network, link and nft table is removed afterwards (the session's leak
check proves it), and ip_forward is back to what it was.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from labkit import doctor
from labkit import net as knet
from labkit.engine import networking
from labkit.engine.containers import Engine

pytestmark = [pytest.mark.root]


@pytest.fixture(autouse=True)
def engine_env(engine_data_root, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA_ROOT", engine_data_root)
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read()
    yield
    Engine(engine_data_root).clear()
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read() == forward, "ip_forward was not restored"
    assert networking.table_name(engine_data_root) not in [t.split()[-1] for t in doctor._nft_tables()]


def lk(*args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    r = subprocess.run(["labkit", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"labkit {' '.join(args)}: {r.stderr}"
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web(name: str, *flags: str, text: str = "hello") -> None:
    """A container serving `text` over HTTP on port 80 (busybox httpd)."""
    lk("run", "-d", "--name", name, *flags, "busybox", "sh", "-c",
       f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www", check=True)


def get(url: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_network_create_ls_inspect_rm():
    nid = lk("network", "create", "app", check=True).stdout.strip()
    assert len(nid) == 64
    names = lk("network", "ls").stdout
    assert {"bridge", "host", "none", "app"} <= {line.split()[1] for line in names.splitlines()[1:]}
    net = json.loads(lk("network", "inspect", "app", check=True).stdout)[0]
    assert net["Driver"] == "bridge" and net["IPAM"]["Config"][0]["Subnet"].endswith("/24")
    assert knet.link_exists(net["Options"]["com.docker.network.bridge.name"])
    again = lk("network", "create", "app")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert lk("network", "rm", "bridge").returncode == 1
    lk("network", "rm", "app", check=True)
    assert not knet.link_exists(net["Options"]["com.docker.network.bridge.name"])


def test_two_containers_on_a_user_network_reach_each_other_by_name():
    lk("network", "create", "app", check=True)
    web("api", "--network", "app", "--network-alias", "backend")
    for name in ("api", "backend"):
        r = lk("run", "--rm", "--network", "app", "busybox", "wget", "-qO-", f"http://{name}/")
        assert (r.returncode, r.stdout.strip()) == (0, "hello"), r.stderr
    look = lk("run", "--rm", "--network", "app", "busybox", "nslookup", "api")
    api_ip = json.loads(lk("inspect", "api", check=True).stdout)[0]["NetworkSettings"]["Networks"]["app"]["IPAddress"]
    assert look.returncode == 0 and api_ip in look.stdout and "127.0.0.11" in look.stdout


def test_names_do_not_resolve_across_networks_and_networks_are_isolated():
    lk("network", "create", "one", check=True)
    lk("network", "create", "two", check=True)
    web("svc", "--network", "one")
    ip = json.loads(lk("inspect", "svc", check=True).stdout)[0]["NetworkSettings"]["Networks"]["one"]["IPAddress"]
    r = lk("run", "--rm", "--network", "two", "busybox", "nslookup", "svc")
    assert r.returncode != 0  # not a name on network two
    # Not reachable from it (Docker's isolation); ping, as busybox-static's `wget -T` crashes.
    assert lk("run", "--rm", "--network", "two", "busybox", "ping", "-c1", "-W2", ip).returncode == 1
    assert lk("run", "--rm", "--network", "one", "busybox", "ping", "-c1", "-W2", ip).returncode == 0
    r = lk("run", "--rm", "--network", "one", "busybox", "wget", "-qO-", f"http://{ip}/")
    assert r.stdout.strip() == "hello"


def test_a_published_port_answers_on_the_hosts_loopback():
    port = free_port()
    web("pub", "-p", f"127.0.0.1:{port}:80", text="published")
    assert get(f"http://127.0.0.1:{port}/") == "published"
    assert lk("port", "pub", check=True).stdout.strip() == f"80/tcp -> 127.0.0.1:{port}"
    assert f"127.0.0.1:{port}->80/tcp" in lk("ps").stdout
    lk("stop", "-t", "1", "pub", check=True)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)  # unpublished when it stops


def test_a_taken_host_port_is_refused():
    port = free_port()
    web("first", "-p", f"127.0.0.1:{port}:80")
    r = lk("run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", "sleep", "5")
    assert r.returncode == 125 and "port is already allocated" in r.stderr


def test_ip_and_release_on_rm():
    lk("network", "create", "--subnet", "10.210.250.0/24", "fixed", check=True)
    lk("create", "--name", "c1", "--network", "fixed", "--ip", "10.210.250.9", "busybox", "true", check=True)
    taken = lk("create", "--network", "fixed", "--ip", "10.210.250.9", "busybox", "true")
    assert taken.returncode == 125 and "Address already in use" in taken.stderr
    assert lk("network", "rm", "fixed").returncode == 1  # c1 uses it
    lk("rm", "c1", check=True)
    lk("create", "--name", "c2", "--network", "fixed", "--ip", "10.210.250.9", "busybox", "true", check=True)


def test_none_host_and_container_modes():
    r = lk("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link", check=True)
    assert [line.split(":")[1].strip() for line in r.stdout.splitlines()] == ["lo"]
    r = lk("run", "--rm", "--network", "host", "busybox", "ls", "/sys/class/net", check=True)
    assert sorted(r.stdout.split()) == sorted(os.listdir("/sys/class/net"))
    web("owner")
    r = lk("run", "--rm", "--network", "container:owner", "busybox", "wget", "-qO-", "http://127.0.0.1/", check=True)
    assert r.stdout.strip() == "hello"  # the owner's server, on the shared loopback


def test_default_bridge_has_no_dns_but_reaches_by_address():
    web("plain")
    ip = json.loads(lk("inspect", "plain", check=True).stdout)[0]["NetworkSettings"]["IPAddress"]
    r = lk("run", "--rm", "busybox", "wget", "-qO-", f"http://{ip}/", check=True)
    assert r.stdout.strip() == "hello"
    assert lk("run", "--rm", "busybox", "cat", "/etc/resolv.conf").stdout.count("127.0.0.11") == 0
