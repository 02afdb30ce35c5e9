"""Networks next to podman: the same scenario through both CLIs, what a user observes.

One scenario, run by `podman` and by `labkit`: a user network `app`, a web server on it
published on 127.0.0.1, a client on `app`, a client on a second network `other`, a
client with `--network none`. Compared: the published port from the host's loopback,
the reachability matrix by address, names, and what the containers see (links, resolv.conf).

podman runs inside a namespace pair of its own (a new network and a private mount
namespace, held by a `sleep` this module starts): its CNI bridges, iptables rules and
/run/netns mounts live and die there, so the host's firewall and mount table are never
touched; its network configs go to a temp dir (--network-config-dir). Its "host
loopback" is that namespace's. podman here is 4.3 with CNI (Debian 12), without the
dnsname plugin.

Where podman (CNI) differs, labkit follows Docker, and each difference is asserted so a
change on either side shows:
- names: Docker resolves container names on user networks (127.0.0.11); labkit too;
  CNI without dnsname does not (`dns_enabled: false`);
- isolation: Docker drops traffic between two user networks; labkit too; CNI's bridge
  and firewall plugins route between them.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from labkit.engine.containers import Engine
from labkit.images import builtin
from labkit.images.base import export_layout
from labkit.images.store import Store

from test_peers_drive_labkit import ULIMITS, _remove_cgroup_parent

pytestmark = [pytest.mark.peer, pytest.mark.root]

CGROUP_PARENT = f"labkit-podman-net-{os.getpid()}"
SERVER = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"


class Side:
    """An engine's CLI, optionally run inside a namespace holder (`nsenter -t PID --net --mount`)."""

    def __init__(self, name: str, argv: list[str], image: str, flags: list[str], env: dict | None = None,
                 holder: int | None = None) -> None:
        self.name, self.argv, self.image, self.flags, self.env, self.holder = name, argv, image, flags, env, holder

    def inside(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder), "--net", "--mount", *argv] if self.holder else argv

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.inside([*self.argv, *args]), capture_output=True, text=True, timeout=timeout,
                              env=self.env, stdin=subprocess.DEVNULL)

    def ok(self, *args: str) -> str:
        r = self(*args)
        assert r.returncode == 0, (self.name, args, r.stderr)
        return r.stdout

    def run(self, *opts: str) -> subprocess.CompletedProcess:
        """`run --rm OPTS… IMAGE COMMAND…`: OPTS up to "--", then the command."""
        cut = opts.index("--")
        return self("run", "--rm", *self.flags, *opts[:cut], self.image, *opts[cut + 1:])

    def fetch(self, url: str) -> str:
        """What the host (this side's host: the holder's namespace for podman) gets from `url`."""
        code = ("import urllib.request,sys,time\nfor _ in range(50):\n try:\n"
                f"  print(urllib.request.urlopen({url!r},timeout=2).read().decode().strip()); sys.exit()\n"
                " except OSError: time.sleep(0.2)\nprint('unreachable')")
        return subprocess.run(self.inside(["python3", "-c", code]), capture_output=True, text=True,
                              timeout=60).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def podman(engine_data_root):
    base = os.path.join(tempfile.gettempdir(), f"labkit-pnet-{os.urandom(4).hex()}")
    os.makedirs(os.path.join(base, "cni"), 0o700)
    holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "3600"])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "the namespace holder did not start"
            time.sleep(0.02)
        subprocess.run(["nsenter", "-t", str(holder.pid), "--net", "ip", "link", "set", "lo", "up"], check=True)
        argv = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run", "--tmpdir", f"{base}/tmp",
                "--network-config-dir", f"{base}/cni", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--runtime", "runc"]
        side = Side("podman", argv, "localhost/lkbusybox", ["--cgroup-parent", f"/{CGROUP_PARENT}", *ULIMITS],
                    holder=holder.pid)
        image = builtin.open_image_or_builtin(Store(os.path.join(engine_data_root, "images")), "busybox")
        layout = export_layout(image, os.path.join(base, "layout"), "busybox")
        side.ok("tag", side.ok("pull", "-q", f"oci:{layout}:busybox").strip(), side.image)
        yield side
    finally:
        subprocess.run(Side("podman", argv, "", [], holder=holder.pid).inside(
            [*argv, "system", "reset", "--force"]), capture_output=True, timeout=120)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        _remove_cgroup_parent(CGROUP_PARENT)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def labkit(engine_data_root):
    yield Side("labkit", ["labkit"], "busybox", [], env=dict(os.environ, LABKIT_DATA_ROOT=engine_data_root))
    Engine(engine_data_root).clear()


def scenario(side: Side) -> dict[str, Any]:
    port = free_port()
    side.ok("network", "create", "app")
    side.ok("network", "create", "other")
    side.ok("run", "-d", "--name", "web", "--network", "app", "-p", f"127.0.0.1:{port}:80", *side.flags,
            side.image, "sh", "-c", SERVER)
    ip = json.loads(side.ok("inspect", "web"))[0]["NetworkSettings"]["Networks"]["app"]["IPAddress"]
    seen: dict[str, Any] = {"published, from the host": side.fetch(f"http://127.0.0.1:{port}/")}
    for net in ("app", "other"):
        # --cap-add NET_RAW: Docker's (and labkit's) defaults have it, podman 4's no longer do
        seen[f"from {net}, by address"] = side.run("--network", net, "--cap-add", "NET_RAW", "--",
                                                   "ping", "-c1", "-W2", ip).returncode == 0
    seen["from app, by name"] = side.run("--network", "app", "--", "wget", "-qO-", "http://web/").stdout.strip()
    seen["none: links"] = side.run("--network", "none", "--", "ls", "/sys/class/net").stdout.split()
    seen["app: links"] = sorted(side.run("--network", "app", "--", "ls", "/sys/class/net").stdout.split())
    seen["port"] = side.ok("port", "web").strip().replace(str(port), "PORT")
    side.ok("rm", "-f", "web")
    for net in ("app", "other"):
        side.ok("network", "rm", net)
    return seen


def test_networks_and_published_ports_as_podman(podman, labkit):
    p, lab = scenario(podman), scenario(labkit)
    same = ("published, from the host", "from app, by address", "none: links", "app: links", "port")
    assert {k: lab[k] for k in same} == {k: p[k] for k in same}
    assert lab["published, from the host"] == "hello" and lab["from app, by address"] is True
    assert lab["none: links"] == ["lo"] and lab["app: links"] == ["eth0", "lo"]
    assert lab["port"] == "80/tcp -> 127.0.0.1:PORT"
    # Docker's behaviour, which labkit has and podman's CNI backend here does not:
    assert (lab["from app, by name"], p["from app, by name"]) == ("hello", "")
    assert (lab["from other, by address"], p["from other, by address"]) == (False, True)
