"""The syscall layer: the only module that calls libc or raw syscalls.

Everything above it (namespaces, rootfs, runtime, ...) calls these small typed
wrappers, so a learner can read exactly which kernel interface each step uses,
and tests can check the per-architecture tables without root.
"""
from __future__ import annotations

import ctypes
import os

from .errors import SyscallError

# --- per-architecture tables -------------------------------------------------
# Syscall numbers differ per architecture (x86_64 has its own table; aarch64
# uses the kernel's generic one), so they are looked up, never hard-coded.
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "getpid": 39, "clone": 56, "kill": 62, "setresuid": 117, "setresgid": 119,
        "capget": 125, "capset": 126, "pivot_root": 155, "prctl": 157,
        "chroot": 161, "mount": 165, "umount2": 166, "sethostname": 170,
        "unshare": 272, "setns": 308, "seccomp": 317, "pidfd_open": 434,
        "clone3": 435, "close_range": 436, "keyctl": 250, "bpf": 321,
    },
    "aarch64": {
        "getpid": 172, "clone": 220, "kill": 129, "setresuid": 147, "setresgid": 149,
        "capget": 90, "capset": 91, "pivot_root": 41, "prctl": 167,
        "chroot": 51, "mount": 40, "umount2": 39, "sethostname": 161,
        "unshare": 97, "setns": 268, "seccomp": 277, "pidfd_open": 434,
        "clone3": 435, "close_range": 436, "keyctl": 219, "bpf": 280,
    },
}
# seccomp filters must check the audit arch before trusting a syscall number.
AUDIT_ARCH: dict[str, int] = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def machine_arch(machine: str | None = None) -> str:
    """Normalise `uname -m` (or the given name) to a key of SYSCALLS."""
    name = machine or os.uname().machine
    name = _ARCH_ALIASES.get(name, name)
    if name not in SYSCALLS:
        raise SyscallError("uname", 38, f"architecture {name!r}",
                           hint="labkit supports x86_64 and aarch64 hosts")
    return name


def syscall_number(name: str, machine: str | None = None) -> int:
    """The number of syscall `name` on this (or the given) architecture."""
    return SYSCALLS[machine_arch(machine)][name]


# --- flags ---------------------------------------------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_STRICTATIME = 0x1000000
MS_RELATIME = 0x200000

MNT_FORCE = 0x1
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # 64-bit sets, passed as two 32-bit halves

# --- libc ----------------------------------------------------------------------
def _load_libc() -> ctypes.CDLL:
    # glibc's soname on x86_64 and aarch64. find_library runs `ldconfig -p` (a fork and
    # exec on every import, in every container init), so it is only the fallback.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        from ctypes.util import find_library
        return ctypes.CDLL(find_library("c"), use_errno=True)


_libc = _load_libc()
_libc.syscall.restype = ctypes.c_long


def _check(result: int, call: str, detail: str = "") -> int:
    if result < 0:
        raise SyscallError(call, ctypes.get_errno(), detail)
    return result


def _b(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def raw_syscall(name: str, *args: int | bytes | None) -> int:
    """Call a syscall by name through the per-arch table (for calls glibc lacks)."""
    return _check(_libc.syscall(ctypes.c_long(syscall_number(name)), *args), name)


def unshare(flags: int) -> None:
    """unshare(2): move this process into new namespaces of the given types."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", f"flags={flags:#x}")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace that `fd` (an open /proc/PID/ns/* file) names."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns", f"fd={fd}")


def mount(source: str | None, target: str, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    """mount(2)."""
    result = _libc.mount(_b(source), _b(target), _b(fstype),
                         ctypes.c_ulong(flags), _b(data))
    what = f"{fstype} {source}" if fstype else f"{source}"
    _check(result, "mount", f"{what} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2); MNT_DETACH makes it lazy (gone now, freed when unused)."""
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): glibc has no wrapper, so this goes through the table."""
    result = _libc.syscall(ctypes.c_long(syscall_number("pivot_root")),
                           _b(new_root), _b(put_old))
    _check(result, "pivot_root", f"{new_root}, {put_old}")


def sethostname(name: str) -> None:
    """sethostname(2): affects the caller's UTS namespace only."""
    data = name.encode()
    _check(_libc.sethostname(data, ctypes.c_size_t(len(data))), "sethostname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    args = [ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)]
    return _check(_libc.prctl(ctypes.c_int(option), *args), "prctl", f"option={option}")


def set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies."""
    prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper() -> None:
    """Orphaned descendants get reparented to this process, not to PID 1."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


CLOSE_RANGE_CLOEXEC = 4


def close_range_cloexec(first: int) -> None:
    """close_range(first, ~0, CLOSE_RANGE_CLOEXEC): every fd from `first` on is closed at exec
    (Linux >= 5.11; one call, however high the fd limit)."""
    result = _libc.syscall(ctypes.c_long(syscall_number("close_range")), ctypes.c_uint(first),
                           ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC))
    _check(result, "close_range", f"from fd {first}")


KEYCTL_JOIN_SESSION_KEYRING = 1


def join_session_keyring(name: str | None) -> None:
    """keyctl(KEYCTL_JOIN_SESSION_KEYRING): a new session keyring (anonymous if name is None),
    so a container cannot read the keys of the session it was started from. ENOSYS (no keyring
    support, or a seccomp filter that hides it) is ignored, as runc ignores it."""
    result = _libc.syscall(ctypes.c_long(syscall_number("keyctl")), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING),
                           _b(name))
    if result < 0 and ctypes.get_errno() != 38:  # ENOSYS
        raise SyscallError("keyctl", ctypes.get_errno(), "KEYCTL_JOIN_SESSION_KEYRING")


# --- bpf(2): the cgroup v2 device filter --------------------------------------------
# cgroup v2 has no devices.allow file: a BPF_PROG_TYPE_CGROUP_DEVICE program attached to
# the group's directory decides each open/mknod. glibc has no bpf() wrapper.
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # the attach type
BPF_F_ALLOW_MULTI = 2  # as runc: programs of parent groups keep running too
_BPF_LOG_SIZE = 1 << 16


class _BpfProgLoad(ctypes.Structure):  # union bpf_attr, the BPF_PROG_LOAD member (up to expected_attach_type)
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32), ("log_buf", ctypes.c_uint64),
                ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


class _BpfProgAttach(ctypes.Structure):  # BPF_PROG_ATTACH / BPF_PROG_DETACH
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


class _BpfProgQuery(ctypes.Structure):  # BPF_PROG_QUERY (the fields every kernel >= 4.15 knows)
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32)]


class _BpfGetFdById(ctypes.Structure):
    _fields_ = [("prog_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr): -1 with errno set on failure (callers check)."""
    return _libc.syscall(ctypes.c_long(syscall_number("bpf")), ctypes.c_int(cmd),
                         ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))


def bpf_prog_load(prog_type: int, code: bytes, license: str, name: str = "") -> int:
    """BPF_PROG_LOAD: the verifier checks `code` (8-byte instructions); returns the program's fd.

    On failure it loads again with the verifier's log on, so the error says why."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _BpfProgLoad(prog_type=prog_type, insn_cnt=len(code) // 8, insns=ctypes.addressof(insns),
                        license=ctypes.addressof(lic), prog_name=name.encode()[:15])
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    log = ctypes.create_string_buffer(_BPF_LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = 1, _BPF_LOG_SIZE, ctypes.addressof(log)
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd >= 0:  # it loaded the second time (e.g. a transient EAGAIN): keep it
        return fd
    verifier = log.value.decode(errors="replace").strip().splitlines()[-3:]
    detail = f"type {prog_type}, {len(code) // 8} instructions" + (f"; verifier: {' / '.join(verifier)}" if verifier else "")
    raise SyscallError("bpf(BPF_PROG_LOAD)", err, detail,
                       hint="needs root (CAP_SYS_ADMIN or CAP_BPF) and a kernel with CONFIG_CGROUP_BPF; "
                            "EPERM on kernels before 5.11 can be the memlock rlimit (ulimit -l)")


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """BPF_PROG_ATTACH: run program `prog_fd` for events of `attach_type` in the cgroup `target_fd`."""
    attr = _BpfProgAttach(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type, attach_flags=flags)
    _check(_bpf(BPF_PROG_ATTACH, attr), "bpf(BPF_PROG_ATTACH)", f"attach type {attach_type}, flags {flags:#x}")


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH: remove one attached program (named by an fd of it) from the cgroup."""
    attr = _BpfProgAttach(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type)
    _check(_bpf(BPF_PROG_DETACH, attr), "bpf(BPF_PROG_DETACH)", f"attach type {attach_type}")


def bpf_prog_query(target_fd: int, attach_type: int) -> list[int]:
    """BPF_PROG_QUERY: the ids of the programs attached to the cgroup `target_fd` itself."""
    size = 64  # the kernel's limit of programs per cgroup and attach type
    while True:
        ids = (ctypes.c_uint32 * size)()
        attr = _BpfProgQuery(target_fd=target_fd, attach_type=attach_type,
                             prog_ids=ctypes.addressof(ids), prog_cnt=size)
        if _bpf(BPF_PROG_QUERY, attr) >= 0:
            return list(ids[:attr.prog_cnt])
        if ctypes.get_errno() != 28 or attr.prog_cnt <= size:  # ENOSPC: prog_cnt says how many there are
            _check(-1, "bpf(BPF_PROG_QUERY)", f"attach type {attach_type}")
        size = attr.prog_cnt


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    """BPF_PROG_GET_FD_BY_ID: an fd for a loaded program; ENOENT once the kernel freed it."""
    return _check(_bpf(BPF_PROG_GET_FD_BY_ID, _BpfGetFdById(prog_id=prog_id)), "bpf(BPF_PROG_GET_FD_BY_ID)",
                  f"id {prog_id}")


# --- capabilities ----------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for this thread: the three sets as 64-bit masks (bit N = capability N)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(*[_CapData((effective >> s) & 0xFFFFFFFF, (permitted >> s) & 0xFFFFFFFF,
                                     (inheritable >> s) & 0xFFFFFFFF) for s in (0, 32)])
    result = _libc.syscall(ctypes.c_long(syscall_number("capset")), ctypes.byref(header), data)
    _check(result, "capset", f"effective={effective:#x} permitted={permitted:#x} inheritable={inheritable:#x}")


def capbset_drop(cap: int) -> None:
    """Remove capability `cap` from this thread's bounding set, for good (needs CAP_SETPCAP)."""
    prctl(PR_CAPBSET_DROP, cap)


def set_keepcaps(keep: bool) -> None:
    """Keep the permitted set across a setuid() away from uid 0 (cleared again by the caller)."""
    prctl(PR_SET_KEEPCAPS, int(keep))


def ambient_clear() -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def ambient_raise(cap: int) -> None:
    """Add `cap` to the ambient set: kept across execve of a non-setuid program."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def set_no_new_privs() -> None:
    """execve can no longer grant privileges (setuid bits, file capabilities): one way."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


# --- libseccomp ---------------------------------------------------------------------
# seccomp filters are BPF programs; libseccomp (what runc and crun link) resolves
# syscall names per architecture and compiles the rules. Loaded on first use: the
# container init loads it before pivot_root, as the container's rootfs lacks it.
SCMP_FLTATR_CTL_NNP = 3  # libseccomp would set no_new_privs on load unless told not to
SCMP_CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
            "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
_libseccomp: ctypes.CDLL | None = None


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def libseccomp() -> ctypes.CDLL:
    global _libseccomp
    if _libseccomp is None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2")
        except OSError:
            raise SyscallError("dlopen libseccomp.so.2", 2, "apt-get install libseccomp2") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        for name in ("seccomp_load", "seccomp_release", "seccomp_export_bpf", "seccomp_export_pfc",
                     "seccomp_arch_add", "seccomp_attr_set", "seccomp_rule_add_array"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]  # the first argument, the filter
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_export_pfc.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_native.restype = ctypes.c_uint32
        _libseccomp = lib
    return _libseccomp


def _scmp_check(result: int, call: str, detail: str = "") -> int:
    if result < 0:  # libseccomp returns -errno
        raise SyscallError(call, -result, detail)
    return result


def seccomp_syscall_number(name: str) -> int | None:
    """libseccomp's number for a syscall name: the native one, or a negative pseudo number for
    a call only other architectures have (mmap2, socketcall on x86), which libseccomp maps per
    architecture of the filter; None if libseccomp does not know the name (-1, __NR_SCMP_ERROR)."""
    number = libseccomp().seccomp_syscall_resolve_name(name.encode())
    return None if number == -1 else number


def seccomp_arch(name: str) -> int | None:
    """libseccomp's token for an architecture name ("x86_64", "aarch64", ...); None if unknown."""
    return libseccomp().seccomp_arch_resolve_name(name.encode()) or None


def seccomp_new(default_action: int) -> int:
    """A new filter (a handle; free it with seccomp_release) that loads without no_new_privs."""
    lib = libseccomp()
    ctx = lib.seccomp_init(default_action)
    if not ctx:
        raise SyscallError("seccomp_init", 22, f"default action {default_action:#x}")
    _scmp_check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "seccomp_attr_set", "CTL_NNP=0")
    return ctx


def seccomp_add_arch(ctx: int, arch: int) -> None:
    result = libseccomp().seccomp_arch_add(ctx, arch)
    if result != -17:  # EEXIST: the native one is always there
        _scmp_check(result, "seccomp_arch_add", f"arch {arch:#x}")


def seccomp_add_rule(ctx: int, action: int, syscall: int, args: list[tuple[int, str, int, int]]) -> None:
    """A rule: `action` for `syscall` when every (index, op, value, value2) comparison holds."""
    array = (ScmpArgCmp * max(1, len(args)))(*[ScmpArgCmp(i, SCMP_CMP[op], a, b) for i, op, a, b in args])
    _scmp_check(libseccomp().seccomp_rule_add_array(ctx, action, syscall, len(args), array),
                "seccomp_rule_add", f"syscall {syscall}, action {action:#x}")


def seccomp_load(ctx: int) -> None:
    """Install the filter on this thread (needs CAP_SYS_ADMIN, or no_new_privs set first)."""
    _scmp_check(libseccomp().seccomp_load(ctx), "seccomp_load")


def seccomp_export(ctx: int, fd: int, bpf: bool = False) -> None:
    """Write the filter to `fd`: as raw BPF, or as libseccomp's readable pseudo-code."""
    lib = libseccomp()
    _scmp_check((lib.seccomp_export_bpf if bpf else lib.seccomp_export_pfc)(ctx, fd), "seccomp_export")


def seccomp_release(ctx: int) -> None:
    libseccomp().seccomp_release(ctx)


# --- network interface flags (ioctl) --------------------------------------------------------
# (labkit.net does links through netlink; these two ioctls, the ones ifconfig uses, answer and
# set "is it up" in the calling thread's network namespace without a netlink library: lo up
# in a new namespace is on every container start.)
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ_FLAGS = "16sH22x"  # struct ifreq: the name, then ifr_flags in the 24-byte union


def _link_flags(sock: object, name: str) -> int:
    import fcntl
    import struct

    try:
        reply = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(_IFREQ_FLAGS, name.encode(), 0))
    except OSError as err:
        raise SyscallError(f"ioctl(SIOCGIFFLAGS, {name})", err.errno or 0) from None
    return struct.unpack(_IFREQ_FLAGS, reply)[1]


def link_is_up(name: str) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return bool(_link_flags(s, name) & IFF_UP)


def link_up(name: str) -> None:
    """Set IFF_UP on link `name`."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = _link_flags(s, name)
        try:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(_IFREQ_FLAGS, name.encode(), flags | IFF_UP))
        except OSError as err:
            raise SyscallError(f"ioctl(SIOCSIFFLAGS, {name} up)", err.errno or 0) from None
