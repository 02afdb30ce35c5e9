"""cgroups on the real kernel, through the runtime: limits change what a container can *use*.

Every container here gets its limits the OCI way, from linux.resources in
config.json, and every claim is read back from the kernel's own files and
counters (labkit.cgroups), on cgroup v1/hybrid and on v2 alike. The tests
branch on labkit.cgroups.version() only where the kernel interface really
differs (file names, and SIGKILL to a frozen task).

Timing claims use generous bands (a 20% quota must give well under half a
CPU), never tight ones: performance is measured in benchmarks/, not here.
Each test checks that the container's cgroup is gone afterwards; the
session fixture checks that nothing of labkit's is left at all.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid

import pytest

from labkit import cgroups, runtime
from labkit.errors import ContainerError, SpecError
from labkit.runtime.spec import Mount

pytestmark = pytest.mark.vm

MiB = 1 << 20
V2 = cgroups.version() == 2


# --- helpers ------------------------------------------------------------------------------------
def bundle_for(make_bundle, script: str, resources: dict, mounts: list[Mount] = ()) -> str:
    def edit(spec):
        spec.linux.resources = resources
        spec.mounts.extend(mounts)
    return make_bundle(["sh", "-c", script], edit=edit)


def groups_gone(group: cgroups.Cgroup) -> bool:
    return not any(os.path.isdir(d) for d in group.dirs.values())


@contextlib.contextmanager
def container(bundle: str, start: bool = True, stderr=subprocess.DEVNULL):
    """A started container (id, pid, cgroup); deleted, and its cgroup checked gone, after."""
    cid = "cg-" + uuid.uuid4().hex[:10]
    runtime.create(cid, bundle, stdout=subprocess.DEVNULL, stderr=stderr)
    group = runtime.cgroup(cid)
    try:
        if start:
            runtime.start(cid)
        yield cid, runtime.state(cid).pid, group
    finally:
        with contextlib.suppress(ContainerError):  # a test may have deleted it already
            runtime.delete(cid, force=True)
    assert groups_gone(group), f"cgroup of {cid} left behind: {group}"


def until(predicate, timeout: float = 10.0, step: float = 0.02, what: str = ""):
    """Poll until predicate() is truthy; return its value (fail the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError as err:  # e.g. the group vanished: the container died
            value, error = None, err
        else:
            error = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}"
                        + (f" (last error: {error})" if error else f" (last value: {value!r})"))
        time.sleep(step)


def read_inside(pid: int, path: str) -> str:
    """A file in the container's own filesystem, seen from the host through /proc/PID/root."""
    try:
        with open(f"/proc/{pid}/root{path}") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def counter(pid: int) -> int:
    """The loop counter the container writes to /dev/shm/n (retries a half-written file)."""
    return int(until(lambda: read_inside(pid, "/dev/shm/n"), timeout=5))


COUNT = "i=0; while :; do i=$((i+1)); echo $i > /dev/shm/n; usleep 10000; done"
BUSY = "while :; do :; done"
# Doubling a shell variable: the fastest way for busybox sh to use memory.
HOG = "x=a; while :; do x=$x$x; done"


# --- the resources land in the kernel's files ---------------------------------------------------------
def test_oci_resources_are_written_to_the_cgroup_files(make_bundle):
    resources = {"memory": {"limit": 64 * MiB, "reservation": 32 * MiB, "swap": 64 * MiB},
                 "cpu": {"quota": 25000, "period": 100000, "shares": 512},
                 "pids": {"limit": 42}}
    with container(bundle_for(make_bundle, "sleep 30", resources), start=False) as (_, pid, g):
        assert g.memory_limit() == 64 * MiB
        assert g.pids_max() == 42
        if V2:
            assert g.read("memory", "memory.low") == str(32 * MiB)
            if g.has("memory", "memory.swap.max"):
                assert g.read("memory", "memory.swap.max") == "0"  # OCI swap is memory+swap
            assert g.read("cpu", "cpu.max") == "25000 100000"
            assert g.read("cpu", "cpu.weight") == str(cgroups.shares_to_weight(512))
        else:
            assert g.read("memory", "memory.soft_limit_in_bytes") == str(32 * MiB)
            if g.has("memory", "memory.memsw.limit_in_bytes"):
                assert g.read("memory", "memory.memsw.limit_in_bytes") == str(64 * MiB)
            assert g.read("cpu", "cpu.cfs_quota_us") == "25000"
            assert g.read("cpu", "cpu.cfs_period_us") == "100000"
            assert g.read("cpu", "cpu.shares") == "512"
        assert pid in g.pids()  # the created (not yet started) init is already inside


def test_cgroup_namespace_hides_the_host_path(make_bundle):
    bundle = bundle_for(make_bundle, "cat /proc/self/cgroup; sleep 30", {"pids": {"limit": 16}})
    result = runtime.run(bundle_for(make_bundle, "cat /proc/self/cgroup", {"pids": {"limit": 16}}))
    lines = result.stdout.split()
    assert lines and all(line.rsplit(":", 1)[1] == "/" for line in lines), lines
    with container(bundle) as (cid, pid, g):  # ... while the host sees where it really is
        with open(f"/proc/{pid}/cgroup") as f:
            host_view = f.read()
        assert f"/{cid}\n" in host_view and "labkit" in host_view


# --- memory ------------------------------------------------------------------------------------------
def test_oom_kill_of_pid_1_exits_137_and_is_counted(make_bundle):
    limit = 32 * MiB
    bundle = bundle_for(make_bundle, HOG, {"memory": {"limit": limit, "swap": limit}})
    with container(bundle) as (cid, _, g):
        assert runtime.wait(cid, timeout=30) == 137  # 128 + SIGKILL, from the OOM killer
        final = runtime.state(cid).cgroup_stats  # the monitor read them once the container exited
        assert not groups_gone(g)  # as under runc, the group stays until delete
    assert final["oom_kills"] >= 1
    assert final["memory_limit"] == limit
    assert final["memory_peak"] is None or final["memory_peak"] <= limit


def test_oom_kill_of_a_child_is_counted_live_and_pid_1_survives(make_bundle):
    limit = 32 * MiB
    script = f"sh -c '{HOG}'; echo $? > /dev/shm/status; exec sleep 60"
    bundle = bundle_for(make_bundle, script, {"memory": {"limit": limit, "swap": limit}})
    with container(bundle) as (cid, pid, g):
        assert until(lambda: g.oom_kills() >= 1, timeout=20)
        assert until(lambda: read_inside(pid, "/dev/shm/status")) == "137"
        assert runtime.state(cid).status == "running"  # the kernel killed the hog, not PID 1
        assert g.memory_usage() < limit
        peak = g.memory_peak()
        assert peak is None or limit * 0.5 < peak <= limit  # it did fill the limit first


def test_memory_limit_changes_live_both_ways(make_bundle):
    bundle = bundle_for(make_bundle, "sleep 60", {"memory": {"limit": 64 * MiB, "swap": 64 * MiB}})
    with container(bundle) as (_, _, g):
        for mib in (128, 48, 96):  # raising needs memory+swap first on v1, lowering the limit first
            g.set_memory(limit=mib * MiB, swap=mib * MiB)
            assert g.memory_limit() == mib * MiB
        g.set_memory(limit=-1)
        assert g.memory_limit() is None


# --- CPU -----------------------------------------------------------------------------------------------
def test_cpu_quota_throttles_a_busy_loop(make_bundle):
    bundle = bundle_for(make_bundle, BUSY, {"cpu": {"quota": 20000, "period": 100000}})
    with container(bundle) as (_, _, g):
        time.sleep(0.2)
        before, t0 = g.cpu_stats(), time.monotonic()
        time.sleep(1.0)
        after, t1 = g.cpu_stats(), time.monotonic()
    share = (after["usage_usec"] - before["usage_usec"]) / 1e6 / (t1 - t0)
    assert 0.02 < share < 0.5, f"a 20% quota gave {share:.0%} of a CPU"
    assert after["nr_throttled"] > before["nr_throttled"]
    assert after["throttled_usec"] > before["throttled_usec"]


# --- PIDs ----------------------------------------------------------------------------------------------
def test_pids_max_refuses_the_fork_past_the_limit(make_bundle, tmp_path):
    errors = tmp_path / "stderr"
    # PID 1 starts a shell that forks 12 sleeps. With PID 1, that shell and 6 sleeps the
    # group holds 8 tasks: the 7th fork fails, the shell gives up ("can't fork") and exits.
    script = "sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 60 & done'; exec sleep 60"
    bundle = bundle_for(make_bundle, script, {"pids": {"limit": 8}})
    with open(errors, "w") as err, container(bundle, stderr=err) as (_, _, g):
        until(lambda: "can't fork" in errors.read_text())
        until(lambda: g.pids_current() == 7)  # PID 1 (now sleep) and the 6 sleeps that fit
        assert len(g.pids()) == 7
        events = cgroups.parse_flat_keyed(g.read("pids", "pids.events"))
        assert events.get("max", 0) >= 1  # the kernel counted the refusal


def test_fork_bomb_is_contained_then_cleaned_up(make_bundle):
    script = "sh -c 'f() { f & f; }; f'; exec sleep 60"  # each shell forks until refused
    bundle = bundle_for(make_bundle, script, {"pids": {"limit": 32}, "cpu": {"quota": 50000, "period": 100000}})
    with container(bundle) as (cid, _, g):
        seen = []

        def refused() -> int:  # a bomb can burn out between two samples: the kernel's count is the proof
            seen.append(g.pids_current())
            return cgroups.parse_flat_keyed(g.read("pids", "pids.events"))["max"]
        until(refused, step=0.002, what="the kernel to refuse a fork past pids.max")
        for _ in range(50):
            seen.append(g.pids_current())
            time.sleep(0.005)
        assert 1 < max(seen) <= 32
        inside = g.pids()
        runtime.delete(cid, force=True)
    assert not [p for p in inside if os.path.exists(f"/proc/{p}")]  # every bomb process is gone


# --- freezing --------------------------------------------------------------------------------------------
def test_a_paused_container_makes_no_progress_and_resumes(make_bundle):
    bundle = bundle_for(make_bundle, COUNT, {"pids": {"limit": 16}})
    with container(bundle) as (cid, pid, g):
        until(lambda: counter(pid) > 5)
        runtime.pause(cid)
        assert runtime.state(cid).status == "paused" and g.frozen()
        frozen_at = counter(pid)
        usage = g.cpu_stats()["usage_usec"]
        time.sleep(0.4)
        assert counter(pid) == frozen_at
        assert g.cpu_stats()["usage_usec"] == usage  # not a single microsecond of CPU
        runtime.resume(cid)
        assert runtime.state(cid).status == "running" and not g.frozen()
        until(lambda: counter(pid) > frozen_at + 5)


def test_sigkill_to_a_frozen_container_and_delete_force(make_bundle):
    bundle = bundle_for(make_bundle, COUNT, {"pids": {"limit": 16}})
    with container(bundle) as (cid, pid, g):
        until(lambda: counter(pid) > 0)
        runtime.pause(cid)
        runtime.kill(cid, "KILL")
        time.sleep(0.3)
        if V2:  # cgroup v2: a fatal signal wakes a frozen task
            assert runtime.wait(cid, timeout=5) == 137
        else:  # cgroup v1: it stays frozen, the kill pending until thaw
            assert runtime.state(cid).status == "paused"
            assert g.frozen() and os.path.exists(f"/proc/{pid}")
        runtime.delete(cid, force=True)  # thaws after the kill: on v1 that is when it dies
        assert not os.path.exists(f"/proc/{pid}")
        assert groups_gone(g)


def test_cgroup_is_removed_even_when_the_monitor_is_killed(make_bundle):
    bundle = bundle_for(make_bundle, "sleep 60", {"pids": {"limit": 16}})
    with container(bundle) as (cid, pid, g):
        os.kill(runtime.state(cid).monitor_pid, signal.SIGKILL)  # the monitor dies mid-way...
        until(lambda: runtime.state(cid).status == "stopped")  # ...and its init with it (pdeathsig)
        assert not groups_gone(g)  # nobody removed the group yet
        runtime.delete(cid)
        assert groups_gone(g)


# --- accounting ------------------------------------------------------------------------------------------
def test_stats_are_docker_stats_numbers_from_the_kernel(make_bundle):
    script = "head -c 8388608 /dev/zero > /dev/shm/fill; " + BUSY  # 8 MiB of tmpfs is charged to us
    bundle = bundle_for(make_bundle, script, {"memory": {"limit": 64 * MiB, "swap": 64 * MiB},
                                              "pids": {"limit": 16}})
    with container(bundle) as (_, pid, g):
        until(lambda: g.memory_usage() > 8 * MiB)
        time.sleep(0.2)
        stats = g.stats()
    assert stats["memory_limit"] == 64 * MiB
    assert 8 * MiB < stats["memory_usage"] < 64 * MiB
    assert stats["pids"] == 1
    assert stats["cpu_usage_usec"] > 50_000  # the busy loop ran
    assert stats["oom_kills"] == 0


# --- IO ----------------------------------------------------------------------------------------------------
def disk_dir(tmp_path) -> tuple[str, str]:
    """A directory on a real disk and that disk's MAJ:MIN (skip, saying why, if there is none)."""
    reasons = []
    for candidate in (str(tmp_path), "/var/tmp"):
        try:
            return candidate, cgroups.block_device(candidate)
        except cgroups.CgroupError as err:
            reasons.append(err.what)
    pytest.skip("; ".join(reasons))


def test_io_throttle_slows_direct_reads(make_bundle, tmp_path):
    where, device = disk_dir(tmp_path)
    data = os.path.join(where, f"labkit-io-{uuid.uuid4().hex[:8]}")
    os.mkdir(data)
    try:
        with open(os.path.join(data, "blob"), "wb") as f:
            f.write(os.urandom(3 * MiB))
            os.fsync(f.fileno())
        major, minor = map(int, device.split(":"))
        read = "dd if=/tmp/blob of=/dev/null bs=64k iflag=direct"  # O_DIRECT: from the disk
        mount = Mount("/tmp", "bind", data, ["rbind", "ro"])  # onto a dir the rootfs has
        throttle = {"blockIO": {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 4 * MiB}]}}
        t0 = time.monotonic()
        result = runtime.run(bundle_for(make_bundle, read, throttle, [mount]))
        elapsed = time.monotonic() - t0
        assert result.exit_code == 0, result.stderr
        assert "48+0 records in" in result.stderr
        assert elapsed > 0.4, f"3 MiB at 4 MiB/s took only {elapsed:.2f}s"  # 0.75 s expected
    finally:
        for name in os.listdir(data):
            os.unlink(os.path.join(data, name))
        os.rmdir(data)


def test_io_throttle_where_there_is_no_such_disk_is_a_clear_error(make_bundle):
    minor = next(m for m in range(4095, 0, -1) if not os.path.exists(f"/sys/dev/block/7:{m}"))
    bundle = bundle_for(make_bundle, "true", {"blockIO": {"throttleWriteBpsDevice": [
        {"major": 7, "minor": minor, "rate": MiB}]}})
    try:
        with pytest.raises(ContainerError, match="IO throttling is not available here") as info:
            runtime.create("cg-no-disk", bundle)
    finally:
        if "cg-no-disk" in [s.id for s in runtime.list_containers()]:
            runtime.delete("cg-no-disk", force=True)
    assert "whole disk" in info.value.hint
    with pytest.raises(cgroups.CgroupError, match="not available here.*not on a block device"):
        cgroups.block_device("/proc")


def test_malformed_resources_are_a_clear_error_and_leave_no_cgroup(make_bundle):
    bundle = bundle_for(make_bundle, "true", {"pids": 20})
    with pytest.raises(SpecError, match="linux.resources.pids: expected an object, got a number"):
        runtime.create("cg-malformed", bundle)
    left = [d for d, _, _ in os.walk(cgroups.CGROUP_ROOT) if os.path.basename(d) == "cg-malformed"]
    assert not left, left


def test_a_cgroup_in_use_is_not_shared(make_bundle, tmp_path):
    """The same id under two run roots would share labkit/<id>: the second is refused."""
    bundle = bundle_for(make_bundle, "sleep 30", {"pids": {"limit": 8}})
    with container(bundle) as (cid, pid, g):
        with pytest.raises(ContainerError, match="cgroup is not empty"):
            runtime.create(cid, bundle, root=str(tmp_path / "labkit-other-root"))
        assert pid in g.pids() and runtime.state(cid).status == "running"  # the first is untouched


# --- every field applied, or refused by name -------------------------------------------------------
import errno  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from labkit import capabilities, devices, mountinfo  # noqa: E402
from labkit import sys as lsys  # noqa: E402

SECRET = "labkit-loop-secret\n"


@pytest.fixture
def loop_device(tmp_path):
    """(path, major, minor) of a loop device on a file of ours that starts with SECRET; detached after."""
    if shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices here (losetup, /dev/loop-control)")
    backing = tmp_path / "labkit-loop.img"
    backing.write_bytes(SECRET.encode().ljust(1 << 20, b"\0"))
    path = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        rdev = os.stat(path).st_rdev
        yield path, os.major(rdev), os.minor(rdev)
    finally:
        subprocess.run(["losetup", "-d", path], check=True)


def refused(bundle: str, match: str) -> ContainerError | SpecError:
    """create fails with `match` (the spec check, or the kernel), and leaves neither a
    container nor a cgroup behind."""
    cid = "cg-refused-" + uuid.uuid4().hex[:8]
    try:
        with pytest.raises((ContainerError, SpecError), match=match) as info:
            runtime.create(cid, bundle)
    finally:
        if cid in [s.id for s in runtime.list_containers()]:
            runtime.delete(cid, force=True)
    assert not [d for d, _, _ in os.walk(cgroups.CGROUP_ROOT) if os.path.basename(d) == cid]
    return info.value


def test_fields_only_one_cgroup_version_has_are_applied_there_and_refused_elsewhere(make_bundle, loop_device):
    _, major, minor = loop_device  # a whole disk of our own to throttle
    disk = {"major": major, "minor": minor}
    resources = {"memory": {"limit": 64 * MiB, "swappiness": 0, "disableOOMKiller": True},
                 "cpu": {"quota": 20000, "period": 100000, "burst": 1000, "idle": 0},
                 "blockIO": {"throttleReadIOPSDevice": [{**disk, "rate": 100}],
                             "throttleWriteIOPSDevice": [{**disk, "rate": 50}]}}
    if V2:  # runc accepts and ignores these two on v2; labkit refuses them by name
        err = refused(bundle_for(make_bundle, "true", resources), "linux.resources.memory.swappiness cannot be applied")
        assert "memory.disableOOMKiller cannot be applied" in err.what
        resources["memory"] = {"limit": 64 * MiB}
    with container(bundle_for(make_bundle, "sleep 30", resources), start=False) as (_, _, g):
        if V2:
            assert f"{major}:{minor} rbps=max wbps=max riops=100 wiops=50" in g.read("io", "io.max")
            assert g.read("cpu", "cpu.max.burst") == "1000" and g.read("cpu", "cpu.idle") == "0"
        else:
            assert g.read("memory", "memory.swappiness") == "0"
            assert cgroups.parse_flat_keyed(g.read("memory", "memory.oom_control"))["oom_kill_disable"] == 1
            assert g.read("blkio", "blkio.throttle.read_iops_device") == f"{major}:{minor} 100"
            assert g.read("blkio", "blkio.throttle.write_iops_device") == f"{major}:{minor} 50"
            assert g.read("cpu", "cpu.cfs_burst_us") == "1000" and g.read("cpu", "cpu.idle") == "0"


def test_realtime_runtime_is_refused_with_the_reason(make_bundle):
    err = refused(bundle_for(make_bundle, "true", {"cpu": {"realtimeRuntime": 1000, "realtimePeriod": 100000}}),
                  "linux.resources.cpu.*realtime")
    if V2:
        assert "cgroup v2 has no real-time group scheduling" in err.what
    elif "Invalid argument" in err.what:  # the kernel's answer: labkit's parents have no real-time time
        assert "parents" in err.hint


def test_a_limit_for_a_controller_the_host_lacks_is_refused_before_the_container_exists(make_bundle):
    if not V2 and "net_cls" in (cgroups.host_controllers() or ()):
        pytest.skip("this v1 host has net_cls mounted: the class id would be applied")
    err = refused(bundle_for(make_bundle, "true", {"network": {"classID": 0x100001}}), "linux.resources.network")
    assert ("cgroup v2 has no net_cls controller" if V2 else "needs the net_cls controller, which is not mounted") \
        in err.what
    assert cgroups.problems({"network": {"classID": 0x100001}})  # the spec check can say so before anything


# --- device rules ----------------------------------------------------------------------------------
def mknod_and_read(make_bundle, major: int, minor: int, rules: list | None) -> runtime.Result:
    """A container with CAP_MKNOD makes a node for the loop device and reads it."""
    script = f"mknod /dev/labkit-disk b {major} {minor} && head -c {len(SECRET)} /dev/labkit-disk"

    def edit(spec):
        spec.process.capabilities = capabilities.oci_sets(capabilities.RUNC_DEFAULT + ("CAP_MKNOD",), ambient=True)
        spec.linux.resources = {"pids": {"limit": 16}, **({"devices": rules} if rules is not None else {})}
    return runtime.run(make_bundle(["sh", "-c", script], edit=edit))


def test_device_rules_stop_a_container_reading_a_disk_it_may_mknod(make_bundle, loop_device):
    _, major, minor = loop_device
    free = mknod_and_read(make_bundle, major, minor, None)  # a cgroup, but no device rules
    assert (free.exit_code, free.stdout) == (0, SECRET), free
    ruled = mknod_and_read(make_bundle, major, minor, devices.default_rules())  # runc's and Docker's rules
    assert ruled.exit_code != 0 and ruled.stdout == "", ruled
    assert "labkit-disk: Operation not permitted" in ruled.stderr and "mknod" not in ruled.stderr, ruled


@pytest.mark.skipif(V2, reason="devices.list is cgroup v1's; v2 has an eBPF program instead")
def test_v1_devices_list_shows_the_allow_list_runc_writes(make_bundle):
    with container(bundle_for(make_bundle, "sleep 30", {"devices": devices.default_rules()}), start=False) as (_, _, g):
        listed = g.read("devices", "devices.list").splitlines()
    assert sorted(listed) == sorted(r.cgroup_string() for r in devices.parse(devices.DEFAULT_ALLOWED))


def program_gone(prog_id: int) -> bool:
    try:
        os.close(lsys.bpf_prog_get_fd_by_id(prog_id))
        return False
    except OSError as err:
        return err.errno == errno.ENOENT


@pytest.mark.skipif(not V2, reason="cgroup v1 host: the eBPF device filter is the cgroup v2 path (runs in the v2 VM)")
def test_v2_device_filter_is_attached_to_the_group_and_freed_with_it(make_bundle):
    with container(bundle_for(make_bundle, "sleep 30", {"devices": devices.default_rules()}), start=False) as (_, _, g):
        (prog_id,) = devices.attached(g.dirs[""])
    until(lambda: program_gone(prog_id), what=f"the kernel to free device program {prog_id} with its cgroup")


def own_unified_dir() -> str | None:
    """A hybrid host's cgroup2 tree (/sys/fs/cgroup/unified) at this process's own group, if there is one."""
    point = os.path.join(cgroups.CGROUP_ROOT, "unified")
    if V2 or not os.path.exists(os.path.join(point, "cgroup.procs")):
        return None
    with open("/proc/self/cgroup") as f:
        path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
    return os.path.join(point, path.lstrip("/")) if path is not None else None


@pytest.mark.skipif(own_unified_dir() is None, reason="needs a hybrid host's cgroup2 tree; on v2 the test above "
                                                      "covers the eBPF filter")
def test_ebpf_device_filter_on_a_hybrid_hosts_unified_tree(loop_device):
    """cgroup v2's filter on this v1 host: its cgroup2 tree takes device programs too."""
    path, _, _ = loop_device
    group = os.path.join(own_unified_dir(), f"labkit-devices-{uuid.uuid4().hex[:8]}")
    os.mkdir(group)
    try:
        devices.apply(group, 2, devices.default_rules())
        (prog_id,) = devices.attached(group)
        script = f"echo $$ > {group}/cgroup.procs; head -c 5 /dev/null && exec head -c 5 {path}"
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        assert result.returncode != 0 and "Operation not permitted" in result.stderr, result
        devices.apply(group, 2, [{"allow": True, "type": "a", "access": "rwm"}])  # an update replaces it
        (newer,) = devices.attached(group)
        assert newer != prog_id and program_gone(prog_id)
        result = subprocess.run(["sh", "-c", f"echo $$ > {group}/cgroup.procs; exec head -c {len(SECRET)} {path}"],
                                capture_output=True, text=True)
        assert result.stdout == SECRET, result
    finally:
        os.rmdir(group)  # its processes have exited
    until(lambda: program_gone(newer), what="the device program freed with its cgroup")


# --- the cgroup mount inside a container ------------------------------------------------------------
MOUNT_CGROUPS = """
import json, os, sys
from labkit import cgroups, mountinfo
from labkit import sys as lsys
root, dirs, ns = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
group = cgroups.Cgroup("x", cgroups.version(), dirs)
group.add(os.getpid())  # as the container's init: in its group first, then its namespaces
lsys.unshare(lsys.CLONE_NEWNS | (lsys.CLONE_NEWCGROUP if ns else 0))  # a throwaway mount namespace
lsys.mount(None, "/", None, lsys.MS_REC | lsys.MS_PRIVATE)
cgroups.mount_cgroups(root, "/sys/fs/cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"], group, cgroupns=ns)
mounts = [[m.root, m.point[len(root):], list(m.options), m.fstype, list(m.super_options)]
          for m in mountinfo.read() if m.point.startswith(root + "/")]
links = {n: os.readlink(os.path.join(root, "sys/fs/cgroup", n))
         for n in os.listdir(os.path.join(root, "sys/fs/cgroup"))
         if os.path.islink(os.path.join(root, "sys/fs/cgroup", n))}
try:
    open(os.path.join(root, "sys/fs/cgroup", "pids" if cgroups.version() == 1 else "", "pids.max"), "w").close()
    write = "ok"
except OSError as err:
    write = err.strerror
print(json.dumps({"mounts": mounts, "links": links, "write": write}))
"""


@pytest.mark.parametrize("cgroupns", [True, False], ids=["cgroupns", "no-cgroupns"])
def test_cgroup_mount_is_made_as_runc_makes_it(tmp_path, cgroupns):
    group = cgroups.create(f"labkit-mount-{uuid.uuid4().hex[:8]}")
    try:
        run = subprocess.run([sys.executable, "-c", MOUNT_CGROUPS, str(tmp_path), json.dumps(group.dirs),
                              str(int(cgroupns))], capture_output=True, text=True)
    finally:
        group.remove()
        cgroups.remove_parents(group.name)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["write"] == "Read-only file system"
    mounts = {point: (root, options, fstype, supers) for root, point, options, fstype, supers in seen["mounts"]}
    if V2:
        ((root, options, fstype, _),) = mounts.values()
        assert (fstype, "ro" in options, root) == ("cgroup2", True, "/")
        return
    root, options, fstype, supers = mounts.pop("/sys/fs/cgroup")
    assert (fstype, "rw" in options, "mode=755" in supers) == ("tmpfs", True, True)  # the tmpfs stays rw, as runc
    host = cgroups.v1_hierarchies(mountinfo.read(), cgroups.own_v1_paths())
    assert sorted(mounts) == sorted(f"/sys/fs/cgroup/{os.path.basename(m.point)}" for m, _ in host)
    assert all(fstype == "cgroup" and {"ro", "nosuid", "nodev", "noexec"} <= set(options)
               for _, options, fstype, _ in mounts.values())
    for m, subsystems in host:
        root = mounts[f"/sys/fs/cgroup/{os.path.basename(m.point)}"][0]
        if cgroupns:  # a fresh mount in the namespace: the group is its root
            assert root == "/", (m.point, root)
        elif subsystems[0] in group.dirs:  # a bind mount of the container's own group
            assert root == "/" + os.path.relpath(group.dirs[subsystems[0]], m.point), (m.point, root)
    combined = [os.path.basename(m.point) for m, _ in host if "," in os.path.basename(m.point)]
    assert seen["links"] == {sub: name for name in combined for sub in name.split(",")}
