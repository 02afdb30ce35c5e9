"""The command lines as a user types them."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from labkit import capabilities

pytestmark = pytest.mark.vm


def run(*args, **kw):
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run(list(args), text=True, timeout=60, **kw)


def test_labkit_run_rootfs_with_hostname(busybox_rootfs):
    r = run("labkit", "run", "--hostname", "box", busybox_rootfs, "sh", "-c", "hostname; echo $$; exit 3")
    assert (r.returncode, r.stdout.split()) == (3, ["box", "1"])


def test_labkit_run_bundle(make_bundle):
    r = run("labkit", "run", make_bundle(["sh", "-c", "echo from-bundle"]))
    assert (r.returncode, r.stdout) == (0, "from-bundle\n")


def test_labkit_run_missing_program_exits_127_like_docker(busybox_rootfs):
    r = run("labkit", "run", busybox_rootfs, "/no/such/program")
    assert r.returncode == 127 and "no/such/program" in r.stderr


def test_labkit_run_bad_target_says_what_to_do(tmp_path):
    r = run("labkit", "run", str(tmp_path / "nope"))
    assert r.returncode == 125 and "nope" in r.stderr and "hint:" in r.stderr  # docker run: 125, the engine refused


def test_labkit_run_cap_add_and_drop_like_docker(busybox_rootfs):
    script = "grep CapEff /proc/self/status; hostname changed && echo renamed"
    plain = run("labkit", "run", busybox_rootfs, "sh", "-c", script)
    assert plain.stdout.startswith("CapEff:\t0000000020000420\n") and "renamed" not in plain.stdout  # runc's three
    added = run("labkit", "run", "--cap-add", "sys_admin", "--cap-drop", "KILL", busybox_rootfs, "sh", "-c", script)
    assert added.stdout == "CapEff:\t0000000020200400\nrenamed\n", added
    every = run("labkit", "run", "--privileged", busybox_rootfs, "sh", "-c", script)
    assert every.stdout.split("\n")[0] == f"CapEff:\t{capabilities.of_process()['bounding']:016x}"  # all root holds here
    bad = run("labkit", "run", "--cap-add", "FLY", busybox_rootfs, "true")
    assert bad.returncode == 1 and "unknown capability 'FLY'" in bad.stderr and "hint:" in bad.stderr


def test_doctor_reports_every_feature():
    r = run("labkit", "doctor")
    for name in ("root", "namespace user", "namespace cgroup", "overlayfs", "cgroups", "seccomp"):
        assert name in r.stdout
    assert r.returncode == 0, r.stdout


def test_doctor_leaks_finds_and_reset_removes_a_labkit_mount(lab_tmp):
    """`labkit reset` removes everything of labkit's on the machine, so the test removes
    only its own probe, through the same code path (doctor.reset(only=...))."""
    from labkit import doctor

    point = os.path.join(lab_tmp, "labkit-leak-probe")
    os.makedirs(point)
    subprocess.run(["mount", "-t", "tmpfs", "labkit-probe", point], check=True)
    try:
        r = run("labkit", "doctor", "--leaks")
        assert r.returncode == 1 and f"mount: {point}" in r.stdout
        probe = [leak for leak in doctor.leaks() if leak.name == point]
        assert doctor.reset(only=probe) == [f"removed mount: {point}"]
        assert point not in run("labkit", "doctor", "--leaks").stdout
    finally:
        subprocess.run(["umount", "-l", point], capture_output=True)


def test_runc_cli_lifecycle(make_bundle, run_root):
    bundle = make_bundle(["sleep", "30"])
    assert run("labkit-runc", "create", "--bundle", bundle, "c1", stdin=subprocess.DEVNULL,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    state = json.loads(run("labkit-runc", "state", "c1").stdout)
    assert state["status"] == "created" and state["id"] == "c1"
    assert run("labkit-runc", "start", "c1").returncode == 0
    assert json.loads(run("labkit-runc", "state", "c1").stdout)["status"] == "running"
    assert "c1" in run("labkit-runc", "list", "-q").stdout
    assert run("labkit-runc", "kill", "c1", "KILL").returncode == 0
    r = run("labkit-runc", "delete", "c1")
    assert r.returncode == 0, r.stderr
    r = run("labkit-runc", "state", "c1")
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_runc_cli_run_propagates_exit_code(make_bundle):
    r = run("labkit-runc", "run", "--bundle", make_bundle(["sh", "-c", "exit 9"]), "c2")
    assert r.returncode == 9


def test_reset_removes_a_leaked_container_and_its_shim(make_bundle, run_root):
    """A container nobody deleted is a leak: doctor finds it, reset kills it and its state goes."""
    import time

    from labkit import doctor, runtime

    runtime.create("forgotten", make_bundle(["sleep", "60"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = runtime.state("forgotten")
    mine = [leak for leak in doctor.leaks() if leak.name.endswith("/forgotten")
            or leak.pid == state.monitor_pid]
    assert {leak.kind for leak in mine} == {"container", "process"}
    done = doctor.reset(only=mine)
    assert any("killed container forgotten" in line for line in done)
    deadline = time.time() + 5
    while time.time() < deadline and os.path.exists(f"/proc/{state.monitor_pid}"):
        time.sleep(0.01)
        try:
            os.waitpid(state.monitor_pid, os.WNOHANG)  # the monitor is our child here: reap it
        except ChildProcessError:
            pass
    assert not any(leak.name.endswith("/forgotten") for leak in doctor.leaks())
    assert not os.path.exists(os.path.join(run_root, "runtime", "forgotten"))


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="needs docker-registry (apt-get install docker-registry)")
def test_images_build_push_pull_and_run_like_docker(tmp_path, monkeypatch):
    from labkit.engine.containers import Engine

    try:
        _build_push_pull_and_run(tmp_path, monkeypatch)
    finally:
        Engine(str(tmp_path / "labkit-data-b")).clear()  # the default bridge its runs made


def _build_push_pull_and_run(tmp_path, monkeypatch):
    """build -> push to a loopback registry -> pull into another store -> images -> run, all by CLI."""
    from labkit.images.base import busybox_image
    from labkit.images.store import Store
    from labkit.registry import LocalRegistry

    first, second = tmp_path / "labkit-data-a", tmp_path / "labkit-data-b"
    busybox_image(Store(str(first / "images")), tag="busybox")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Containerfile").write_text('FROM busybox\nRUN echo built > /greeting\nCMD ["cat", "/greeting"]\n')
    with LocalRegistry() as registry:
        ref = registry.reference("demo/greeting:1")
        monkeypatch.setenv("LABKIT_DATA_ROOT", str(first))
        assert run("labkit", "build", str(context), "-t", "greeting").returncode == 0
        pushed = run("labkit", "push", "greeting", ref)
        assert pushed.returncode == 0, pushed.stderr
        monkeypatch.setenv("LABKIT_DATA_ROOT", str(second))
        pulled = run("labkit", "pull", ref)
        assert pulled.returncode == 0, pulled.stderr
    listed = run("labkit", "images")
    assert listed.stdout.split("\n")[1].split()[0] == ref
    ran = run("labkit", "run", "--rm", ref)
    assert (ran.returncode, ran.stdout) == (0, "built\n"), ran
    as_root = run("labkit", "run", "--rm", ref, "grep", "CapEff", "/proc/self/status")
    assert as_root.stdout == "CapEff:\t00000000a80425fb\n"  # Docker's 14 capabilities
    missing = run("labkit", "run", "127.0.0.1:1/not/pulled:1")
    assert missing.returncode == 125 and "Unable to find image" in missing.stderr and "pulling" in missing.stderr
    assert run("labkit", "ps", "-aq").stdout == ""  # --rm removed both
    assert not [p for p in os.listdir(tempfile.gettempdir()) if p.startswith("labkit-bundle-")]  # all removed
