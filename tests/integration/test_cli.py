"""The command lines as a user types them."""
import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.vm


def run(*args, **kw):
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run(list(args), text=True, timeout=60, **kw)


def test_labkit_run_rootfs_with_hostname(busybox_rootfs):
    r = run("labkit", "run", busybox_rootfs, "--hostname", "box", "--", "sh", "-c", "hostname; echo $$; exit 3")
    assert (r.returncode, r.stdout.split()) == (3, ["box", "1"])


def test_labkit_run_bundle(make_bundle):
    r = run("labkit", "run", make_bundle(["sh", "-c", "echo from-bundle"]))
    assert (r.returncode, r.stdout) == (0, "from-bundle\n")


def test_labkit_run_missing_program_exits_127_like_docker(busybox_rootfs):
    r = run("labkit", "run", busybox_rootfs, "--", "/no/such/program")
    assert r.returncode == 127 and "no/such/program" in r.stderr


def test_labkit_run_bad_target_says_what_to_do(tmp_path):
    r = run("labkit", "run", str(tmp_path / "nope"))
    assert r.returncode == 1 and "neither a bundle nor a root filesystem" in r.stderr and "hint:" in r.stderr


def test_doctor_reports_every_feature():
    r = run("labkit", "doctor")
    for name in ("root", "namespace user", "namespace cgroup", "overlayfs", "cgroups", "seccomp"):
        assert name in r.stdout
    assert r.returncode == 0, r.stdout


def test_doctor_leaks_finds_and_reset_removes_a_labkit_mount(lab_tmp):
    point = os.path.join(lab_tmp, "labkit-leak-probe")
    os.makedirs(point)
    subprocess.run(["mount", "-t", "tmpfs", "labkit-probe", point], check=True)
    try:
        r = run("labkit", "doctor", "--leaks")
        assert r.returncode == 1 and f"mount: {point}" in r.stdout
        r = run("labkit", "reset")
        assert f"unmounted {point}" in r.stdout
        assert run("labkit", "doctor", "--leaks").returncode == 0
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
