"""cgroups logic against fake v2 and v1 file layouts (no root, no kernel)."""
import os

import pytest

from labkit import cgroups


@pytest.mark.parametrize("shares, weight", [(2, 1), (1024, 39), (262144, 10000), (0, 0)])
def test_shares_to_weight_matches_runc(shares, weight):
    assert cgroups.shares_to_weight(shares) == weight


def test_v2_swap_is_swap_alone():
    assert cgroups.v2_swap_max(100, 300) == "200"
    assert cgroups.v2_swap_max(100, -1) == "max"
    assert cgroups.v2_swap_max(100, None) is None
    with pytest.raises(cgroups.CgroupError, match="memory\\+swap"):
        cgroups.v2_swap_max(300, 100)
    with pytest.raises(cgroups.CgroupError, match="needs memory.limit"):
        cgroups.v2_swap_max(None, 100)


def test_parse_flat_keyed():
    text = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n"
    assert cgroups.parse_flat_keyed(text)["oom_kill"] == 1
    assert cgroups.parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2")["oom_kill"] == 2


def fake_v2(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "cgroup.subtree_control").write_text("")
    real_mkdir = os.mkdir

    def mkdir(path, *a):  # the kernel populates a new group's interface files
        real_mkdir(path, *a)
        (tmp_path / path).joinpath("cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (tmp_path / path).joinpath("cgroup.subtree_control").write_text("")
        for f in ("memory.max", "memory.swap.max", "memory.low", "cpu.max", "cpu.weight", "pids.max",
                  "io.max", "cpuset.cpus", "cpuset.mems"):
            (tmp_path / path).joinpath(f).write_text("")
    return root, mkdir


def test_v2_create_enables_controllers_and_applies_oci_resources(tmp_path, monkeypatch):
    (tmp_path / "dev-block" / "8:0").mkdir(parents=True)
    monkeypatch.setattr(cgroups, "SYS_DEV_BLOCK", str(tmp_path / "dev-block"))
    root, mkdir = fake_v2(tmp_path)
    monkeypatch.setattr(cgroups.os, "mkdir", mkdir)
    g = cgroups.create("c1", root=str(root))
    assert g.version == 2 and g.dirs[""] == str(root / "labkit" / "c1")
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids"
    assert (root / "labkit" / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids"
    g.apply({"memory": {"limit": 104857600, "swap": 209715200, "reservation": 52428800},
             "cpu": {"quota": 20000, "period": 100000, "shares": 1024, "cpus": "0"},
             "pids": {"limit": 10},
             "blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]}})
    leaf = root / "labkit" / "c1"
    read = lambda f: (leaf / f).read_text()
    assert read("memory.max") == "104857600"
    assert read("memory.swap.max") == "104857600"
    assert read("memory.low") == "52428800"
    assert read("cpu.max") == "20000 100000"
    assert read("cpu.weight") == "39"
    assert read("cpuset.cpus") == "0"
    assert read("pids.max") == "10"
    assert read("io.max") == "8:0 rbps=1048576"


def test_v2_unlimited_values_are_max(tmp_path, monkeypatch):
    root, mkdir = fake_v2(tmp_path)
    monkeypatch.setattr(cgroups.os, "mkdir", mkdir)
    g = cgroups.create("c2", root=str(root))
    g.apply({"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 50000}, "pids": {"limit": -1}})
    leaf = root / "labkit" / "c2"
    assert (leaf / "memory.max").read_text() == "max"
    assert (leaf / "cpu.max").read_text() == "max 50000"
    assert (leaf / "pids.max").read_text() == "max"


def test_v2_accounting_reads_kernel_formats(tmp_path):
    d = tmp_path / "g"
    d.mkdir()
    (d / "memory.current").write_text("4096\n")
    (d / "memory.peak").write_text("8192\n")
    (d / "memory.max").write_text("max\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    (d / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 10\n"
                                "nr_throttled 4\nthrottled_usec 900\n")
    (d / "pids.current").write_text("3\n")
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    g = cgroups.Cgroup("g", 2, {"": str(d)})
    assert g.stats() == {"memory_usage": 4096, "memory_limit": None, "memory_peak": 8192, "oom_kills": 1,
                         "pids": 3, "cpu_usage_usec": 1500, "cpu_user_usec": 1000, "cpu_system_usec": 500,
                         "cpu_nr_periods": 10, "cpu_nr_throttled": 4, "cpu_throttled_usec": 900}
    assert g.frozen()


def test_v1_nests_under_own_cgroup_per_hierarchy(tmp_path, monkeypatch):
    mounts = {c: str(tmp_path / c) for c in ("memory", "cpu", "cpuacct", "pids", "cpuset")}
    for point in mounts.values():
        os.makedirs(point)
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    real_mkdir = os.mkdir

    def mkdir(path, *a):
        real_mkdir(path, *a)
        if "/cpuset/" in path:
            for f in ("cpuset.cpus", "cpuset.mems"):
                (tmp_path / path).joinpath(f).write_text("")
    monkeypatch.setattr(cgroups.os, "mkdir", mkdir)
    own = {"memory": "/machine/me", "cpu": "/"}
    g = cgroups._create_v1("c1", str(tmp_path), "labkit", mounts, own)
    assert g.dirs["memory"] == str(tmp_path / "memory/machine/me/labkit/c1")
    assert g.dirs["cpu"] == str(tmp_path / "cpu/labkit/c1")
    assert (tmp_path / "cpuset/labkit/c1/cpuset.cpus").read_text() == "0-1"  # inherited, not empty
    g.set_memory(limit=1 << 20, reservation=1 << 19)
    g.set_cpu(quota=20000, period=100000, shares=512)
    assert (tmp_path / "memory/machine/me/labkit/c1/memory.limit_in_bytes").read_text() == str(1 << 20)
    assert (tmp_path / "memory/machine/me/labkit/c1/memory.soft_limit_in_bytes").read_text() == str(1 << 19)
    assert (tmp_path / "cpu/labkit/c1/cpu.cfs_quota_us").read_text() == "20000"
    assert (tmp_path / "cpu/labkit/c1/cpu.shares").read_text() == "512"


def test_missing_v1_controller_says_so():
    g = cgroups.Cgroup("x", 1, {"memory": "/nonexistent"})
    with pytest.raises(cgroups.CgroupError, match="'pids' is not mounted"):
        g.pids_current()


def fake_v1_memory(tmp_path, limit, memsw):
    d = tmp_path / "memory" / "g"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (d / "memory.memsw.limit_in_bytes").write_text(f"{memsw}\n")
    (d / "memory.soft_limit_in_bytes").write_text("0\n")
    g = cgroups.Cgroup("g", 1, {"memory": str(d)})
    writes = []
    real_write = cgroups.Cgroup.write

    def write(self, controller, filename, value):  # the kernel's rule: limit <= memsw after every write
        real_write(self, controller, filename, value)
        writes.append(filename)
        lim, sw = int(self.read("memory", "memory.limit_in_bytes")), int(self.read("memory", "memory.memsw.limit_in_bytes"))
        assert sw == -1 or (lim != -1 and lim <= sw), f"kernel would refuse: limit {lim} > memsw {sw}"
    return g, writes, write


@pytest.mark.parametrize("old, new, first", [
    (64, 128, "memory.memsw.limit_in_bytes"),  # raising: memory+swap first
    (128, 48, "memory.limit_in_bytes"),  # lowering: the limit first
])
def test_v1_memory_and_swap_are_written_in_the_order_the_kernel_accepts(tmp_path, monkeypatch, old, new, first):
    g, writes, write = fake_v1_memory(tmp_path, old << 20, old << 20)
    monkeypatch.setattr(cgroups.Cgroup, "write", write)
    g.set_memory(limit=new << 20, swap=new << 20)
    assert writes[0] == first
    assert g.memory_limit() == new << 20


def test_v1_unlimited_memory_unlimits_memory_and_swap(tmp_path, monkeypatch):
    g, writes, write = fake_v1_memory(tmp_path, 64 << 20, 64 << 20)
    monkeypatch.setattr(cgroups.Cgroup, "write", write)
    g.set_memory(limit=-1)
    assert writes == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]  # as runc does


def test_remove_parents_takes_absolute_paths_from_the_root_and_only_labkit_dirs(tmp_path, monkeypatch):
    mounts = {c: str(tmp_path / c) for c in ("memory", "pids")}
    monkeypatch.setattr(cgroups, "v1_mounts", lambda: mounts)
    monkeypatch.setattr(cgroups, "own_v1_paths", lambda: {"memory": "/machine/me", "pids": "/"})
    for c in mounts:
        (tmp_path / c / "labkit-peer").mkdir(parents=True)  # "/labkit-peer/x": from the root
        (tmp_path / c / "system.slice").mkdir()
    (tmp_path / "memory" / "machine" / "me" / "labkit").mkdir(parents=True)  # "x": under our own
    cgroups.remove_parents("/labkit-peer/x", root=str(tmp_path))
    cgroups.remove_parents("/system.slice/x", root=str(tmp_path))
    cgroups.remove_parents("x", root=str(tmp_path))
    assert not (tmp_path / "memory" / "labkit-peer").exists() and not (tmp_path / "pids" / "labkit-peer").exists()
    assert (tmp_path / "memory" / "system.slice").exists()  # not labkit's: never removed
    assert not (tmp_path / "memory" / "machine" / "me" / "labkit").exists()
    assert (tmp_path / "memory" / "machine" / "me").exists()


def test_v2_group_keeps_its_name_so_remove_parents_removes_the_labkit_parent(tmp_path, monkeypatch):
    # A fake v2 root: kernfs would make the interface files in each new directory; here we do.
    made = []
    real_mkdir = cgroups._mkdir

    def mkdir(path):
        made.append(path)
        if real_mkdir(path):
            for name in ("cgroup.controllers", "cgroup.subtree_control"):
                open(os.path.join(path, name), "w").close()
            return True
        return False
    monkeypatch.setattr(cgroups, "_mkdir", mkdir)
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    for name, parents in (("c", ["labkit"]), ("/labkit-peer/c", ["labkit-peer"])):
        g = cgroups.create(name, root=str(tmp_path))
        assert g.name == name and g.dirs[""] == str(tmp_path / parents[0] / "c")
        for leftover in ("cgroup.controllers", "cgroup.subtree_control"):  # rmdir on kernfs ignores them
            os.unlink(os.path.join(g.dirs[""], leftover))
            os.unlink(tmp_path / parents[0] / leftover)
        os.rmdir(g.dirs[""])
        cgroups.remove_parents(g.name, root=str(tmp_path))
        assert not (tmp_path / parents[0]).exists(), name


def test_create_retries_when_a_parent_vanishes(tmp_path, monkeypatch):
    calls = []

    def flaky(name, root, parent):
        calls.append(name)
        if len(calls) < 3:  # another container's exit rmdir'ed the shared labkit parent
            raise FileNotFoundError(2, "No such file or directory", f"{root}/labkit")
        return cgroups.Cgroup(name, 2, {"": f"{root}/labkit/{name}"})
    monkeypatch.setattr(cgroups, "_create_v2", flaky)
    (tmp_path / "cgroup.controllers").write_text("memory\n")
    assert cgroups.create("c", root=str(tmp_path)).name == "c" and len(calls) == 3


def test_io_throttle_on_a_missing_disk_says_not_available(tmp_path):
    d = tmp_path / "g"
    d.mkdir()
    g = cgroups.Cgroup("g", 2, {"": str(d)})
    with pytest.raises(cgroups.CgroupError, match="not available here: no io.max"):
        g.set_io_bps("8:0", read_bps=1)
    with pytest.raises(cgroups.CgroupError, match="not available here.*not on a block device"):
        cgroups.block_device("/proc")


@pytest.mark.parametrize("resources, match", [
    ({"pids": 20}, "linux.resources.pids must be an object"),
    ({"memory": 64}, "linux.resources.memory must be an object"),
    ([1, 2], "linux.resources must be an object"),
])
def test_malformed_resources_say_what_is_wrong(resources, match):
    g = cgroups.Cgroup("x", 2, {"": "/nonexistent"})
    with pytest.raises(cgroups.CgroupError, match=match):
        g.apply(resources)


# --- every linux.resources field: applied, or refused by name ---------------------------------
V1_ALL = {"memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "devices", "freezer", "hugetlb", "net_cls",
          "net_prio", "rdma"}
V2_ALL = {"memory", "cpu", "cpuset", "io", "pids", "hugetlb", "rdma", "devices", "freezer"}
EVERYTHING = {
    "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20, "swappiness": 0,
               "disableOOMKiller": True, "checkBeforeUpdate": False},
    "cpu": {"shares": 512, "quota": 20000, "period": 100000, "burst": 1000, "idle": 0, "cpus": "0", "mems": "0",
            "realtimeRuntime": 950, "realtimePeriod": 1000},
    "pids": {"limit": 10},
    "blockIO": {"weight": 500, "leafWeight": 300, "weightDevice": [{"major": 8, "minor": 0, "weight": 200}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 50}]},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
    "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
    "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
}


def joined(found):
    return "; ".join(found)


def test_problems_accept_every_v1_field_on_a_v1_host_with_every_controller():
    assert cgroups.problems(EVERYTHING, 1, V1_ALL) == []
    assert cgroups.problems({"devices": [{"allow": False, "access": "rwm"}]}, 1, V1_ALL) == []


@pytest.mark.parametrize("field", ["memory.swappiness", "memory.disableOOMKiller", "cpu.realtimeRuntime",
                                   "cpu.realtimePeriod", "blockIO.leafWeight", "network.classID",
                                   "network.priorities"])
def test_v2_refuses_by_name_what_runc_silently_ignores_there(field):
    found = joined(cgroups.problems(EVERYTHING, 2, V2_ALL))
    assert f"linux.resources.{field} cannot be applied: cgroup v2 has no" in found \
        or f"linux.resources.{field} cannot be applied: cgroup v2 cannot" in found, found


def test_v2_accepts_the_unset_forms_of_v1_only_fields():
    unset = {"memory": {"swappiness": -1, "disableOOMKiller": False, "useHierarchy": True},
             "cpu": {"realtimeRuntime": 0, "realtimePeriod": 0}, "network": {"classID": 0, "priorities": []},
             "blockIO": {"leafWeight": 0, "weightDevice": [{"major": 8, "minor": 0, "weight": 100, "leafWeight": 0}]}}
    assert cgroups.problems(unset, 2, V2_ALL) == []
    found = joined(cgroups.problems({"memory": {"useHierarchy": False},
                                     "blockIO": {"weightDevice": [{"major": 8, "minor": 0, "leafWeight": 20}]}}, 2, V2_ALL))
    assert "useHierarchy false cannot be applied: cgroup v2 is always hierarchical" in found
    assert "weightDevice[0].leafWeight cannot be applied" in found


def test_unified_is_v2_only_and_takes_file_names():
    assert "unified cannot be applied: it names cgroup v2 files" in joined(
        cgroups.problems({"unified": {"memory.high": "1G"}}, 1, V1_ALL))
    assert cgroups.problems({"unified": {"memory.high": "1G", "cgroup.freeze": "0"}}, 2, V2_ALL) == []
    found = joined(cgroups.problems({"unified": {"../memory.high": "1", "memoryhigh": "1", "io.max": 5}}, 2, V2_ALL))
    assert found.count("must map a file name") == 3


@pytest.mark.parametrize("resources, match", [
    ({"memroy": {"limit": 1}}, r"linux.resources.memroy is not an OCI field \(known: memory, cpu"),
    ({"cpu": {"quotas": 1}}, r"linux.resources.cpu.quotas is not an OCI field \(known: shares, quota"),
    ({"memory": {"limit": "64M"}}, r"memory.limit must be an integer, not '64M'"),
    ({"memory": {"swappiness": 101}}, r"memory.swappiness must be from 0 to 100"),
    ({"memory": {"disableOOMKiller": 1}}, r"disableOOMKiller must be true or false"),
    ({"cpu": {"cpus": 0}}, r"cpu.cpus must be a string"),
    ({"blockIO": {"weight": 5}}, r"blockIO.weight must be a weight from 10 to 1000"),
    ({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}}, r"throttleReadBpsDevice\[0\] needs rate"),
    ({"blockIO": {"throttleReadBpsDevice": {"major": 8}}}, r"throttleReadBpsDevice must be a list"),
    ({"hugepageLimits": [{"pageSize": "2M", "limit": 1}]}, r"pageSize '2M' is not a size like 2MB"),
    ({"hugepageLimits": {"pageSize": "2MB"}}, r"hugepageLimits must be a list"),
    ({"network": {"priorities": [{"name": "eth0"}]}}, r"priorities\[0\] needs priority"),
    ({"rdma": {"mlx5_1": {}}}, r"rdma.mlx5_1 must be an object with hcaHandles"),
    ({"devices": [{"allow": True}]}, r"devices\[0\].access None must be"),
])
def test_problems_say_which_field_is_wrong(resources, match):
    import re

    found = joined(cgroups.problems(resources, 1, V1_ALL))
    assert re.search(match, found), found


def test_a_limit_for_a_controller_the_host_lacks_is_refused_by_name():
    lacking = V1_ALL - {"hugetlb", "net_cls", "rdma"}
    found = joined(cgroups.problems(EVERYTHING, 1, lacking))
    assert "linux.resources.hugepageLimits needs the hugetlb controller, which is not mounted on this cgroup v1" in found
    assert "linux.resources.network.classID needs the net_cls controller" in found
    assert "linux.resources.rdma needs the rdma controller" in found
    assert "net_prio" not in found and "memory" not in found
    found = joined(cgroups.problems({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}],
                                     "pids": {"limit": 5}}, 2, V2_ALL - {"hugetlb", "pids"}))
    assert "hugepageLimits needs the hugetlb controller, which is not enabled on this cgroup v2 host" in found
    assert "linux.resources.pids.limit needs the pids controller" in found


def test_kernel_memory_is_ignored_with_a_warning_as_runc_does(tmp_path):
    assert cgroups.problems({"memory": {"kernel": 1 << 20, "kernelTCP": 1 << 20}}, 2, V2_ALL) == []
    d = tmp_path / "g"
    d.mkdir()
    (d / "cgroup.controllers").write_text("memory\n")
    g = cgroups.Cgroup("g", 2, {"": str(d)})
    with pytest.warns(UserWarning, match="memory.kernel and kernelTCP ignored, as runc ignores them"):
        g.apply({"memory": {"kernel": 1 << 20, "kernelTCP": 1 << 20}})
    assert sorted(os.listdir(d)) == ["cgroup.controllers"]  # nothing written


def fake_group(tmp_path, version, files):
    """A group whose interface files exist (empty unless given): controller -> {file: content}."""
    dirs = {}
    for controller, names in files.items():
        d = tmp_path / (controller or "unified")
        d.mkdir(exist_ok=True)
        for name, content in names.items():
            (d / name).write_text(content)
        dirs[controller] = str(d)
    return cgroups.Cgroup("g", version, dirs)


V1_FILES = {
    "memory": dict.fromkeys(("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes",
                             "memory.swappiness", "memory.oom_control", "memory.use_hierarchy"), "0"),
    "cpu": dict.fromkeys(("cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.cfs_burst_us", "cpu.idle",
                          "cpu.rt_period_us", "cpu.rt_runtime_us"), ""),
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "pids": {"pids.max": ""},
    "blkio": dict.fromkeys(("blkio.bfq.weight", "blkio.bfq.weight_device", "blkio.leaf_weight",
                            "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"), ""),
    "hugetlb": {"hugetlb.2MB.limit_in_bytes": "", "hugetlb.2MB.rsvd.limit_in_bytes": ""},
    "net_cls": {"net_cls.classid": ""},
    "net_prio": {"net_prio.ifpriomap": ""},
    "rdma": {"rdma.max": ""},
}


def recording(monkeypatch):
    writes = []
    real = cgroups.Cgroup.write

    def write(self, controller, filename, value):
        real(self, controller, filename, value)
        writes.append((filename, str(value)))
    monkeypatch.setattr(cgroups.Cgroup, "write", write)
    return writes


def test_v1_applies_every_field_to_its_file_in_runcs_order(tmp_path, monkeypatch):
    (tmp_path / "dev-block" / "8:0").mkdir(parents=True)
    monkeypatch.setattr(cgroups, "SYS_DEV_BLOCK", str(tmp_path / "dev-block"))
    g = fake_group(tmp_path, 1, V1_FILES)
    writes = recording(monkeypatch)
    g.apply(EVERYTHING)
    assert writes == [
        ("memory.memsw.limit_in_bytes", str(128 << 20)), ("memory.limit_in_bytes", str(64 << 20)),
        ("memory.soft_limit_in_bytes", str(32 << 20)), ("memory.oom_control", "1"), ("memory.swappiness", "0"),
        ("cpu.shares", "512"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_burst_us", "1000"),
        ("cpu.cfs_quota_us", "20000"), ("cpu.idle", "0"), ("cpu.rt_period_us", "1000"),
        ("cpu.rt_runtime_us", "950"), ("cpuset.cpus", "0"), ("cpuset.mems", "0"), ("pids.max", "10"),
        ("blkio.bfq.weight", "500"), ("blkio.leaf_weight", "300"), ("blkio.bfq.weight_device", "8:0 200"),
        ("blkio.throttle.read_iops_device", "8:0 100"), ("blkio.throttle.write_iops_device", "8:0 50"),
        ("hugetlb.2MB.limit_in_bytes", str(4 << 20)), ("hugetlb.2MB.rsvd.limit_in_bytes", str(4 << 20)),
        ("net_cls.classid", "1048577"), ("net_prio.ifpriomap", "eth0 5"),
        ("rdma.max", "mlx5_1 hca_handle=3 hca_object=10000")]


def test_v1_cfq_weights_are_used_where_the_kernel_still_has_them(tmp_path, monkeypatch):
    g = fake_group(tmp_path, 1, {"blkio": {"blkio.weight": "", "blkio.weight_device": "", "blkio.bfq.weight": ""}})
    writes = recording(monkeypatch)
    g.apply({"blockIO": {"weight": 700, "weightDevice": [{"major": 8, "minor": 16, "weight": 100}]}})
    assert writes == [("blkio.weight", "700"), ("blkio.weight_device", "8:16 100")]


@pytest.mark.parametrize("resources, match", [
    ({"cpu": {"burst": 1000}}, "linux.resources.cpu: cpu.burst cannot be applied: this kernel has no cpu.cfs_burst_us"),
    ({"cpu": {"realtimeRuntime": 1000}}, "cpu.realtime\\* cannot be applied: this kernel has no cpu.rt_runtime_us"),
    ({"blockIO": {"leafWeight": 500}}, "linux.resources.blockIO: blockIO.leafWeight cannot be applied: this kernel "
                                       "has no blkio.leaf_weight"),
    ({"hugepageLimits": [{"pageSize": "1GB", "limit": 1}]}, "hugepageLimits 1GB cannot be applied: this kernel has "
                                                            "no hugetlb.1GB.limit_in_bytes"),
    ({"memory": {"limit": 1 << 20, "swap": 2 << 20}}, "memory.swap cannot be applied: this kernel has no swap "
                                                      "accounting"),
])
def test_v1_files_this_kernel_lacks_are_refused_not_created(tmp_path, resources, match):
    g = fake_group(tmp_path, 1, {"cpu": {"cpu.shares": ""}, "blkio": {"blkio.bfq.weight": ""},
                                 "hugetlb": {"hugetlb.2MB.limit_in_bytes": ""},
                                 "memory": {"memory.limit_in_bytes": "0"}})
    with pytest.raises(cgroups.CgroupError, match=match):
        g.apply(resources)


V2_FILES = {"": {"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma\n", "memory.max": "",
                 "memory.low": "", "cpu.max": "", "cpu.weight": "", "cpu.max.burst": "", "cpu.idle": "",
                 "io.max": "", "io.weight": "", "pids.max": "", "hugetlb.2MB.max": "", "rdma.max": "",
                 "memory.high": "", "cpuset.cpus": ""}}


def test_v2_applies_every_field_it_has_in_runcs_order(tmp_path, monkeypatch):
    (tmp_path / "dev-block" / "8:0").mkdir(parents=True)
    monkeypatch.setattr(cgroups, "SYS_DEV_BLOCK", str(tmp_path / "dev-block"))
    g = fake_group(tmp_path, 2, V2_FILES)
    writes = recording(monkeypatch)
    g.apply({"memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 64 << 20},
             "cpu": {"shares": 1024, "quota": 20000, "burst": 1000, "idle": 1, "cpus": "0"},
             "blockIO": {"weight": 500, "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}]},
             "hugepageLimits": [{"pageSize": "2MB", "limit": 2 << 20}],
             "rdma": {"mlx5_1": {"hcaObjects": 10}},
             "unified": {"memory.high": str(48 << 20)}})
    assert writes == [
        ("memory.max", str(64 << 20)), ("memory.low", str(32 << 20)),  # no swap.max: swap == limit is "0", skipped
        ("cpu.idle", "1"), ("cpu.weight", "39"), ("cpu.max.burst", "1000"), ("cpu.max", "20000 100000"),
        ("cpuset.cpus", "0"), ("io.weight", "4950"), ("io.max", "8:0 riops=100"),
        ("hugetlb.2MB.max", str(2 << 20)), ("rdma.max", "mlx5_1 hca_object=10"),
        ("memory.high", str(48 << 20))]  # unified last: it overrides


def test_v2_uses_bfq_weights_where_the_scheduler_offers_them(tmp_path, monkeypatch):
    g = fake_group(tmp_path, 2, {"": {"cgroup.controllers": "io\n", "io.bfq.weight": "default 100\n"}})
    writes = recording(monkeypatch)
    g.apply({"blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 200}]}})
    assert writes == [("io.bfq.weight", "500"), ("io.bfq.weight", "8:0 200")]


@pytest.mark.parametrize("resources, match", [
    ({"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 200}]}},
     "linux.resources.blockIO: blockIO.weightDevice cannot be applied: per-disk weights need the BFQ"),
    ({"memory": {"limit": 64 << 20, "swap": 128 << 20}}, "memory.swap cannot be applied: this kernel has no swap"),
    ({"unified": {"memory.min": "1"}}, "linux.resources.unified: unified 'memory.min' cannot be set: no such file"),
    ({"unified": {"hugetlb.2MB.max": "1"}}, "controller 'hugetlb' is not available to the group"),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}, "needs the hugetlb controller"),
])
def test_v2_refusals_name_the_field(tmp_path, resources, match):
    g = fake_group(tmp_path, 2, {"": {"cgroup.controllers": "io memory\n", "io.weight": "", "memory.max": ""}})
    with pytest.raises(cgroups.CgroupError, match=match):
        g.apply(resources)


def test_v2_swap_without_swap_accounting_is_fine_when_it_asks_for_nothing(tmp_path):
    g = fake_group(tmp_path, 2, {"": {"cgroup.controllers": "memory\n", "memory.max": ""}})
    g.apply({"memory": {"limit": 64 << 20, "swap": 64 << 20}})  # no swap: nothing to limit
    g.apply({"memory": {"limit": 64 << 20, "swap": -1}})
    assert (tmp_path / "unified" / "memory.max").read_text() == str(64 << 20)


def test_check_before_update_refuses_a_limit_below_usage(tmp_path):
    g = fake_group(tmp_path, 2, {"": {"cgroup.controllers": "memory\n", "memory.max": "", "memory.current": "4096"}})
    with pytest.raises(cgroups.CgroupError, match="memory.limit 4096 is not above the group's usage 4096"):
        g.apply({"memory": {"limit": 4096, "checkBeforeUpdate": True}})
    g.apply({"memory": {"limit": 8192, "checkBeforeUpdate": True}})


def test_host_controllers_on_v2_are_what_create_enables(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory rdma\n")
    assert cgroups.host_controllers(str(tmp_path)) == {"cpuset", "cpu", "io", "memory", "pids", "rdma",
                                                       "devices", "freezer"}  # not hugetlb: the root keeps it


def test_v2_create_passes_optional_controllers_down_only_below_the_root(tmp_path, monkeypatch):
    root, mkdir = fake_v2(tmp_path)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (root / "cgroup.subtree_control").write_text("hugetlb")
    monkeypatch.setattr(cgroups.os, "mkdir", mkdir)

    def offered(path, *a):  # the kernel offers a child what its parent passes down
        mkdir(path, *a)
        (tmp_path / path / "cgroup.controllers").write_text("cpuset cpu io memory pids hugetlb\n")
    monkeypatch.setattr(cgroups.os, "mkdir", offered)
    cgroups.create("c3", root=str(root))
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids"  # the root: no extras
    assert (root / "labkit" / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io +memory +pids +hugetlb"


# --- the cgroup mount inside a container ----------------------------------------------------
from labkit import mountinfo  # noqa: E402

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 31 0:32 /machine /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 60 0:31 / /var/lib/other/memory rw,relatime - cgroup cgroup rw,memory
"""
OWN = {"cpu": "/labkit/c1", "cpuacct": "/labkit/c1", "memory": "/me/labkit/c1", "pids": "/machine/labkit/c1",
       "name=systemd": "/user.slice", "freezer": "/labkit/c1"}
RO = ["nosuid", "noexec", "nodev", "relatime", "ro"]


def plan(version=1, cgroupns=True, text=HYBRID, options=RO, v2_dir=None):
    return cgroups.plan_cgroup_mounts("/sys/fs/cgroup", options, version, mountinfo.parse(text), OWN, cgroupns, v2_dir)


def test_v1_plan_with_a_cgroup_namespace_mounts_each_hierarchy_read_only_on_a_tmpfs():
    steps = plan(cgroupns=True)
    assert steps[0] == cgroups.MountStep("mount", "/sys/fs/cgroup", "tmpfs", "tmpfs", 0xE, "mode=755")  # rw, as runc
    mounts = [(s.target, s.source, s.fstype, s.flags, s.data) for s in steps[1:] if s.kind == "mount"]
    assert mounts == [("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "cgroup", 0xF, "cpu,cpuacct"),
                      ("/sys/fs/cgroup/memory", "cgroup", "cgroup", 0xF, "memory"),
                      ("/sys/fs/cgroup/pids", "cgroup", "cgroup", 0xF, "pids"),
                      ("/sys/fs/cgroup/systemd", "systemd", "cgroup", 0xF, "name=systemd")]
    # not the hybrid unified tree (cgroup2), not the second mount of memory, not freezer (not mounted)
    links = [(s.target, s.source) for s in steps if s.kind == "symlink"]
    assert links == [("/sys/fs/cgroup/cpu", "cpu,cpuacct"), ("/sys/fs/cgroup/cpuacct", "cpu,cpuacct")]


def test_v1_plan_without_a_cgroup_namespace_binds_the_containers_own_groups():
    steps = [s for s in plan(cgroupns=False) if s.kind == "bind"]
    assert [(s.target, s.source) for s in steps] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/labkit/c1"),
        ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/me/labkit/c1"),
        ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/labkit/c1"),  # relative to the mount's root /machine
        ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd/user.slice")]
    assert all(s.flags & 0x1 for s in steps)  # ro: applied by the remount after the bind


def test_v1_plan_read_write_unless_ro():
    steps = plan(cgroupns=True, options=["nosuid", "noexec", "nodev"])
    assert all(not s.flags & 0x1 for s in steps if s.kind == "mount")


def test_v2_plan_is_one_cgroup2_mount_with_a_bind_to_fall_back_on():
    (step,) = plan(version=2, cgroupns=True, options=RO, v2_dir="/sys/fs/cgroup/labkit/c1")
    assert (step.kind, step.source, step.fstype, step.flags & 0x1) == ("mount", "cgroup", "cgroup2", 1)
    assert step.fallback == cgroups.MountStep("bind", "/sys/fs/cgroup", "/sys/fs/cgroup/labkit/c1", flags=step.flags)
    (step,) = plan(version=2, cgroupns=False, options=RO, v2_dir="/sys/fs/cgroup/labkit/c1")
    assert step.fallback.source == "/sys/fs/cgroup"  # without a namespace: the whole tree, as runc
