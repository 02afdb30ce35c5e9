import errno

import pytest

from labkit import sys as lsys
from labkit.errors import LabkitError, SyscallError


def test_tables_cover_both_architectures():
    assert set(lsys.SYSCALLS) == {"x86_64", "aarch64"}
    assert set(lsys.SYSCALLS["x86_64"]) == set(lsys.SYSCALLS["aarch64"])


@pytest.mark.parametrize("arch, name, number", [
    ("x86_64", "pivot_root", 155), ("aarch64", "pivot_root", 41),
    ("x86_64", "unshare", 272), ("aarch64", "unshare", 97),
    ("x86_64", "setns", 308), ("aarch64", "setns", 268),
    ("x86_64", "mount", 165), ("aarch64", "mount", 40),
    ("x86_64", "seccomp", 317), ("aarch64", "seccomp", 277),
])
def test_known_numbers(arch, name, number):
    assert lsys.syscall_number(name, arch) == number


def test_arch_aliases_and_unknown_arch():
    assert lsys.machine_arch("amd64") == "x86_64"
    assert lsys.machine_arch("arm64") == "aarch64"
    with pytest.raises(LabkitError, match="x86_64 and aarch64"):
        lsys.machine_arch("riscv64")


def test_audit_arch_values():
    assert lsys.AUDIT_ARCH == {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def test_syscall_error_carries_errno_name_text_and_hint():
    err = SyscallError("mount", errno.EPERM, "proc on /x")
    assert err.errno == errno.EPERM and err.errno_name == "EPERM"
    assert "mount (proc on /x) failed: EPERM: Operation not permitted" in str(err)
    assert "root" in err.hint
    assert isinstance(err, OSError) and isinstance(err, LabkitError)


def test_pivot_root_einval_hint_explains_mount_point():
    err = SyscallError("pivot_root", errno.EINVAL)
    assert "mount point" in err.hint


def test_real_call_failure_raises_syscall_error(tmp_path):
    with pytest.raises(SyscallError) as info:
        lsys.umount2(str(tmp_path / "not-mounted"))
    assert info.value.errno_name in ("EINVAL", "ENOENT", "EPERM")
