"""Engine networks: Docker's `network` objects, their addresses (IPAM) and published ports.

    <data root>/networks/<id>.json   one record per network: name, subnet, gateway, its bridge
                                     link, and its endpoints {container id: ip, mac, aliases}
    <data root>/networks/.lock       flock: every change of a network record (IPAM happens here)
    <run root>/net.lock              flock, host-wide: choosing a subnet, making a bridge and
                                     writing the nft table (other data roots share the kernel)

As in Docker, three networks always exist: `bridge` (the default: a Linux bridge, NAT out,
no DNS by name), `host` (the host's own network namespace) and `none` (only lo). User
networks (`labkit network create`) are bridges too, isolated from each other, and their
containers find each other by name through the embedded DNS server (labkit.engine.dns).

An address is allocated when a container joins a network (at create, or `network connect`)
and released when it leaves (rm, `network disconnect`): never twice, also under concurrent
runs, because allocation happens under the network lock. Records survive a restart of the
machine; the kernel objects (bridges, the nft table) are made again when first needed.
The kernel side is labkit.net's; this module decides *what* should exist.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterator

from .. import settings
from .errors import Conflict, Invalid, NotFound
from .records import _flock, write_json_atomic
from .timefmt import now_ns, rfc3339_nano

PREDEFINED = ("bridge", "host", "none")
POOL = ipaddress.ip_network("10.210.0.0/16")  # user and default bridge subnets: /24s from here
SUBNET_PREFIX = 24
DEFAULT_BRIDGE_LINK = "labkit0"  # the default data root's `bridge` (Docker's docker0)
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # Docker's network name rule


class Forbidden(Conflict):
    """Docker answers 403 for these (a predefined network, one with active endpoints)."""

    http_status = 403


@dataclass
class Endpoint:
    """A container's place on one network."""

    ip: str
    mac: str
    aliases: list[str] = field(default_factory=list)
    link: str = ""  # the host end of its veth while it runs
    joined: int = field(default_factory=now_ns)  # eth0 is the first network joined, eth1 the next…

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Network:
    id: str
    name: str
    driver: str                     # "bridge" | "host" | "null"
    subnet: str = ""
    gateway: str = ""
    internal: bool = False
    link: str = ""                  # the Linux bridge (bridge driver)
    labels: dict[str, str] = field(default_factory=dict)
    created: int = field(default_factory=now_ns)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    @property
    def predefined(self) -> bool:
        return self.name in PREDEFINED

    @property
    def user_defined(self) -> bool:
        """Docker gives these (only) DNS by container name and --ip."""
        return self.driver == "bridge" and self.name != "bridge"

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen if self.subnet else 0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["created"] = rfc3339_nano(self.created)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Network":
        from .timefmt import parse_rfc3339

        kw = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        kw["endpoints"] = {cid: Endpoint(**e) for cid, e in d.get("endpoints", {}).items()}
        kw["created"] = parse_rfc3339(d["created"]) if isinstance(d.get("created"), str) else d.get("created", 0)
        return cls(**kw)


def mac_for(ip: str) -> str:
    """Docker's MAC for an address: 02:42 and the four bytes of the IPv4 address."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed)


def host_routes() -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations the host routes now (from every link): a new subnet must not overlap."""
    found = []
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            fields = line.split()
            dest, mask = (ipaddress.IPv4Address(bytes.fromhex(x)[::-1]) for x in (fields[1], fields[7]))
            if int(mask):  # the default route overlaps everything and means nothing here
                found.append(ipaddress.ip_network(f"{dest}/{mask}", strict=False))
    return found


class NetworkStore:
    """The networks of one data root."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or os.path.join(settings.data_root(), "networks")

    def __repr__(self) -> str:
        return f"<NetworkStore {self.root}>"

    # -- locks and files ---------------------------------------------------------------
    def lock(self) -> contextlib.AbstractContextManager[None]:
        os.makedirs(self.root, exist_ok=True)
        return _flock(os.path.join(self.root, ".lock"))

    @staticmethod
    def host_lock() -> contextlib.AbstractContextManager[None]:
        os.makedirs(settings.run_root(), exist_ok=True)
        return _flock(os.path.join(settings.run_root(), "net.lock"))

    def _path(self, nid: str) -> str:
        return os.path.join(self.root, nid + ".json")

    def _save(self, net: Network) -> None:
        write_json_atomic(self._path(net.id), net.to_json())

    def _all(self) -> list[Network]:
        if not os.path.isdir(self.root):
            return []
        out = []
        for entry in sorted(os.listdir(self.root)):
            if entry.endswith(".json") and not entry.startswith("."):
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    with open(os.path.join(self.root, entry)) as f:
                        out.append(Network.from_json(json.load(f)))
        return out

    # -- reading -----------------------------------------------------------------------
    def list(self) -> list[Network]:
        """Every network, the predefined ones made if missing (as dockerd makes them at start)."""
        nets = self._all()
        if not all(any(n.name == p for n in nets) for p in PREDEFINED):
            with self.lock():
                self._ensure_predefined()
            nets = self._all()
        return sorted(nets, key=lambda n: (n.name not in PREDEFINED, n.name))

    def get(self, ref: str) -> Network:
        """By name, full id or unique id prefix (Docker's order)."""
        return self._find(ref, self.list())

    def _get_locked(self, ref: str) -> Network:
        """`get` for a caller that holds the lock (flock does not nest across open files)."""
        self._ensure_predefined()
        return self._find(ref, self._all())

    @staticmethod
    def _find(ref: str, nets: list[Network]) -> Network:
        for match in (lambda n: n.name == ref, lambda n: n.id == ref, lambda n: n.id.startswith(ref)):
            found = [n for n in nets if ref and match(n)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise Invalid(f"network {ref} is ambiguous ({len(found)} matches found based on ID prefix)")
        raise NotFound(f"network {ref} not found", "`labkit network ls` lists the networks")

    def of_container(self, cid: str) -> list[tuple[Network, Endpoint]]:
        """The networks a container is on, in the order it joined them."""
        pairs = [(n, n.endpoints[cid]) for n in self._all() if cid in n.endpoints]
        return sorted(pairs, key=lambda p: p[1].joined)

    # -- making and removing networks --------------------------------------------------
    def _ensure_predefined(self) -> None:
        have = {n.name for n in self._all()}
        for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
            if name not in have:
                net = Network(id=_new_id(), name=name, driver=driver)
                if driver == "bridge":
                    net.link = self._default_bridge_link()
                    with self.host_lock():
                        net.subnet, net.gateway = self._free_subnet()
                self._save(net)

    def _default_bridge_link(self) -> str:
        """labkit0 for the machine's data root; a test's or notebook's own root gets its own."""
        default = os.path.realpath(self.root) == os.path.join(settings.DEFAULT_DATA_ROOT, "networks")
        return DEFAULT_BRIDGE_LINK if default else "lkbr" + hashlib.sha256(self.root.encode()).hexdigest()[:6] + "0"

    def create(self, name: str, subnet: str | None = None, gateway: str | None = None, internal: bool = False,
               labels: dict[str, str] | None = None, driver: str = "bridge") -> Network:
        """`docker network create`: a bridge network with its own subnet (chosen if not given)."""
        if not _NAME.match(name or ""):
            raise Invalid(f"invalid network name {name!r}: use letters, digits, '_', '.' and '-', "
                          "starting with a letter or digit")
        if driver != "bridge":
            raise Invalid(f"network driver {driver!r} is not supported by labkit: use bridge (the default)")
        with self.lock():
            self._ensure_predefined()
            if any(n.name == name for n in self._all()):
                raise Conflict(f"network with name {name} already exists")
            net = Network(id=_new_id(), name=name, driver="bridge", internal=internal, labels=dict(labels or {}))
            net.link = "lkbr" + net.id[:10]
            with self.host_lock():
                net.subnet, net.gateway = self._chosen_subnet(subnet, gateway) if subnet else self._free_subnet()
                self._save(net)
                try:
                    self._make_link(net)  # its route keeps other data roots off this subnet
                except BaseException:
                    os.unlink(self._path(net.id))
                    raise
        return net

    def _chosen_subnet(self, subnet: str, gateway: str | None) -> tuple[str, str]:
        try:
            wanted = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise Invalid(f"invalid subnet {subnet!r}: use CIDR notation, e.g. 10.210.7.0/24") from None
        if wanted.version != 4 or wanted.prefixlen > 30:
            raise Invalid(f"subnet {subnet}: labkit networks are IPv4 with room for containers (/30 or larger)")
        if str(wanted.network_address) != subnet.split("/")[0]:
            raise Invalid(f"invalid subnet {subnet}: it has host bits set (did you mean {wanted}?)")
        taken = [ipaddress.ip_network(n.subnet) for n in self._all() if n.subnet] + host_routes()
        if any(wanted.overlaps(t) for t in taken):
            raise Forbidden(f"Pool overlaps with other one on this address space ({subnet})",
                            "choose a subnet no other network or host route uses (`ip route` shows the host's)")
        gw = gateway or str(next(wanted.hosts()))
        if ipaddress.ip_address(gw) not in _usable(wanted):
            raise Invalid(f"gateway {gw} is not a usable address of subnet {subnet}")
        return str(wanted), gw

    def _free_subnet(self) -> tuple[str, str]:
        taken = [ipaddress.ip_network(n.subnet) for n in self._all() if n.subnet] + host_routes()
        for candidate in POOL.subnets(new_prefix=SUBNET_PREFIX):
            if not any(candidate.overlaps(t) for t in taken):
                return str(candidate), str(next(candidate.hosts()))
        raise Conflict(f"could not find an available, non-overlapping IPv4 address pool among {POOL}",
                       "remove unused networks (`labkit network prune`) or give --subnet")

    def ensure_link(self, net: Network) -> bool:
        """The network's bridge exists, with its gateway address (made on first use, and again
        after a reboot). Whether it was made now."""
        from .. import net as knet

        if net.driver != "bridge" or knet.link_exists(net.link):
            return False
        with self.host_lock():
            self._make_link(net)
        return True

    @staticmethod
    def _make_link(net: Network) -> None:
        from .. import net as knet

        knet.create_bridge(net.link, f"{net.gateway}/{net.prefix_len}")
        knet.route_localnet(net.link)

    def remove(self, ref: str) -> Network:
        """`docker network rm`: refused for predefined networks and while containers use it."""
        from .. import net as knet

        with self.lock():
            net = self._get_locked(ref)
            if net.predefined:
                raise Forbidden(f"{net.name} is a pre-defined network and cannot be removed")
            if net.endpoints:
                raise Forbidden(f"error while removing network: network {net.name} id {net.id} has active endpoints",
                                "remove or disconnect its containers first (`labkit network inspect` lists them)")
            with self.host_lock():
                knet.delete_link(net.link)
                os.unlink(self._path(net.id))
        return net

    def remove_all(self) -> list[str]:
        """Every network record and bridge of this data root (a test's or chapter's cleanup);
        the caller removed the containers first."""
        from .. import net as knet

        gone = []
        with self.lock(), self.host_lock():
            for net in self._all():
                if net.link:
                    knet.delete_link(net.link)
                os.unlink(self._path(net.id))
                gone.append(net.name)
        return gone

    # -- endpoints (IPAM) ---------------------------------------------------------------
    def connect(self, ref: str, cid: str, aliases: list[str] | None = None, ip: str | None = None) -> Network:
        """Give container `cid` an endpoint (an address) on the network."""
        with self.lock():
            net = self._get_locked(ref)
            if net.driver != "bridge":
                raise Invalid(f"container cannot be connected to network {net.name}: a {net.name} network "
                              "is chosen with --network at create, not connected")
            if cid in net.endpoints:
                raise Forbidden(f"endpoint with name {cid[:12]} already exists in network {net.name}")
            if ip and not net.user_defined:
                raise Invalid("user specified IP address is supported on user defined networks only")
            if aliases and not net.user_defined:
                raise Invalid("network-scoped alias is supported only for containers in user defined networks")
            address = self._allocate(net, ip)
            net.endpoints[cid] = Endpoint(ip=address, mac=mac_for(address), aliases=list(aliases or []))
            self._save(net)
        return net

    def _allocate(self, net: Network, wanted: str | None) -> str:
        subnet = ipaddress.ip_network(net.subnet)
        used = {e.ip for e in net.endpoints.values()} | {net.gateway}
        if wanted:
            try:
                address = ipaddress.ip_address(wanted)
            except ValueError:
                raise Invalid(f"invalid IP address {wanted!r}") from None
            if address not in _usable(subnet):
                raise Invalid(f"IP address {wanted} is not a usable address of network {net.name} ({net.subnet})")
            if wanted in used:
                raise Conflict(f"Address already in use: {wanted} on network {net.name}")
            return wanted
        for address in _usable(subnet):
            if str(address) not in used:
                return str(address)
        raise Conflict(f"no available IPv4 addresses on network {net.name} ({net.subnet})",
                       "remove containers from it, or create a network with a larger --subnet")

    def disconnect(self, ref: str, cid: str) -> Network:
        with self.lock():
            net = self._get_locked(ref)
            if cid not in net.endpoints:
                raise NotFound(f"container {cid[:12]} is not connected to network {net.name}")
            del net.endpoints[cid]
            self._save(net)
        return net

    def release(self, cid: str) -> list[Network]:
        """Every endpoint of a removed container: its addresses are free again. The networks
        it left. Bridges stay (as Docker's docker0) until their network is removed or the
        data root cleared (remove_all)."""
        left = []
        if not os.path.isdir(self.root):
            return left
        with self.lock():
            for net in self._all():
                if net.endpoints.pop(cid, None) is not None:
                    self._save(net)
                    left.append(net)
        return left

    def set_link(self, ref: str, cid: str, link: str) -> None:
        """Record the host end of a running container's veth (or "" once it is gone)."""
        with self.lock():
            net = self._get_locked(ref)
            if cid in net.endpoints:
                net.endpoints[cid].link = link
                self._save(net)


def _usable(subnet: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Address]:
    """The addresses a container or gateway may have: not the network or broadcast address."""
    return subnet.hosts()


def _new_id() -> str:
    return secrets.token_hex(32)
