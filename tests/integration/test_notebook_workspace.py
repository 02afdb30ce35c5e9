"""Workspace.cleanup: a chapter reports its own leftovers, not another open chapter's."""
import os
import subprocess

import pytest

from labkit import runtime
from labkit.notebook import Workspace

pytestmark = pytest.mark.vm


@pytest.fixture
def restore_run_root():
    old = os.environ.get("LABKIT_RUN_ROOT")
    yield
    os.environ["LABKIT_RUN_ROOT"] = old


def test_cleanup_ignores_another_chapters_container(restore_run_root):
    first = Workspace("wsa")
    bundle = first.bundle("b", ["sleep", "30"])
    runtime.create("other", bundle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = Workspace("wsb")
    assert second.cleanup() == []
    os.environ["LABKIT_RUN_ROOT"] = first.run_root
    assert runtime.state("other").status == "created"  # untouched by the other chapter's cleanup
    assert first.cleanup() == []
    assert not os.path.exists(first.path)


def test_cleanup_reports_its_own_mount(restore_run_root):
    ws = Workspace("wsm")
    point = ws.sub("labkit-probe")
    os.makedirs(point)
    subprocess.run(["mount", "-t", "tmpfs", "probe", point], check=True)
    try:
        leaks = ws.cleanup()
        assert [(leak.kind, leak.name) for leak in leaks] == [("mount", point)]
    finally:
        subprocess.run(["umount", "-l", point], check=True)
        subprocess.run(["rm", "-rf", ws.path], check=True)


def test_clear_earlier_runs_removes_what_a_dead_run_left_and_spares_a_live_one(restore_run_root, monkeypatch):
    import sys

    from labkit.engine.containers import Engine
    from labkit.images import builtin
    from labkit.images.store import Store
    from labkit.runtime.store import proc_start_time

    monkeypatch.delenv("LABKIT_DATA_ROOT", raising=False)  # restored afterwards: Workspace sets it
    dead = Workspace("wsr", engine=True)
    builtin.ensure(Store(os.path.join(dead.data_root, "images")), "busybox", notify=None)
    labkit = os.path.join(os.path.dirname(sys.executable), "labkit")
    started = subprocess.run([labkit, "run", "-d", "--name", "left", "busybox", "sleep", "300"],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    pid = Engine(dead.data_root).get("left").state.pid
    with open(os.path.join(dead.path, ".owner"), "w") as f:
        f.write("999999999 0\n")  # the kernel that made it died without reaching its cleanup cell
    alive = Workspace("wsr", engine=True)  # another open run of the same chapter: its owner (we) lives
    new = Workspace("wsr", engine=True)
    assert new.clear_earlier_runs() == [dead.path]
    assert not os.path.exists(dead.path) and proc_start_time(pid) is None
    assert os.path.isdir(alive.path)
    assert alive.cleanup() == [] and new.cleanup() == []


def test_cleanup_ignores_the_labkit_cgroup_another_sessions_container_holds(restore_run_root):
    import sys

    ours = Workspace("wsg")  # opened first: the other session's cgroups appear while it is open
    other = Workspace("wsh")
    bundle = other.bundle("b", ["sleep", "30"])
    spec = runtime.Spec.load(bundle)
    spec.linux.resources = {"pids": {"limit": 8}}  # a cgroup under the shared labkit parent
    spec.save(bundle)
    made = subprocess.run([sys.executable, "-c", "from labkit import runtime; import subprocess; "
                           "runtime.create('held', __import__('sys').argv[1], stdout=subprocess.DEVNULL, "
                           "stderr=subprocess.DEVNULL)", bundle],
                          env={**os.environ, "LABKIT_RUN_ROOT": other.run_root}, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr  # made by another process, as another session would
    os.environ["LABKIT_RUN_ROOT"] = ours.run_root
    assert ours.cleanup() == []
    os.environ["LABKIT_RUN_ROOT"] = other.run_root
    assert other.cleanup() == []
