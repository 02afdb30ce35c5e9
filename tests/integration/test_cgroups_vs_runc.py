"""Against runc: the same linux.resources give the same values in the cgroup files.

For each set of resources one config.json is written per runtime, differing
only in linux.cgroupsPath. runc's container and labkit's are created side by
side (create is enough: a runtime applies linux.resources before the
container's process may run), then every cgroup file the resources map to
is read for both and compared — and checked against the value the kernel
should show. File names follow the host's cgroup version: v1 (memory.
limit_in_bytes, cpu.cfs_quota_us, cpu.shares, ...) or v2 (memory.max,
cpu.max, cpu.weight, ...), so the same test holds on this v1 host and in
the cgroup v2 VM.

Safety: runc makes cgroups. Both containers use an absolute
linux.cgroupsPath /labkit-peer-cgroups/<id>, so everything either runtime
makes is labkit-named (runc also makes that path in the name=systemd and
hybrid-unified hierarchies). The parent is this module's own (the runtime
behaviour comparison in test_vs_runc.py uses labkit-peer/ under the own
cgroup), so neither module can remove the other's parent from under it.
runc's state lives in a labkit-named temp dir; the module fixture deletes
what runc still lists and rmdirs the parents that did not exist before.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from labkit import cgroups, runtime

pytestmark = [
    pytest.mark.peer,
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (apt-get install runc)"),
]

PARENT = "labkit-peer-cgroups"
MiB = 1 << 20
V2 = cgroups.version() == 2


def cgroup_mounts() -> list[str]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (v1, named, and cgroup2)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[:1] in (["cgroup"], ["cgroup2"]):
                point = pre.split()[4]
                if point.startswith(cgroups.CGROUP_ROOT):
                    points.append(point)
    return sorted(set(points))


class Runc:
    """runc with its state in a labkit-named dir; remembers which parents it found."""

    def __init__(self, state_root: str, tmp: str) -> None:
        self.root = state_root
        self.tmp = tmp
        self.parents_before = {p for p in self.parents() if os.path.isdir(p)}

    @staticmethod
    def parents() -> list[str]:
        return [os.path.join(point, PARENT) for point in cgroup_mounts()]

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        # stdio to files, not pipes: the container's init inherits them and lives on.
        with open(os.path.join(self.tmp, "runc.out"), "w+") as out:
            done = subprocess.run(["runc", "--root", self.root, *args], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=60)
            out.seek(0)
            done.stdout = out.read()
        return done

    def group(self, container_id: str) -> cgroups.Cgroup:
        """runc's cgroup for the container, seen through labkit's reader."""
        if V2:
            return cgroups.Cgroup(container_id, 2, {"": os.path.join(cgroups.CGROUP_ROOT, PARENT, container_id)})
        dirs = {c: os.path.join(point, PARENT, container_id) for c, point in cgroups.v1_mounts().items()}
        return cgroups.Cgroup(container_id, 1, dirs)

    def cleanup(self) -> None:
        listed = self("list", "-q")
        for cid in listed.stdout.split() if listed.returncode == 0 else []:
            self("delete", "--force", cid)
        for parent in self.parents():
            if parent in self.parents_before or not os.path.isdir(parent):
                continue
            for leaf in sorted((e.path for e in os.scandir(parent) if e.is_dir()), reverse=True):
                os.rmdir(leaf)  # a leaf a runtime failed to remove: empty once its processes are gone
            os.rmdir(parent)


@pytest.fixture(scope="module")
def runc(lab_tmp):
    state = os.path.join(lab_tmp, "labkit-runc-cgroups")
    peer = Runc(state, lab_tmp)
    yield peer
    peer.cleanup()
    shutil.rmtree(state, ignore_errors=True)


def write_bundle(path: str, rootfs: str, resources: dict, cgroups_path: str) -> str:
    os.makedirs(path)
    spec = runtime.default_spec(["sleep", "60"], rootfs=os.path.realpath(rootfs))
    spec.linux.resources = resources
    spec.linux.cgroupsPath = cgroups_path
    spec.save(path)
    return path


def files_for(resources: dict, group: cgroups.Cgroup) -> list[tuple[str, str]]:
    """(controller, file) pairs that `resources` sets, for this host's cgroup version."""
    mem, cpu = resources.get("memory", {}), resources.get("cpu", {})
    wanted = []
    if V2:
        wanted += [("memory", "memory.max")] if "limit" in mem else []
        wanted += [("memory", "memory.low")] if "reservation" in mem else []
        wanted += [("memory", "memory.swap.max")] if "swap" in mem else []
        wanted += [("cpu", "cpu.max")] if {"quota", "period"} & cpu.keys() else []
        wanted += [("cpu", "cpu.weight")] if "shares" in cpu else []
        wanted += [("io", "io.max")] if "blockIO" in resources else []
    else:
        wanted += [("memory", "memory.limit_in_bytes")] if "limit" in mem else []
        wanted += [("memory", "memory.soft_limit_in_bytes")] if "reservation" in mem else []
        wanted += [("memory", "memory.memsw.limit_in_bytes")] if {"swap", "limit"} & mem.keys() else []
        wanted += [("cpu", "cpu.cfs_quota_us")] if "quota" in cpu else []
        wanted += [("cpu", "cpu.cfs_period_us")] if "period" in cpu else []
        wanted += [("cpu", "cpu.shares")] if "shares" in cpu else []
        wanted += [("blkio", "blkio.throttle.read_bps_device")] if "blockIO" in resources else []
    wanted += [("cpuset", "cpuset.cpus")] if "cpus" in cpu else []
    wanted += [("cpuset", "cpuset.mems")] if "mems" in cpu else []
    wanted += [("pids", "pids.max")] if "pids" in resources else []
    return [(c, f) for c, f in wanted if group.has(c, f)]  # e.g. no swap accounting: no such file


def root_disk(lab_tmp) -> dict | None:
    try:
        major, minor = map(int, cgroups.block_device(lab_tmp).split(":"))
    except cgroups.CgroupError:
        return None
    return {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 4 * MiB}]}


LIMITED = {"memory": {"limit": 64 * MiB, "reservation": 32 * MiB, "swap": 96 * MiB},
           "cpu": {"quota": 30000, "period": 100000, "shares": 512, "cpus": "0", "mems": "0"},
           "pids": {"limit": 64}}
UNLIMITED = {"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 50000, "shares": 2048},
             "pids": {"limit": -1}}

# What the kernel shows for LIMITED / UNLIMITED, whoever wrote it.
EXPECTED = {
    "memory.max": {"limited": str(64 * MiB), "unlimited": "max"},
    "memory.low": {"limited": str(32 * MiB)},
    "memory.swap.max": {"limited": str(32 * MiB)},  # v2 swap alone = OCI (memory+swap) - memory
    "cpu.max": {"limited": "30000 100000", "unlimited": "max 50000"},
    "cpu.weight": {"limited": str(cgroups.shares_to_weight(512)), "unlimited": str(cgroups.shares_to_weight(2048))},
    "memory.limit_in_bytes": {"limited": str(64 * MiB)},
    "memory.soft_limit_in_bytes": {"limited": str(32 * MiB)},
    "memory.memsw.limit_in_bytes": {"limited": str(96 * MiB)},
    "cpu.cfs_quota_us": {"limited": "30000", "unlimited": "-1"},
    "cpu.cfs_period_us": {"limited": "100000", "unlimited": "50000"},
    "cpu.shares": {"limited": "512", "unlimited": "2048"},
    "cpuset.cpus": {"limited": "0"},
    "cpuset.mems": {"limited": "0"},
    "pids.max": {"limited": "64", "unlimited": "max"},
}


@pytest.mark.parametrize("name", ["limited", "unlimited"])
def test_same_resources_same_cgroup_files(name, runc, busybox_rootfs, lab_tmp, tmp_path):
    resources = {"limited": LIMITED, "unlimited": UNLIMITED}[name]
    if name == "limited" and (disk := root_disk(lab_tmp)):
        resources = {**resources, "blockIO": disk}
    tag = uuid.uuid4().hex[:8]
    runc_id, labkit_id = f"labkit-runc-{tag}", f"labkit-lk-{tag}"
    runc_bundle = write_bundle(str(tmp_path / "runc"), busybox_rootfs, resources, f"/{PARENT}/{runc_id}")
    labkit_bundle = write_bundle(str(tmp_path / "labkit"), busybox_rootfs, resources, f"/{PARENT}/{labkit_id}")

    created = runc("create", "--bundle", runc_bundle, runc_id)
    assert created.returncode == 0, created.stdout
    try:
        runtime.create(labkit_id, labkit_bundle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            theirs, ours = runc.group(runc_id), runtime.cgroup(labkit_id)
            assert os.path.isdir(theirs.path("pids", ""))  # runc made it where we look
            files = files_for(resources, ours)
            assert len(files) >= 4
            values = {(c, f): (theirs.read(c, f), ours.read(c, f)) for c, f in files}
        finally:
            runtime.delete(labkit_id, force=True)
    finally:
        assert runc("delete", "--force", runc_id).returncode == 0

    differ = {f: v for (_, f), v in values.items() if v[0] != v[1]}
    assert not differ, f"runc vs labkit: {differ}"
    for (_, f), (value, _) in values.items():
        if name in EXPECTED.get(f, {}):
            assert value == EXPECTED[f][name], f"{f}: {value!r}"
    if "blockIO" in resources:
        throttle = values[("io", "io.max") if V2 else ("blkio", "blkio.throttle.read_bps_device")][0]
        assert str(4 * MiB) in throttle
