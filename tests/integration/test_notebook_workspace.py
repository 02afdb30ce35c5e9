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
