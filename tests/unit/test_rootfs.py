import os

import pytest

from labkit import rootfs
from labkit import sys as lsys


def test_mount_options_split_flags_propagation_and_data():
    opts = rootfs.parse_mount_options(["nosuid", "noexec", "ro", "rprivate", "mode=755", "size=65536k"])
    assert opts.flags == lsys.MS_NOSUID | lsys.MS_NOEXEC | lsys.MS_RDONLY
    assert opts.propagation == lsys.MS_PRIVATE | lsys.MS_REC
    assert opts.data == "mode=755,size=65536k"
    assert rootfs.parse_mount_options(["ro", "rw"]).flags == 0
    assert rootfs.parse_mount_options(["rbind"]).flags == lsys.MS_BIND | lsys.MS_REC


def test_secure_join_cannot_escape(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/", root / "abs")
    os.symlink("../../../..", root / "etc" / "up")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    r = str(root)
    assert rootfs.secure_join(r, "../../etc/passwd") == f"{r}/etc/passwd"
    assert rootfs.secure_join(r, "/abs/etc/shadow") == f"{r}/etc/shadow"
    assert rootfs.secure_join(r, "etc/up/tmp") == f"{r}/tmp"
    with pytest.raises(Exception, match="symlink"):
        rootfs.secure_join(r, "loop1/x")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to 0 needs root")
def test_busybox_rootfs_is_reproducible(tmp_path):
    a = rootfs.build_busybox_rootfs(str(tmp_path / "a"))
    b = rootfs.build_busybox_rootfs(str(tmp_path / "b"))
    assert rootfs.tree_digest(a) == rootfs.tree_digest(b)
    assert os.readlink(os.path.join(a, "bin/sh")) == "/bin/busybox"
    assert os.stat(os.path.join(a, "etc/passwd")).st_mtime == rootfs.FIXED_MTIME
    with pytest.raises(Exception, match="already exists"):
        rootfs.build_busybox_rootfs(a)
