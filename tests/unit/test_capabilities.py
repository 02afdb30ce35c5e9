"""Capability names, masks and spec checks: pure logic, no root."""
from __future__ import annotations

import pytest

from labkit import capabilities
from labkit.errors import LabkitError, SpecError
from labkit.runtime.spec import default_spec


def test_numbers_follow_linux_capability_h():
    assert capabilities.NAMES.index("CAP_CHOWN") == 0
    assert capabilities.NAMES.index("CAP_NET_ADMIN") == 12
    assert capabilities.NAMES.index("CAP_SYS_ADMIN") == 21
    assert capabilities.NAMES.index("CAP_AUDIT_WRITE") == 29
    assert capabilities.NAMES.index("CAP_CHECKPOINT_RESTORE") == 40


def test_docker_default_is_the_well_known_mask():
    # `grep CapEff /proc/self/status` as root in `docker run busybox`: 00000000a80425fb
    assert capabilities.mask(capabilities.DOCKER_DEFAULT) == 0xA80425FB
    assert capabilities.mask(capabilities.RUNC_DEFAULT) == 0x20000420


def test_names_and_mask_round_trip():
    names = ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]
    assert capabilities.names(capabilities.mask(names)) == names
    assert capabilities.names(1 << 50) == ["cap_50"]  # a number newer than this table


def test_problems_name_each_bad_entry():
    assert capabilities.problems(None) == []
    assert capabilities.problems(capabilities.oci_sets(capabilities.DOCKER_DEFAULT)) == []
    found = capabilities.problems({"bounding": ["CAP_KILL", "CAP_FLY"], "effectiv": [], "ambient": "CAP_KILL"})
    assert len(found) == 3
    assert "CAP_FLY" in found[0] and "effectiv" in found[1] and "list" in found[2]
    assert capabilities.problems(["CAP_KILL"]) and "object" in capabilities.problems(["CAP_KILL"])[0]


def test_a_spec_with_a_bad_capability_or_rlimit_is_refused():
    spec = default_spec(["true"])
    spec.process.capabilities = {"bounding": ["NET_ADMIN"]}  # docker's --cap-add spelling: needs CAP_
    spec.process.rlimits = [{"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 1024}, {"type": "NOFILE", "soft": 1, "hard": 1}]
    with pytest.raises(SpecError) as info:
        spec.validate()
    assert "NET_ADMIN" in info.value.what and "soft <= hard" in info.value.what and "'NOFILE'" in info.value.what


def test_default_spec_is_runc_spec():
    process = default_spec().process
    assert process.capabilities == {s: list(capabilities.RUNC_DEFAULT)
                                    for s in ("bounding", "effective", "permitted", "ambient")}
    assert process.noNewPrivileges is True
    assert process.rlimits == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]


def test_adjusted_is_docker_cap_add_and_cap_drop():
    base = capabilities.DOCKER_DEFAULT
    assert "CAP_NET_ADMIN" in capabilities.adjusted(base, add=["net_admin"])
    assert "CAP_KILL" not in capabilities.adjusted(base, drop=["CAP_KILL"])
    assert capabilities.adjusted(base, add=["KILL"], drop=["ALL"]) == ["CAP_KILL"]
    assert capabilities.adjusted([], add=["ALL"], every=capabilities.NAMES) == list(capabilities.NAMES)
    with pytest.raises(LabkitError, match="unknown capability 'FLY'"):
        capabilities.adjusted(base, add=["FLY"])


def test_beyond_names_what_the_creator_cannot_give(monkeypatch):
    holds = capabilities.mask(capabilities.DOCKER_DEFAULT)
    monkeypatch.setattr(capabilities, "of_process", lambda pid="self": {"bounding": holds})
    monkeypatch.setattr(capabilities, "last_cap", lambda: 40)
    assert capabilities.beyond(capabilities.oci_sets(capabilities.RUNC_DEFAULT)) == []
    assert capabilities.beyond({"bounding": ["CAP_SYS_ADMIN", "CAP_KILL"], "ambient": ["CAP_BPF"]}) == ["CAP_SYS_ADMIN", "CAP_BPF"]
    assert capabilities.adjusted([], add=["ALL"]) == [n for n in capabilities.NAMES if n in capabilities.DOCKER_DEFAULT]
