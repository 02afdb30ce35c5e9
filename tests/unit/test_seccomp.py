"""seccomp profiles: checks, actions, Docker/podman profile conversion, and libseccomp's output
(compiled, never loaded: no root needed)."""
from __future__ import annotations

import json
import os

import pytest

from labkit import capabilities, seccomp
from labkit.errors import SpecError
from labkit.runtime.spec import default_spec

PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
    "syscalls": [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["future_call"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "9.1"}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
    ],
}


def test_docker_profile_is_filtered_by_caps_arch_and_kernel():
    oci = seccomp.from_docker_profile(PROFILE, capabilities.DOCKER_DEFAULT, machine="x86_64", kernel="6.1.0-18-amd64")
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"] and oci["defaultErrnoRet"] == 38
    names = [r["names"][0] for r in oci["syscalls"]]
    assert names == ["read", "arch_prctl", "chroot", "personality"]  # with CAP_SYS_CHROOT: allowed
    assert oci["syscalls"][-1]["args"][0]["value"] == 8
    arm = seccomp.from_docker_profile(PROFILE, capabilities.RUNC_DEFAULT, machine="aarch64", kernel="9.2")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert [r["names"][0] for r in arm["syscalls"]] == ["read", "chroot", "future_call", "personality"]
    assert arm["syscalls"][1] == {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}


def test_actions_carry_their_errno():
    assert seccomp.action("SCMP_ACT_ERRNO") == 0x00050001  # EPERM unless told
    assert seccomp.action("SCMP_ACT_ERRNO", 38) == 0x00050026
    assert seccomp.action("SCMP_ACT_ALLOW", 38) == 0x7FFF0000
    assert seccomp.action("SCMP_ACT_KILL_PROCESS") == 0x80000000


def test_one_argument_compared_twice_becomes_two_rules_as_in_runc():
    rule = {"args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]}
    assert seccomp._conditions(rule) == [[(1, "SCMP_CMP_EQ", 0, 0)], [(1, "SCMP_CMP_EQ", 9, 0)]]
    rule["args"][1]["index"] = 2
    assert seccomp._conditions(rule) == [[(1, "SCMP_CMP_EQ", 0, 0), (2, "SCMP_CMP_EQ", 9, 0)]]


def test_bad_profiles_are_refused_by_the_spec_check():
    spec = default_spec(["true"])
    spec.linux.seccomp = {"defaultAction": "ALLOW", "listenerPath": "/run/x.sock",
                          "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                                        "args": [{"index": 7, "value": 1, "op": "EQ"}]}, {"action": "SCMP_ACT_LOG"}]}
    with pytest.raises(SpecError) as info:
        spec.validate()
    for part in ("defaultAction 'ALLOW'", "listenerPath", "index 0-5", "syscalls[1] needs names"):
        assert part in info.value.what


def test_libseccomp_compiles_names_and_leaves_out_unknown_ones():
    code = seccomp.pseudo_code({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
                                "syscalls": [{"names": ["mkdir", "no_such_call"], "action": "SCMP_ACT_ERRNO"}]})
    assert 'syscall "mkdir"' in code and "no_such_call" not in code and "ERRNO(1)" in code
    with pytest.raises(seccomp.SeccompError, match="SCMP_ARCH_VAX"):
        seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]})


# podman's default profile lists x86_64, x86 and x32, and has three overlapping `socket` rules.
PODMAN_PROFILE = "/usr/share/containers/seccomp.json"  # containers-common, which skopeo brings
PODMAN_DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",  # containers.conf
                       "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
                       "CAP_SYS_CHROOT")
X86_ALL = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
SOCKET_RULES = [  # podman's, without CAP_AUDIT_WRITE: NETLINK_AUDIT sockets fail with EINVAL
    {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
     "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}, {"index": 2, "value": 9, "op": "SCMP_CMP_EQ"}]},
    {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 2, "value": 9, "op": "SCMP_CMP_NE"}]},
    {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_NE"}]},
]


def test_calls_only_other_arches_have_reach_them_as_in_runc():
    """mmap2 and socketcall exist on x86, not x86_64: libseccomp gives them pseudo numbers, which
    runc passes on. x86's socket rules become socketcall(a0 == SYS_SOCKET, ...) rules too, which
    the unconditional socketcall rule before them covers; without it they would collide."""
    code = seccomp.pseudo_code({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": X86_ALL,
                                "syscalls": [{"names": ["socketcall", "mmap2", "read"], "action": "SCMP_ACT_ALLOW"},
                                             *SOCKET_RULES]})
    x86 = code.split("# filter for arch x86 ")[1].split("# filter for arch")[0]
    for line in ('syscall "mmap2" (192)', 'syscall "socketcall" (102)', 'syscall "socket" (359)', "ERRNO(22)"):
        assert line in x86, code
    assert "# filter for arch x32" in code and 'syscall "socket" (1073741865)' in code  # 41 | the x32 bit


def test_rules_that_collide_on_one_arch_are_refused_as_runc_refuses_them():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": X86_ALL, "syscalls": SOCKET_RULES}
    with pytest.raises(seccomp.SeccompError, match=r"syscalls\[2\] \(socket, SCMP_ACT_ALLOW\).*EEXIST"):
        seccomp.compile(profile)
    seccomp.release(seccomp.compile({**profile, "architectures": ["SCMP_ARCH_X86_64"]}))  # one arch: no collision


@pytest.mark.skipif(not os.path.exists(PODMAN_PROFILE), reason=f"no {PODMAN_PROFILE} (apt-get install skopeo)")
@pytest.mark.parametrize("caps", [PODMAN_DEFAULT_CAPS, capabilities.DOCKER_DEFAULT], ids=["podman-caps", "docker-caps"])
def test_podmans_default_profile_compiles_for_all_its_arches(caps):
    with open(PODMAN_PROFILE) as f:
        oci = seccomp.from_docker_profile(json.load(f), caps, machine="x86_64", kernel="6.1.0")
    assert oci["architectures"] == X86_ALL
    code = seccomp.pseudo_code(oci)  # compiled, never loaded
    assert "# filter for arch x32" in code and 'syscall "mmap2" (192)' in code and 'syscall "_llseek"' in code
    assert ("ERRNO(22)" in code) == ("CAP_AUDIT_WRITE" not in caps)
