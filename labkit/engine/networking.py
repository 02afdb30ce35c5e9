"""How a container is networked: what the engine does with labkit.net around the runtime.

    at create   check(): --network, --ip, --network-alias and -p refused early if wrong;
                join(): the container's endpoint (its address) on its network;
                files(): /etc/hosts, /etc/hostname and /etc/resolv.conf, written in the
                container's directory and bound into it, as Docker does
    at start    before_start(), in the monitor, between `create` (the init waits before exec)
                and `start`: host ports chosen, lo up, one veth per network moved into
                /proc/PID/ns/net, the nft table rewritten, the embedded DNS server opened
    at exit     after_exit(): the ports unpublished and the table rewritten (the veths went
                with the container's network namespace)
    at rm       release(): the addresses are free again

Network modes (docker run --network): bridge (the default network), host (no network
namespace of its own), none (only lo), container:ID (the other container's namespace),
or the name of a user network. The nft table is computed from all records each time
(sync_rules), never edited rule by rule, so it cannot drift from what the records say.
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import socket
from typing import Any, Callable

from .. import settings
from ..runtime.spec import Mount as OciMount
from .errors import Conflict, Invalid, NotFound
from .names import short_id
from .networks import NetworkStore
from .records import ContainerConfig, ContainerRecord, PortSpec, Store
from .status import Status

MODES = ("bridge", "host", "none")
HOSTS_BASE = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
              "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")  # Docker's
ACTIVE = (Status.RUNNING, Status.PAUSED, Status.RESTARTING, Status.CREATED)


# -- -p / --publish --------------------------------------------------------------------------
def parse_publish(value: str) -> list[PortSpec]:
    """-p [IP:][HOSTPORT:]CONTAINERPORT[/PROTO], ports or equal-length ranges (8000-8001:80-81)."""
    rest, _, proto = value.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise Invalid(f"invalid proto {proto!r} in -p {value}: use tcp or udp")
    if "[" in rest or rest.count(":") > 2:
        raise Invalid(f"-p {value}: labkit publishes IPv4 ports only", "give an IPv4 address, e.g. 127.0.0.1:8080:80")
    parts = rest.split(":")
    host_ip, host, container = {1: ("", "", parts[0]), 2: ("", *parts), 3: tuple(parts)}[len(parts)]
    if host_ip:
        try:
            ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise Invalid(f"invalid IP address {host_ip!r} in -p {value}") from None
    cports = _port_range(container, value)
    hports = _port_range(host, value) if host else [0] * len(cports)
    if len(hports) != len(cports):
        raise Invalid(f"-p {value}: the host and container port ranges must have the same length")
    return [PortSpec(container_port=c, proto=proto, host_ip=host_ip, host_port=h) for h, c in zip(hports, cports)]


def _port_range(text: str, value: str) -> list[int]:
    lo, _, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise Invalid(f"invalid port {text!r} in -p {value}: ports are numbers from 1 to 65535") from None
    if not 1 <= first <= last <= 65535:
        raise Invalid(f"invalid port range {text!r} in -p {value}: ports are numbers from 1 to 65535")
    return list(range(first, last + 1))


def exposed_ports(exposed: dict[str, Any] | None) -> list[PortSpec]:
    """-P: every EXPOSE of the image, each on a free host port."""
    out = []
    for key in sorted(exposed or {}):
        port, _, proto = key.partition("/")
        out += [PortSpec(container_port=p.container_port, proto=proto or "tcp") for p in parse_publish(port)]
    return out


def port_key(p: PortSpec | dict[str, Any]) -> str:
    d = p if isinstance(p, dict) else p.__dict__
    return f"{d['container_port']}/{d['proto']}"


# -- create --------------------------------------------------------------------------------
def check(config: ContainerConfig, store: Store, nets: NetworkStore) -> ContainerConfig:
    """Refuse a wrong --network/--ip/--network-alias/-p before anything exists; the config
    with container:NAME resolved to the container's full id (as Docker records it)."""
    mode = config.network_mode or "bridge"
    if mode.startswith("container:"):
        other = store.get(mode.split(":", 1)[1])  # NotFound: No such container
        if config.ports:
            raise Invalid("conflicting options: port publishing and the container type network mode",
                          "publish the ports on the container whose network this one joins")
        if config.ip or config.aliases or config.dns:
            raise Invalid("conflicting options: --ip, --network-alias and --dns cannot be used with "
                          "--network container:…")
        return _replace(config, network_mode=f"container:{other.id}")
    net = nets.get(mode)  # NotFound: network X not found
    if net.driver in ("host", "null"):
        if config.ports:
            raise Invalid(f"conflicting options: port publishing and the {net.name} network mode",
                          "with --network host the container's ports are already the host's")
        if config.ip or config.aliases:
            raise Invalid(f"--ip and --network-alias need a user network, not {net.name}")
    elif (config.ip or config.aliases) and not net.user_defined:
        raise Invalid("user specified IP address and network-scoped aliases are supported on user defined "
                      "networks only", "create one: labkit network create NAME; then --network NAME")
    return _replace(config, network_mode=net.name)


def _replace(config: ContainerConfig, **kw: Any) -> ContainerConfig:
    import dataclasses

    return dataclasses.replace(config, **kw)


def join(rec: ContainerRecord, nets: NetworkStore) -> None:
    """The endpoint of a new container on its network (an address now, a veth at start)."""
    mode = rec.config.network_mode
    if mode.startswith("container:") or mode in ("host", "none"):
        return
    nets.connect(mode, rec.id, aliases=list(rec.config.aliases), ip=rec.config.ip or None)


def release(cid: str, data_root: str) -> None:
    NetworkStore(os.path.join(data_root, "networks")).release(cid)


def files(rec: ContainerRecord, directory: str, nets: NetworkStore) -> list[OciMount]:
    """The container's /etc/hostname, /etc/hosts and /etc/resolv.conf (bound in, as Docker's)."""
    from . import dns

    mode = rec.config.network_mode
    if mode.startswith("container:"):
        return []  # Docker shares the other container's files; labkit keeps the image's
    if mode == "host":
        hostname = rec.config.hostname or socket.gethostname()
        with open("/etc/hosts") as f:
            hosts = f.read()
        servers = dns.upstream_servers(extra=list(rec.config.dns))
        resolv = dns.resolv_conf(False, servers)
    else:
        hostname = rec.config.hostname or short_id(rec.id)
        endpoints = nets.of_container(rec.id)
        hosts = HOSTS_BASE + "".join(f"{ep.ip}\t{hostname}\n" for _, ep in endpoints[:1])
        embedded = any(net.user_defined for net, _ in endpoints)
        resolv = dns.resolv_conf(embedded, dns.upstream_servers(extra=list(rec.config.dns)))
    out = []
    covered = {m.target.rstrip("/") for m in rec.config.mounts}
    for name, text in (("hostname", hostname + "\n"), ("hosts", hosts), ("resolv.conf", resolv)):
        if "/etc" in covered or f"/etc/{name}" in covered:
            continue  # the user's mount wins, as in podman (Docker would leave empty files in a volume at /etc)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        out.append(OciMount(destination=f"/etc/{name}", type="bind", source=path, options=["rbind", "rprivate"]))
    return out


# -- start and exit (in the monitor) -------------------------------------------------------
def netns_path(rec: ContainerRecord, store: Store) -> str | None:
    """--network container:ID: the namespace of that container's running init."""
    mode = rec.config.network_mode
    if not mode.startswith("container:"):
        return None
    other = store.load(mode.split(":", 1)[1])
    if other.state.status not in (Status.RUNNING, Status.PAUSED) or not other.state.pid:
        raise Conflict(f"cannot join network namespace of a non running container: {other.name}",
                       f"start it first: labkit start {other.name}")
    return f"/proc/{other.state.pid}/ns/net"


def choose_ports(rec: ContainerRecord, store: Store) -> list[dict[str, Any]]:
    """The host ports this start publishes: the asked ones, refused if taken; free ones for 0."""
    busy = _host_listening() | {(p["proto"], p["host_port"]) for other in store.list() if other.id != rec.id
                                 for p in other.state.ports}
    out = []
    for spec in rec.config.ports:
        port = spec.host_port
        if port and (spec.proto, port) in busy:
            raise Conflict(f"Bind for {spec.host_ip or '0.0.0.0'}:{port} failed: port is already allocated",
                           "choose another host port, or stop what uses it")
        if not port:
            port = _free_port(spec.proto, busy)
        busy.add((spec.proto, port))
        out.append({"container_port": spec.container_port, "proto": spec.proto, "host_ip": spec.host_ip,
                    "host_port": port})
    return out


def _free_port(proto: str, busy: set[tuple[str, int]]) -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = (int(x) for x in f.read().split())
    candidates = [p for p in range(lo, hi + 1) if (proto, p) not in busy]
    if not candidates:
        raise Conflict("no free host port to publish on", "publish on a given port: -p HOSTPORT:PORT")
    return random.choice(candidates)


def _host_listening() -> set[tuple[str, int]]:
    """(proto, port) of every TCP listener and bound UDP socket in the host's namespace."""
    found = set()
    for proto, files, state in (("tcp", ("tcp", "tcp6"), "0A"), ("udp", ("udp", "udp6"), None)):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                with open(f"/proc/net/{name}") as f:
                    next(f)
                    for line in f:
                        fields = line.split()
                        if state is None or fields[3] == state:
                            found.add((proto, int(fields[1].rsplit(":", 1)[1], 16)))
    return found


def before_start(rec: ContainerRecord, pid: int, data_root: str) -> Any:
    """Wire the created (not yet started) container; the DNS server to poll, or None."""
    from .. import net as knet

    mode = rec.config.network_mode
    if mode == "host" or mode.startswith("container:"):
        return None
    nets = NetworkStore(os.path.join(data_root, "networks"))
    endpoints = [] if mode == "none" else nets.of_container(rec.id)
    if not endpoints:
        knet.up_loopback(pid)  # (create_veth brings lo up with the veth)
        return None
    enable_forwarding()
    new_bridge = False
    for i, (net, ep) in enumerate(endpoints):
        new_bridge |= nets.ensure_link(net)
        host_end = veth_name(rec.id, i)
        if knet.link_exists(host_end):
            knet.delete_link(host_end)  # a previous run's, if its namespace outlived it
        knet.create_veth(host_end, pid, bridge=net.link, ifname=f"eth{i}", cidr=f"{ep.ip}/{net.prefix_len}",
                         gateway=net.gateway if i == 0 else None, mac=ep.mac)
        nets.set_link(net.id, rec.id, host_end)
    if new_bridge or rec.state.ports:  # the table changes only with the bridges and the ports
        sync_rules(data_root)
    if any(net.user_defined for net, _ in endpoints):
        return dns_server(rec, pid, data_root)
    return None


def after_exit(rec: ContainerRecord, data_root: str) -> None:
    """Forget the veths of a container that stopped; unpublish its ports (the caller cleared
    state.ports)."""
    if rec.config.network_mode in ("host", "none") or rec.config.network_mode.startswith("container:"):
        return
    nets = NetworkStore(os.path.join(data_root, "networks"))
    for net, ep in nets.of_container(rec.id):
        if ep.link:
            nets.set_link(net.id, rec.id, "")  # the veth went with the container's namespace
    if rec.config.ports:
        sync_rules(data_root)


def attach_running(rec: ContainerRecord, net: Any, data_root: str) -> None:
    """`network connect` of a running container: one more veth (eth1, eth2…) into its namespace.
    Names on the new network resolve if the container already had the embedded DNS server
    (it was started on a user network), as its resolv.conf was written at create."""
    from .. import net as knet

    nets = NetworkStore(os.path.join(data_root, "networks"))
    endpoints = nets.of_container(rec.id)
    index = [n.id for n, _ in endpoints].index(net.id)
    ep = dict((n.id, e) for n, e in endpoints)[net.id]
    enable_forwarding()
    nets.ensure_link(net)
    host_end = veth_name(rec.id, index)
    knet.create_veth(host_end, rec.state.pid, bridge=net.link, ifname=f"eth{index}",
                     cidr=f"{ep.ip}/{net.prefix_len}", gateway=None, mac=ep.mac)
    nets.set_link(net.id, rec.id, host_end)
    sync_rules(data_root)


def detach(ep: Any) -> None:
    """Remove a running container's veth on one network (its peer goes with it)."""
    from .. import net as knet

    if ep.link:
        knet.delete_link(ep.link)


def veth_name(cid: str, index: int) -> str:
    return f"lkv{cid[:9]}{index}"[:15]


# -- the nft table and forwarding ----------------------------------------------------------
def table_name(data_root: str) -> str:
    """`labkit` for the machine's data root; a test's or notebook's own root gets its own."""
    if os.path.realpath(data_root) == settings.DEFAULT_DATA_ROOT:
        return "labkit"
    return "labkit-" + hashlib.sha256(os.path.realpath(data_root).encode()).hexdigest()[:8]


def sync_rules(data_root: str) -> None:
    """Rewrite this data root's nft table from the records: its bridges and published ports."""
    from .. import net as knet

    nets = NetworkStore(os.path.join(data_root, "networks"))
    store = Store(os.path.join(data_root, "containers"))
    bridges, ports = [], []
    by_cid: dict[str, str] = {}
    for net in nets._all():
        if net.driver == "bridge" and knet.link_exists(net.link):
            bridges.append(knet.BridgeNet(link=net.link, subnet=net.subnet, gateway=net.gateway,
                                          internal=net.internal))
            for cid, ep in sorted(net.endpoints.items(), key=lambda kv: kv[1].joined):
                by_cid.setdefault(cid, ep.ip)
    for rec in store.list():
        for p in rec.state.ports:
            if rec.id in by_cid:
                ports.append(knet.PortMap(proto=p["proto"], host_ip=p["host_ip"] or None, host_port=p["host_port"],
                                          container_ip=by_cid[rec.id], container_port=p["container_port"]))
    table = table_name(data_root)
    with NetworkStore.host_lock():
        if bridges or ports:
            guard = "net.ipv4.ip_forward" in knet.changed_host_sysctls()
            knet.apply_ruleset(knet.ruleset(bridges, ports, guard_forwarding=guard, table=table), table=table)
        else:
            knet.remove_table(table=table)


def enable_forwarding() -> None:
    """Containers on a bridge reach beyond it only if the host forwards IPv4. labkit turns it
    on once (recording the old value for `labkit reset`) and, if it was off, its table drops
    forwarding between the host's *other* links, so nothing else starts being routed."""
    from .. import net as knet

    with open("/proc/sys/net/ipv4/ip_forward") as f:
        if f.read().strip() != "1":
            knet.set_host_sysctl("net.ipv4.ip_forward", "1")


def restore_forwarding() -> None:
    """Put ip_forward back once no labkit bridge is left on the host."""
    from .. import net as knet

    with NetworkStore.host_lock():
        if not any(knet.is_bridge(link) for link in knet.lab_links()):
            knet.restore_host_sysctls()


# -- the embedded DNS server ---------------------------------------------------------------
def dns_lookup(cid: str, data_root: str) -> Callable[[str], list[str]]:
    """Names a container resolves: the running containers on its user networks, by name,
    short id and --network-alias, each on the networks they share (Docker's rule)."""
    nets_root, store = os.path.join(data_root, "networks"), Store(os.path.join(data_root, "containers"))

    def lookup(name: str) -> list[str]:
        name = name.lower().rstrip(".")
        found = []
        for net in NetworkStore(nets_root)._all():
            if not net.user_defined or cid not in net.endpoints:
                continue
            for other, ep in net.endpoints.items():
                with contextlib.suppress(NotFound):
                    rec = store.load(other)
                    if rec.state.status in (Status.RUNNING, Status.PAUSED) and \
                            name in {rec.name.lower(), other[:12], *(a.lower() for a in ep.aliases)}:
                        found.append(ep.ip)
        return found

    return lookup


def dns_server(rec: ContainerRecord, pid: int, data_root: str) -> Any:
    from . import dns

    servers = dns.upstream_servers(extra=list(rec.config.dns))
    return dns.Server(pid, dns_lookup(rec.id, data_root), dns.Forwarder(servers))
