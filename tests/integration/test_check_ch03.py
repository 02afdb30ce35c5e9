"""labkit.check.ch03 judges kernel state: the reference answers pass, each usual mistake gets its hint."""
from __future__ import annotations

import pytest

from labkit import cgroups, runtime
from labkit.check import ch03

pytestmark = pytest.mark.vm

MiB = 1 << 20
V2 = cgroups.version() == 2


def write(container_id, name, value):
    group = runtime.cgroup(container_id)
    if group.has("memory", name):
        with open(group.path("memory", name), "w") as f:
            f.write(str(value))


def reference_limit(container_id, mib):
    group = runtime.cgroup(container_id)
    group.set_memory(limit=mib * MiB, swap=mib * MiB)


def limit_only(container_id, mib):
    write(container_id, "memory.max" if V2 else "memory.limit_in_bytes", mib * MiB)


def mib_not_bytes(container_id, mib):
    write(container_id, "memory.max" if V2 else "memory.limit_in_bytes", mib)


def test_live_memory_limit_reference_passes(busybox_rootfs):
    verdict = ch03.live_memory_limit(reference_limit, busybox_rootfs)
    assert verdict, verdict
    assert "48 MiB, with no swap" in verdict.message


def test_live_memory_limit_doing_nothing(busybox_rootfs):
    verdict = ch03.live_memory_limit(lambda cid, mib: None, busybox_rootfs)
    assert not verdict and "still 64 MiB" in verdict.message
    assert "memory.max (v2) or memory.limit_in_bytes (v1)" in verdict.hint


def test_live_memory_limit_in_mib_instead_of_bytes(busybox_rootfs):
    verdict = ch03.live_memory_limit(mib_not_bytes, busybox_rootfs)
    assert not verdict
    assert "2**20" in verdict.hint  # v1: the kernel refuses to shrink (EBUSY); v2: the container is OOM-killed


@pytest.mark.skipif(V2, reason="the write order only matters on cgroup v1")
def test_live_memory_limit_v1_order_trap(busybox_rootfs):
    verdict = ch03.live_memory_limit(limit_only, busybox_rootfs)
    assert not verdict and "memsw first" in verdict.hint


def test_live_memory_limit_learner_code_raising(busybox_rootfs):
    verdict = ch03.live_memory_limit(lambda cid, mib: 1 / 0, busybox_rootfs)
    assert not verdict and "ZeroDivisionError" in verdict.message


def resources(value):
    def edit(spec):
        spec.linux.resources = value
    return edit


@pytest.mark.parametrize("edit, message, hint", [
    (lambda spec: None, "resources is empty", "OCI format"),
    (resources({"pids": {"limit": 20}}), "no CPU quota", "quota"),
    (resources({"pids": {"limit": 20}, "cpu": {"shares": 512}}), "only a different weight", "contention"),
    (resources({"pids": {"limit": 20}, "cpu": {"quota": 0.5, "period": 100000}}), "could not be created",
     "microseconds"),
    (resources({"pids": {"limit": 20}, "cpu": {"quota": 80000, "period": 100000}}), "allows 0.8 CPUs", "quota / period"),
    (resources({"pids": {"limit": 50}, "cpu": {"quota": 50000, "period": 100000}}), "pids.max is 50", "'limit': 20"),
    (resources({"cpu": {"quota": 50000, "period": 100000}}), "pids.max is unlimited", "'limit': 20"),
    (resources({"pids": 20}), "could not be created", "OCI format"),
])
def test_bomb_proof_mistakes_get_specific_hints(busybox_rootfs, edit, message, hint):
    verdict = ch03.bomb_proof(edit, busybox_rootfs, watch=0.3)
    assert not verdict
    assert message in verdict.message and hint in verdict.hint, verdict


def test_bomb_proof_reference_passes(busybox_rootfs):
    verdict = ch03.bomb_proof(resources({"pids": {"limit": 20}, "cpu": {"quota": 50000, "period": 100000}}),
                              busybox_rootfs)
    assert verdict, verdict
