"""Networking: network namespaces, veth pairs, bridges, sysctls and the nftables table.

A container's network is a few kernel objects, each made here with one call:

- a network namespace: its own links, addresses, routes, ports and firewall.
  labkit never mounts one under /run/netns (`ip netns add` would): a namespace
  lives as long as a process in it, and is named by /proc/PID/ns/net.
- a veth pair: two links joined like the ends of a cable. One end stays on the
  host, enslaved to a bridge; the other moves into the container's namespace as
  eth0.
- a bridge: a virtual switch on the host. Its address is the containers'
  gateway; the kernel learns which MAC sits behind which port (`bridge_fdb`).
- host sysctls: routing between links needs net.ipv4.ip_forward=1. labkit
  records the value it found (once) and `restore_host_sysctls` writes it back.
- the nftables table `inet labkit`: NAT (published ports, masquerade) and the
  isolation between networks. It is generated from the desired state by
  `ruleset` and replaced as a whole, in one transaction, by `apply_ruleset`.

Like labkit.cgroups, this module knows nothing about containers: the engine
calls it. Every link labkit makes is named "lk..." and nothing else is touched.
pyroute2 (netlink) is imported on first use: `python -m labkit.net hold` (the
process that holds a namespace for `NetnsHolder`) needs only the standard library.
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys as _sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from . import sys as lsys
from .errors import LabkitError

if TYPE_CHECKING:
    from pyroute2 import IPRoute

T = TypeVar("T")

LINK_PREFIX = "lk"
LAB_PREFIXES = (LINK_PREFIX, "labkit")  # and the default data root's bridge, labkit0 (Docker's docker0)
TABLE = "labkit"  # nft table, family inet
IFNAMSIZ = 16  # the kernel's limit on a link name, with its NUL: 15 characters
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # what the kernel and nft's quoting both accept


class NetError(LabkitError):
    """A network object could not be made, changed or found."""

    def __reduce__(self):  # travels back from run_in_netns' child with its hint
        return (type(self), (self.what, self.hint))


# --- helpers ---------------------------------------------------------------------------
def _tool(name: str) -> str:
    """A system tool's path: /usr/sbin is not on every user's PATH."""
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}")
                                        if os.path.exists(p)), None)
    if not found:
        package = {"nft": "nftables", "ip": "iproute2", "nsenter": "util-linux"}.get(name, name)
        raise NetError(f"{name} is not installed", f"apt-get install {package}")
    return found


def _check_name(name: str, *, ours: bool = True) -> str:
    if not _NAME.fullmatch(name):
        raise NetError(f"{name!r} is not a valid link name",
                       "use at most 15 letters, digits, '_', '-' or '.' (the kernel's IFNAMSIZ)")
    if ours and not name.startswith(LAB_PREFIXES):
        raise NetError(f"link {name!r} is not labkit's",
                       f"labkit only makes and changes links whose names start with {LINK_PREFIX!r} (or labkit0)")
    return name


def _ns_path(ns: int | str) -> str:
    """A pid names /proc/PID/ns/net; a string is the path of a namespace file."""
    if isinstance(ns, int) and not isinstance(ns, bool):
        return f"/proc/{ns}/ns/net"
    if isinstance(ns, str):
        return ns
    raise NetError(f"{ns!r} names no network namespace", "pass a pid or a path like /proc/PID/ns/net")


def _interface(cidr: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError as err:
        raise NetError(f"{cidr!r} is not an address with a prefix length: {err}",
                       "write it as ADDRESS/PREFIX, e.g. 10.210.1.2/24") from None
    if not isinstance(iface, ipaddress.IPv4Interface) or "/" not in cidr:
        raise NetError(f"{cidr!r} is not an IPv4 address with a prefix length",
                       "write it as ADDRESS/PREFIX, e.g. 10.210.1.2/24")
    return iface


_ERRNO_HINTS = {
    errno.EEXIST: "a link or address of that name exists already: choose another name, or `labkit reset` "
                  "to remove labkit's leftovers",
    errno.ENODEV: "the link does not exist (any more): check the name with `ip link`",
    errno.EPERM: "this needs root (CAP_NET_ADMIN): run as root, e.g. `sudo`, or inside the lab VM",
    errno.ENETUNREACH: "the gateway must be inside the subnet of the container's address",
    errno.EADDRNOTAVAIL: "check the address: it must be a unicast address of the link's subnet",
    errno.EOPNOTSUPP: "the kernel lacks this link type: try `modprobe veth` / `modprobe bridge`",
}


def _net_error(what: str, err: BaseException) -> NetError:
    """A netlink or OS error as a NetError that says which step failed and what to do."""
    if isinstance(err, NetError):
        return NetError(f"{what}: {err.what}", err.hint)
    code = getattr(err, "code", None) or getattr(err, "errno", None) or 0
    text = os.strerror(code) if code else str(err)
    name = errno.errorcode.get(code, "")
    return NetError(f"{what} failed: {name + ': ' if name else ''}{text}",
                    _ERRNO_HINTS.get(code, "see `ip -d link` and `dmesg` for what the kernel has"))


def _netlink(fn: Callable[..., T], *args: Any) -> T:
    """fn(ipr, *args) with a fresh rtnetlink socket of the calling thread's network namespace."""
    def call() -> T:
        with _iproute()() as ipr:
            return fn(ipr, *args)

    return _off_loop(call)


def _netlink_in(ns: int | str | None, fn: Callable[..., T], *args: Any) -> T:
    """_netlink in namespace `ns`, or in the caller's if None."""
    return _netlink(fn, *args) if ns is None else run_in_netns(ns, _netlink, fn, *args)


def _off_loop(call: Callable[[], T]) -> T:
    """call(), on a worker thread if this thread runs an asyncio loop (a Jupyter cell): pyroute2
    0.9's synchronous sockets drive a loop of their own, which cannot run inside another."""
    aio = _sys.modules.get("asyncio")  # not imported: no loop can be running
    try:
        if aio is not None:
            aio.get_running_loop()
    except RuntimeError:
        aio = None
    if aio is None:
        return call()
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def _iproute() -> type[IPRoute]:
    """pyroute2's IPRoute class (imported on first use: it costs ~0.15 s, seconds in an
    emulated VM, and a container with no network needs none of it)."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        raise NetError("pyroute2 is not installed", "pip install pyroute2 (it is in labkit[lab])") from None
    return IPRoute


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


# --- namespaces ---------------------------------------------------------------------------
def _open_netns(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NetError(f"{what}: cannot open the namespace: {err.strerror}",
                       "the process holding it has exited, or the path is wrong") from None


def run_in_netns(ns: int | str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) inside the network namespace `ns` (a pid, or a path such as /proc/PID/ns/net):
    its result, or its exception raised here.

    setns(2) moves only the calling *thread*, and for good; so fn runs on a new thread that
    joins `ns` and then ends, and the caller's namespace never changes. No fork: safe in a
    multi-threaded process (a Jupyter kernel), and what fn makes there — a netlink or packet
    socket, a process it starts — belongs to `ns`. Inside fn, /proc/self/… names the process's
    main thread: use /proc/thread-self/….
    """
    path = _ns_path(ns)
    fd = _open_netns(path, f"network namespace {path}")
    outcome: list[tuple[bool, Any]] = []

    def body() -> None:
        try:
            lsys.setns(fd, lsys.CLONE_NEWNET)
            outcome.append((True, fn(*args, **kwargs)))
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            outcome.append((False, err))

    try:
        worker = threading.Thread(target=body, name=f"netns {path}", daemon=True)
        worker.start()
        worker.join()
    finally:
        os.close(fd)
    ok, value = outcome[0]
    if ok:
        return value
    raise value


class NetnsHolder:
    """A new network namespace, held by a small process (`python -m labkit.net hold NAME`).

    For tests and notebooks: a stand-in container, or "the outside host". The namespace
    lives as long as the process; `close` kills it, and the kernel frees what was inside
    (its end of a veth pair too, which removes the host's end).
    """

    def __init__(self, name: str, timeout: float = 30.0) -> None:
        self.name = name
        self._proc = subprocess.Popen([_sys.executable, "-m", "labkit.net", "hold", name],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self._proc.pid
        self.path = f"/proc/{self.pid}/ns/net"
        try:
            ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
            line = self._proc.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                self.close()
                err = self._proc.stderr.read().decode(errors="replace").strip()
                raise NetError(f"the namespace holder {name!r} did not start: "
                               + (err.splitlines()[-1] if err else f"no answer in {timeout:.0f}s"),
                               "it needs root (unshare CLONE_NEWNET); see `python -m labkit.net hold test`")
        finally:
            self._proc.stdout.close()  # the holder writes nothing more
            self._proc.stderr.close()

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run a command inside the namespace (nsenter joins it by its /proc path)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run([_tool("nsenter"), f"--net={self.path}", "--", *argv], **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        """Start a command inside the namespace and return at once (a server, say)."""
        return subprocess.Popen([_tool("nsenter"), f"--net={self.path}", "--", *argv], **kw)

    def close(self) -> None:
        if self._proc.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()

    def __enter__(self) -> NetnsHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetnsHolder({self.name!r}, pid={self.pid})"


def _hold(name: str) -> None:
    """Body of `python -m labkit.net hold NAME`: unshare, lo up, say "ready", sleep until killed."""
    lsys.set_pdeathsig(signal.SIGKILL)  # never outlive the process that made it
    lsys.unshare(lsys.CLONE_NEWNET)
    subprocess.run([_tool("ip"), "link", "set", "lo", "up"], check=True)  # 127.0.0.1 works inside
    print("ready", flush=True)
    while True:
        signal.pause()


# --- links ------------------------------------------------------------------------------------
# The host's links are read from sysfs, not netlink: no pyroute2 import for a question this
# small. /sys/class/net shows the namespace /sys was mounted in: the host's, for labkit.
def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def is_bridge(link: str) -> bool:
    return os.path.isdir(f"/sys/class/net/{link}/bridge")


def lab_links() -> list[str]:
    """The host's links whose names say they are labkit's (LAB_PREFIXES)."""
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(LAB_PREFIXES))


def delete_link(name: str) -> None:
    """Remove one of labkit's links; a missing one is no error. Deleting either end of a
    veth pair deletes both."""
    _check_name(name)

    def delete(ipr: IPRoute) -> None:
        index = _index(ipr, name)
        if index is not None:
            try:
                ipr.link("del", index=index)
            except Exception as err:  # noqa: BLE001 - netlink errors differ by version
                if getattr(err, "code", None) != errno.ENODEV:  # gone meanwhile: fine
                    raise _net_error(f"delete link {name}", err) from None

    _netlink(delete)


def _random_mac() -> str:
    """A locally administered unicast MAC (bit 1 set, bit 0 clear in the first byte)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def create_bridge(name: str, gateway_cidr: str | None) -> None:
    """A bridge `name`, with address `gateway_cidr` (e.g. "10.210.1.1/24") if given, up.

    Idempotent: an existing bridge with that address is left as it is.
    """
    _check_name(name)
    gateway = _interface(gateway_cidr) if gateway_cidr else None

    def create(ipr: IPRoute) -> None:
        step = "create"
        try:
            index = _index(ipr, name)
            if index is None:
                # A fixed MAC: otherwise the bridge takes the lowest MAC of its ports and changes
                # it as containers come and go, and neighbours' ARP caches go stale (Docker does this too).
                ipr.link("add", ifname=name, kind="bridge", address=_random_mac())
                index = _index(ipr, name)
            else:
                kind = ipr.link("get", index=index)[0].get(("linkinfo", "kind"))
                if kind != "bridge":
                    raise NetError(f"link {name} exists and is a {kind or 'plain link'}, not a bridge",
                                   f"delete it (labkit.net.delete_link({name!r})) or choose another name")
            if gateway is not None:
                step = f"address {gateway}"
                have = [f"{m.get('address')}/{m['prefixlen']}" for m in ipr.get_addr(family=2, index=index)]
                if str(gateway) not in have:
                    if have:
                        raise NetError(f"bridge {name} exists with address {', '.join(have)}, not {gateway}",
                                       f"delete it (labkit.net.delete_link({name!r})) or use its subnet")
                    ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
            step = "up"
            ipr.link("set", index=index, state="up")
        except NetError as err:
            raise _net_error(f"create bridge {name}", err) from None
        except Exception as err:  # noqa: BLE001
            raise _net_error(f"create bridge {name} ({step})", err) from None

    _netlink(create)


def _configure_peer(ifname: str, cidr: str | None, gateway: str | None) -> None:
    """Inside the container's namespace: lo up, the veth end's address, up, default route."""
    def configure(ipr: IPRoute) -> None:
        step = "lo up"
        try:
            ipr.link("set", index=_index(ipr, "lo"), state="up")
            index = _index(ipr, ifname)
            if index is None:
                raise NetError(f"{ifname} did not arrive in the namespace", "check `ip link` inside it")
            if cidr:
                step = f"address {cidr}"
                iface = _interface(cidr)
                ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            step = f"{ifname} up"
            ipr.link("set", index=index, state="up")
            if gateway:
                step = f"default route via {gateway}"
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
        except Exception as err:  # noqa: BLE001
            raise _net_error(f"step '{step}'", err) from None

    _netlink(configure)


def create_veth(host_name: str, ns: int | str, *, bridge: str | None, ifname: str = "eth0",
                cidr: str | None = None, gateway: str | None = None, mac: str | None = None,
                mtu: int | None = None) -> None:
    """A veth pair: `host_name` on the host (a port of `bridge` if given, up); the peer made
    right inside namespace `ns` as `ifname`, with `cidr`, up, lo up, default route via `gateway`.

    On any failure the host end is deleted again (which removes the peer too) and a NetError
    names the step that failed.
    """
    _check_name(host_name)
    _check_name(ifname, ours=False)
    if bridge is not None:
        _check_name(bridge)
    if cidr:
        _interface(cidr)
    if gateway:
        try:
            ipaddress.IPv4Address(gateway)
        except ValueError:
            raise NetError(f"gateway {gateway!r} is not an IPv4 address", "e.g. 10.210.1.1") from None
    path = _ns_path(ns)
    what = f"create veth {host_name} -> {ifname} in {path}"

    def make(ipr: IPRoute, fd: int) -> None:
        if _index(ipr, host_name) is not None:
            raise NetError(f"{what}: link {host_name} exists already",
                           "choose another name, or delete it (labkit.net.delete_link) if it is a leftover")
        # The peer is created inside the namespace (IFLA_NET_NS_FD): its name cannot clash with
        # a host link, and the host never sees it.
        peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": fd}
        if mac:
            peer["address"] = mac
        if mtu:
            peer["mtu"] = mtu
        try:
            ipr.link("add", ifname=host_name, kind="veth", peer=peer, **({"mtu": mtu} if mtu else {}))
        except Exception as err:  # noqa: BLE001
            raise _net_error(f"{what}: step 'create pair'", err) from None

    def attach(ipr: IPRoute) -> None:
        step = "find host end"
        try:
            index = _index(ipr, host_name)
            if bridge is not None:
                step = f"enslave to {bridge}"
                master = _index(ipr, bridge)
                if master is None:
                    raise NetError(f"bridge {bridge} does not exist", "create_bridge() it first")
                ipr.link("set", index=index, master=master)
            step = "host end up"
            ipr.link("set", index=index, state="up")
        except Exception as err:  # noqa: BLE001
            raise _net_error(f"{what}: step '{step}'", err) from None

    fd = _open_netns(path, what)
    try:
        _netlink(make, fd)
    finally:
        os.close(fd)
    try:
        _netlink(attach)
        try:
            run_in_netns(path, _configure_peer, ifname, cidr, gateway)
        except NetError as err:
            raise NetError(f"{what}: {err.what}", err.hint) from None
    except BaseException:
        try:
            delete_link(host_name)
        except NetError:
            pass  # the first error is the one to report
        raise


def set_address(link: str, cidr: str, ns: int | str | None = None) -> None:
    """Add address `cidr` to `link` and bring it up: one of labkit's links on the host, or
    any link inside namespace `ns` (e.g. the host end of an "outside" veth pair)."""
    _check_name(link, ours=ns is None)
    iface = _interface(cidr)

    def add(ipr: IPRoute) -> None:
        try:
            index = _index(ipr, link)
            if index is None:
                raise NetError(f"link {link} does not exist", "check the name with `ip link`")
            ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=index, state="up")
        except Exception as err:  # noqa: BLE001
            raise _net_error(f"address {cidr} on {link}", err) from None

    _netlink_in(ns, add)


def up_loopback(ns: int | str) -> None:
    """Bring `lo` up inside namespace `ns` (a new namespace's lo is down: 127.0.0.1 fails)."""
    run_in_netns(ns, lsys.link_up, "lo")


def addresses(ns: int | str | None = None) -> dict[str, list[str]]:
    """Every link of the host's (or `ns`'s) namespace -> its IPv4 addresses, "10.x.y.z/24"."""
    if ns is not None:
        return run_in_netns(ns, addresses)

    def collect(ipr: IPRoute) -> dict[str, list[str]]:
        names = {m["index"]: m.get("ifname") for m in ipr.get_links()}
        result: dict[str, list[str]] = {name: [] for name in names.values()}
        for m in ipr.get_addr(family=2):
            result.setdefault(names.get(m["index"], str(m["index"])), []).append(
                f"{m.get('address')}/{m['prefixlen']}")
        return result

    return _netlink(collect)


def overlapping_routes(subnet: str) -> list[str]:
    """The host's routes (but the default route) that overlap `subnet`, as "DST dev LINK":
    a lab network there would hide part of the host's network."""
    want = ipaddress.ip_network(subnet, strict=False)

    def collect(ipr: IPRoute) -> list[str]:
        names = {m["index"]: m.get("ifname") for m in ipr.get_links()}
        found = []
        for r in [*ipr.get_routes(family=2, table=254), *ipr.get_routes(family=2, table=255)]:
            if not r["dst_len"]:
                continue  # the default route overlaps everything
            dst = ipaddress.ip_network(f"{r.get('dst')}/{r['dst_len']}", strict=False)
            if dst.overlaps(want) and not dst.is_loopback:
                found.append(f"{dst} dev {names.get(r.get('oif'), r.get('oif'))}")
        return sorted(set(found))

    return _netlink(collect)


def bridge_fdb(bridge: str) -> list[dict]:
    """What the bridge learned: [{"mac", "port" (a link name), "local" (the bridge's own)}]."""
    def collect(ipr: IPRoute) -> list[dict]:
        master = _index(ipr, bridge)
        if master is None:
            raise NetError(f"bridge {bridge} does not exist", "check the name with `ip link`")
        names = {m["index"]: m.get("ifname") for m in ipr.get_links()}
        entries = []
        for m in ipr.fdb("dump"):
            # NTF_SELF entries are a port's own address lists (multicast), not the bridge's table.
            if (m.get("NDA_MASTER") != master and m["ifindex"] != master) or m["flags"] & 0x02:
                continue
            entries.append({"mac": m.get("NDA_LLADDR"), "port": names.get(m["ifindex"], str(m["ifindex"])),
                            "local": bool(m["state"] & 0x80)})  # NUD_PERMANENT: the bridge's own
        return entries

    return _netlink(collect)


def create_vxlan(name: str, vni: int, *, local: str, remote: str, dev: str, port: int = 4789,
                 bridge: str | None = None, ns: int | str | None = None) -> None:
    """A VXLAN tunnel end `name` (segment `vni`): Ethernet frames it is given leave inside UDP
    datagrams from `local` to `remote`:`port` over link `dev` (the underlay), and arrive the
    other way. A port of `bridge` if given; up. In namespace `ns` if given (a simulated host)."""
    _check_name(name, ours=ns is None)
    if not 0 < vni < 1 << 24:
        raise NetError(f"VXLAN id {vni} is out of range", "a VNI has 24 bits: 1 … 16777215")
    for address in (local, remote):
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise NetError(f"{address!r} is not an IPv4 address", "the underlay addresses, e.g. 198.51.100.1") from None

    def make(ipr: IPRoute) -> None:
        step = "create"
        try:
            under = _index(ipr, dev)
            if under is None:
                raise NetError(f"underlay link {dev} does not exist", "create and address it first")
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local, vxlan_group=remote,
                     vxlan_port=port, vxlan_link=under)
            index = _index(ipr, name)
            if bridge is not None:
                step = f"enslave to {bridge}"
                ipr.link("set", index=index, master=_index(ipr, bridge))
            step = "up"
            ipr.link("set", index=index, state="up")
        except NetError:
            raise
        except Exception as err:  # noqa: BLE001
            raise _net_error(f"vxlan {name} ({step})", err) from None

    _netlink_in(ns, make)


def conntrack(ns: int | str | None = None) -> list[dict[str, Any]]:
    """The connection-tracking table (of `ns`, or the host's), as `conntrack -L` prints it:
    [{"proto", "orig": (src, dst, sport, dport), "reply": (...)}]; ports are None for ICMP.
    NAT shows as a reply tuple that is not the original reversed."""
    def dump() -> list[dict[str, Any]]:
        from pyroute2 import Conntrack

        entries = []
        with Conntrack() as ct:
            for e in ct.dump_entries():
                o, r = e.tuple_orig, e.tuple_reply
                entries.append({"proto": o.proto_name or str(o.proto),
                                "orig": (o.saddr, o.daddr, o.sport, o.dport),
                                "reply": (r.saddr, r.daddr, r.sport, r.dport)})
        return entries

    return _off_loop(dump) if ns is None else run_in_netns(ns, dump)


class PacketCapture:
    """Every frame that crosses `link` in namespace `ns` (an AF_PACKET socket, tcpdump's):
    open it, make the traffic, then read `frames()`. Use it as a context manager."""

    ETH_P_ALL = 0x0003

    def __init__(self, ns: int | str, link: str) -> None:
        import socket

        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(self.ETH_P_ALL))
            try:
                sock.bind((link, 0))  # the name is looked up in the socket's namespace
            except OSError as err:
                sock.close()
                raise NetError(f"capture on {link}: {err.strerror}", "check the link's name inside the namespace") from None
            return sock

        self.sock = run_in_netns(ns, open_socket)

    def frames(self, match: Callable[[bytes], bool] = lambda frame: True, count: int = 1,
               timeout: float = 5.0) -> list[bytes]:
        """The next `count` frames that `match` accepts (fewer if `timeout` seconds pass first)."""
        import time

        found: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                frame = self.sock.recv(65535)
                if match(frame):
                    found.append(frame)
        return found

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PacketCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- sysctls -------------------------------------------------------------------------------------
def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def set_link_sysctl(link: str, key: str, value: str, ns: int | str | None = None) -> None:
    """net.ipv4.conf.<link>.<key> = value: a per-link setting, gone with the link. On the
    host only for labkit's own links; inside `ns` for any."""
    _check_name(link, ours=ns is None)
    if not re.fullmatch(r"[a-z0-9_]+", key):
        raise NetError(f"{key!r} is not a per-link sysctl name", "e.g. route_localnet, forwarding, rp_filter")
    path = f"/proc/sys/net/ipv4/conf/{link}/{key}"
    try:
        if ns is None:
            _write(path, value)
        else:  # /proc/sys/net shows the namespace of the process that opens it
            run_in_netns(ns, _write, path, value)
    except OSError as err:
        raise NetError(f"cannot set {path} = {value}: {err.strerror}",
                       "the link or the setting does not exist: check `ls /proc/sys/net/ipv4/conf/`") from None


def sysctl_record() -> str:
    """The state file with the original values of the host sysctls labkit changed."""
    from . import settings
    return os.path.join(settings.run_root(), "net-sysctl.json")


def changed_host_sysctls(record: str | None = None) -> dict[str, str]:
    """key -> the value labkit found before it changed it."""
    try:
        with open(record or sysctl_record()) as f:
            return dict(json.load(f))
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}


def _save_record(record: str, saved: dict[str, str]) -> None:
    if not saved:
        try:
            os.unlink(record)
        except FileNotFoundError:
            pass
        return
    os.makedirs(os.path.dirname(record), exist_ok=True)
    tmp = f"{record}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(saved, f, indent=1, sort_keys=True)
    os.replace(tmp, record)  # atomic: a crash leaves the old or the new record, never half of one


def set_host_sysctl(key: str, value: str) -> None:
    """Set a host-wide sysctl (e.g. "net.ipv4.ip_forward", "1"), recording its original value
    first, once; `restore_host_sysctls` writes the originals back. An unchanged value is not
    recorded: then labkit changed nothing and has nothing to restore."""
    from .sysctl import dotted, proc_path
    name = dotted(key)
    path = proc_path(name)
    if any(p in ("", ".", "..") for p in path.removeprefix("/proc/sys/").split("/")):
        raise NetError(f"{key!r} is not a sysctl name", "e.g. net.ipv4.ip_forward")
    try:
        current = _read(path)
        record = sysctl_record()
        saved = changed_host_sysctls(record)
        if current != value and name not in saved:
            saved[name] = current
            _save_record(record, saved)  # before writing: a crash in between still restores
        if current != value:
            _write(path, value)
    except OSError as err:
        raise NetError(f"cannot set {name} = {value}: {err.strerror}",
                       "this needs root, and the setting must exist in /proc/sys") from None


def restore_host_sysctls(only: Iterable[str] | None = None, record: str | None = None) -> list[str]:
    """Write back every recorded original (or those of the keys `only`) and drop them from the
    record; returns what was restored, as "key=value"."""
    from .sysctl import proc_path
    record = record or sysctl_record()
    saved = changed_host_sysctls(record)
    done = []
    for name in list(saved if only is None else [k for k in only if k in saved]):
        try:
            _write(proc_path(name), saved[name])
        except OSError as err:
            raise NetError(f"cannot restore {name} = {saved[name]}: {err.strerror}",
                           "this needs root; the original value is kept in " + record) from None
        done.append(f"{name}={saved.pop(name)}")
        _save_record(record, saved)
    return done


def route_localnet(bridge: str) -> None:
    """Let packets from 127.0.0.0/8 leave through `bridge`: a port published on 127.0.0.1 is
    DNAT'd to a container, and the kernel drops loopback sources on other links without it.
    A per-link setting of labkit's own bridge: it goes with the bridge."""
    set_link_sysctl(bridge, "route_localnet", "1")


# --- nftables --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BridgeNet:
    """A lab network: its bridge, subnet ("10.210.1.0/24") and gateway (the bridge's address)."""

    link: str
    subnet: str
    gateway: str
    internal: bool = False  # no way out, no way in: only between its containers


@dataclasses.dataclass(frozen=True)
class PortMap:
    """A published port: host_ip:host_port (host_ip None: every host address) -> container."""

    proto: str  # "tcp" | "udp"
    host_ip: str | None
    host_port: int
    container_ip: str
    container_port: int


_COMMENT_MAX = 128  # nft refuses longer rule comments


def _rule(statement: str, why: str) -> str:
    why = why.replace('"', "'")
    if len(why) > _COMMENT_MAX:
        raise NetError(f"nft comment too long ({len(why)} > {_COMMENT_MAX}): {why}", "shorten it")
    return f'{statement} comment "{why}"'


def _names(links: list[str]) -> str:
    """One quoted name, or an anonymous set of them."""
    quoted = [f'"{n}"' for n in links]
    return quoted[0] if len(quoted) == 1 else "{ " + ", ".join(quoted) + " }"


def _check_state(bridges: list[BridgeNet], ports: list[PortMap]) -> None:
    for b in bridges:
        _check_name(b.link)
        try:
            net = ipaddress.IPv4Network(b.subnet)
            if ipaddress.IPv4Address(b.gateway) not in net:
                raise ValueError(f"gateway {b.gateway} is outside {b.subnet}")
        except ValueError as err:
            raise NetError(f"network on {b.link}: {err}", "use e.g. subnet 10.210.1.0/24, gateway 10.210.1.1") from None
    if len({b.link for b in bridges}) != len(bridges):
        raise NetError("a bridge is listed twice", "pass each lab network once")
    seen: dict[tuple[str, int], list[str | None]] = {}
    for p in ports:
        if p.proto not in ("tcp", "udp"):
            raise NetError(f"port protocol {p.proto!r}", 'use "tcp" or "udp"')
        for port in (p.host_port, p.container_port):
            if not isinstance(port, int) or not 0 < port < 65536:
                raise NetError(f"port {port!r} is not a port number", "use 1..65535")
        try:
            for ip in (p.container_ip, p.host_ip or "0.0.0.0"):
                ipaddress.IPv4Address(ip)
        except ValueError as err:
            raise NetError(f"published port {p.host_port}/{p.proto}: {err}", "use IPv4 addresses") from None
        others = seen.setdefault((p.proto, p.host_port), [])
        if any(o is None or p.host_ip is None or o == p.host_ip for o in others):
            raise NetError(f"port {p.host_port}/{p.proto} is published twice on the same host address",
                           "choose another host port (as Docker: 'port is already allocated')")
        others.append(p.host_ip)


def ruleset(bridges: list[BridgeNet], ports: list[PortMap], guard_forwarding: bool, table: str = TABLE) -> str:
    """The text of `table inet labkit { ... }` for these networks and published ports (IPv4).

    Docker's behaviour, written as nftables rules: published ports are DNAT'd, containers
    reach the outside masqueraded, networks cannot reach each other, internal networks
    nothing beyond their bridge, and nobody opens a connection into a container except
    through a published port. With no networks and no ports it is an empty, harmless table.
    """
    _check_state(bridges, ports)
    dnat = []
    for p in ports:
        target = f"{p.container_ip}:{p.container_port}"
        if p.host_ip is None:
            match, where = "meta nfproto ipv4 fib daddr type local", "any host address"
        else:
            match, where = f"ip daddr {p.host_ip}", p.host_ip
        dnat.append(_rule(f"{match} {p.proto} dport {p.host_port} dnat ip to {target}",
                          f"published port: {where}:{p.host_port}/{p.proto} -> container {target}"))

    post = []
    for b in bridges:
        if not b.internal:
            post.append(_rule(f'ip saddr {b.subnet} oifname != "{b.link}" masquerade',
                              f"containers on {b.link} reach other networks with the address of the host's outgoing link"))
        post.append(_rule(f'ct status dnat ip saddr {b.subnet} oifname "{b.link}" masquerade',
                          "hairpin: a container used a published port via the host; the answer must come back via the host"))
        post.append(_rule(f'ip saddr 127.0.0.0/8 oifname "{b.link}" masquerade',
                          "a published port used at 127.0.0.1 by the host: 127.x cannot be a source on a wire"))

    forward = []
    if guard_forwarding:
        forward.append(_rule(f'iifname != "{LINK_PREFIX}*" iifname != "labkit*" '
                             f'oifname != "{LINK_PREFIX}*" oifname != "labkit*" drop',
                             "not labkit's: labkit turned ip_forward on; the host's own links stay unforwarded, as before"))
    for b in bridges:
        if b.internal:
            forward.append(_rule(f'iifname "{b.link}" oifname != "{b.link}" drop',
                                 f"internal network {b.link}: its containers reach nothing beyond their bridge"))
            forward.append(_rule(f'oifname "{b.link}" iifname != "{b.link}" drop',
                                 f"internal network {b.link}: nothing beyond its bridge reaches its containers"))
    outward = [b for b in bridges if not b.internal]
    if outward:
        forward.append(_rule("ct status dnat accept", "published ports: connections the nat chains sent to a container"))
    for b in outward:
        others = [o.link for o in bridges if o.link != b.link]
        if others:
            forward.append(_rule(f'iifname "{b.link}" oifname {_names(others)} drop',
                                 f"isolation: containers on {b.link} cannot reach other labkit networks"))
    for b in outward:
        forward.append(_rule(f'oifname "{b.link}" ct state established,related accept',
                             f"answers to connections that containers on {b.link} opened"))
        forward.append(_rule(f'oifname "{b.link}" iifname "{b.link}" accept',
                             f"between containers of {b.link} (seen here when br_netfilter is loaded)"))
        forward.append(_rule(f'oifname "{b.link}" drop',
                             f"nobody else opens connections to containers on {b.link}: publish a port"))

    def chain(name: str, hook: str, rules: list[str]) -> list[str]:
        return [f"\tchain {name} {{", f"\t\t{hook}", *(f"\t\t{r}" for r in rules), "\t}"]

    lines = [f"table inet {table} {{",
             '\tcomment "generated by labkit.net.ruleset(): replaced as a whole on every change"',
             *chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", dnat),
             *chain("output", "type nat hook output priority -100; policy accept;", dnat),
             *chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", post),
             *chain("forward", "type filter hook forward priority filter; policy accept;", forward),
             "}"]
    return "\n".join(lines) + "\n"


def _only_our_table(text: str, table: str = TABLE) -> None:
    """Refuse text that would touch anything but `table inet labkit` (labkit touches no one else's)."""
    depth, top = 0, []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        if depth == 0 and line.strip():
            top.append(line.strip())
        depth += line.count("{") - line.count("}")
    if not top or not all(t == f"table inet {table} {{" or t == "}" for t in top):
        raise NetError(f"the ruleset must be exactly one `table inet {table} {{ ... }}`",
                       "generate it with labkit.net.ruleset()")


def _nft(args: list[str], text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("nft"), *args], input=text, capture_output=True, text=True, timeout=120)


# Adding an empty table first makes the delete succeed whether or not it exists; all in one
# transaction, so the old table is replaced at once (no moment without rules).
def _replace(table: str) -> str:
    if not table.startswith(TABLE):
        raise NetError(f"nft table {table!r} is not labkit's", f"labkit's tables are named {TABLE} or {TABLE}-…")
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def _nft_error(what: str, result: subprocess.CompletedProcess) -> NetError:
    message = result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}"
    hint = ("this needs root (CAP_NET_ADMIN)" if "Operation not permitted" in message else
            "the kernel may lack an nftables module (nf_tables, nft_nat, nft_fib, nft_ct, nft_masq): "
            "see `labkit doctor`; line numbers count two lines added before the table")
    return NetError(f"{what}: {message}", hint)


def apply_ruleset(text: str, table: str = TABLE) -> None:
    """Replace table inet `table` by `text` atomically (create it if missing)."""
    _only_our_table(text, table)
    result = _nft(["-f", "-"], _replace(table) + text)
    if result.returncode:
        raise _nft_error("nft rejected the ruleset", result)


def check_ruleset(text: str, table: str = TABLE) -> None:
    """Validate `text` as apply_ruleset would apply it, without changing anything (nft -c)."""
    _only_our_table(text, table)
    result = _nft(["-c", "-f", "-"], _replace(table) + text)
    if result.returncode:
        raise _nft_error("nft -c rejected the ruleset", result)


def remove_table(table: str = TABLE) -> None:
    """Delete table inet `table` if it exists."""
    result = _nft(["-f", "-"], _replace(table))
    if result.returncode:
        raise _nft_error(f"cannot delete table inet {table}", result)


def table_exists(table: str = TABLE) -> bool:
    result = _nft(["list", "tables", "inet"])
    if result.returncode:
        raise _nft_error("nft list tables", result)
    return f"table inet {table}" in result.stdout.splitlines()


def list_table(table: str = TABLE) -> str:
    """`nft list table inet labkit`: the rules as the kernel has them."""
    result = _nft(["list", "table", "inet", table])
    if result.returncode:
        raise _nft_error(f"nft list table inet {table}", result)
    return result.stdout


if __name__ == "__main__":
    if len(_sys.argv) == 3 and _sys.argv[1] == "hold":
        _hold(_sys.argv[2])
    print("usage: python -m labkit.net hold NAME", file=_sys.stderr)
    raise SystemExit(2)
