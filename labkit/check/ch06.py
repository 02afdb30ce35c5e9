"""Chapter 06 exercises: wiring namespaces by hand, and publishing a port with one rule.

1. `wire(a, b)` connects the network namespaces of processes `a` and `b` so that a's
   has 10.206.9.1/24 and b's 10.206.9.2/24 on a link named eth0, and each pings the
   other. The check makes the two namespaces (held by processes, never mounted), calls
   the learner's function, then asks the kernel: is there an eth0 in each, is it up,
   does it carry its address, and does a ping cross. Each failure names what is missing.

2. `rule(container_ip)` returns one nftables rule that sends TCP port 9090 of the host
   to port 80 of a container. The check runs a container `svc` (busybox httpd on port
   80) on the default bridge, publishes nothing, and makes an "outside host" namespace
   joined to the host by a veth (10.206.250.1 on the host, .2 outside). It puts the
   learner's rule into a nat chain on the prerouting hook of a table of its own
   (`labkit-ch06ex`), then fetches http://203.0.113.1:9090/ from the outside host.
   nft refuses a bad rule before anything changes; a rule that loads but leads
   nowhere is told apart by what it says (no dnat, another port, another address).

3. `nat_out(pid)` gives the namespace of process `pid` (eth0 10.206.8.2/24, its host end
   10.206.8.1) a way out through the host: it adds the namespace's default route and returns
   one nftables rule that masquerades the namespace's traffic. The check puts the rule into
   a nat chain on the postrouting hook of its own table, then connects from the namespace
   to a "far" host namespace (10.206.7.2, joined to the host by a veth whose host end is
   10.206.7.1, routed back to the host), whose server answers with the address it saw: the
   host's (10.206.7.1) if the rule masqueraded, the namespace's own if it did not.

Every check makes what it needs under random names and removes it afterwards, also when
the learner's code fails. Hints come in tiers: the first failure of a kind gets a nudge,
the next a pointer, the third the answer (`HINTS.reset()` starts over).
"""
from __future__ import annotations

import contextlib
import errno
import re
import secrets
import subprocess
import time
from typing import Callable, Iterator

from .. import net as knet
from .. import sys as lsys
from ..errors import LabkitError
from . import Hints, Verdict, engine, labkit_cli, passed

HINTS = Hints()
BUSYBOX = "/bin/busybox"
ADDRESSES = {"a": "10.206.9.1", "b": "10.206.9.2"}
EX_TABLE = "labkit-ch06ex"
# the check's own outside host, in the chapter's 10.206.0.0/16 (not its 203.0.113.0/24: a host route each)
HOST_PORT, OUTSIDE_HOST, OUTSIDE = 9090, "10.206.250.1", "10.206.250.2"


# --- 1 · wire two namespaces -------------------------------------------------------------------
def _eth0(pid: int) -> dict:
    """What the kernel says of eth0 in pid's namespace: exists, up, its IPv4 addresses."""
    def look() -> dict:
        found = knet.addresses()
        exists = "eth0" in found
        return {"exists": exists, "addresses": found.get("eth0", []), "up": exists and lsys.link_is_up("eth0")}

    return knet.run_in_netns(pid, look)


def _ping(holder: knet.NetnsHolder, address: str) -> bool:
    return holder.run([BUSYBOX, "ping", "-c", "1", "-W", "2", address]).returncode == 0


def wire_by_hand(wire: Callable[[int, int], object]) -> Verdict:
    name = "ch06-wire-" + secrets.token_hex(3)
    with knet.NetnsHolder(name + "a") as a, knet.NetnsHolder(name + "b") as b:
        try:
            wire(a.pid, b.pid)
        except Exception as err:  # noqa: BLE001 - the learner's code: report it, do not crash
            return HINTS.failed("wire", "raised", f"wire() raised {type(err).__name__}: {err}", (
                "read the error: which step failed, and in which namespace?",
                "a link name is looked up in the namespace you are in: run each command inside "
                "the right one (nsenter --net=/proc/PID/ns/net …, or labkit.net.run_in_netns)",
                "nsenter --net=/proc/A/ns/net ip link add eth0 type veth peer name eth0 netns B; then in "
                "each: ip addr add ADDRESS/24 dev eth0; ip link set eth0 up"))
        for side, holder in (("a", a), ("b", b)):
            info = _eth0(holder.pid)
            if not info["exists"]:
                return HINTS.failed("wire", "no-link", f"there is no eth0 in {side}'s namespace", (
                    "a veth pair has two ends: one must be in each namespace, named eth0",
                    "create the pair inside one namespace with its peer made right in the other: "
                    "`ip link add eth0 type veth peer name eth0 netns PID`",
                    "nsenter --net=/proc/A/ns/net ip link add eth0 type veth peer name eth0 netns B"))
            want = ADDRESSES[side] + "/24"
            if want not in info["addresses"]:
                have = ", ".join(info["addresses"]) or "no address"
                return HINTS.failed("wire", "no-address", f"eth0 in {side} has {have}, not {want}", (
                    "a link without an address takes part in no IP traffic",
                    "add the address inside that namespace: `ip addr add ADDRESS/24 dev eth0`",
                    f"nsenter --net=/proc/{side.upper()}/ns/net ip addr add {want} dev eth0"))
            if not info["up"]:
                return HINTS.failed("wire", "down", f"eth0 in {side} is down", (
                    "new links start down, and a down link carries nothing",
                    "bring both ends up: `ip link set eth0 up` in each namespace",
                    f"nsenter --net=/proc/{side.upper()}/ns/net ip link set eth0 up"))
        if not (_ping(a, ADDRESSES["b"]) and _ping(b, ADDRESSES["a"])):
            return HINTS.failed("wire", "no-ping", "both ends are up with their addresses, but a ping does not cross", (
                "are the two eth0s the two ends of the *same* pair?",
                "check with `ip -d link` in each: a veth's peer index (eth0@ifN) must be the other's",
                "make one pair: ip link add eth0 type veth peer name eth0 netns B, from inside A"))
    return passed("a and b each have eth0 with their address, up, and ping each other")


# --- 2 · publish a port with one rule ----------------------------------------------------------
@contextlib.contextmanager
def _service() -> Iterator[str]:
    """A container serving HTTP on port 80, on the default bridge, published nowhere: its address."""
    name = "svc-" + secrets.token_hex(3)
    run = labkit_cli("run", "-d", "--name", name, "busybox", "sh", "-c",
                     "mkdir -p /www && echo published by hand > /www/index.html && exec httpd -f -p 80 -h /www")
    try:
        if run.returncode:
            raise LabkitError(f"the check could not start its container: {run.stderr.strip()}",
                              "see `labkit doctor`")
        eng = engine()
        yield eng.networks.of_container(eng.get(name).id)[0][1].ip
    finally:
        labkit_cli("rm", "-f", name)


@contextlib.contextmanager
def _outside() -> Iterator[knet.NetnsHolder]:
    link = "lkch6x" + secrets.token_hex(2)
    with knet.NetnsHolder("ch06-outside-" + link) as holder:
        knet.create_veth(link, holder.pid, bridge=None, cidr=f"{OUTSIDE}/24", gateway=OUTSIDE_HOST)
        try:
            knet.set_address(link, f"{OUTSIDE_HOST}/24")
            yield holder
        finally:
            knet.delete_link(link)


def _table(rule: str) -> str:
    return (f"table inet {EX_TABLE} {{\n"
            f"  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n    {rule}\n  }}\n}}\n")


def _fetch(holder: knet.NetnsHolder) -> str:
    for _ in range(10):  # httpd may not listen yet
        try:  # (busybox wget's own -T crashes: the subprocess timeout stands in)
            out = holder.run([BUSYBOX, "wget", "-q", "-O", "-", f"http://{OUTSIDE_HOST}:{HOST_PORT}/"], timeout=5)
        except subprocess.TimeoutExpired:
            return ""  # dropped on the way: no point in trying again
        if out.returncode == 0:
            return out.stdout
        time.sleep(0.2)
    return ""


def publish_by_hand(rule: Callable[[str], str]) -> Verdict:
    with _service() as ip, _outside() as outside:
        try:
            text = str(rule(ip)).strip()
        except Exception as err:  # noqa: BLE001
            return HINTS.failed("publish", "raised", f"rule() raised {type(err).__name__}: {err}", (
                "rule(container_ip) returns a string: one nft rule", "e.g. f\"tcp dport … dnat ip to {container_ip}:…\"",
                'return f"tcp dport 9090 dnat ip to {container_ip}:80"'))
        if not text or "\n" in text:
            return HINTS.failed("publish", "not-one", "that is not one rule" if text else "no rule at all", (
                "one line of nft: a match (which packets) and a statement (what to do with them)",
                "match the host's TCP port (`tcp dport`), then rewrite the destination (`dnat ip to ADDRESS:PORT`)",
                'f"tcp dport 9090 dnat ip to {container_ip}:80"'))
        try:
            knet.apply_ruleset(_table(text), table=EX_TABLE)
        except knet.NetError as err:
            return HINTS.failed("publish", "refused", f"nft refused the rule: {err.what.splitlines()[-1]}", (
                "check the rule's syntax: `nft -c -f FILE` says where it stops",
                "the statement is `dnat ip to ADDRESS:PORT` (inet tables need the `ip`)",
                'f"tcp dport 9090 dnat ip to {container_ip}:80"'))
        try:
            answer = _fetch(outside)
        finally:
            knet.remove_table(EX_TABLE)
    if answer == "published by hand\n":
        return passed(f"the outside host fetched {OUTSIDE_HOST}:{HOST_PORT} and the container answered: "
                      "one DNAT rule published the port")
    target = re.search(r"dnat\s+(?:ip\s+)?to\s+([\d.]+)(?::(\d+))?", text)
    if not target:
        return HINTS.failed("publish", "no-dnat", "the rule loaded, but rewrites no destination", (
            "to publish, the packet's destination must become the container's address and port",
            "the nft statement for that is `dnat ip to ADDRESS:PORT`",
            'f"tcp dport 9090 dnat ip to {container_ip}:80"'))
    if f"dport {HOST_PORT}" not in text:
        return HINTS.failed("publish", "wrong-match", f"the rule does not match packets to port {HOST_PORT}", (
            "which packets should the rule take? those sent to the host's port",
            f"match them with `tcp dport {HOST_PORT}`", 'f"tcp dport 9090 dnat ip to {container_ip}:80"'))
    if target.group(1) != ip:
        return HINTS.failed("publish", "wrong-address", f"the rule sends the packets to {target.group(1)}, "
                            "not to the container", (
            "where does the container live? that is the address to rewrite to",
            "use the container_ip your function is given", 'f"tcp dport 9090 dnat ip to {container_ip}:80"'))
    if target.group(2) != "80":
        return HINTS.failed("publish", "wrong-port", f"the rule rewrites to port {target.group(2) or '(unchanged: 9090)'}, "
                            "where nothing listens in the container", (
            "which port does the container's server listen on?", "httpd listens on port 80: put it after the address",
            'f"tcp dport 9090 dnat ip to {container_ip}:80"'))
    return HINTS.failed("publish", "no-answer", "the rule looks right, but the container did not answer", (
        "is the container running? `labkit ps`", "see `nft list table inet labkit-ch06ex` while the check runs",
        'f"tcp dport 9090 dnat ip to {container_ip}:80"'))


# --- 3 · NAT out by hand --------------------------------------------------------------------
INNER, INNER_HOST, FAR, FAR_HOST, FAR_PORT = "10.206.8.2", "10.206.8.1", "10.206.7.2", "10.206.7.1", 7000
WHO = ("import socket\n"
       f"s = socket.create_server(({FAR!r}, {FAR_PORT}))\n"
       "print('ready', flush=True)\n"
       "while True:\n"
       "    c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()\n")


def _ask_far() -> str:
    """From inside the namespace: the address the far host saw, or why there was none."""
    import socket

    try:
        with socket.create_connection((FAR, FAR_PORT), timeout=3) as conn:
            return conn.recv(64).decode()
    except OSError as err:
        return f"error {err.errno or 'timeout'}"


@contextlib.contextmanager
def _nat_lab() -> Iterator[tuple[knet.NetnsHolder, knet.NetnsHolder]]:
    """The namespace to let out (no default route) and the far host with its server."""
    import sys

    from ..engine import networking

    tok = secrets.token_hex(2)
    links = [f"lkch6n{tok}", f"lkch6f{tok}"]
    with knet.NetnsHolder("ch06-inner-" + tok) as inner, knet.NetnsHolder("ch06-far-" + tok) as far:
        server = None
        try:
            knet.create_veth(links[0], inner.pid, bridge=None, cidr=f"{INNER}/24")
            knet.set_address(links[0], f"{INNER_HOST}/24")
            knet.create_veth(links[1], far.pid, bridge=None, cidr=f"{FAR}/24", gateway=FAR_HOST)
            knet.set_address(links[1], f"{FAR_HOST}/24")
            networking.enable_forwarding()  # (recorded; put back when the lab's last bridge goes)
            server = far.popen([sys.executable, "-c", WHO], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            server.stdout.readline()  # "ready"
            yield inner, far
        finally:
            if server is not None:
                server.kill()
                server.wait()
                server.stdout.close()
            for link in links:
                knet.delete_link(link)


def nat_by_hand(nat_out: Callable[[int], str]) -> Verdict:
    with _nat_lab() as (inner, _far):
        try:
            text = str(nat_out(inner.pid) or "").strip()
        except Exception as err:  # noqa: BLE001
            return HINTS.failed("nat", "raised", f"nat_out() raised {type(err).__name__}: {err}", (
                "read the error: which step failed?",
                "the route goes inside the namespace (nsenter --net=/proc/PID/ns/net ip route add …); "
                "the rule is only returned, as text",
                f"ip route add default via {INNER_HOST} (inside), and return "
                f'"ip saddr 10.206.8.0/24 masquerade"'))
        if text:
            try:
                knet.apply_ruleset(_nat_table(text), table=EX_TABLE)
            except knet.NetError as err:
                return HINTS.failed("nat", "refused", f"nft refused the rule: {err.what.splitlines()[-1]}", (
                    "check the rule's syntax: `nft -c -f FILE` says where it stops",
                    "a match on the source (`ip saddr SUBNET`), then the statement `masquerade`",
                    '"ip saddr 10.206.8.0/24 masquerade"'))
        try:
            seen = knet.run_in_netns(inner.pid, _ask_far)
        finally:
            knet.remove_table(EX_TABLE)
    if seen == FAR_HOST:
        return passed(f"the far host saw {FAR_HOST}, the host's address: your namespace got out, masqueraded")
    if seen == f"error {errno.ENETUNREACH}":
        return HINTS.failed("nat", "no-route", f"the namespace has no route to {FAR}", (
            "a namespace with only its own /24 cannot send anywhere else: where should such packets go?",
            f"give it a default route through the host's end of its cable, {INNER_HOST}",
            f"nsenter --net=/proc/PID/ns/net ip route add default via {INNER_HOST}"))
    if seen == INNER:
        return HINTS.failed("nat", "no-masquerade", f"the far host saw {INNER}, the namespace's own address", (
            "the packets got out, but with a source address the far side should never see "
            "(and on a real network could not answer)",
            "rewrite the source of what leaves the namespace's subnet: nft's `masquerade` statement",
            '"ip saddr 10.206.8.0/24 masquerade"'))
    return HINTS.failed("nat", "no-answer", f"the far host did not answer ({seen or 'nothing'})", (
        "is the default route's gateway the host's end of the cable?",
        f"`ip route` inside should say: default via {INNER_HOST} dev eth0",
        f"nsenter --net=/proc/PID/ns/net ip route add default via {INNER_HOST}; return "
        '"ip saddr 10.206.8.0/24 masquerade"'))


def _nat_table(rule: str) -> str:
    return (f"table inet {EX_TABLE} {{\n"
            f"  chain postrouting {{\n    type nat hook postrouting priority srcnat;\n    {rule}\n  }}\n}}\n")
