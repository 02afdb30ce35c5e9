"""Against runc: the same bundle, run by runc and by labkit, looks the same from inside.

Each test writes ONE bundle (config.json + the shared busybox rootfs, by
absolute path: runc refuses a rootfs that is a symlink) and runs it with
`runc run` and with `labkit-runc run` — the same command line shape — then
compares what the container saw: PID 1, hostname, uid/gid, groups, HOME,
cwd, umask, env, session, signals, fds, the mount table, the namespaces that
differ from the host's, /dev, exit codes and stderr, a user namespace.

What is *not* compared, and why, is said where it matters:
- mount ids, parent ids and the anonymous device numbers (0:NN) of each
  mount are allocated by the kernel per mount, so they differ between any
  two containers, even two runs of runc;
- how runc reports an error (logrus `level=error msg=...`) versus labkit's
  `labkit: ...` line: only the failure, the exit code and the kernel's
  reason are compared.

Safety: runc makes cgroups. Every bundle sets linux.cgroupsPath to the
relative path labkit-peer-<session>/<name>, which runc nests under this
process's own cgroup in each hierarchy (DESIGN.md: never touch other
groups); labkit, which honours cgroupsPath too, nests it under its own
`labkit` parent. runc removes the leaf on delete and the module fixture
rmdirs the `labkit-peer-<session>` parents runc made — only those that did
not exist before. runc's state lives in a labkit-named temp dir. The session
leak check sees anything left over.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import time
import uuid

import pytest

from labkit import capabilities, rootfs, seccomp
from labkit.runtime import default_spec
from labkit.runtime.spec import IDMapping, Mount, Namespace

pytestmark = [
    pytest.mark.peer,
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (apt-get install runc)"),
]

# One parent per test session: two sessions on one machine never share (or remove) it.
CGROUP_PARENT = f"labkit-peer-{uuid.uuid4().hex[:8]}"


# --- cgroup bookkeeping: only what runc made for us ----------------------------------------------
def own_cgroup_dirs() -> list[str]:
    """Each mounted cgroup hierarchy's directory of this process's cgroup.

    That is where runc puts a relative cgroupsPath (v1 and v2 alike).
    """
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    dirs = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, (fstype, _, superopts) = pre.split(), post.split()[:3]
            if fstype == "cgroup2":
                key = ""
            elif fstype == "cgroup":
                opts = set(superopts.split(","))
                key = next((k for k in own if k and set(k.split(",")) <= opts), None)
            else:
                continue
            if key is None or key not in own:
                continue
            mount_root, point = fields[3], fields[4]
            rel = os.path.relpath(own[key], mount_root)
            dirs.append(os.path.normpath(os.path.join(point, rel)))
    return sorted(set(dirs))


class Runc:
    """runc with its state in a labkit-named dir and cgroups under labkit-peer/."""

    def __init__(self, state_root: str) -> None:
        self.root = state_root
        self.parents_before = {d for d in self._parents() if os.path.isdir(d)}

    @staticmethod
    def _parents() -> list[str]:
        """Where runc may have put CGROUP_PARENT: below our own cgroup, or wherever a
        directory of that (per-session, random) name exists — on a systemd v2 host
        runc's cgroupfs driver may nest it elsewhere, e.g. under system.slice."""
        found = {os.path.join(d, CGROUP_PARENT) for d in own_cgroup_dirs()}
        for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
            if CGROUP_PARENT in dirnames:
                found.add(os.path.join(dirpath, CGROUP_PARENT))
            if dirpath.count("/") >= 7:
                dirnames[:] = []
        return sorted(found)

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["runc", "--root", self.root, *args], text=True, timeout=60, **kw)

    def cleanup(self) -> None:
        listed = self("list", "-q")
        for cid in listed.stdout.split() if listed.returncode == 0 else []:
            self("delete", "--force", cid)
        for parent in self._parents():
            if parent in self.parents_before or not os.path.isdir(parent):
                continue
            try:
                leaves = sorted((e.path for e in os.scandir(parent) if e.is_dir()), reverse=True)
            except FileNotFoundError:
                continue
            for leaf in leaves:  # a leaf runc failed to remove: empty once its processes are gone
                rmdir_cgroup(leaf)
            rmdir_cgroup(parent)


def rmdir_cgroup(path: str) -> None:
    """rmdir a cgroup; it may stay busy for a moment after its last process exited."""
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    os.rmdir(path)


@pytest.fixture(scope="module")
def runc(lab_tmp):
    peer = Runc(os.path.join(lab_tmp, "labkit-runc-state"))
    yield peer
    peer.cleanup()


@pytest.fixture(scope="module")
def labkit_root(lab_tmp):
    # .../runtime under a labkit temp dir: `labkit doctor --leaks` looks there.
    return os.path.join(lab_tmp, "peer", "runtime")


@pytest.fixture
def bundle(tmp_path, busybox_rootfs):
    """bundle(args, edit=None, rootfs=...) -> one bundle dir, run by both runtimes."""
    def make(args, edit=None, root=busybox_rootfs):
        name = "peer-" + uuid.uuid4().hex[:8]
        path = tmp_path / name
        path.mkdir()
        spec = default_spec(args, rootfs=os.path.realpath(root), hostname="peerbox")
        spec.linux.cgroupsPath = f"{CGROUP_PARENT}/{name}"
        if edit:
            edit(spec)
        spec.save(str(path))
        return str(path)
    return make


def run_labkit(labkit_root: str, bundle_dir: str) -> tuple[int, str, str]:
    cid = os.path.basename(bundle_dir)
    ours = subprocess.run(["labkit-runc", "--root", labkit_root, "run", "--bundle", bundle_dir, cid],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    return ours.returncode, ours.stdout, ours.stderr


def run_runc(runc: Runc, bundle_dir: str) -> tuple[int, str, str]:
    peer = runc("run", "--bundle", bundle_dir, os.path.basename(bundle_dir))
    return peer.returncode, peer.stdout, peer.stderr


def run_both(runc: Runc, labkit_root: str, bundle_dir: str) -> dict[str, tuple[int, str, str]]:
    """`runc run` and `labkit-runc run` on the same bundle: {name: (exit code, stdout, stderr)}."""
    return {"runc": run_runc(runc, bundle_dir), "labkit": run_labkit(labkit_root, bundle_dir)}


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# --- what a process sees about itself ------------------------------------------------------------
IDENTITY = r"""
echo "pid=$$ ppid=$PPID"
echo "hostname=$(hostname)"
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "home=$HOME pwd=$(pwd) umask=$(umask)"
echo "pgrp,session=$(cut -d' ' -f5,6 /proc/$$/stat)"
grep -E '^(Uid|Gid|Groups|SigBlk|SigIgn|NoNewPrivs|Seccomp):' /proc/self/status
echo "fds=$(ls /proc/self/fd | tr '\n' ' ')"
echo "uid_map=$(cat /proc/self/uid_map) gid_map=$(cat /proc/self/gid_map) setgroups=$(cat /proc/self/setgroups)"
cat /proc/self/cgroup
env | sort
"""


def as_nobody(spec):
    spec.process.user.uid = spec.process.user.gid = 65534
    spec.process.cwd = "/tmp"


def as_user_1000(spec):
    spec.process.user.uid = spec.process.user.gid = 1000  # not in /etc/passwd: HOME=/
    spec.process.user.additionalGids = [5, 100]
    spec.process.cwd = "/home"
    spec.process.env.append("GREETING=hello world")


def custom_env(spec):
    spec.process.env += ["HOME=/custom", "X=a=b", "EMPTY="]
    spec.process.user.umask = 0o027


def with_userns(spec):
    spec.linux.namespaces.append(Namespace("user"))
    spec.linux.uidMappings = [IDMapping(0, 100000, 65536)]
    spec.linux.gidMappings = [IDMapping(0, 100000, 65536)]


VARIANTS = {"root": None, "nobody": as_nobody, "uid-1000-extra-groups": as_user_1000,
            "env-and-umask": custom_env, "userns": with_userns}


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_identity_env_and_cwd(runc, labkit_root, bundle, variant):
    out = run_both(runc, labkit_root, bundle(sh(IDENTITY), VARIANTS[variant]))
    assert out["runc"][0] == 0, out["runc"]
    assert out["labkit"] == out["runc"]
    assert "pid=1 ppid=0" in out["labkit"][1]
    assert "hostname=peerbox" in out["labkit"][1]
    assert "pgrp,session=1 1" in out["labkit"][1]  # a session of its own, led by PID 1


def test_user_caller_umask_does_not_leak_in(runc, labkit_root, bundle):
    """runc sets umask 0022 unless process.user.umask says otherwise; so does labkit."""
    path = bundle(sh("umask"))
    old = os.umask(0o077)
    try:
        out = run_both(runc, labkit_root, path)
    finally:
        os.umask(old)
    assert out["labkit"] == out["runc"] == (0, "0022\n", "")


def test_missing_cwd_is_created_like_runc(runc, labkit_root, bundle, tmp_path):
    """Both make a missing process.cwd (as root, with the caller's umask) before switching user."""
    private = rootfs.build_busybox_rootfs(str(tmp_path / "rootfs"))  # not the shared one: it gets written

    def cwd(spec):
        spec.process.cwd = "/new/work/dir"
        spec.process.user.uid = spec.process.user.gid = 65534
    path = bundle(sh("pwd; stat -c '%n %A %u:%g' /new /new/work /new/work/dir"), cwd, private)
    peer = run_runc(runc, path)
    shutil.rmtree(os.path.join(private, "new"))
    ours = run_labkit(labkit_root, path)
    assert peer[0] == 0, peer
    assert ours == peer


# --- the mount table ---------------------------------------------------------------------------
def mount_table(mountinfo: str) -> list[tuple[str, ...]]:
    """mountinfo lines without the kernel-allocated parts.

    Dropped: mount id, parent id and major:minor — allocated per mount (each
    tmpfs/proc/sysfs instance gets a fresh anonymous device), so they differ
    between any two containers — and the propagation fields: labkit makes the
    container's mounts private (DESIGN.md), runc defaults to rslave, which only
    shows ("master:N") where the host's / is shared, as under systemd. Kept, in
    order: root within the filesystem, mount point, per-mount flags, fs type,
    source and superblock options.
    """
    table = []
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        table.append((fields[3], fields[4], fields[5], *post.split()))
    return table


def readonly_root(spec):
    spec.root.readonly = True


def extra_mounts(spec):
    mount = type(spec.mounts[0])
    spec.mounts.append(mount("/run", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=755", "size=1m"]))
    # a read-only bind of a host directory (the rootfs's /etc: it has no submounts)
    spec.mounts.append(mount("/mnt/etc-ro", "bind", os.path.join(spec.root.path, "etc"), ["rbind", "ro", "nosuid"]))


@pytest.mark.parametrize("edit", [None, readonly_root, with_userns, extra_mounts],
                         ids=["default", "readonly-root", "userns", "tmpfs-and-ro-bind"])
def test_same_mount_table(runc, labkit_root, bundle, edit):
    out = run_both(runc, labkit_root, bundle(["cat", "/proc/self/mountinfo"], edit))
    assert out["runc"][0] == 0 and out["labkit"][0] == 0, out
    runc_table, labkit_table = mount_table(out["runc"][1]), mount_table(out["labkit"][1])
    # Same mount points in the same order, same filesystems, flags and options.
    assert [m[1] for m in labkit_table] == [m[1] for m in runc_table]
    assert labkit_table == runc_table


# --- namespaces ------------------------------------------------------------------------------------
NS_NAMES = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "time_for_children",
            "user", "uts")
NS_SCRIPT = "for n in " + " ".join(NS_NAMES) + "; do echo $n $(readlink /proc/self/ns/$n); done"


def isolated(output: str) -> set[str]:
    """Namespace types whose /proc/self/ns link inside differs from the host's."""
    differ = set()
    for line in output.splitlines():
        name, _, inside = line.partition(" ")
        try:
            host = os.readlink(f"/proc/self/ns/{name}")
        except FileNotFoundError:  # this kernel lacks the type
            continue
        if inside != host:
            differ.add(name)
    return differ


@pytest.mark.parametrize("edit,extra", [(None, set()), (with_userns, {"user"})], ids=["default", "userns"])
def test_same_namespaces_differ_from_the_host(runc, labkit_root, bundle, edit, extra):
    out = run_both(runc, labkit_root, bundle(sh(NS_SCRIPT), edit))
    assert out["runc"][0] == 0 and out["labkit"][0] == 0, out
    expected = {"cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "uts"} | extra
    assert isolated(out["labkit"][1]) == isolated(out["runc"][1]) == expected


# --- /dev ------------------------------------------------------------------------------------------
DEV_SCRIPT = "for f in $(find /dev | sort); do stat -c '%n %A %u:%g %t,%T %N' $f; done"


@pytest.mark.parametrize("edit", [None, with_userns], ids=["default", "userns"])
def test_same_dev(runc, labkit_root, bundle, edit):
    """Same nodes, links, directories, modes and owners (times differ, and are not printed)."""
    out = run_both(runc, labkit_root, bundle(sh(DEV_SCRIPT), edit))
    assert out["runc"][0] == 0, out["runc"]
    assert out["labkit"] == out["runc"]
    names = {line.split()[0] for line in out["labkit"][1].splitlines()}
    assert {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/fd",
            "/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/ptmx", "/dev/pts", "/dev/shm",
            "/dev/mqueue"} <= names


# --- exit codes and stderr -------------------------------------------------------------------------
@pytest.mark.parametrize("script", [
    "echo out; echo err >&2; exit 42",
    "exit 0",
    "echo only-stderr >&2; exit 1",
    "sleep 30 & kill -TERM $!; wait $!; exit $?",  # a child killed by a signal: 128 + 15
    "kill -KILL 1; echo survived",                  # PID 1 ignores signals it has no handler for
])
def test_same_exit_code_stdout_and_stderr(runc, labkit_root, bundle, script):
    out = run_both(runc, labkit_root, bundle(sh(script)))
    assert out["labkit"] == out["runc"]


RUNC_ERROR = re.compile(r'unable to start container process: (.*?)"?$', re.M)


@pytest.mark.parametrize("args", [["/no/such/program"], ["nosuchcommand"], ["/etc"], ["/etc/passwd"]])
def test_unrunnable_program_fails_create_like_runc(runc, labkit_root, bundle, args):
    """runc looks the program up before it reports `created`: run fails with 1 and the reason."""
    out = run_both(runc, labkit_root, bundle(args))
    assert out["runc"][0] == out["labkit"][0] == 1
    reason = RUNC_ERROR.search(out["runc"][2]).group(1).replace('\\"', '"')
    assert reason.lower() in out["labkit"][2].lower(), (reason, out["labkit"][2])


# --- a user namespace, seen from the host ----------------------------------------------------------
def host_ids(pid: int) -> tuple[str, str, str]:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    with open(f"/proc/{pid}/uid_map") as f:
        uid_map = " ".join(f.read().split())
    return status["Uid"].split()[0], status["Gid"].split()[0], uid_map


def test_same_user_namespace_mapping_seen_from_the_host(runc, labkit_root, bundle):
    path = bundle(["sleep", "30"], with_userns)
    cid = os.path.basename(path)
    seen = {}
    try:
        assert runc("create", "--bundle", path, cid, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, capture_output=False).returncode == 0
        assert runc("start", cid).returncode == 0
        seen["runc"] = host_ids(json.loads(runc("state", cid).stdout)["pid"])
    finally:
        runc("delete", "--force", cid)
    labkit = ["labkit-runc", "--root", labkit_root]
    try:
        subprocess.run([*labkit, "create", "--bundle", path, cid], check=True, timeout=60,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([*labkit, "start", cid], check=True, timeout=60)
        state = json.loads(subprocess.run([*labkit, "state", cid], capture_output=True, text=True,
                                          check=True, timeout=60).stdout)
        seen["labkit"] = host_ids(state["pid"])
    finally:
        subprocess.run([*labkit, "delete", "--force", cid], capture_output=True, timeout=60)
    assert seen["labkit"] == seen["runc"] == ("100000", "100000", "0 100000 65536")


# --- capabilities, no_new_privs, rlimits -----------------------------------------------------------
def _no_caps(spec):
    spec.process.capabilities = None  # runc: none at all


def _docker_caps(spec):
    spec.process.capabilities = capabilities.oci_sets(capabilities.DOCKER_DEFAULT)


def _user_with_caps(spec):  # keepcaps across the switch away from uid 0, then capset
    spec.process.user.uid = spec.process.user.gid = 1000
    spec.process.capabilities = {"bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NET_RAW"],
                                 "permitted": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
                                 "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]}


def _rlimits_and_privs(spec):
    spec.process.noNewPrivileges = False
    spec.process.rlimits = [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 2048},
                            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]


CAPS_AND_LIMITS = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; ulimit -n; ulimit -Hn; ulimit -c"


@pytest.mark.parametrize("edit", [None, _no_caps, _docker_caps, _user_with_caps, _rlimits_and_privs],
                         ids=["runc-spec-default", "none-listed", "docker-default", "user-1000", "rlimits"])
def test_same_capabilities_no_new_privs_and_rlimits(runc, labkit_root, bundle, edit):
    out = run_both(runc, labkit_root, bundle(sh(CAPS_AND_LIMITS), edit))
    assert out["labkit"] == out["runc"] and out["runc"][0] == 0, out


def test_dropped_capabilities_are_enforced_like_runc(runc, labkit_root, bundle):
    """Root without CAP_CHOWN/CAP_SYS_ADMIN: the kernel refuses, in both."""
    script = "touch /tmp/f; chown 1:1 /tmp/f; echo chown=$?; hostname other; echo hostname=$?"
    out = run_both(runc, labkit_root, bundle(sh(script), lambda s: s.mounts.append(
        Mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev"]))))
    assert out["labkit"][1] == out["runc"][1] == "chown=1\nhostname=1\n", out


# --- seccomp ---------------------------------------------------------------------------------------
PODMAN_PROFILE = "/usr/share/containers/seccomp.json"  # containers-common, which skopeo brings


def _profile(profile, no_new_privs=True):
    def edit(spec):
        spec.linux.seccomp = profile
        spec.process.noNewPrivileges = no_new_privs
    return edit


SYSCALL_PROBES = ("mkdir /dev/shm/d; echo mkdir=$?; kill -0 $$; echo kill0=$?; kill -CONT $$; echo kill18=$?; "
                  "chroot / true; echo chroot=$?; grep Seccomp: /proc/self/status")
_MKDIR_EACCES = {"defaultAction": "SCMP_ACT_ALLOW",
                 "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
_SIGNAL_0_OR_18 = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
                   "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_ERRNO",  # one argument compared twice: OR
                                 "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"},
                                          {"index": 1, "value": 18, "op": "SCMP_CMP_EQ"}]},
                                {"names": ["no_such_call", "chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}


@pytest.mark.parametrize("profile,nnp", [(_MKDIR_EACCES, True), (_MKDIR_EACCES, False), (_SIGNAL_0_OR_18, True)],
                         ids=["errno-13", "errno-13-without-no-new-privs", "args-and-unknown-names"])
def test_same_seccomp_filtering(runc, labkit_root, bundle, profile, nnp):
    out = run_both(runc, labkit_root, bundle(sh(SYSCALL_PROBES), _profile(profile, nnp)))
    assert out["labkit"] == out["runc"] and "Seccomp:\t2" in out["runc"][1], out


@pytest.mark.skipif(not os.path.exists(PODMAN_PROFILE), reason=f"no {PODMAN_PROFILE} (apt-get install skopeo)")
def test_podmans_default_profile_filters_the_same(runc, labkit_root, bundle):
    """podman's default profile, turned into linux.seccomp as podman does for runc's default caps."""
    with open(PODMAN_PROFILE) as f:
        oci = seccomp.from_docker_profile(json.load(f), capabilities.RUNC_DEFAULT)
    script = SYSCALL_PROBES + "; unshare -m true; echo unshare=$?"
    out = run_both(runc, labkit_root, bundle(sh(script), _profile(oci)))
    assert out["labkit"] == out["runc"] and "chroot=1" in out["runc"][1], out  # chroot: only with CAP_SYS_CHROOT


# --- seccomp with several architectures: podman's default profile, all of it --------------------
# podman's profile lists x86_64, x86 and x32, names calls only x86 has (mmap2, socketcall, ...) and has
# overlapping `socket` rules; runc adds every name libseccomp knows, per architecture (tests/unit).
PODMAN_DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",  # containers.conf
                       "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
                       "CAP_SYS_CHROOT")
# Each probe runs in a child, so one the filter kills (SIGSYS) shows as `name=signal 31`. i386 calls are
# made from this 64-bit program with `int $0x80` (seccomp sees AUDIT_ARCH_I386), x32 ones with the x32 bit.
PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long native(long nr, long a, long b, long c) {
    long r = syscall(nr, a, b, c);
    return r == -1 ? -errno : r;
}

static long i386(long nr, long a, long b, long c) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory", "r8", "r9", "r10", "r11");
    return r;  /* -errno on failure */
}

static void probe(const char *name, long r) {
    if (r >= 0)
        printf("%s=ok\n", name);
    else
        printf("%s=%ld\n", name, r);
}

int main(void) {
    const char *names[] = {"socket_netlink_audit", "socket_netlink_route", "socket_inet_dgram", "unshare_user",
                           "personality_query", "kexec_load", "i386_getuid32", "i386_socket_netlink_audit",
                           "i386_socketcall_netlink_audit", "x32_socket_netlink_audit"};
    for (unsigned i = 0; i < sizeof names / sizeof *names; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            unsigned *args = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
            args[0] = 16, args[1] = 3, args[2] = 9;  /* socketcall(SYS_SOCKET, {AF_NETLINK, SOCK_RAW, NETLINK_AUDIT}) */
            long r = i == 0 ? native(SYS_socket, 16, 3, 9) : i == 1 ? native(SYS_socket, 16, 3, 0)
                   : i == 2 ? native(SYS_socket, 2, 2, 0) : i == 3 ? native(SYS_unshare, CLONE_NEWUSER, 0, 0)
                   : i == 4 ? native(SYS_personality, 0xffffffff, 0, 0) : i == 5 ? native(SYS_kexec_load, 0, 0, 0)
                   : i == 6 ? i386(199, 0, 0, 0) : i == 7 ? i386(359, 16, 3, 9)
                   : i == 8 ? i386(102, 1, (long)args, 0) : native(0x40000000 | SYS_socket, 16, 3, 9);
            probe(names[i], r);
            fflush(stdout);
            _exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status))
            printf("%s=signal %d\n", names[i], WTERMSIG(status));
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_rootfs(tmp_path_factory):
    """A busybox rootfs of its own with /probe, a static program making the calls above."""
    if os.uname().machine != "x86_64" or shutil.which("gcc") is None:
        pytest.skip("the syscall probe is x86_64 code built with gcc")
    work = tmp_path_factory.mktemp("probe")
    (work / "probe.c").write_text(PROBE_C)
    built = subprocess.run(["gcc", "-static", "-O1", "-o", str(work / "probe"), str(work / "probe.c")],
                           capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        pytest.skip(f"cannot build a static probe (libc6-dev?): {built.stderr[-300:]}")
    root = rootfs.build_busybox_rootfs(str(work / "rootfs"))
    shutil.copy(work / "probe", os.path.join(root, "probe"))
    return root


def _podman_profile(caps, arches=None):
    def edit(spec):
        with open(PODMAN_PROFILE) as f:
            oci = seccomp.from_docker_profile(json.load(f), caps)
        if arches:
            oci["architectures"] = arches
        spec.linux.seccomp = oci
        spec.process.capabilities = capabilities.oci_sets(caps)
    return edit


@pytest.mark.skipif(not os.path.exists(PODMAN_PROFILE), reason=f"no {PODMAN_PROFILE} (apt-get install skopeo)")
@pytest.mark.parametrize("caps,arches,expect", [
    (PODMAN_DEFAULT_CAPS, None, ["socket_netlink_audit=-22", "i386_socket_netlink_audit=-22", "i386_getuid32=ok",
                                 "x32_socket_netlink_audit=-22", "socket_inet_dgram=ok", "kexec_load=-1"]),
    (capabilities.DOCKER_DEFAULT, None, ["socket_netlink_audit=ok", "i386_getuid32=ok"]),  # CAP_AUDIT_WRITE
    (PODMAN_DEFAULT_CAPS, ["SCMP_ARCH_X86_64"], ["socket_netlink_audit=-22", "i386_getuid32=signal 31"]),
], ids=["podman-caps-all-arches", "docker-caps-all-arches", "podman-caps-x86_64-only"])
def test_podmans_multi_arch_profile_filters_the_same(runc, labkit_root, bundle, probe_rootfs, caps, arches, expect):
    """The profile as podman makes it for a default container, every architecture in it: both load it,
    and every probe (native, i386 and x32 calls) ends the same way."""
    script = "/probe; unshare -m true; echo unshare=$?; grep Seccomp: /proc/self/status"
    out = run_both(runc, labkit_root, bundle(sh(script), _podman_profile(caps, arches), probe_rootfs))
    assert out["runc"][0] == 0 and "Seccomp:\t2" in out["runc"][1], out["runc"]
    assert out["labkit"] == out["runc"], out
    for line in expect + ["unshare=1"]:
        assert line in out["labkit"][1].splitlines(), out["labkit"][1]
