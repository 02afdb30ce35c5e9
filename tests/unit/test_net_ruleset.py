"""labkit.net.ruleset: the generated `table inet labkit` (text assertions need no root; nft -c does)."""
from __future__ import annotations

import os
import pickle
import re
import shutil

import pytest

from labkit import net
from labkit.net import BridgeNet, PortMap

A = BridgeNet("lkbr0", "10.210.1.0/24", "10.210.1.1")
B = BridgeNet("lkbr1", "10.210.2.0/24", "10.210.2.1")
INTERNAL = BridgeNet("lkbr2", "10.210.3.0/24", "10.210.3.1", internal=True)
ANY_8080 = PortMap("tcp", None, 8080, "10.210.1.2", 80)
LOCAL_5353 = PortMap("udp", "127.0.0.1", 5353, "10.210.2.2", 53)

VARIANTS = {
    "empty": ([], [], False),
    "empty-guarded": ([], [], True),
    "one-bridge": ([A], [], False),
    "ports": ([A, B], [ANY_8080, LOCAL_5353], False),
    "internal": ([A, INTERNAL], [ANY_8080], True),
    "everything": ([A, B, INTERNAL], [ANY_8080, LOCAL_5353], True),
}


def chains(text: str) -> dict[str, list[str]]:
    """chain name -> its rule lines (without the hook line)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"chain (\w+) \{", line):
            current = found.setdefault(m.group(1), [])
        elif line == "}":
            current = None
        elif current is not None and not line.startswith("type "):
            current.append(line)
    return found


def test_empty_state_is_a_valid_harmless_table():
    text = net.ruleset([], [], False)
    assert text.startswith("table inet labkit {\n") and text.endswith("}\n")
    assert chains(text) == {"prerouting": [], "output": [], "postrouting": [], "forward": []}
    assert "policy accept" in text and "policy drop" not in text


def test_hooks_and_priorities():
    text = net.ruleset([], [], False)
    assert "type nat hook prerouting priority dstnat; policy accept;" in text
    assert "type nat hook output priority -100; policy accept;" in text
    assert "type nat hook postrouting priority srcnat; policy accept;" in text
    assert "type filter hook forward priority filter; policy accept;" in text


def test_published_ports_are_dnat_in_prerouting_and_output():
    rules = chains(net.ruleset([A, B], [ANY_8080, LOCAL_5353], False))
    assert rules["prerouting"] == rules["output"]  # output: the host's own connections, 127.0.0.1 too
    every, local = rules["prerouting"]
    assert every.startswith("meta nfproto ipv4 fib daddr type local tcp dport 8080 dnat ip to 10.210.1.2:80 ")
    assert local.startswith("ip daddr 127.0.0.1 udp dport 5353 dnat ip to 10.210.2.2:53 ")


def test_masquerade_hairpin_and_loopback_per_bridge():
    post = chains(net.ruleset([A, INTERNAL], [], False))["postrouting"]
    assert any(r.startswith('ip saddr 10.210.1.0/24 oifname != "lkbr0" masquerade') for r in post)
    assert any(r.startswith('ct status dnat ip saddr 10.210.1.0/24 oifname "lkbr0" masquerade') for r in post)
    assert any(r.startswith('ip saddr 127.0.0.0/8 oifname "lkbr0" masquerade') for r in post)
    # an internal network is never masqueraded out
    assert not any(r.startswith('ip saddr 10.210.3.0/24 oifname != "lkbr2"') for r in post)


def test_isolation_between_bridges_after_dnat_accept():
    fwd = chains(net.ruleset([A, B], [ANY_8080], False))["forward"]
    dnat = fwd.index(next(r for r in fwd if r.startswith("ct status dnat accept")))
    drop_a = fwd.index(next(r for r in fwd if r.startswith('iifname "lkbr0" oifname "lkbr1" drop')))
    drop_b = fwd.index(next(r for r in fwd if r.startswith('iifname "lkbr1" oifname "lkbr0" drop')))
    assert dnat < drop_a and dnat < drop_b
    # answers accepted, anything else into a container dropped: only published ports come in
    for link in ("lkbr0", "lkbr1"):
        established = fwd.index(next(r for r in fwd if r.startswith(f'oifname "{link}" ct state established,related accept')))
        inbound = fwd.index(next(r for r in fwd if r.startswith(f'oifname "{link}" drop')))
        assert established < inbound


def test_three_bridges_use_a_set():
    fwd = chains(net.ruleset([A, B, INTERNAL], [], False))["forward"]
    assert any(r.startswith('iifname "lkbr0" oifname { "lkbr1", "lkbr2" } drop') for r in fwd)


def test_internal_bridge_drops_both_ways_before_anything_is_accepted():
    fwd = chains(net.ruleset([A, INTERNAL], [ANY_8080], False))["forward"]
    out = next(i for i, r in enumerate(fwd) if r.startswith('iifname "lkbr2" oifname != "lkbr2" drop'))
    into = next(i for i, r in enumerate(fwd) if r.startswith('oifname "lkbr2" iifname != "lkbr2" drop'))
    first_accept = next(i for i, r in enumerate(fwd) if " accept" in r.split(" comment ")[0])
    assert out < first_accept and into < first_accept
    assert not any(r.startswith('oifname "lkbr2" ct state') for r in fwd)  # nothing gets in, not even answers


def test_guard_forwarding():
    guard = 'iifname != "lk*" iifname != "labkit*" oifname != "lk*" oifname != "labkit*" drop'
    assert guard not in net.ruleset([A], [], False)
    fwd = chains(net.ruleset([A], [], True))["forward"]
    assert fwd[0].startswith(guard)
    assert chains(net.ruleset([], [], True))["forward"][0].startswith(guard)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rule_says_why(variant):
    text = net.ruleset(*VARIANTS[variant])
    for chain_rules in chains(text).values():
        for rule in chain_rules:
            comment = re.search(r' comment "([^"]*)"$', rule)
            assert comment, rule
            assert len(comment.group(1)) <= 128


@pytest.mark.parametrize("bridges, ports, message", [
    ([BridgeNet('lk"x', "10.210.1.0/24", "10.210.1.1")], [], "not a valid link name"),
    ([BridgeNet("docker0", "10.210.1.0/24", "10.210.1.1")], [], "not labkit's"),
    ([BridgeNet("lkbr0", "10.210.1.0/24", "10.210.9.1")], [], "outside"),
    ([BridgeNet("lkbr0", "10.210.1.5/24", "10.210.1.1")], [], "host bits"),
    ([A, A], [], "twice"),
    ([], [PortMap("sctp", None, 80, "10.210.1.2", 80)], "protocol"),
    ([], [PortMap("tcp", None, 0, "10.210.1.2", 80)], "port number"),
    ([], [PortMap("tcp", "localhost", 80, "10.210.1.2", 80)], "IPv4"),
    ([], [ANY_8080, PortMap("tcp", "127.0.0.1", 8080, "10.210.1.3", 80)], "published twice"),
])
def test_invalid_state_is_refused(bridges, ports, message):
    with pytest.raises(net.NetError, match=message):
        net.ruleset(bridges, ports, False)


def test_same_port_on_two_host_addresses_or_protocols_is_fine():
    net.ruleset([], [PortMap("tcp", "127.0.0.1", 80, "10.210.1.2", 80),
                     PortMap("tcp", "127.0.0.2", 80, "10.210.1.3", 80),
                     PortMap("udp", None, 80, "10.210.1.4", 80)], False)


def test_apply_refuses_any_other_table():
    for text in ("table ip filter {\n}\n", net.ruleset([], [], False) + "flush ruleset\n", ""):
        with pytest.raises(net.NetError, match="exactly one"):
            net.apply_ruleset(text)


def test_net_error_keeps_its_hint_across_pickle():
    err = pickle.loads(pickle.dumps(net.NetError("what failed", "what to do")))
    assert (type(err), err.what, err.hint) == (net.NetError, "what failed", "what to do")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("nft") or os.path.exists("/usr/sbin/nft")),
                    reason="nft -c needs root and nftables")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_nft_accepts_every_variant(variant):
    net.check_ruleset(net.ruleset(*VARIANTS[variant]))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("nft") or os.path.exists("/usr/sbin/nft")),
                    reason="nft -c needs root and nftables")
def test_nft_check_reports_its_message():
    with pytest.raises(net.NetError, match="nft -c rejected") as info:
        net.check_ruleset("table inet labkit {\n\tchain forward {\n\t\tbogus\n\t}\n}\n")
    assert "bogus" in str(info.value)


def test_a_data_root_of_its_own_gets_a_table_of_its_own():
    text = net.ruleset([A], [], False, table="labkit-0123abcd")
    assert text.startswith("table inet labkit-0123abcd {")
    with pytest.raises(net.NetError, match="not labkit's"):
        net._replace("filter")
