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
