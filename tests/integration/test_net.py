"""labkit.net on the real kernel: NetnsHolders stand in for containers and for "the outside host".

Traffic goes only to loopback and to addresses inside the namespaces made here: lab
networks in 10.210.0.0/16, the outside host in 198.18.0.0/15 (the benchmark range),
each subnet checked against the host's routes first.

    lkt<tok>a  bridge A  10.210.a.0/24   c1 .2 (a TCP server on :80), c2 .3
    lkt<tok>b  bridge B  10.210.b.0/24   c3 .2
    lkt<tok>i  bridge I  10.210.i.0/24   c4 .2   (internal)
    lkt<tok>o  veth      198.18.o.1/24 <-> outside .2 (a TCP server on SERVER_PORT)
"""
from __future__ import annotations

import os
import random
import secrets
import select
import socket
import subprocess
import sys
import types

import pytest

from labkit import doctor, net
from labkit.net import BridgeNet, PortMap

pytestmark = [pytest.mark.root]

TOKEN = secrets.token_hex(2)
SERVER_PORT = 7
FORWARD = "net.ipv4.ip_forward"

# Answers each connection with "<peer address> <what it received>": who the server saw.
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    with c:
        c.settimeout(5)
        try:
            c.sendall(peer[0].encode() + b" " + c.recv(1024))
        except OSError:
            pass
"""


def link(suffix: str) -> str:
    return f"lkt{TOKEN}{suffix}"


def free_subnets(first: str, candidates: range, count: int) -> list[str]:
    """`count` /24s FIRST.N.0/24 that overlap none of the host's routes."""
    found = []
    for n in random.sample(list(candidates), len(candidates)):
        subnet = f"{first}.{n}.0/24"
        if not net.overlapping_routes(subnet):
            found.append(subnet)
            if len(found) == count:
                return found
    pytest.skip(f"no free subnet in {first}.x.0/24")


def free_port() -> int:
    """A TCP port nothing on the host listens on (on any address)."""
    while True:
        port = random.randint(20000, 40000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue


def host(subnet: str, n: int) -> str:
    """Address N of a /24: host("10.210.7.0/24", 2) == "10.210.7.2"."""
    return subnet.rsplit(".", 1)[0] + f".{n}"


def request(ip: str, port: int, timeout: float = 10.0) -> str:
    """Connect, send "hi", return the answer (run on the host, or in a namespace via run_in_netns)."""
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(b"hi")
        s.shutdown(socket.SHUT_WR)
        return s.recv(1024).decode()


def reaches(ns, ip: str, port: int, timeout: float = 2.0) -> bool:
    try:
        net.run_in_netns(ns, request, ip, port, timeout)
        return True
    except OSError:
        return False


def ping(holder: net.NetnsHolder, ip: str, wait: int = 2) -> bool:
    return holder.run(["busybox", "ping", "-c1", f"-W{wait}", ip], timeout=30).returncode == 0


def start_server(holder: net.NetnsHolder, ip: str, port: int) -> subprocess.Popen:
    proc = holder.popen([sys.executable, "-c", SERVER, ip, str(port)],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready or proc.stdout.readline().strip() != b"listening":
        proc.kill()
        raise AssertionError(f"server in {holder.name} did not start: {proc.stderr.read().decode()}")
    return proc


def ours(leaks: list[doctor.Leak]) -> set[str]:
    """This module's leaks: its links and holders, the nft table, recorded sysctls."""
    return {str(leak) for leak in leaks if TOKEN in leak.name or leak.kind in ("nft", "sysctl")}


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if net.table_exists():
        pytest.skip("table inet labkit exists: another labkit (an engine, a notebook) is using it")
    before = ours(doctor.leaks())
    sub_a, sub_b, sub_i = free_subnets("10.210", range(100, 250), 3)
    (sub_o,) = free_subnets("198.18", range(100, 250), 1)
    lab = types.SimpleNamespace(A=link("a"), B=link("b"), I=link("i"), O=link("o"),
                                sub_a=sub_a, sub_b=sub_b, sub_i=sub_i, sub_o=sub_o,
                                holders=[], servers=[], veths=[])
    lab.bridges = [BridgeNet(lab.A, sub_a, host(sub_a, 1)), BridgeNet(lab.B, sub_b, host(sub_b, 1)),
                   BridgeNet(lab.I, sub_i, host(sub_i, 1), internal=True)]
    try:
        for bridge in lab.bridges:
            net.create_bridge(bridge.link, f"{bridge.gateway}/24")
        net.route_localnet(lab.A)

        def container(name: str, bridge: BridgeNet, n: int, mac: str | None = None) -> net.NetnsHolder:
            holder = net.NetnsHolder(f"{TOKEN}-{name}")
            lab.holders.append(holder)
            veth = link(name)
            net.create_veth(veth, holder.pid, bridge=bridge.link, cidr=f"{host(bridge.subnet, n)}/24",
                            gateway=bridge.gateway, mac=mac)
            lab.veths.append(veth)
            return holder

        lab.c1_mac = "02:42:0a:d2:00:02"
        lab.c1 = container("c1", lab.bridges[0], 2, mac=lab.c1_mac)
        lab.c2 = container("c2", lab.bridges[0], 3)
        lab.c3 = container("c3", lab.bridges[1], 2)
        lab.c4 = container("c4", lab.bridges[2], 2)
        lab.ip1, lab.ip2, lab.ip3, lab.ip4 = (host(sub_a, 2), host(sub_a, 3), host(sub_b, 2), host(sub_i, 2))

        # the outside host: a veth pair without a bridge, the host's end addressed
        lab.outside = net.NetnsHolder(f"{TOKEN}-outside")
        lab.holders.append(lab.outside)
        lab.host_o, lab.ip_o = host(sub_o, 1), host(sub_o, 2)
        net.create_veth(lab.O, lab.outside.pid, bridge=None, cidr=f"{lab.ip_o}/24", gateway=lab.host_o)
        lab.veths.append(lab.O)
        net.set_address(lab.O, f"{lab.host_o}/24")

        lab.servers.append(start_server(lab.outside, lab.ip_o, SERVER_PORT))
        lab.servers.append(start_server(lab.c1, lab.ip1, 80))
        lab.port_local, lab.port_any = free_port(), free_port()
        while lab.port_any == lab.port_local:
            lab.port_any = free_port()
        lab.ports = [PortMap("tcp", "127.0.0.1", lab.port_local, lab.ip1, 80),
                     PortMap("tcp", None, lab.port_any, lab.ip1, 80)]
        lab.forward_was = net._read("/proc/sys/net/ipv4/ip_forward")
        net.set_host_sysctl(FORWARD, "1")
        lab.apply = lambda guard=True: net.apply_ruleset(net.ruleset(lab.bridges, lab.ports, guard))
        lab.apply()
        yield lab
    finally:
        for proc in lab.servers:
            proc.kill()
            proc.wait()
        net.remove_table()
        for name in lab.veths + [lab.A, lab.B, lab.I]:  # the host's ends first: synchronous, unlike a
            net.delete_link(name)                      # namespace's cleanup after its holder dies
        for holder in lab.holders:
            holder.close()
        net.restore_host_sysctls()
        if hasattr(lab, "forward_was"):
            assert net._read("/proc/sys/net/ipv4/ip_forward") == lab.forward_was
    gained = ours(doctor.leaks()) - before
    assert not gained, f"left behind: {gained}"


# --- namespaces -------------------------------------------------------------------------------
def test_holder_holds_a_new_namespace_and_is_found_by_doctor():
    holder = net.NetnsHolder(f"{TOKEN}-solo")
    try:
        assert os.stat(holder.path).st_ino != os.stat("/proc/self/ns/net").st_ino
        assert net.addresses(holder.pid) == {"lo": ["127.0.0.1/8"]}  # only lo, and it is up
        assert ping(holder, "127.0.0.1")
        found = [leak for leak in doctor.leaks() if leak.pid == holder.pid]
        assert [(leak.kind, leak.name) for leak in found] == [("process", f"netns holder {TOKEN}-solo (pid {holder.pid})")]
    finally:
        holder.close()
        holder.close()  # idempotent
    assert not [leak for leak in doctor.leaks() if leak.pid == holder.pid]


def test_run_in_netns_returns_and_reraises(lab):
    own = os.stat("/proc/self/ns/net").st_ino
    assert net.run_in_netns(lab.c1.pid, lambda: os.stat("/proc/thread-self/ns/net").st_ino) == os.stat(lab.c1.path).st_ino
    assert net.run_in_netns(lab.c1.path, lambda a, b: {"sum": a + b}, 2, 3) == {"sum": 5}
    with pytest.raises(ValueError, match="invalid literal"):
        net.run_in_netns(lab.c1.pid, int, "x")

    def fail():
        raise net.NetError("inside", "do this")

    with pytest.raises(net.NetError) as info:
        net.run_in_netns(lab.c1.pid, fail)
    assert (info.value.what, info.value.hint) == ("inside", "do this")
    with pytest.raises(net.NetError, match="cannot open the namespace"):
        net.run_in_netns("/proc/0/ns/net", int)
    assert os.stat("/proc/self/ns/net").st_ino == own  # the caller never moved


def test_addresses_and_sysctls_inside(lab):
    assert net.addresses(lab.c1.pid)["eth0"] == [f"{lab.ip1}/24"]
    assert f"{lab.bridges[0].gateway}/24" in net.addresses()[lab.A]
    net.set_link_sysctl("eth0", "accept_local", "1", ns=lab.c2.pid)
    assert net.run_in_netns(lab.c2.pid, net._read, "/proc/sys/net/ipv4/conf/eth0/accept_local") == "1"
    assert net._read(f"/proc/sys/net/ipv4/conf/{lab.A}/route_localnet") == "1"
    with pytest.raises(net.NetError, match="not labkit's"):
        net.set_link_sysctl("eth0", "accept_local", "1")  # the host's own link: never


# --- links ------------------------------------------------------------------------------------
def test_bridge_is_idempotent_and_refuses_another_address(lab):
    net.create_bridge(lab.A, f"{lab.bridges[0].gateway}/24")
    with pytest.raises(net.NetError, match="exists with address"):
        net.create_bridge(lab.A, "10.210.99.1/24")
    assert set(net.lab_links()) >= {lab.A, lab.B, lab.I, lab.O}
    net.delete_link(link("nope"))  # missing: no error
    with pytest.raises(net.NetError, match="not labkit's"):
        net.delete_link("lo")


@pytest.mark.parametrize("case, kwargs, step", [
    ("route", {"cidr": "10.210.250.5/24", "gateway": "10.99.0.1"}, "default route"),  # outside the subnet
    ("bridge", {"bridge": "lkt0nobridge"}, "enslave"),
    ("name", {"ifname": "eth0"}, "create pair"),  # c2 has an eth0
])
def test_create_veth_cleans_up_on_failure(lab, case, kwargs, step):
    veth = link("x")
    kwargs = {"bridge": lab.A, "ifname": "eth1", **kwargs}
    with pytest.raises(net.NetError, match=step):
        net.create_veth(veth, lab.c2.pid, **kwargs)
    assert not net.link_exists(veth)
    assert set(net.addresses(lab.c2.pid)) == {"lo", "eth0"}  # no half-made peer inside


def test_two_holders_on_one_bridge_ping_and_the_bridge_learns(lab):
    assert ping(lab.c1, lab.ip2)
    fdb = net.bridge_fdb(lab.A)
    assert {"mac": lab.c1_mac, "port": link("c1"), "local": False} in fdb
    assert any(e["port"] == lab.A and e["local"] for e in fdb)  # the bridge's own address


# --- nftables ----------------------------------------------------------------------------------
def test_masquerade_outside_sees_the_hosts_address(lab):
    lab.apply()
    answer = net.run_in_netns(lab.c1.pid, request, lab.ip_o, SERVER_PORT)
    assert answer == f"{lab.host_o} hi"  # not the container's 10.210 address
    assert net.run_in_netns(lab.c3.pid, request, lab.ip_o, SERVER_PORT) == f"{lab.host_o} hi"
    c1 = net.run_in_netns(lab.c1.pid, lambda: net.addresses()["eth0"][0].split("/")[0])
    rewritten = [e for e in net.conntrack() if e["orig"][:2] == (c1, lab.ip_o) and e["orig"][3] == SERVER_PORT]
    assert rewritten and all(e["reply"][:2] == (lab.ip_o, lab.host_o) for e in rewritten)  # conntrack -L's NAT


def test_published_on_loopback_reaches_the_container_from_the_host_only(lab):
    lab.apply()
    # route_localnet lets 127.0.0.1 leave through the bridge; masquerade gives it the gateway's address
    assert request("127.0.0.1", lab.port_local) == f"{lab.bridges[0].gateway} hi"
    assert not reaches(lab.outside.pid, lab.host_o, lab.port_local)


def test_published_on_every_address(lab):
    lab.apply()
    assert request("127.0.0.1", lab.port_any) == f"{lab.bridges[0].gateway} hi"
    # from the outside: DNAT only, the container sees who connected (as Docker without userland-proxy)
    assert net.run_in_netns(lab.outside.pid, request, lab.host_o, lab.port_any) == f"{lab.ip_o} hi"
    # hairpin: a container on the same bridge, through the host's address
    assert net.run_in_netns(lab.c2.pid, request, lab.host_o, lab.port_any) == f"{lab.bridges[0].gateway} hi"


def test_nobody_opens_connections_into_a_container_unpublished(lab):
    lab.apply()
    assert not reaches(lab.outside.pid, lab.ip1, 80)  # the outside routes 10.210 via the host
    net.remove_table()
    try:
        assert reaches(lab.outside.pid, lab.ip1, 80, timeout=10)  # the rules were what stopped it
    finally:
        lab.apply()


def test_two_bridges_are_isolated(lab):
    net.remove_table()
    try:
        assert ping(lab.c1, lab.ip3)  # plain routing with ip_forward=1: they would reach each other
    finally:
        lab.apply()
    assert not ping(lab.c1, lab.ip3, wait=1)
    assert not ping(lab.c3, lab.ip1, wait=1)
    assert not reaches(lab.c3.pid, lab.ip1, 80)


def test_internal_bridge_reaches_nothing_beyond_it(lab):
    net.remove_table()
    try:
        assert ping(lab.c4, lab.ip_o)  # routed, were it not for the rules
    finally:
        lab.apply()
    assert ping(lab.c4, lab.bridges[2].gateway)  # the host's address on its own bridge: not forwarded
    assert not ping(lab.c4, lab.ip_o, wait=1)
    assert not reaches(lab.c4.pid, lab.ip_o, SERVER_PORT)
    assert not ping(lab.outside, lab.ip4, wait=1)
    assert not ping(lab.c1, lab.ip4, wait=1)


def test_table_is_replaced_as_a_whole(lab):
    lab.apply(guard=True)
    text = net.list_table()
    guard = "not labkit's: labkit turned ip_forward on"  # the guard rule's comment
    assert guard in text and f"dport {lab.port_any}" in text
    net.apply_ruleset(net.ruleset(lab.bridges, [], False))
    text = net.list_table()
    assert guard not in text and "dnat" not in text.replace("ct status dnat", "")
    net.remove_table()
    net.remove_table()  # idempotent
    assert not net.table_exists()
    with pytest.raises(net.NetError, match="list table"):
        net.list_table()
    lab.apply()
    assert net.table_exists()


def test_check_ruleset_changes_nothing(lab):
    lab.apply()
    before = net.list_table()
    net.check_ruleset(net.ruleset([], [], False))
    assert net.list_table() == before
    with pytest.raises(net.NetError, match="nft -c rejected"):
        net.check_ruleset("table inet labkit {\n\tchain forward {\n\t\tbogus\n\t}\n}\n")
    assert net.list_table() == before


# --- host sysctls ----------------------------------------------------------------------------------
def test_ip_forward_is_recorded_once_and_restored(lab):
    if lab.forward_was != "0":
        pytest.skip("ip_forward was on before: labkit changed nothing and records nothing")
    net.set_host_sysctl(FORWARD, "1")  # again: the original stays "0"
    assert net.changed_host_sysctls() == {FORWARD: "0"}
    leaks = [leak for leak in doctor.leaks() if leak.kind == "sysctl"]
    assert [leak.name for leak in leaks] == [f"{FORWARD} (was 0)"]
    try:
        assert doctor.reset(only=leaks) == [f"restored {FORWARD}=0"]
        assert net._read("/proc/sys/net/ipv4/ip_forward") == "0"
        assert net.changed_host_sysctls() == {}
        assert not [leak for leak in doctor.leaks() if leak.kind == "sysctl"]
        assert net.restore_host_sysctls() == []
    finally:
        net.set_host_sysctl(FORWARD, "1")  # for the other tests; the fixture restores it
    assert net.changed_host_sysctls() == {FORWARD: "0"}


def test_vxlan_overlay_between_two_simulated_hosts_and_its_frames():
    """Two "hosts" (namespaces) joined by an underlay veth, a bridge and a VXLAN port in each, a
    "container" on each bridge: they reach each other; the underlay carries UDP to port 4789
    with the VNI and the containers' own frame inside. Everything lives in the namespaces: the host gets no link, route or rule."""
    host_links = set(os.listdir("/sys/class/net"))
    macs = {"l": "02:42:0a:ce:2b:02", "r": "02:42:0a:ce:2b:03"}
    with net.NetnsHolder("t-host1") as h1, net.NetnsHolder("t-host2") as h2, \
            net.NetnsHolder("t-left") as left, net.NetnsHolder("t-right") as right:
        net.run_in_netns(h1.pid, net.create_veth, "lkul1", h2.pid, bridge=None, ifname="lkul2",
                         cidr="198.18.42.2/24")
        net.set_address("lkul1", "198.18.42.1/24", ns=h1.pid)
        for hostns, me, peer, dev, box, side, addr in ((h1, "198.18.42.1", "198.18.42.2", "lkul1", left, "l", "10.206.43.2"),
                                                       (h2, "198.18.42.2", "198.18.42.1", "lkul2", right, "r", "10.206.43.3")):
            net.run_in_netns(hostns.pid, net.create_bridge, "lkbr43", None)
            net.create_vxlan("lkvx43", 43, local=me, remote=peer, dev=dev, bridge="lkbr43", ns=hostns.pid)
            net.run_in_netns(hostns.pid, net.create_veth, "lkc" + side, box.pid, bridge="lkbr43",
                             cidr=f"{addr}/24", mtu=1450, mac=macs[side])
        assert set(os.listdir("/sys/class/net")) == host_links

        def vxlan(frame: bytes) -> bool:
            # outer IPv4, UDP to 4789; inner IPv4 (the first frames are the containers' ARP)
            return (frame[12:14] == b"\x08\x00" and frame[23] == 17 and frame[36:38] == (4789).to_bytes(2, "big")
                    and frame[62:64] == b"\x08\x00")

        with net.PacketCapture(h1.pid, "lkul1") as capture:
            assert left.run(["/bin/busybox", "ping", "-c", "1", "-W", "2", "10.206.43.3"]).returncode == 0
            frames = capture.frames(vxlan, count=1)
        assert frames, "no VXLAN datagram crossed the underlay"
        frame = frames[0]
        assert socket.inet_ntoa(frame[26:30]) == "198.18.42.1" and socket.inet_ntoa(frame[30:34]) == "198.18.42.2"
        assert int.from_bytes(frame[46:49], "big") == 43  # the VNI (after 14 + 20 + 8 bytes and 4 of flags)
        inner = frame[50:]
        assert inner[6:12] == bytes.fromhex(macs["l"].replace(":", ""))  # the container's own source MAC
        assert socket.inet_ntoa(inner[26:30]) == "10.206.43.2" and socket.inet_ntoa(inner[30:34]) == "10.206.43.3"
        assert not left.run(["/bin/busybox", "ping", "-c", "1", "-W", "1", "198.18.42.2"]).returncode == 0
    assert set(os.listdir("/sys/class/net")) == host_links


def test_create_vxlan_refuses_bad_input_before_any_kernel_object():
    with pytest.raises(net.NetError, match="out of range"):
        net.create_vxlan("lkvxbad", 1 << 24, local="198.18.0.1", remote="198.18.0.2", dev="lo")
    with pytest.raises(net.NetError, match="not an IPv4 address"):
        net.create_vxlan("lkvxbad", 7, local="fe80::1", remote="198.18.0.2", dev="lo")
    with pytest.raises(net.NetError):
        net.create_vxlan("vxlan0", 7, local="198.18.0.1", remote="198.18.0.2", dev="lo")  # not an lk* name on the host
    assert not net.link_exists("lkvxbad")
