"""podman and containerd drive labkit-runc, next to the same scenarios with runc.

The engines call the runtime exactly as they call runc: conmon or
containerd-shim is the reaper of the container's init and reads its exit
status, so these scenarios prove labkit-runc's process model and CLI. Each
scenario runs with runc and with labkit-runc; what a user sees must match.
Everything runs on private state (podman --root/--runroot, a containerd of
the test's own on its own socket), no network (--network none), and is
removed afterwards.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid

import pytest

from labkit.images.base import busybox_image
from labkit.images.store import Store

pytestmark = pytest.mark.peer
LABKIT_RUNC = shutil.which("labkit-runc")
RUNTIMES = {"runc": "runc", "labkit": LABKIT_RUNC}
# This machine's root lacks CAP_SYS_RESOURCE: podman's default ulimits (nofile 1048576) would
# need it, with any runtime. cgroupfs: no systemd here.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def _unmount_below(path: str) -> None:
    """What the engine mounted below its private root (overlay layers, its shm), innermost first."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(path)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_cgroup_parent(name: str) -> None:
    """podman leaves its --cgroup-parent (and the conmon group inside) behind, empty: ours to rmdir."""
    tops = [os.path.join("/sys/fs/cgroup", name)] + [os.path.join(h.path, name) for h in os.scandir("/sys/fs/cgroup")
                                                      if h.is_dir()]
    for top in tops:
        for dirpath, _, _ in sorted(os.walk(top), key=lambda item: -item[0].count("/")):
            for _ in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # a process of it may still be exiting
                    time.sleep(0.05)


# --- podman -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def podman(tmp_path_factory, busybox_rootfs):
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: ./lab.sh setup installs it")
    base = str(tmp_path_factory.mktemp("labkit-podman"))
    common = ["podman", "--root", f"{base}/storage", "--runroot", f"{base}/run", "--cgroup-manager", "cgroupfs",
              "--events-backend", "file"]

    def call(runtime: str, *args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run([*common, "--runtime", RUNTIMES[runtime], *args], **kw)

    archive = os.path.join(base, "rootfs.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(busybox_rootfs, arcname=".")
    assert call("runc", "import", archive, "localhost/lkbusybox").returncode == 0
    yield call
    call("runc", "rm", "--all", "--force", "--time", "0")
    call("runc", "system", "reset", "--force")
    _unmount_below(base)
    _remove_cgroup_parent("labkit-podman")


def run_podman(podman, runtime, *args, **kw):
    # --cgroup-parent: under a labkit name, so the suite's leak check would see one left behind
    return podman(runtime, "run", "--network", "none", "--cgroup-parent", "/labkit-podman", *ULIMITS, *args, **kw)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_podman_run_rm_prints_and_passes_exit_codes(podman, runtime):
    hi = run_podman(podman, runtime, "--rm", "localhost/lkbusybox", "echo", "hi")
    assert (hi.returncode, hi.stdout) == (0, "hi\n"), hi.stderr
    assert run_podman(podman, runtime, "--rm", "localhost/lkbusybox", "sh", "-c", "exit 3").returncode == 3
    piped = run_podman(podman, runtime, "--rm", "-i", "localhost/lkbusybox", "cat", input="through stdin\n")
    assert piped.stdout == "through stdin\n"
    missing = run_podman(podman, runtime, "--rm", "localhost/lkbusybox", "nosuch")
    assert missing.returncode == 127, missing.stderr  # "executable file not found", as podman maps it


def podman_outcomes(podman, runtime):
    """The lifecycle scenario as a user sees it: exec, pause, stop, logs, inspect."""
    name = f"lk-{runtime}-{uuid.uuid4().hex[:6]}"
    script = 'echo started; trap "echo got-term; exit 0" TERM; while :; do sleep 0.1; done'
    seen = {}
    assert run_podman(podman, runtime, "-d", "--name", name, "localhost/lkbusybox", "sh", "-c", script).returncode == 0
    try:
        time.sleep(0.5)
        done = podman(runtime, "exec", name, "sh", "-c", "echo exec-ok; exit 4")
        seen["exec"] = (done.returncode, done.stdout)
        seen["exec missing"] = podman(runtime, "exec", name, "nosuch").returncode
        seen["exec -t"] = podman(runtime, "exec", "-t", name, "tty").stdout.strip()
        podman(runtime, "pause", name)
        seen["paused"] = podman(runtime, "inspect", name, "--format", "{{.State.Status}}").stdout.strip()
        podman(runtime, "unpause", name)
        seen["unpaused"] = podman(runtime, "inspect", name, "--format", "{{.State.Status}}").stdout.strip()
        podman(runtime, "stop", "--time", "10", name)
        seen["stopped"] = podman(runtime, "inspect", name, "--format", "{{.State.Status}} {{.State.ExitCode}}").stdout.strip()
        seen["logs"] = podman(runtime, "logs", name).stdout
    finally:
        podman(runtime, "rm", "--force", name)
    hard = f"lk-{runtime}-hard-{uuid.uuid4().hex[:6]}"
    run_podman(podman, runtime, "-d", "--name", hard, "localhost/lkbusybox", "sleep", "100")
    podman(runtime, "stop", "--time", "1", hard)  # PID 1 ignores TERM: KILL after the timeout
    seen["stop ignoring TERM"] = podman(runtime, "inspect", hard, "--format", "{{.State.ExitCode}}").stdout.strip()
    podman(runtime, "rm", "--force", hard)
    tty = run_podman(podman, runtime, "--rm", "-t", "localhost/lkbusybox", "tty")
    seen["run -t"] = (tty.returncode, tty.stdout.strip())
    return seen


def test_podman_lifecycle_is_the_same_with_labkit_runc_as_with_runc(podman):
    with_runc, with_labkit = podman_outcomes(podman, "runc"), podman_outcomes(podman, "labkit")
    assert with_labkit == with_runc
    assert with_labkit["exec"] == (4, "exec-ok\n") and with_labkit["exec missing"] == 127
    assert with_labkit["stopped"] == "exited 0" and with_labkit["logs"] == "started\ngot-term\n"
    assert with_labkit["stop ignoring TERM"] == "137" and with_labkit["paused"] == "paused"
    assert with_labkit["exec -t"] == with_labkit["run -t"][1] == "/dev/pts/0"


# --- containerd ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def containerd(tmp_path_factory, lab_tmp):
    if not shutil.which("containerd"):
        pytest.fail("containerd is not installed: ./lab.sh setup installs it")
    base = str(tmp_path_factory.mktemp("labkit-containerd"))
    sock = f"{base}/containerd.sock"
    config = f"{base}/config.toml"
    with open(config, "w") as f:
        f.write(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", '
                '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", '
                '"io.containerd.snapshotter.v1.aufs"]\n'
                f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
                '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
    log = open(f"{base}/containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", config], stdout=log, stderr=log)

    def ctr(*args: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["ctr", "--address", sock, *args], **kw)
    try:
        deadline = time.monotonic() + 30
        while ctr("version").returncode != 0:
            assert time.monotonic() < deadline and daemon.poll() is None, open(f"{base}/containerd.log").read()
            time.sleep(0.2)
        store = Store(os.path.join(base, "oci"))
        busybox_image(store, tag="busybox")
        archive = os.path.join(base, "busybox-oci.tar")
        with tarfile.open(archive, "w") as tar:
            tar.add(store.root, arcname=".")
        imported = ctr("image", "import", "--base-name", "docker.io/library/busybox", archive)
        assert imported.returncode == 0, imported.stderr
        yield ctr
    finally:
        for task in ctr("task", "ls", "-q").stdout.split():
            ctr("task", "kill", "-s", "KILL", task)
            ctr("task", "delete", "--force", task)
        for container in ctr("container", "ls", "-q").stdout.split():
            ctr("container", "delete", container)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        _unmount_below(base)


IMAGE = "docker.io/library/busybox:busybox"


def containerd_outcomes(ctr, runtime):
    binary = RUNTIMES[runtime]
    seen = {}
    hi = ctr("run", "--runc-binary", binary, "--rm", IMAGE, f"{runtime}-hi", "echo", "hi")
    seen["run"] = (hi.returncode, hi.stdout)
    seen["run exit 5"] = ctr("run", "--runc-binary", binary, "--rm", IMAGE, f"{runtime}-five", "sh", "-c",
                             "exit 5").returncode
    name = f"{runtime}-bg"
    assert ctr("run", "--runc-binary", binary, "-d", IMAGE, name, "sleep", "100").returncode == 0
    done = ctr("task", "exec", "--exec-id", "e1", name, "sh", "-c", "echo exec-hi; exit 2")
    seen["exec"] = (done.returncode, done.stdout)
    seen["ps"] = len(ctr("task", "ps", name).stdout.splitlines())  # a header and PID 1
    ctr("task", "pause", name)
    seen["paused"] = ctr("task", "ls").stdout.split(name, 1)[1].split()[1]
    ctr("task", "resume", name)
    ctr("task", "kill", "-s", "KILL", name)
    deadline = time.monotonic() + 20
    while "STOPPED" not in ctr("task", "ls").stdout.split(name, 1)[1].split("\n")[0]:
        assert time.monotonic() < deadline, ctr("task", "ls").stdout
        time.sleep(0.1)
    seen["delete"] = ctr("task", "delete", name).returncode
    seen["container delete"] = ctr("container", "delete", name).returncode
    return seen


def test_containerd_drives_labkit_runc_as_it_drives_runc(containerd):
    with_runc, with_labkit = containerd_outcomes(containerd, "runc"), containerd_outcomes(containerd, "labkit")
    assert with_labkit == with_runc
    assert with_labkit["run"] == (0, "hi\n") and with_labkit["run exit 5"] == 5
    assert with_labkit["exec"] == (2, "exec-hi\n") and with_labkit["paused"] == "PAUSED"
    assert with_labkit["delete"] == with_labkit["container delete"] == 0
