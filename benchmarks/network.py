#!/usr/bin/env python3
"""labkit's container networking, measured: throughput, published ports, attach time, scale, DNS.

    sudo .venv/bin/python benchmarks/network.py [--mb 500] [--n 50] [--runs 10]

Rows (ratios in one run; nothing is asserted):
  throughput     TCP, --mb MiB into a busybox `nc -l` receiver, timed until it has read all
                 (it closes), median of --runs:
                   host loopback       a Python sender → nc on 127.0.0.1, both on the host (the ceiling)
                   container → container   the same sender in one container's network namespace
                                       (nsenter --net) → nc in another container, one user network
                                       (veth → bridge → veth)
                   published port      host → 127.0.0.1:PORT, DNAT'd to a container (nft, route_localnet)
                   container direct    host → the container's address (routed to the bridge, no DNAT)
  attach         `run --rm busybox true`, --network app vs --network none, labkit and podman (podman
                 with CNI, inside a network + mount namespace of its own, as the peer test runs it):
                 the difference is what joining a network costs; median of --runs
  scale          --n containers on one network: all addresses distinct; a sample of pairs ping
  dns            200 lookups of a container's name through the embedded server (127.0.0.11) in one
                 container, vs 200 lookups of a name in its /etc/hosts (no DNS at all): per query

Everything lives in /tmp/labkit-bench-<random> (its own LABKIT_DATA_ROOT/LABKIT_RUN_ROOT) and is
removed at the end, also after a failure. Traffic goes only to loopback and to the containers.
Results: printed, and written to benchmarks/results/network.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from pull import machine  # noqa: E402

RESULTS = os.path.join(HERE, "results", "network.json")
BIN = os.path.dirname(sys.executable)


def lk(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([os.path.join(BIN, "labkit"), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and r.returncode:
        raise RuntimeError(f"labkit {' '.join(args)}: {r.stderr}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def send(host: str, port: int, mb: int) -> float:
    """Seconds to send `mb` MiB to host:port and see the receiver close (it read everything)."""
    chunk = b"\0" * (1 << 20)
    for _ in range(50):  # the receiver may be between two `nc -l`
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise RuntimeError(f"nothing listens on {host}:{port}")
    with conn:
        t = time.perf_counter()
        for _ in range(mb):
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
        return time.perf_counter() - t


def throughput(env: dict, mb: int, runs: int) -> dict:
    out: dict[str, list[float]] = {k: [] for k in ("host loopback", "container → container", "published port",
                                                  "container direct")}
    port = free_port()
    lk(env, "network", "create", "bench")
    sink = "while true; do nc -l -p 5000 > /dev/null; done"
    lk(env, "run", "-d", "--name", "sink", "--network", "bench", "-p", f"127.0.0.1:{port}:5000", "busybox",
       "sh", "-c", sink)
    ip = json.loads(lk(env, "inspect", "sink").stdout)[0]["NetworkSettings"]["Networks"]["bench"]["IPAddress"]
    lk(env, "run", "-d", "--name", "source", "--network", "bench", "busybox", "sleep", "3600")
    pid = json.loads(lk(env, "inspect", "source").stdout)[0]["State"]["Pid"]
    in_source = [os.path.join(BIN, "python"), "-c", "import sys; sys.path.insert(0, sys.argv[1]); import network; "
                 "print(network.send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))", HERE, ip, "5000", str(mb)]
    for _ in range(runs):
        host_port = free_port()
        server = subprocess.Popen(["sh", "-c", f"while true; do busybox nc -l -p {host_port} > /dev/null; done"])
        try:
            out["host loopback"].append(send("127.0.0.1", host_port, mb))
        finally:
            server.kill()
            server.wait()
        sent = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *in_source], capture_output=True,
                              text=True, check=True, timeout=300)
        out["container → container"].append(float(sent.stdout))
        out["published port"].append(send("127.0.0.1", port, mb))
        out["container direct"].append(send(ip, 5000, mb))
    lk(env, "rm", "-f", "sink", "source")
    lk(env, "network", "rm", "bench")
    return {k: {"MiB/s": round(mb / statistics.median(v), 1), "runs": len(v)} for k, v in out.items()}


def attach(env: dict, runs: int, podman: list[str] | None) -> dict:
    lk(env, "network", "create", "app")
    sides = {"labkit": [os.path.join(BIN, "labkit")]}
    if podman:
        sides["podman"] = podman
        subprocess.run([*podman, "network", "create", "app"], check=True, capture_output=True)
    times: dict[str, list[float]] = {f"{s} {n}": [] for s in sides for n in ("app", "none")}
    for _ in range(runs):
        for side, argv in sides.items():
            image = "busybox" if side == "labkit" else "localhost/lkbusybox"
            extra = [] if side == "labkit" else ["--cgroup-parent", "/labkit-bench-net", "--ulimit",
                                                 "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
            for net in ("app", "none"):
                times[f"{side} {net}"].append(timed(lambda: subprocess.run(
                    [*argv, "run", "--rm", *extra, "--network", net, image, "true"], check=True,
                    capture_output=True, env=env, timeout=120)))
    lk(env, "network", "rm", "app")
    med = {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()}
    out = {"median ms": med, "join cost ms": {s: round(med[f"{s} app"] - med[f"{s} none"], 1) for s in sides}}
    if podman:
        out["ratio labkit/podman (run on a network)"] = round(med["labkit app"] / med["podman app"], 2)
    return out


def scale(env: dict, n: int) -> dict:
    lk(env, "network", "create", "many", "--subnet", "10.210.240.0/24")
    t = timed(lambda: [lk(env, "run", "-d", "--name", f"c{i}", "--network", "many", "busybox", "sleep", "3600")
                       for i in range(n)])
    ips = [json.loads(lk(env, "inspect", f"c{i}").stdout)[0]["NetworkSettings"]["Networks"]["many"]["IPAddress"]
           for i in range(n)]
    pairs = random.Random(0).sample([(a, b) for a in range(n) for b in range(n) if a != b], min(20, n * (n - 1)))
    reached = sum(lk(env, "exec", f"c{a}", "ping", "-c1", "-W2", ips[b], check=False).returncode == 0
                  for a, b in pairs)
    for i in range(n):
        lk(env, "rm", "-f", f"c{i}")
    lk(env, "network", "rm", "many")
    return {"containers": n, "distinct addresses": len(set(ips)), "sampled pairs": len(pairs),
            "reachable": reached, "seconds to start all": round(t, 1)}


def dns(env: dict) -> dict:
    lk(env, "network", "create", "names")
    lk(env, "run", "-d", "--name", "web", "--network", "names", "busybox", "sleep", "3600")
    loop = "i=0; while [ $i -lt 200 ]; do nslookup {} >/dev/null 2>&1; i=$((i+1)); done"
    lk(env, "run", "-d", "--name", "asker", "--network", "names", "busybox", "sleep", "3600")
    embedded = timed(lambda: lk(env, "exec", "asker", "sh", "-c", loop.format("web")))
    hosts = timed(lambda: lk(env, "exec", "asker", "sh", "-c",
                             "i=0; while [ $i -lt 200 ]; do grep -q localhost /etc/hosts; i=$((i+1)); done"))
    lk(env, "rm", "-f", "web", "asker")
    lk(env, "network", "rm", "names")
    per = (embedded - hosts) / 200 * 1000
    return {"embedded DNS, ms per lookup (nslookup process included)": round(embedded / 200 * 1000, 2),
            "same loop without DNS, ms per iteration": round(hosts / 200 * 1000, 2),
            "DNS part, ms per lookup": round(per, 2)}


def podman_in_namespace(base: str, env: dict):
    """podman in a network + mount namespace of its own (nothing of it reaches the host's)."""
    holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "36000"])
    while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        time.sleep(0.02)
    subprocess.run(["nsenter", "-t", str(holder.pid), "--net", "ip", "link", "set", "lo", "up"], check=True)
    argv = ["nsenter", "-t", str(holder.pid), "--net", "--mount", "podman", "--root", f"{base}/p/storage",
            "--runroot", f"{base}/p/run", "--tmpdir", f"{base}/p/tmp", "--network-config-dir", f"{base}/p/cni",
            "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", "runc"]
    os.makedirs(f"{base}/p/cni")
    from labkit.images import builtin
    from labkit.images.base import export_layout
    from labkit.images.store import Store

    image = builtin.open_image_or_builtin(Store(os.path.join(env["LABKIT_DATA_ROOT"], "images")), "busybox")
    layout = export_layout(image, os.path.join(base, "layout"), "busybox")
    pulled = subprocess.run([*argv, "pull", "-q", f"oci:{layout}:busybox"], capture_output=True, text=True, check=True)
    subprocess.run([*argv, "tag", pulled.stdout.strip(), "localhost/lkbusybox"], check=True)
    return holder, argv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="labkit-bench-")
    env = dict(os.environ, LABKIT_DATA_ROOT=f"{base}/data", LABKIT_RUN_ROOT=f"{base}/run")
    holder = None
    try:
        holder, podman = podman_in_namespace(base, env)
        results = {"machine": machine(), "throughput": throughput(env, args.mb, args.runs),
                   "attach": attach(env, args.runs, podman), "scale": scale(env, args.n), "dns": dns(env)}
        t = results["throughput"]
        results["ratios"] = {k: round(v["MiB/s"] / t["host loopback"]["MiB/s"], 2) for k, v in t.items()}
        results["ratios"]["published / direct"] = round(t["published port"]["MiB/s"] / t["container direct"]["MiB/s"], 2)
        print(json.dumps(results, indent=2, ensure_ascii=False))
        with open(RESULTS, "w") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
            f.write("\n")
    finally:
        subprocess.run([os.path.join(BIN, "python"), "-c",
                        "import sys; from labkit.engine.containers import Engine; Engine(sys.argv[1]).clear(True)",
                        env["LABKIT_DATA_ROOT"]], env=env)
        if holder is not None:
            subprocess.run([*podman, "system", "reset", "--force"], capture_output=True) if "podman" in locals() else None
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        for top in ("/sys/fs/cgroup",) + tuple(e.path for e in os.scandir("/sys/fs/cgroup") if e.is_dir()):
            path = os.path.join(top, "labkit-bench-net")
            for dirpath, _, _ in sorted(os.walk(path), key=lambda d: -d[0].count("/")) if os.path.isdir(path) else []:
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
