"""The classic chroot escape works against chroot, and pivot_root (old root detached) stops it.

The same technique (`labkit.escape.attempt`: mkdir x; chroot x; chdir .. many
times; chroot .) runs in a root helper confined three ways.
"""
import os
import subprocess

import pytest

from labkit import escape, runtime

pytestmark = pytest.mark.vm


def test_chroot_escape_reaches_the_hosts_root(busybox_rootfs):
    result = escape.from_chroot(busybox_rootfs)
    assert result.before == sorted(os.listdir(busybox_rootfs))  # confined at first
    assert result.error is None
    assert result.escaped and result.sees_host_os_release
    assert result.after == sorted(os.listdir("/"))
    assert not any(e.startswith(".labkit-escape") for e in os.listdir(busybox_rootfs))


def test_pivot_root_with_detached_old_root_blocks_it(make_bundle, busybox_rootfs):
    bundle = make_bundle(["sleep", "60"])
    runtime.create("escape-probe", bundle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runtime.start("escape-probe")
        result = escape.from_container("escape-probe")
    finally:
        runtime.delete("escape-probe", force=True)
    assert result.error is None  # every step of the technique ran, as root
    assert not result.escaped and not result.sees_host_os_release
    assert result.before == result.after == sorted(os.listdir(busybox_rootfs))
    assert not any(e.startswith(".labkit-escape") for e in os.listdir(busybox_rootfs))


def test_pivot_root_keeping_the_old_root_is_escapable(busybox_rootfs):
    result = escape.from_pivot_root_keeping_old_root(busybox_rootfs)
    assert result.before == sorted(os.listdir(busybox_rootfs))
    assert result.escaped and result.sees_host_os_release
