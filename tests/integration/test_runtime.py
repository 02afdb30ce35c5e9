"""The runtime on the real kernel: isolation, lifecycle, exit codes, errors."""
import os
import subprocess
import sys
import time

import pytest

from labkit import capabilities, namespaces, runtime
from labkit.errors import ContainerError, SpecError
from labkit.runtime.spec import IDMapping, Namespace

pytestmark = pytest.mark.vm


def sh(make_bundle, script, **kw):
    return runtime.run(make_bundle(["sh", "-c", script], **kw))


def test_pid_1_and_only_its_own_processes(make_bundle):
    result = sh(make_bundle, "echo $$; ps -o pid= | wc -l")
    assert result.exit_code == 0
    pid, count = result.stdout.split()
    assert pid == "1"
    assert int(count) <= 3  # sh, ps, wc: nothing of the host's


def with_caps(*names):
    """A spec edit: these capabilities on top of runc's default three."""
    def edit(spec):
        spec.process.capabilities = capabilities.oci_sets([*capabilities.RUNC_DEFAULT, *names])
    return edit


def test_hostname_is_isolated(make_bundle):
    host = os.uname().nodename
    result = sh(make_bundle, "hostname; hostname changed; hostname", hostname="box", edit=with_caps("CAP_SYS_ADMIN"))
    assert result.stdout.split() == ["box", "changed"]
    assert os.uname().nodename == host


def test_without_cap_sys_admin_root_cannot_change_the_hostname_or_mount(make_bundle):
    result = sh(make_bundle, "hostname changed; echo $?; mkdir -p /mnt/x; mount -t tmpfs t /mnt/x; echo $?", hostname="box")
    assert result.stdout.split() == ["1", "1"] and "not permitted" in result.stderr, result


def test_mount_inside_is_invisible_on_host(make_bundle):
    result = sh(make_bundle, "mkdir -p /mnt/x && mount -t tmpfs labkit-probe /mnt/x && grep -c labkit-probe /proc/self/mountinfo",
                edit=with_caps("CAP_SYS_ADMIN"))
    assert result.stdout.strip() == "1"
    with open("/proc/self/mountinfo") as f:
        assert "labkit-probe" not in f.read()


def test_new_network_namespace_has_only_lo(make_bundle):
    result = sh(make_bundle, "ls /sys/class/net")
    assert result.stdout.split() == ["lo"]


def test_namespaces_differ_from_the_host(make_bundle):
    bundle = make_bundle(["sleep", "30"])
    runtime.create("ns-probe", bundle)
    try:
        pid = runtime.state("ns-probe").pid
        assert set(namespaces.differing(pid)) >= {"pid", "network", "ipc", "uts", "mount", "cgroup"}
        assert "user" not in namespaces.differing(pid)
    finally:
        runtime.delete("ns-probe", force=True)


def test_exit_code_and_stderr_propagate(make_bundle):
    result = sh(make_bundle, "echo out; echo oops >&2; exit 42")
    assert (result.exit_code, result.stdout, result.stderr) == (42, "out\n", "oops\n")


def test_killed_by_signal_reports_128_plus_signal(make_bundle):
    result = sh(make_bundle, "sleep 30 & kill -TERM $!; wait $!; exit $?")
    assert result.exit_code == 143


def test_pid1_cannot_be_killed_from_inside(make_bundle):
    result = sh(make_bundle, "kill -KILL 1; echo survived")
    assert (result.exit_code, result.stdout) == (0, "survived\n")


def test_missing_program_fails_create_with_127(make_bundle, run_root):
    """As in runc, the init looks the program up before it reports `created`."""
    with pytest.raises(runtime.ExecError, match="no/such/program") as info:
        runtime.run(make_bundle(["/no/such/program"]), container_id="noprog")
    assert info.value.exit_code == 127
    assert not os.path.exists(os.path.join(run_root, "runtime", "noprog"))
    with pytest.raises(runtime.ExecError, match="not found in [$]PATH") as info:
        runtime.run(make_bundle(["nosuchcmd"]))
    assert info.value.exit_code == 127
    with pytest.raises(runtime.ExecError, match="permission denied") as info:
        runtime.run(make_bundle(["/etc"]))
    assert info.value.exit_code == 126


def test_lifecycle_create_start_state_kill_delete(make_bundle):
    bundle = make_bundle(["sleep", "30"])
    runtime.create("life", bundle)
    s = runtime.state("life")
    assert s.status == "created" and s.pid > 0
    assert s.oci() == {"ociVersion": "1.0.2", "id": "life", "status": "created", "pid": s.pid, "bundle": bundle}
    with open(f"/proc/{s.pid}/cmdline", "rb") as f:
        assert b"sleep" not in f.read()  # still the init, blocked before exec
    runtime.start("life")
    deadline = time.time() + 5
    while time.time() < deadline:
        with open(f"/proc/{s.pid}/cmdline", "rb") as f:
            if f.read().startswith(b"sleep"):
                break
        time.sleep(0.01)
    assert runtime.state("life").status == "running"
    with pytest.raises(ContainerError, match="is running"):
        runtime.delete("life")
    runtime.kill("life", "KILL")
    assert runtime.wait("life", timeout=5) == 137
    assert runtime.state("life").status == "stopped"
    assert "pid" not in runtime.state("life").oci()
    runtime.delete("life")
    with pytest.raises(ContainerError, match="does not exist"):
        runtime.state("life")


def test_pid1_ignores_sigterm_without_a_handler(make_bundle):
    bundle = make_bundle(["sleep", "30"])
    runtime.create("term", bundle)
    runtime.start("term")
    time.sleep(0.2)
    runtime.kill("term", "TERM")
    time.sleep(0.3)
    assert runtime.state("term").status == "running"  # the kernel drops it for PID 1
    runtime.kill("term", "KILL")
    assert runtime.wait("term", timeout=5) == 137
    runtime.delete("term")


def test_duplicate_id_refused(make_bundle):
    bundle = make_bundle(["true"])
    runtime.create("dup", bundle)
    try:
        with pytest.raises(ContainerError, match="already exists"):
            runtime.create("dup", bundle)
    finally:
        runtime.delete("dup", force=True)


def test_bad_spec_refused_before_any_kernel_object(make_bundle, run_root):
    bundle = make_bundle(["true"], edit=lambda s: s.linux.namespaces.append(Namespace("bogus")))
    with pytest.raises(SpecError, match="bogus"):
        runtime.create("bad", bundle)
    assert not os.path.exists(os.path.join(run_root, "runtime", "bad"))


def test_init_failure_is_reported_and_cleaned_up(make_bundle, run_root):
    def bad_mount(spec):
        spec.mounts.append(type(spec.mounts[0])("/mnt", "nosuchfs", "x", []))
    with pytest.raises(ContainerError, match="nosuchfs") as info:
        runtime.create("badmount", make_bundle(["true"], edit=bad_mount))
    assert "ENODEV" in str(info.value)
    assert not os.path.exists(os.path.join(run_root, "runtime", "badmount"))


def test_user_namespace_maps_root_to_an_unprivileged_host_uid(make_bundle):
    def userns(spec):
        spec.linux.namespaces.append(Namespace("user"))
        spec.linux.uidMappings = [IDMapping(0, 100000, 65536)]
        spec.linux.gidMappings = [IDMapping(0, 100000, 65536)]
    bundle = make_bundle(["sh", "-c", "id -u; cat /proc/self/uid_map; sleep 30"], edit=userns)
    shim = runtime.create("userns", bundle, stdout=subprocess.PIPE)
    try:
        runtime.start("userns")
        uid = shim.stdout.readline().strip()
        mapping = shim.stdout.readline().split()
        pid = runtime.state("userns").pid
        with open(f"/proc/{pid}/status") as f:
            host_uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        assert (uid, mapping, host_uid) == ("0", ["0", "100000", "65536"], "100000")
    finally:
        runtime.delete("userns", force=True)
        shim.stdout.close()


def test_readonly_root(make_bundle):
    def ro(spec):
        spec.root.readonly = True
    result = sh(make_bundle, "touch /x; echo rc=$?", edit=ro)
    assert "Read-only file system" in result.stderr and "rc=1" in result.stdout


def test_user_and_cwd_and_env(make_bundle):
    def user(spec):
        spec.process.user.uid = 65534
        spec.process.user.gid = 65534
        spec.process.cwd = "/tmp"
        spec.process.env.append("GREETING=hello")
    result = sh(make_bundle, "id -u; id -g; pwd; echo $GREETING", edit=user)
    assert result.stdout.split() == ["65534", "65534", "/tmp", "hello"]


def test_container_survives_its_caller(make_bundle, run_root):
    """The CLI's create returns, the container stays: the shim owns it."""
    bundle = make_bundle(["sleep", "30"])
    env = dict(os.environ)
    subprocess.run(["labkit-runc", "create", "--bundle", bundle, "detached"], check=True, env=env,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=30)
    try:
        assert runtime.state("detached").status == "created"
        subprocess.run(["labkit-runc", "start", "detached"], check=True, env=env, timeout=30)
        assert runtime.state("detached").status == "running"
    finally:
        runtime.delete("detached", force=True)


def test_join_another_containers_namespaces_by_path(make_bundle):
    """linux.namespaces[].path: the way a pod shares one network (and uts) namespace."""
    first = make_bundle(["sleep", "30"], hostname="pod")
    runtime.create("pod-infra", first)
    try:
        pid = runtime.state("pod-infra").pid

        def join(spec):
            for ns in spec.linux.namespaces:
                if ns.type in ("network", "uts"):
                    ns.path = f"/proc/{pid}/ns/{namespaces.proc_name(ns.type)}"
            spec.hostname = None
        result = runtime.run(make_bundle(["sh", "-c", "hostname; readlink /proc/self/ns/net"], edit=join))
        hostname, net = result.stdout.split()
        assert hostname == "pod"
        assert net == f"net:[{namespaces.inspect(pid)['network'].inode}]"
    finally:
        runtime.delete("pod-infra", force=True)


def test_caller_ignored_and_blocked_signals_do_not_leak_in(make_bundle, tmp_path):
    """A caller started in the background by a shell ignores SIGINT and SIGQUIT, and a caller
    may block signals; exec passes both on. The container starts with every signal at its
    default and none blocked. (runc, for comparison, leaves some ignored, depending on the Go
    runtime's own handling.)"""
    path = make_bundle(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
    wrap = [sys.executable, "-c", "import os, signal, sys\n"  # ignore five, block two, then exec
            "for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE):\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGTERM})\n"
            "os.execvp(sys.argv[1], sys.argv[1:])"]
    done = subprocess.run([*wrap, "labkit-runc", "--root", str(tmp_path / "state"), "run", "--bundle", path, "sig"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n", "")


def test_every_capability_is_given_or_refused_before_anything_is_made(make_bundle, run_root):
    """Asking for every capability the kernel knows: granted where root holds them all; where this
    machine's root lacks some (a reduced bounding set), refused up front, naming them."""
    known = capabilities.NAMES[:capabilities.last_cap() + 1]
    path = make_bundle(["grep", "CapEff", "/proc/self/status"],
                       edit=lambda spec: setattr(spec.process, "capabilities", capabilities.oci_sets(known)))
    lacking = [n for n in known if n not in capabilities.held()]
    if not lacking:
        assert runtime.run(path).stdout == f"CapEff:\t{capabilities.mask(known):016x}\n"
        return
    with pytest.raises(ContainerError) as info:
        runtime.create("all-caps", path)
    assert all(n in info.value.what for n in lacking) and "bounding set" in info.value.what
    assert "all-caps" not in [state.id for state in runtime.list_containers()]


@pytest.mark.parametrize("uid", [0, 1000])
def test_the_container_dies_with_its_shim_whatever_its_user(make_bundle, uid):
    """PID 1 has PR_SET_PDEATHSIG; the kernel clears that when the effective uid changes, so the
    init sets it again after switching to process.user (else a uid-1000 container would outlive
    a killed monitor, with no one left to record its exit or remove its cgroup)."""
    def as_user(spec):
        spec.process.user.uid = spec.process.user.gid = uid
    path = make_bundle(["sleep", "60"], edit=as_user)
    runtime.create("orphan", path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runtime.start("orphan")
        state = runtime.state("orphan")
        os.kill(state.monitor_pid, 9)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{state.pid}") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(f"/proc/{state.pid}")
    finally:
        runtime.delete("orphan", force=True)
