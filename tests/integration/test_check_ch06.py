"""labkit.check.ch06 judges what the kernel has: the reference answers pass, each usual mistake
gets its own hint, hints grow from a nudge to the answer, and nothing is left behind."""
from __future__ import annotations

import subprocess

import pytest

from labkit import net as knet
from labkit.check import ch06
from labkit.engine.containers import Engine

# Host only: chapter 06's notebook runs these checks with the reference answers on cgroup v2 in
# the VM; the wrong answers' hints are the same logic on any kernel.


@pytest.fixture(autouse=True)
def engine_env(engine_data_root, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA_ROOT", engine_data_root)
    ch06.HINTS.reset()
    before = set(knet.lab_links())
    yield
    leftovers, _ = Engine(engine_data_root).clear()
    assert not leftovers, "the check left containers behind"
    assert set(knet.lab_links()) <= before, "the check left links behind"


def ip(pid, *args, check=True):
    return subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", *args], check=check, capture_output=True)


def wire(a, b):  # the reference answer
    ip(a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", str(b))
    for pid, address in ((a, "10.206.9.1/24"), (b, "10.206.9.2/24")):
        ip(pid, "addr", "add", address, "dev", "eth0")
        ip(pid, "link", "set", "eth0", "up")


def no_addresses(a, b):
    ip(a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", str(b))
    for pid in (a, b):
        ip(pid, "link", "set", "eth0", "up")


def left_down(a, b):
    ip(a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", str(b))
    for pid, address in ((a, "10.206.9.1/24"), (b, "10.206.9.2/24")):
        ip(pid, "addr", "add", address, "dev", "eth0")
    ip(a, "link", "set", "eth0", "up")


def two_pairs(a, b):  # an eth0 in each, but two separate cables
    for pid, address in ((a, "10.206.9.1/24"), (b, "10.206.9.2/24")):
        ip(pid, "link", "add", "eth0", "type", "veth", "peer", "name", "dangle")
        ip(pid, "addr", "add", address, "dev", "eth0")
        ip(pid, "link", "set", "eth0", "up")


def raises(a, b):
    ip(a, "link", "set", "eth0", "up")  # there is no eth0 yet


def test_wire_reference_passes():
    assert ch06.wire_by_hand(wire)


@pytest.mark.parametrize("answer, says, hint", [
    (lambda a, b: None, "there is no eth0 in a's namespace", "one must be in each namespace"),
    (no_addresses, "eth0 in a has no address, not 10.206.9.1/24", "takes part in no IP traffic"),
    (left_down, "eth0 in b is down", "start down"),
    (two_pairs, "a ping does not cross", "the *same* pair"),
    (raises, "wire() raised CalledProcessError", "read the error"),
])
def test_wire_mistakes_get_their_hint(answer, says, hint):
    verdict = ch06.wire_by_hand(answer)
    assert not verdict and says in verdict.message and hint in verdict.hint, verdict


def test_wire_hints_grow_to_the_answer():
    hints = [ch06.wire_by_hand(lambda a, b: None).hint for _ in range(3)]
    assert [h.split("]")[0] for h in hints] == ["[nudge", "[pointer", "[answer"]
    assert "ip link add eth0 type veth peer name eth0 netns" in hints[2]


def test_publish_reference_passes():
    verdict = ch06.publish_by_hand(lambda ip: f"tcp dport 9090 dnat ip to {ip}:80")
    assert verdict, verdict
    assert not knet.table_exists(ch06.EX_TABLE)


@pytest.mark.parametrize("rule, says, hint", [
    (lambda ip: "", "no rule at all", "a match (which packets)"),
    (lambda ip: "tcp dport 9090 dnat to", "nft refused the rule", "syntax"),
    (lambda ip: "tcp dport 9090 accept", "rewrites no destination", "destination must become"),
    (lambda ip: f"tcp dport 9090 dnat ip to {ip}:8080", "rewrites to port 8080", "which port"),
    (lambda ip: f"tcp dport 9090 dnat ip to {ip}", "rewrites to port (unchanged: 9090)", "which port"),
    (lambda ip: "tcp dport 9090 dnat ip to 10.206.251.251:80", "sends the packets to 10.206.251.251", "where does"),
    (lambda ip: f"tcp dport 80 dnat ip to {ip}:80", "does not match packets to port 9090", "which packets"),
])
def test_publish_mistakes_get_their_hint(rule, says, hint):
    verdict = ch06.publish_by_hand(rule)
    assert not verdict and says in verdict.message and hint in verdict.hint, verdict
    assert not knet.table_exists(ch06.EX_TABLE)


def default_route(pid):
    ip(pid, "route", "add", "default", "via", "10.206.8.1")


def nat_out(pid):  # the reference answer
    default_route(pid)
    return "ip saddr 10.206.8.0/24 masquerade"


def test_nat_reference_passes():
    verdict = ch06.nat_by_hand(nat_out)
    assert verdict, verdict
    assert not knet.table_exists(ch06.EX_TABLE)


@pytest.mark.parametrize("answer, says, hint", [
    (lambda pid: "ip saddr 10.206.8.0/24 masquerade", "has no route to 10.206.7.2", "where should such packets go"),
    (lambda pid: default_route(pid), "saw 10.206.8.2, the namespace's own address", "should never see"),
    (lambda pid: default_route(pid) or "ip saddr 10.206.9.0/24 masquerade", "saw 10.206.8.2", "should never see"),
    (lambda pid: default_route(pid) or "masquerade ip saddr", "nft refused the rule", "syntax"),
    (lambda pid: ip(pid, "route", "add", "default", "via", "10.206.9.9"), "nat_out() raised CalledProcessError",
     "read the error"),  # a gateway not on the namespace's link
])
def test_nat_mistakes_get_their_hint(answer, says, hint):
    verdict = ch06.nat_by_hand(answer)
    assert not verdict and says in verdict.message and hint in verdict.hint, verdict
    assert not knet.table_exists(ch06.EX_TABLE)
