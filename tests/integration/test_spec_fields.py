"""linux.maskedPaths, readonlyPaths, devices, sysctl, rootfsPropagation and process.oomScoreAdj,
run by runc and by labkit-runc on the same bundle (helpers and fixtures: test_vs_runc.py).

What is compared, and what is not:
- the mount table as test_vs_runc.mount_table normalises it (no mount ids, device numbers or
  propagation fields, which the kernel allocates per mount), /sys/fs/cgroup included (on a
  cgroup v1 host a tmpfs of per-controller hierarchies, on v2 one cgroup2 mount);
- the propagation of / in the rootfsPropagation tests, run inside a throwaway mount namespace
  whose mounts are all shared (as under systemd), so that private, slave and shared differ.
  Its mounts are made private first (`unshare --propagation private`): nothing done there, or
  in the containers made from it, reaches this machine's mounts.

Safety: the device test uses a loop device on a file made here (losetup -f --show), detached
after; the sysctl tests check the host's values are unchanged; the probes only open the
read-only and masked files for writing (`: > file` writes no byte), so even a runtime that
failed to protect them would change nothing.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import uuid
from types import SimpleNamespace

import pytest

from labkit import devices, rootfs, sysctl
from labkit.errors import SpecError
from labkit.runtime.spec import default_spec

# The fixtures runc, labkit_root and bundle come from there (imported, pytest uses them here too).
from test_vs_runc import CGROUP_PARENT, bundle, labkit_root, mount_table, run_both, runc, sh, with_userns  # noqa: F401

pytestmark = pytest.mark.vm
needs_runc = pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (apt-get install runc)")
needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare is not installed")


# --- runc's own default config.json -------------------------------------------------------------
@pytest.fixture(scope="module")
def runc_config(tmp_path_factory):
    """What `runc spec` writes: runc's defaults, with its maskedPaths and readonlyPaths."""
    path = tmp_path_factory.mktemp("runc-spec")
    subprocess.run(["runc", "spec", "--bundle", str(path)], check=True, capture_output=True)
    return json.loads((path / "config.json").read_text())


@pytest.fixture
def runc_spec_bundle(tmp_path, busybox_rootfs, runc_config):
    """runc_spec_bundle(args, edit=None) -> a bundle of `runc spec`'s config.json, changed only so
    both runtimes can run it here: busybox as rootfs, no terminal, a cgroup under the peer parent."""
    def make(args, edit=None):
        name = "fields-" + uuid.uuid4().hex[:8]
        path = tmp_path / name
        path.mkdir()
        config = copy.deepcopy(runc_config)
        config["process"].update(args=args, terminal=False)
        config["root"]["path"] = os.path.realpath(busybox_rootfs)
        config["linux"]["cgroupsPath"] = f"{CGROUP_PARENT}/{name}"
        # runc spec's own deny-all: both runtimes append their (identical) default allow-list to it.
        if edit:
            edit(config)
        (path / "config.json").write_text(json.dumps(config, indent=1))
        return str(path)
    return make


def userns_config(config):
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = config["linux"]["gidMappings"] = [
        {"containerID": 0, "hostID": 100000, "size": 65536}]


# Each probe prints what it saw; the same busybox runs in both runtimes, so the texts compare.
PROBES = r"""
cat /proc/self/mountinfo
echo ---
for f in /proc/kcore /proc/keys /proc/timer_list /proc/latency_stats /proc/timer_stats /proc/sched_debug; do
  [ -e $f ] && echo "$f: device $(stat -c %t,%T $f), $(wc -c < $f) bytes"
done
for d in /proc/acpi /proc/asound /proc/scsi /sys/firmware; do
  [ -e $d ] && echo "$d: $(ls -A $d | wc -l) entries"
done
for f in /proc/sysrq-trigger /proc/sys/kernel/domainname /proc/sys/net/ipv4/ip_forward /proc/acpi/new /sys/firmware/new; do
  ( : > $f ) 2>&1
done
echo "ostype: $(cat /proc/sys/kernel/ostype)"
"""


def split_probe(stdout: str) -> tuple[list[tuple[str, ...]], str]:
    mounts, _, probes = stdout.partition("---\n")
    return [_group_root(entry) for entry in mount_table(mounts)], probes


def _group_root(entry: tuple[str, ...]) -> tuple[str, ...]:
    """The one difference allowed: a relative cgroupsPath is placed under labkit's own `labkit`
    parent (so `labkit doctor --leaks` finds it), runc puts it right below its own cgroup."""
    return (entry[0].replace("/labkit/labkit-peer-", "/labkit-peer-"), *entry[1:])


@pytest.mark.peer
@needs_runc
@pytest.mark.parametrize("edit", [None, userns_config], ids=["root", "userns"])
def test_runc_spec_defaults_give_the_same_mounts_and_probes(runc, labkit_root, runc_spec_bundle, runc_config, edit):
    out = run_both(runc, labkit_root, runc_spec_bundle(sh(PROBES), edit))
    assert out["runc"][0] == 0, out["runc"]
    assert (out["labkit"][0], out["labkit"][2]) == (0, out["runc"][2])
    table, probes = split_probe(out["labkit"][1])
    assert (table, probes) == split_probe(out["runc"][1])

    masked = {p for p in runc_config["linux"]["maskedPaths"] if os.path.exists(p)}  # same kernel inside
    readonly = {p for p in runc_config["linux"]["readonlyPaths"] if os.path.exists(p)}
    assert masked and readonly
    seen_masked = {point for root, point, opts, fstype, *_ in table if point in masked
                   and (root == "/null" or (fstype == "tmpfs" and "ro" in opts.split(",")))}
    seen_readonly = {point for _, point, opts, *_ in table if point in readonly and "ro" in opts.split(",")}
    assert (seen_masked, seen_readonly) == (masked, readonly)

    for f in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):  # a file: /dev/null over it
        if f in masked:
            assert f"{f}: device 1,3, 0 bytes" in probes
    for d in ("/proc/acpi", "/sys/firmware"):  # a directory: an empty read-only tmpfs
        if d in masked:
            assert f"{d}: 0 entries" in probes and f"{d}/new: Read-only file system" in probes
    if "/proc/sysrq-trigger" in readonly:
        assert "can't create /proc/sysrq-trigger: Read-only file system" in probes
    assert "can't create /proc/sys/kernel/domainname: Read-only file system" in probes
    assert "can't create /proc/sys/net/ipv4/ip_forward: Read-only file system" in probes
    assert "ostype: Linux" in probes  # read-only, still readable


# --- linux.devices ------------------------------------------------------------------------------
@pytest.fixture
def loop_device(tmp_path):
    """A loop device over a 1 MiB file made here: (path, major, minor). Detached after."""
    backing = tmp_path / "loop-backing"
    backing.write_bytes(b"\0" * (1 << 20))
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    path = made.stdout.strip()
    try:
        st = os.stat(path)
        yield path, os.major(st.st_rdev), os.minor(st.st_rdev)
    finally:
        subprocess.run(["losetup", "-d", path], check=True)


DEV_SCRIPT = "for f in $(find /dev | sort); do stat -c '%n %A %u:%g %t,%T' $f; done; cat /proc/self/mountinfo"


@pytest.mark.peer
@needs_runc
def test_device_access_on_runc_specs_bundle_is_runcs(runc, labkit_root, runc_spec_bundle, loop_device):
    """runc spec's deny-all plus each runtime's default allow-list: with CAP_MKNOD, the container
    may make a node for a host block device (the list allows mknod of any) but not read it; the
    allowed character devices work. The same answers from both runtimes."""
    loop, major, minor = loop_device
    with open(loop, "wb") as f:
        f.write(b"host secret\n")
    script = (f"mknod /dev/lkdisk b {major} {minor} && echo made; head -c 11 /dev/lkdisk; echo \" read=$?\"; "
              "head -c 4 /dev/zero | wc -c; echo null > /dev/null && echo null-ok; "
              "mknod /dev/lkmem c 1 1 && head -c 1 /dev/lkmem; echo \" mem=$?\"")

    def edit(config):
        for key in ("bounding", "effective", "permitted"):
            config["process"]["capabilities"][key].append("CAP_MKNOD")
    out = run_both(runc, labkit_root, runc_spec_bundle(sh(script), edit))
    assert out["labkit"] == out["runc"], out
    lines = out["labkit"][1].split("\n")
    assert lines[0] == "made" and "read=1" in lines[1] and lines[2] == "4" and lines[3] == "null-ok", out
    assert "host secret" not in out["labkit"][1] and "Operation not permitted" in out["labkit"][2]


@pytest.mark.peer
@needs_runc
@pytest.mark.parametrize("userns", [False, True], ids=["mknod", "userns-bind"])
def test_devices_are_made_like_runc(runc, labkit_root, bundle, loop_device, userns):
    loop, major, minor = loop_device
    if userns:  # no mknod in a user namespace: both bind-mount the host's node at the same path
        wanted = [{"type": "b", "path": loop, "major": major, "minor": minor, "fileMode": 0o640}]
    else:
        wanted = [
            {"type": "b", "path": "/dev/test1", "major": major, "minor": minor, "fileMode": 0o640,
             "uid": 1000, "gid": 100},
            {"type": "u", "path": "/dev/test2", "major": 1, "minor": 5},  # no fileMode: 0666, owner 0:0
            {"type": "p", "path": "/dev/sub/fifo", "fileMode": 0o600},  # a FIFO, in a directory made for it
            # Replaces the default node. Not /dev/null: runc then also drops its cgroup rule, and cannot open it.
            {"type": "c", "path": "/dev/zero", "major": 1, "minor": 5, "fileMode": 0o600},
        ]

    def edit(spec):
        spec.linux.extra["devices"] = wanted
        if userns:
            with_userns(spec)

    out = run_both(runc, labkit_root, bundle(sh(DEV_SCRIPT), edit))
    assert out["runc"][0] == 0, out["runc"]
    assert out["labkit"][0] == 0 and out["labkit"][2] == out["runc"][2]
    # The same nodes, modes and owners, and (in a user namespace) the same bind mounts.
    lines = lambda text: [ln for ln in text.splitlines() if ln.startswith("/dev")]  # noqa: E731
    assert lines(out["labkit"][1]) == lines(out["runc"][1])
    mounts = lambda text: mount_table("\n".join(ln for ln in text.splitlines() if not ln.startswith("/dev")))  # noqa: E731
    assert mounts(out["labkit"][1]) == mounts(out["runc"][1])
    shown = lines(out["labkit"][1])
    if userns:
        assert any(ln.startswith(f"{loop} b") for ln in shown), shown
    else:
        assert f"/dev/test1 brw-r----- 1000:100 {major:x},{minor:x}" in shown
        assert "/dev/test2 crw-rw-rw- 0:0 1,5" in shown
        assert "/dev/sub drwxr-xr-x 0:0 0,0" in shown and "/dev/sub/fifo prw------- 0:0 0,0" in shown
        assert "/dev/zero crw------- 0:0 1,5" in shown


# --- linux.sysctl -------------------------------------------------------------------------------
NAMESPACED = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789", "fs.mqueue.msg_max": "20",
              "kernel.domainname": "lab.example", "net/ipv4/tcp_syncookies": "0"}  # '/' separators too


def read_host(keys) -> dict[str, str]:
    with_files = {k: sysctl.proc_path(k) for k in keys}
    return {k: open(p).read() for k, p in with_files.items() if os.path.exists(p)}


@pytest.mark.peer
@needs_runc
def test_namespaced_sysctls_are_set_inside_like_runc(runc, labkit_root, bundle):
    before = read_host(NAMESPACED)
    script = "; ".join(f"echo {k}=$(cat {sysctl.proc_path(k)})" for k in NAMESPACED)
    out = run_both(runc, labkit_root, bundle(sh(script), lambda s: s.linux.extra.update(sysctl=dict(NAMESPACED))))
    assert out["runc"][0] == 0, out["runc"]
    assert out["labkit"] == out["runc"]
    assert out["labkit"][1].splitlines() == [f"{k}={v}" for k, v in NAMESPACED.items()]
    assert read_host(NAMESPACED) == before  # the container's own namespaces only


def _without(ns_type):
    return lambda spec: setattr(spec.linux, "namespaces", [n for n in spec.linux.namespaces if n.type != ns_type])


@pytest.mark.peer
@needs_runc
@pytest.mark.parametrize("key, edit, ours, theirs", [
    ("vm.swappiness", None, "is not namespaced: writing it would change the host", "not in a separate kernel namespace"),
    ("net.ipv4.ip_forward", _without("network"), "needs its own network namespace", "not allowed in host network"),
    ("kernel.shmmax", _without("ipc"), "needs its own ipc namespace", "not allowed in the hosts ipc namespace"),
    ("kernel.hostname", None, "would override the hostname field", "conflicts with the OCI"),
], ids=["global", "net-without-netns", "ipc-without-ipcns", "hostname"])
def test_sysctls_that_would_change_the_host_are_refused_before_anything_is_made(runc, labkit_root, bundle, key,
                                                                                edit, ours, theirs):
    before = read_host([key])

    def spec_edit(spec):
        spec.linux.extra["sysctl"] = {key: "1"}
        if edit:
            edit(spec)

    path = bundle(["true"], spec_edit)
    out = run_both(runc, labkit_root, path)
    assert out["runc"][0] != 0 and theirs in out["runc"][2], out["runc"]
    assert out["labkit"][0] != 0, out["labkit"]
    assert f'linux.sysctl["{key}"]' in out["labkit"][2] and ours in out["labkit"][2], out["labkit"][2]
    assert "invalid runtime spec" in out["labkit"][2]  # refused by the checks before create
    assert not os.path.exists(os.path.join(labkit_root, os.path.basename(path)))  # no state, so nothing made
    assert read_host([key]) == before


# --- process.oomScoreAdj ------------------------------------------------------------------------
@pytest.mark.peer
@needs_runc
@pytest.mark.parametrize("value, edit", [(500, None), (-500, None), (500, with_userns)], ids=["500", "-500", "userns"])
def test_oom_score_adj_is_set_like_runc(runc, labkit_root, bundle, value, edit):
    def spec_edit(spec):
        spec.process.extra["oomScoreAdj"] = value
        if edit:
            edit(spec)

    out = run_both(runc, labkit_root, bundle(sh("cat /proc/1/oom_score_adj; sh -c 'cat /proc/self/oom_score_adj'"),
                                             spec_edit))
    if value < own_oom_score_adj() and not has_cap_sys_resource():  # e.g. a sandbox's bounding set
        assert out["runc"][0] != 0 and "oom_score_adj" in out["runc"][2], out["runc"]
        assert out["labkit"][0] != 0 and "CAP_SYS_RESOURCE" in out["labkit"][2], out["labkit"]
        return
    assert out["runc"][0] == 0, out["runc"]
    assert out["labkit"] == out["runc"]
    assert out["labkit"][1].split() == [str(value)] * 2  # the init's, and a child's: inherited


def own_oom_score_adj() -> int:
    with open("/proc/self/oom_score_adj") as f:
        return int(f.read())


def has_cap_sys_resource() -> bool:
    """Lowering oom_score_adj below one's own needs it (runc and labkit write it as this root)."""
    with open("/proc/self/status") as f:
        effective = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> 24 & 1)  # CAP_SYS_RESOURCE = 24


# --- linux.rootfsPropagation --------------------------------------------------------------------
# A throwaway mount namespace, cut from this machine's (private), then all shared: like a systemd host.
SHARED_NS = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --make-rshared / && exec "$@"', "sh"]


def root_propagation(mountinfo: str) -> str:
    """The optional fields of / ("shared:N", "master:N", "unbindable"), without the group numbers."""
    for line in mountinfo.splitlines():
        fields = line.partition(" - ")[0].split()
        if fields[4] == "/":
            return " ".join(re.sub(r":\d+$", "", f) for f in fields[6:])
    raise AssertionError(f"no / in {mountinfo}")


def in_shared_ns(command: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(SHARED_NS + command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    return done.returncode, done.stdout, done.stderr


def run_labkit_in_shared_ns(labkit_root: str, bundle_dir: str) -> tuple[int, str, str]:
    return in_shared_ns(["labkit-runc", "--root", labkit_root, "run", "--bundle", bundle_dir,
                         os.path.basename(bundle_dir)])


def run_in_shared_ns(runc, labkit_root: str, bundle_dir: str) -> dict[str, tuple[int, str, str]]:
    """run_both, each runtime in a throwaway namespace of its own whose mounts are shared."""
    cid = os.path.basename(bundle_dir)
    return {"runc": in_shared_ns(["runc", "--root", runc.root, "run", "--bundle", bundle_dir, cid]),
            "labkit": run_labkit_in_shared_ns(labkit_root, bundle_dir)}


def with_propagation(value, masked=False):
    def edit(spec):
        if value is not None:
            spec.linux.extra["rootfsPropagation"] = value
        if masked:  # runc's default lists: bind mounts made after pivot_root
            spec.linux.extra.update(maskedPaths=["/proc/keys", "/proc/acpi"], readonlyPaths=["/proc/sys", "/proc/bus"])
    return edit



@pytest.mark.peer
@needs_runc
@needs_unshare
@pytest.mark.parametrize("value, expected", [("private", ""), ("rprivate", ""), ("slave", "master"),
                                             ("rslave", "master")])
def test_root_propagation_matches_runc(runc, labkit_root, bundle, value, expected):
    out = run_in_shared_ns(runc, labkit_root, bundle(["cat", "/proc/self/mountinfo"], with_propagation(value, True)))
    assert out["runc"][0] == 0 and out["labkit"][0] == 0, out
    assert root_propagation(out["labkit"][1]) == root_propagation(out["runc"][1]) == expected
    assert mount_table(out["labkit"][1]) == mount_table(out["runc"][1])


@pytest.mark.peer
@needs_runc
@needs_unshare
def test_unset_propagation_is_labkits_private_where_runc_makes_it_rslave(runc, labkit_root, bundle):
    """The one deliberate difference: labkit's default keeps the container's mounts private."""
    out = run_in_shared_ns(runc, labkit_root, bundle(["cat", "/proc/self/mountinfo"]))
    assert out["runc"][0] == 0 and out["labkit"][0] == 0, out
    assert (root_propagation(out["labkit"][1]), root_propagation(out["runc"][1])) == ("", "master")


@needs_unshare
@pytest.mark.parametrize("value, expected, every_mount", [
    ("shared", "shared", False), ("rshared", "shared", True),
    ("unbindable", "unbindable", False), ("runbindable", "unbindable", True),
])
def test_shared_and_unbindable_apply_to_the_containers_root(labkit_root, bundle, value, expected, every_mount):
    """As runc >= 1.4 (runc 1.1 left a shared root private, and failed on unbindable ones): set
    on / after pivot_root — here after readonlyPaths and maskedPaths, whose bind mounts an
    unbindable /proc would refuse — so the rootfs's own mounts never reached the host's."""
    path = bundle(["cat", "/proc/self/mountinfo"], with_propagation(value, masked=True))
    code, stdout, stderr = run_labkit_in_shared_ns(labkit_root, path)
    assert code == 0, stderr
    assert root_propagation(stdout) == expected
    others = [line for line in stdout.splitlines() if line.split()[4] != "/"]
    assert all((expected in line) == every_mount for line in others)




# --- the checks, before anything is made (no runc, no kernel objects) ----------------------------
NS = [SimpleNamespace(type=t, path=None) for t in ("pid", "network", "ipc", "uts", "mount")]


@pytest.mark.parametrize("key, path", [
    ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    ("net/ipv4/ip_forward", "/proc/sys/net/ipv4/ip_forward"),
    ("net.ipv4.conf.eth0/100.rp_filter", "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"),  # sysctl.d(5)
    ("net/ipv4/conf/eth0.100/rp_filter", "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"),
])
def test_sysctl_keys_name_their_proc_file(key, path):
    assert sysctl.proc_path(key) == path


@pytest.mark.parametrize("key, namespaces, refused", [
    ("net.core.somaxconn", NS, None),
    ("kernel.msgmax", NS, None), ("kernel.sem", NS, None), ("fs.mqueue.queues_max", NS, None),
    ("kernel.domainname", NS, None),
    ("user.max_user_namespaces", NS, "needs its own user namespace"),
    ("user.max_user_namespaces", NS + [SimpleNamespace(type="user", path=None)], None),
    ("vm.swappiness", NS, "is not namespaced"), ("kernel.pid_max", NS, "is not namespaced"),
    ("kernel.hostname", NS, "would override the hostname field"),
    ("net/../kernel/core_pattern", NS, "is not a sysctl name"),  # passes as net.*, escapes to kernel.*
    ("net.ipv4..x", NS, "is not a sysctl name"),
    ("net.ipv4.ip_forward", [SimpleNamespace(type="network", path="/proc/self/ns/net")],
     "needs its own network namespace"),  # joined, but it is the host's own: as runc's isHostNetNS
    ("kernel.shmmax", NS[:2], "needs its own ipc namespace"),
])
def test_sysctl_namespacing_is_checked_as_runc_does(key, namespaces, refused):
    found = list(sysctl.problems({key: "1"}, namespaces))
    if refused is None:
        assert found == []
    else:
        assert len(found) == 1 and refused in found[0] and found[0].startswith(f'linux.sysctl["{key}"]')


def test_a_global_sysctl_is_refused_by_validate_naming_the_field():
    spec = default_spec(["sh"])
    spec.linux.extra["sysctl"] = {"vm.swappiness": "10", "net.ipv4.ip_forward": "1"}
    with pytest.raises(SpecError) as info:
        spec.validate()
    assert 'linux.sysctl["vm.swappiness"] is not namespaced' in info.value.what
    assert "ip_forward" not in info.value.what


@pytest.mark.parametrize("device, problem", [
    ({"type": "c", "path": "/dev/x", "major": 1}, "linux.devices[0].minor is required"),
    ({"type": "b", "path": "/dev/x", "major": 4096, "minor": 0}, "major must be 0 to 4095"),
    ({"type": "c", "path": "dev/x", "major": 1, "minor": 3}, "must be an absolute path"),
    ({"type": "p", "path": "/dev/fifo"}, None),  # a FIFO needs no numbers
    ({"type": "u", "path": "/dev/x", "major": 1, "minor": 3}, None),
])
def test_device_entries_are_checked(device, problem):
    found = list(rootfs.device_problems([device]))
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0]), found


def test_device_list_follows_runcs_order_and_defaults():
    nodes = rootfs.device_nodes([{"type": "c", "path": "/dev/null", "major": 1, "minor": 3, "fileMode": 0o600},
                                 {"type": "c", "path": "/dev/ptmx", "major": 5, "minor": 2},
                                 {"type": "b", "path": "/dev/sda", "major": 8, "minor": 0, "uid": 5}])
    assert [n.path for n in nodes] == ["/dev/random", "/dev/full", "/dev/tty", "/dev/zero", "/dev/urandom",
                                       "/dev/null", "/dev/sda"]  # redefined: last; ptmx: always the pts link
    assert (nodes[-2].mode, nodes[-1].mode, nodes[-1].uid) == (0o600, 0o666, 5)


@pytest.mark.parametrize("field, value", [("maskedPaths", ["/proc/kcore"]), ("readonlyPaths", ["/proc/sys"]),
                                          ("devices", [{"type": "p", "path": "/dev/f"}]),
                                          ("rootfsPropagation", "rslave")])
def test_path_fields_need_a_mount_namespace(field, value):
    spec = default_spec(["sh"], namespaces=("pid", "uts"))
    spec.linux.extra[field] = value
    with pytest.raises(SpecError, match=f"linux.{field} need a mount namespace"):
        spec.validate()
