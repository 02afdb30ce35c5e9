"""seccomp: which system calls a container may make (OCI linux.seccomp).

A seccomp filter is a small BPF program the kernel runs on every system call
of the process (and of everything it execs, for good): it looks at the call's
architecture, number and arguments and returns an action — allow, fail with an
errno, kill, trap, log. A profile (Docker's default, podman's
/usr/share/containers/seccomp.json) is a list of rules on syscall *names*;
libseccomp, which runc and crun use too, turns it into BPF for this machine's
architectures (labkit.sys holds the bindings).

`compile` checks and builds a filter from an OCI linux.seccomp object;
`load` installs it; `pseudo_code` shows the program libseccomp generated.
`from_docker_profile` turns a Docker/podman profile (with its includes and
excludes by capability, architecture and kernel) into OCI linux.seccomp, as
dockerd and podman do for each container.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from typing import Any

from . import sys as lsys
from .errors import LabkitError, SyscallError

ERRNO_DEFAULT = 1  # EPERM: what SCMP_ACT_ERRNO returns when no errnoRet is given (OCI, runc)
ACTIONS = {  # libseccomp's values; ERRNO and TRACE carry a 16-bit number in the low bits
    "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000, "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000,
}
FLAGS = ("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW")
# Docker/podman profiles name architectures as Go does; libseccomp as the kernel does.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm", "s390x": "s390x",
           "ppc64le": "ppc64le", "riscv64": "riscv64"}


class SeccompError(LabkitError):
    pass


def _arch_name(oci: str) -> str:
    """"SCMP_ARCH_X86_64" -> "x86_64", as libseccomp names it."""
    return oci.removeprefix("SCMP_ARCH_").lower()


def problems(profile: Any) -> list[str]:
    """What is wrong with an OCI linux.seccomp object (empty if nothing); no libseccomp needed."""
    if profile is None:
        return []
    if not isinstance(profile, Mapping):
        return ["linux.seccomp must be an object with defaultAction and syscalls"]
    found = []
    if profile.get("defaultAction") not in ACTIONS:
        found.append(f"linux.seccomp.defaultAction {profile.get('defaultAction')!r} is not one of "
                     f"{', '.join(ACTIONS)}")
    if profile.get("listenerPath"):
        found.append("linux.seccomp.listenerPath (SCMP_ACT_NOTIFY) is not supported by labkit")
    for flag in profile.get("flags") or []:
        if flag not in FLAGS:
            found.append(f"linux.seccomp.flags: unknown flag {flag!r}")
    for i, rule in enumerate(profile.get("syscalls") or []):
        where = f"linux.seccomp.syscalls[{i}]"
        if not isinstance(rule, Mapping) or not rule.get("names"):
            found.append(f"{where} needs names (a list of syscall names)")
            continue
        if rule.get("action") not in ACTIONS:
            found.append(f"{where}.action {rule.get('action')!r} is not one of {', '.join(ACTIONS)}")
        for arg in rule.get("args") or []:
            if not isinstance(arg, Mapping) or arg.get("op") not in lsys.SCMP_CMP or \
                    not isinstance(arg.get("index"), int) or not 0 <= arg["index"] <= 5:
                found.append(f"{where}.args: {arg!r} needs index 0-5, value and an op like SCMP_CMP_EQ")
    return found


def action(name: str, errno_ret: int | None = None) -> int:
    """The action's value; ERRNO and TRACE carry errno_ret (ERRNO's default: EPERM)."""
    value = ACTIONS[name]
    if name == "SCMP_ACT_ERRNO":
        value |= (ERRNO_DEFAULT if errno_ret is None else errno_ret) & 0xFFFF
    elif name == "SCMP_ACT_TRACE":
        value |= (errno_ret or 0) & 0xFFFF
    return value


def _conditions(rule: Mapping[str, Any]) -> list[list[tuple[int, str, int, int]]]:
    """The rules to add for one entry: one with every condition (they must all hold), or, when
    an argument is compared twice, one rule per condition — as runc does (libseccomp cannot AND
    two comparisons of the same argument)."""
    args = [(a["index"], a["op"], a.get("value", 0), a.get("valueTwo", 0)) for a in rule.get("args") or []]
    indexes = [a[0] for a in args]
    if len(set(indexes)) == len(indexes):
        return [args]
    return [[a] for a in args]


def compile(profile: Mapping[str, Any]) -> int:
    """A filter handle for an OCI linux.seccomp object (free it with release). As runc does:
    names libseccomp does not know are left out, and names only some of the filter's
    architectures have (mmap2, socketcall: x86) are added for those; rules are added in order,
    each to every architecture, so a rule that conflicts with an earlier one on any of them
    fails (EEXIST), while one an earlier unconditional rule covers is dropped by libseccomp."""
    found = problems(profile)
    if found:
        raise SeccompError("invalid seccomp profile: " + "; ".join(found),
                           "fix linux.seccomp (see the OCI runtime spec, config-linux.md#seccomp)")
    default = action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    ctx = lsys.seccomp_new(default)
    try:
        for arch in profile.get("architectures") or []:
            token = lsys.seccomp_arch(_arch_name(arch))
            if token is None:
                raise SeccompError(f"linux.seccomp.architectures: libseccomp does not know {arch}",
                                   "use names like SCMP_ARCH_X86_64, SCMP_ARCH_AARCH64")
            lsys.seccomp_add_arch(ctx, token)
        for index, rule in enumerate(profile.get("syscalls") or []):
            value = action(rule["action"], rule.get("errnoRet"))
            if value == default:
                continue  # libseccomp refuses a rule that repeats the default; runc skips it too
            for name in rule["names"]:
                _add_rule(ctx, index, rule, name, value)
    except BaseException:
        lsys.seccomp_release(ctx)
        raise
    return ctx


def _add_rule(ctx: int, index: int, rule: Mapping[str, Any], name: str, value: int) -> None:
    number = lsys.seccomp_syscall_number(name)
    if number is None:
        return  # unknown to libseccomp: runc only logs it at debug level
    for conditions in _conditions(rule):
        try:
            lsys.seccomp_add_rule(ctx, value, number, conditions)
        except SyscallError as err:
            if err.errno != errno.EEXIST:
                raise
            raise SeccompError(
                f"linux.seccomp.syscalls[{index}] ({name}, {rule['action']}) conflicts with an earlier "
                f"rule for {name} on one of the architectures: libseccomp says EEXIST", "rules for one "
                "call that can match the same arguments need the same action; runc refuses this too") from None


def load(ctx: int) -> None:
    lsys.seccomp_load(ctx)


def release(ctx: int) -> None:
    lsys.seccomp_release(ctx)


def pseudo_code(profile: Mapping[str, Any]) -> str:
    """The filter libseccomp builds for `profile`, as readable pseudo-code (not loaded)."""
    import tempfile  # only here: the container init imports this module too

    ctx = compile(profile)
    try:
        with tempfile.TemporaryFile("w+") as f:
            lsys.seccomp_export(ctx, f.fileno())
            f.seek(0)
            return f.read()
    finally:
        release(ctx)


def from_docker_profile(profile: Mapping[str, Any], capabilities: Iterable[str],
                        machine: str | None = None, kernel: str | None = None) -> dict[str, Any]:
    """OCI linux.seccomp from a Docker/podman profile for a container whose bounding set is
    `capabilities`: the entries whose includes/excludes (caps, arches, minKernel) match."""
    machine = machine or os.uname().machine
    goarch = _GOARCH.get(machine, machine)
    caps = set(capabilities)
    release_ = _kernel_version(kernel or os.uname().release)
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    native = f"SCMP_ARCH_{lsys.machine_arch(machine).upper()}"
    for entry in profile.get("archMap") or []:
        if entry["architecture"] == native:
            out["architectures"] = [entry["architecture"], *entry.get("subArchitectures", [])]
    out["syscalls"] = []
    for rule in profile.get("syscalls") or []:
        inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
        if goarch in (exc.get("arches") or []) or (inc.get("arches") and goarch not in inc["arches"]):
            continue
        if caps & set(exc.get("caps") or []) or not set(inc.get("caps") or []) <= caps:
            continue
        if inc.get("minKernel") and release_ < _kernel_version(inc["minKernel"]):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        oci = {"names": names, "action": rule["action"]}
        if rule.get("errnoRet") is not None:
            oci["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            oci["args"] = rule["args"]
        out["syscalls"].append(oci)
    return out


def _kernel_version(text: str) -> tuple[int, int]:
    major, minor = (text.split("-")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
