"""-p and -P as Docker reads them (no kernel needed)."""
from __future__ import annotations

import pytest

from labkit.engine import networking
from labkit.engine.errors import Invalid
from labkit.engine.records import PortSpec


@pytest.mark.parametrize("value, expected", [
    ("80", [PortSpec(80)]),
    ("8080:80", [PortSpec(80, host_port=8080)]),
    ("127.0.0.1:8080:80", [PortSpec(80, host_ip="127.0.0.1", host_port=8080)]),
    ("127.0.0.1::80", [PortSpec(80, host_ip="127.0.0.1")]),
    ("5353:53/udp", [PortSpec(53, proto="udp", host_port=5353)]),
    ("8000-8001:80-81", [PortSpec(80, host_port=8000), PortSpec(81, host_port=8001)]),
])
def test_publish_specs_parse_as_docker_reads_them(value, expected):
    assert networking.parse_publish(value) == expected


@pytest.mark.parametrize("value, words", [
    ("80/sctp", "tcp or udp"), ("[::1]:80:80", "IPv4"), ("x:80", "invalid port"), ("0", "1 to 65535"),
    ("8000-8002:80-81", "same length"), ("300.1.1.1:80:80", "invalid IP"), ("70000", "1 to 65535"),
])
def test_bad_publish_specs_are_refused_with_the_reason(value, words):
    with pytest.raises(Invalid, match=words):
        networking.parse_publish(value)


def test_expose_becomes_free_host_ports():
    ports = networking.exposed_ports({"80/tcp": {}, "53/udp": {}})
    assert ports == [PortSpec(53, proto="udp"), PortSpec(80)]
