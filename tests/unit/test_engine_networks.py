"""Engine networks without the kernel: IPAM, names and subnets, with Docker's errors."""
from __future__ import annotations

import concurrent.futures
import ipaddress

import pytest

from labkit.engine import networks
from labkit.engine.errors import Conflict, Invalid, NotFound


def test_docker_mac_from_the_address():
    assert networks.mac_for("172.17.0.2") == "02:42:ac:11:00:02"


@pytest.fixture
def store(tmp_path):
    """A store with one user network, made without the kernel (no bridge link)."""
    s = networks.NetworkStore(str(tmp_path / "networks"))
    with s.lock():
        s._save(networks.Network(id="a" * 64, name="app", driver="bridge", subnet="10.210.99.0/29",
                                 gateway="10.210.99.1", link="lkbrtest"))
    return s


def test_addresses_are_allocated_in_order_and_never_twice(store):
    got = [store.connect("app", f"{i:064x}").endpoints[f"{i:064x}"].ip for i in range(5)]
    assert got == [f"10.210.99.{n}" for n in range(2, 7)]  # .1 is the gateway, .7 the broadcast
    with pytest.raises(Conflict, match="no available IPv4 addresses"):
        store.connect("app", "f" * 64)
    store.release(f"{2:064x}")
    assert store.connect("app", "e" * 64).endpoints["e" * 64].ip == "10.210.99.4"


def test_concurrent_allocations_get_distinct_addresses(store):
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda i: store.connect("app", f"{i:064x}"), range(5)))
    ips = [ep.ip for ep in store.get("app").endpoints.values()]
    assert len(set(ips)) == 5


def test_a_chosen_address_must_be_free_and_in_the_subnet(store):
    assert store.connect("app", "1" * 64, ip="10.210.99.5").endpoints["1" * 64].ip == "10.210.99.5"
    with pytest.raises(Conflict, match="Address already in use"):
        store.connect("app", "2" * 64, ip="10.210.99.5")
    for bad in ("10.210.98.5", "10.210.99.7", "10.210.99.0"):
        with pytest.raises(Invalid, match="not a usable address"):
            store.connect("app", "3" * 64, ip=bad)


def test_networks_resolve_by_name_id_and_prefix(store):
    assert store.get("app").name == store.get("a" * 64).name == store.get("aaaa").name == "app"
    with pytest.raises(NotFound, match="network nope not found"):
        store.get("nope")


def test_chosen_subnets_must_not_overlap(store, monkeypatch):
    monkeypatch.setattr(networks, "host_routes", lambda: [ipaddress.ip_network("192.168.5.0/24")])
    with pytest.raises(networks.Forbidden, match="Pool overlaps"):
        store._chosen_subnet("10.210.99.0/24", None)
    with pytest.raises(networks.Forbidden, match="Pool overlaps"):
        store._chosen_subnet("192.168.0.0/16", None)
    with pytest.raises(Invalid, match="host bits set"):
        store._chosen_subnet("10.211.0.5/24", None)
    assert store._chosen_subnet("10.211.0.0/24", None) == ("10.211.0.0/24", "10.211.0.1")


def test_free_subnets_skip_taken_ones(store, monkeypatch):
    monkeypatch.setattr(networks, "host_routes", lambda: [ipaddress.ip_network("10.210.0.0/23")])
    assert store._free_subnet() == ("10.210.2.0/24", "10.210.2.1")
