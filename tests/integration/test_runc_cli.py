"""labkit-runc as podman's conmon and containerd's shim drive it: runc's process model
(create exits; the init goes to the caller's subreaper), the verbs beyond create/start,
hooks, and a spec without a mount namespace that must never touch the caller's mounts."""
import json
import os
import socket
import subprocess

import pytest

from labkit import sys as lsys
from labkit.runtime import Spec

pytestmark = pytest.mark.vm


@pytest.fixture
def reaper():
    """Make this test process a child subreaper, as conmon and containerd-shim are: a container
    whose `labkit-runc create` has exited comes back to it, and it reaps it by pid."""
    lsys.set_child_subreaper()
    yield
    lsys.prctl(36, 0)  # PR_SET_CHILD_SUBREAPER off again


@pytest.fixture
def runc_cli(tmp_path):
    root = str(tmp_path / "labkit-state")

    def call(*args, **kw):
        if "stdout" not in kw and "stderr" not in kw:
            kw["capture_output"] = True
        elif "stderr" not in kw:
            kw["stderr"] = subprocess.PIPE
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("timeout", 60)
        return subprocess.run(["labkit-runc", "--root", root, *args], **kw)
    call.root = root
    yield call
    listed = call("list", "-q")
    for cid in listed.stdout.split():
        call("delete", "--force", cid)


def create_started(runc_cli, bundle, cid):
    """create (stdio to /dev/null, as a caller that does not read it), start; the init's pid."""
    assert runc_cli("create", "--bundle", bundle, cid, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL).returncode == 0
    assert runc_cli("start", cid).returncode == 0
    return json.loads(runc_cli("state", cid).stdout)["pid"]


def test_create_exits_and_the_subreaper_gets_the_exit_status(make_bundle, runc_cli, reaper):
    bundle = make_bundle(["sh", "-c", "read x; exit 7"])
    r, w = os.pipe()
    created = subprocess.run(["labkit-runc", "--root", runc_cli.root, "create", "--bundle", bundle, "c7"],
                             stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    os.close(r)
    assert created.returncode == 0  # labkit-runc has exited: no runtime process stays behind
    pid = json.loads(runc_cli("state", "c7").stdout)["pid"]
    with open(f"/proc/{pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()  # its parent is now us
    assert runc_cli("start", "c7").returncode == 0
    os.write(w, b"go\n")
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    assert json.loads(runc_cli("state", "c7").stdout)["status"] == "stopped"
    assert runc_cli("delete", "c7").returncode == 0


def test_exec_ps_pause_update_events_kill_all(make_bundle, runc_cli, reaper, tmp_path):
    def edit(spec):
        spec.linux.resources = {"pids": {"limit": 64}}
    init = create_started(runc_cli, make_bundle(["sleep", "60"], edit=edit), "busy")
    out = runc_cli("exec", "-e", "GREETING=hi", "--cwd", "/tmp", "busy", "sh", "-c", "echo $GREETING $(pwd) $$; exit 3")
    assert (out.returncode, out.stdout.split()[:2]) == (3, ["hi", "/tmp"])
    missing = runc_cli("exec", "busy", "nosuch")
    assert missing.returncode == 1 and 'exec: "nosuch": executable file not found in $PATH' in missing.stderr
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["id", "-u"], "cwd": "/", "user": {"uid": 65534, "gid": 65534},
                                   "env": ["PATH=/bin:/usr/bin"]}))
    assert runc_cli("exec", "--process", str(process), "busy").stdout == "65534\n"
    pid_file = tmp_path / "exec.pid"
    detached = runc_cli("exec", "-d", "--pid-file", str(pid_file), "busy", "sleep", "60",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert detached.returncode == 0
    extra = int(pid_file.read_text())
    assert sorted(json.loads(runc_cli("ps", "--format", "json", "busy").stdout)) == sorted([init, extra])
    assert runc_cli("pause", "busy").returncode == 0
    assert json.loads(runc_cli("state", "busy").stdout)["status"] == "paused"
    assert "cannot exec in a paused container" in runc_cli("exec", "busy", "true").stderr
    assert runc_cli("resume", "busy").returncode == 0
    assert runc_cli("update", "--pids-limit", "10", "busy").returncode == 0
    stats = json.loads(runc_cli("events", "--stats", "busy").stdout)
    assert stats["type"] == "stats" and stats["data"]["pids"] == 2
    assert runc_cli("kill", "--all", "busy", "KILL").returncode == 0
    # Both came back to us, their subreaper. The exec'd one first: a PID 1 finishes dying only
    # once every process of its namespace has been reaped.
    for pid in (extra, init):
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -9
    assert runc_cli("delete", "busy").returncode == 0


def test_log_json_as_runc_writes_it(runc_cli, tmp_path):
    log = tmp_path / "log.json"
    r = runc_cli("--log", str(log), "--log-format", "json", "state", "nope")
    assert r.returncode == 1 and "does not exist" in r.stderr
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"] and entry["time"].endswith("Z")


@pytest.mark.parametrize("verb", ["spec", "create", "start", "run", "state", "kill", "delete", "list", "pause",
                                  "resume", "ps", "exec", "update", "events"])
def test_every_verb_has_help(runc_cli, verb):
    r = runc_cli(verb, "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: labkit-runc") and verb in r.stdout


def test_terminal_goes_through_the_console_socket(make_bundle, runc_cli, reaper, tmp_path):
    """process.terminal: the init's stdio is a new pty of the container's devpts; its master
    reaches the caller over --console-socket (SCM_RIGHTS), as conmon receives it from runc."""
    def edit(spec):
        spec.process.terminal = True
        spec.process.extra["consoleSize"] = {"height": 30, "width": 100}
    bundle = make_bundle(["sh", "-c", "tty; stty size; test -t 0 && echo interactive"], edit=edit)
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    try:
        assert runc_cli("create", "--console-socket", path, "--bundle", bundle, "tty1").returncode == 0
        conn, _ = server.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        conn.close()
        pid = json.loads(runc_cli("state", "tty1").stdout)["pid"]
        assert runc_cli("start", "tty1").returncode == 0
        output = b""
        while True:
            try:
                chunk = os.read(fds[0], 1024)
            except OSError:  # EIO: the slave side is closed
                break
            if not chunk:
                break
            output += chunk
        os.close(fds[0])
        os.waitpid(pid, 0)
    finally:
        server.close()
    assert output.decode().split() == ["/dev/pts/0", "30", "100", "interactive"]


def test_preserve_fds_and_nothing_else_leaks_in(make_bundle, runc_cli, tmp_path):
    r, w = os.pipe()
    os.set_inheritable(w, True)
    (tmp_path / "stray").write_text("")
    stray = os.open(tmp_path / "stray", os.O_RDONLY)  # inheritable, not preserved: must not reach the container
    os.set_inheritable(stray, True)
    try:
        if w != 3:
            os.dup2(w, 3)
        bundle = make_bundle(["sh", "-c", "echo through-fd-3 >&3; ls -l /proc/self/fd"])
        out = runc_cli("run", "--preserve-fds", "1", "--bundle", bundle, "fds", pass_fds=(3, stray))
    finally:
        os.close(w)
        os.close(stray)
    assert out.returncode == 0, out.stderr
    assert " 3 -> pipe:" in out.stdout and "stray" not in out.stdout, out.stdout
    assert os.read(r, 100) == b"through-fd-3\n"
    os.close(r)


def test_hooks_run_in_order_with_the_state(make_bundle, runc_cli, tmp_path):
    log = tmp_path / "hooks.log"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "$1 $(cat)" >> {log}\n')
    script.chmod(0o755)

    def edit(spec):
        spec.extra["hooks"] = {kind: [{"path": str(script), "args": ["hook.sh", kind]}]
                               for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")}
    assert runc_cli("run", "--bundle", make_bundle(["true"], edit=edit), "hooked").returncode == 0
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["prestart", "createRuntime", "createContainer", "poststart",
                                                   "poststop"]
    states = [json.loads(line.split(" ", 1)[1]) for line in lines]
    assert {s["id"] for s in states} == {"hooked"}
    assert [s["status"] for s in states] == ["creating"] * 3 + ["running", "stopped"]


def test_a_failing_create_hook_fails_create_and_leaves_nothing(make_bundle, runc_cli, tmp_path):
    def edit(spec):
        spec.linux.cgroupsPath = "labkit-hooktest/failing"
        spec.extra["hooks"] = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no >&2; exit 3"]}]}
    r = runc_cli("create", "--bundle", make_bundle(["true"], edit=edit), "failing",
                 stdout=subprocess.DEVNULL)
    assert r.returncode == 1 and "createRuntime" in r.stderr and "no" in r.stderr
    assert runc_cli("list", "-q").stdout.strip() == ""
    assert _cgroup_dirs("labkit-hooktest") == []


def _cgroup_dirs(prefix: str) -> list[str]:
    """Every cgroup directory named prefix* in any hierarchy (a few levels deep)."""
    found = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(dirpath, d) for d in dirnames if d.startswith(prefix)]
        if dirpath.count("/") > 8:
            dirnames[:] = []
    return found


@pytest.mark.parametrize("step, edit", [
    ("cgroup limit refused", lambda s: setattr(s.linux, "resources", {"cpu": {"cpus": "999999"}})),
    ("id maps", lambda s: _userns(s, host_id=4294967295)),
    ("a mount", lambda s: s.mounts.append(type(s.mounts[0])("/x", "nosuchfs", "none", []))),
    ("exec lookup", lambda s: setattr(s.process, "args", ["/no/such/program"])),
    ("init killed mid-create", lambda s: s.extra.__setitem__("hooks", {"createRuntime": [  # SIGKILL from outside
        {"path": "/bin/sh", "args": ["sh", "-c", 'kill -9 $(sed -n "s/.*\\"pid\\":\\([0-9]*\\).*/\\1/p")']}]})),
])
def test_a_failed_create_leaves_nothing_whatever_the_step(make_bundle, runc_cli, step, edit):
    def full(spec):
        spec.linux.cgroupsPath = "labkit-failtest/c"
        edit(spec)
    r = runc_cli("create", "--bundle", make_bundle(["true"], edit=full), "failed", stdout=subprocess.DEVNULL)
    assert r.returncode == 1, step
    if step == "init killed mid-create":  # the hook succeeded: the init died under us, said plainly
        assert "init exited" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(runc_cli.root, "failed"))
    assert _cgroup_dirs("labkit-failtest") == [], step


def _userns(spec, host_id):
    from labkit.runtime.spec import IDMapping, Namespace

    spec.linux.namespaces.append(Namespace("user"))
    spec.linux.uidMappings = [IDMapping(0, host_id, 1)]
    spec.linux.gidMappings = [IDMapping(0, host_id, 1)]


def test_a_spec_without_a_mount_namespace_chroots_and_leaves_the_callers_root_alone(busybox_rootfs, tmp_path):
    """Valid OCI: no "mount" in linux.namespaces shares the caller's mount namespace. runc then
    chroots; it must never make / private or pivot_root there (that would move the root of
    every process on the machine). Run inside a throwaway mount namespace, compared before/after."""
    bundle = tmp_path / "nomnt"
    bundle.mkdir()
    spec = Spec.from_dict({"ociVersion": "1.0.2", "root": {"path": busybox_rootfs},
                           "process": {"args": ["sh", "-c", "cat /etc/os-release | head -1; echo $$"], "cwd": "/",
                                       "env": ["PATH=/bin"]},
                           "linux": {"namespaces": [{"type": "pid"}, {"type": "uts"}]}})
    spec.save(str(bundle))
    probe = ("cat /proc/self/mountinfo > {d}/before; readlink /proc/self/root > {d}/root-before; "
             "labkit-runc --root {d}/state run --bundle {b} nomnt; echo rc=$?; "
             "cat /proc/self/mountinfo > {d}/after; readlink /proc/self/root > {d}/root-after"
             ).format(d=tmp_path, b=bundle)
    with open("/proc/self/mountinfo") as f:
        host_before = f.read()
    out = subprocess.run(["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", probe],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ['NAME="labkit busybox"', "1", "rc=0"], out
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()
    assert (tmp_path / "root-before").read_text() == (tmp_path / "root-after").read_text() == "/\n"
    with open("/proc/self/mountinfo") as f:
        assert f.read() == host_before


def test_mounts_without_a_mount_namespace_are_refused(busybox_rootfs, tmp_path, runc_cli):
    bundle = tmp_path / "nomnt2"
    bundle.mkdir()
    Spec.from_dict({"ociVersion": "1.0.2", "root": {"path": busybox_rootfs},
                    "process": {"args": ["true"], "cwd": "/"},
                    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
                    "linux": {"namespaces": [{"type": "pid"}]}}).save(str(bundle))
    r = runc_cli("run", "--bundle", str(bundle), "refused")
    assert r.returncode == 1 and "mount namespace" in r.stderr and "/proc" in r.stderr


def test_the_session_keyring_is_the_containers_own(make_bundle, runc_cli):
    bundle = make_bundle(["sh", "-c", "grep -c 'keyring.*_ses\\|keyring.*keyed: ' /proc/keys; grep -o 'keyed: .*' /proc/keys || true"])
    own = runc_cli("run", "--bundle", bundle, "keyed")
    assert own.returncode == 0 and "keyed:" in own.stdout  # a session keyring named after the id
    kept = runc_cli("run", "--no-new-keyring", "--bundle", bundle, "keyed")
    assert "keyed:" not in kept.stdout
