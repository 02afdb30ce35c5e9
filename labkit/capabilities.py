"""Linux capabilities: which of root's powers a container keeps (OCI process.capabilities).

The kernel splits root's power into ~41 capabilities (CAP_CHOWN, CAP_NET_ADMIN,
CAP_SYS_ADMIN, ...). Each process has five sets of them:

  bounding     the most it, or any program it execs, can ever hold again
  permitted    what it may switch on
  effective    what the kernel checks right now
  inheritable  what may pass through execve to programs marked for it
  ambient      what passes through execve to any (non-setuid) program

A container's init sets them just before exec, in runc's order: drop the
bounding set, keep the permitted set across the switch to process.user
(PR_SET_KEEPCAPS), then capset(2) the three sets and raise the ambient ones.
A config.json without process.capabilities gets none at all, as under runc.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from . import procfs
from . import sys as lsys
from .errors import LabkitError

# linux/capability.h: the list index is the capability's number.
NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

# What `runc spec` writes into every set but inheritable.
RUNC_DEFAULT = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
# What Docker gives a container unless told otherwise (moby's oci/caps/defaults.go).
DOCKER_DEFAULT = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)


def oci_sets(names: Iterable[str], ambient: bool = False) -> dict[str, list[str]]:
    """process.capabilities giving `names` in bounding, effective and permitted (and ambient)."""
    keep = list(names)
    return {k: list(keep) for k in ("bounding", "effective", "permitted", *(["ambient"] if ambient else []))}


def canonical(name: str) -> str:
    """"net_admin", "NET_ADMIN" or "CAP_NET_ADMIN" -> "CAP_NET_ADMIN" (docker's --cap-add spellings)."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") or upper == "ALL" else "CAP_" + upper
    if full != "ALL" and full not in NAMES:
        raise LabkitError(f"unknown capability {name!r}",
                          "use a name from capabilities(7), e.g. NET_ADMIN or CAP_SYS_TIME, or ALL")
    return full


def adjusted(base: Iterable[str], add: Iterable[str] = (), drop: Iterable[str] = (),
             every: Iterable[str] | None = None) -> list[str]:
    """`docker run --cap-drop ... --cap-add ...`: drops first (ALL empties), then adds.

    ALL added means `every`: by default what this process itself may hold (its bounding
    set), as Docker's --privileged is what dockerd holds, not what the kernel knows.
    """
    drop_set, add_set = {canonical(n) for n in drop}, {canonical(n) for n in add}
    kept = set() if "ALL" in drop_set else set(base) - drop_set
    kept |= set(held() if every is None else every) if "ALL" in add_set else add_set
    return [n for n in NAMES if n in kept]


def held(pid: int | str = "self") -> list[str]:
    """The capabilities a process (this one by default) can still hold: its bounding set."""
    return [n for n in names(of_process(pid)["bounding"]) if n in NAMES]


def beyond(caps: Mapping[str, list[str]] | None, pid: int | str = "self") -> list[str]:
    """Capabilities `caps` asks for that the process `pid` (the container's creator) cannot give."""
    if not caps:
        return []
    wanted = {n for key in SETS for n in caps.get(key, [])}
    have = set(held(pid))
    limit = set(NAMES[:last_cap() + 1])  # those this kernel lacks are left out, not refused
    return [n for n in NAMES if n in wanted - have and n in limit]


def problems(caps: object) -> list[str]:
    """What is wrong with a process.capabilities value (empty if nothing)."""
    if caps is None:
        return []
    if not isinstance(caps, Mapping):
        return ["process.capabilities must be an object of sets (bounding, effective, ...)"]
    found = []
    for key, names in caps.items():
        if key not in SETS:
            found.append(f"process.capabilities.{key} is not a capability set (use {', '.join(SETS)})")
        elif not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            found.append(f"process.capabilities.{key} must be a list of names like \"CAP_KILL\"")
        else:
            unknown = [n for n in names if n not in NAMES]
            if unknown:
                found.append(f"process.capabilities.{key}: unknown capabilities {', '.join(unknown)} "
                             "(names are like CAP_NET_ADMIN; see capabilities(7))")
    return found


def mask(names: Iterable[str]) -> int:
    """The bit mask of capability names, as /proc/PID/status and capset(2) use."""
    bits = 0
    for name in names:
        bits |= 1 << NAMES.index(name)
    return bits


def names(bits: int) -> list[str]:
    """The capability names in a bit mask (numbers this table lacks as "cap_N")."""
    return [NAMES[n] if n < len(NAMES) else f"cap_{n}" for n in range(64) if bits >> n & 1]


def of_process(pid: int | str = "self") -> dict[str, int]:
    """A process's five sets as masks, from the CapInh/CapPrm/CapEff/CapBnd/CapAmb lines."""
    keys = {"CapInh": "inheritable", "CapPrm": "permitted", "CapEff": "effective",
            "CapBnd": "bounding", "CapAmb": "ambient"}
    fields = procfs.status_fields(pid)
    return {name: int(fields[key], 16) for key, name in keys.items() if key in fields}


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def drop_bounding(keep: Iterable[str], last: int) -> None:
    """Step 1, as root: drop from the bounding set every capability not in `keep`.

    `last` is last_cap(), read before pivot_root: the container may have no /proc.
    """
    kept = mask(keep)
    for cap in range(last + 1):
        if not kept >> cap & 1:
            lsys.capbset_drop(cap)


def apply_sets(caps: Mapping[str, list[str]], last: int) -> None:
    """Step 3, after the switch to process.user: the three sets, then the ambient one.

    Names this kernel does not have are left out (runc ignores them too). An ambient
    capability must also be permitted and inheritable; others are skipped, as runc's
    ambient step ignores its errors (the `runc spec` default lists ambient capabilities
    that are not inheritable, and so gets none).
    """
    limit = (1 << (last + 1)) - 1
    effective, permitted, inheritable = (mask(caps.get(k, [])) & limit
                                         for k in ("effective", "permitted", "inheritable"))
    lsys.capset(effective, permitted, inheritable)
    lsys.ambient_clear()
    ambient = mask(caps.get("ambient", [])) & permitted & inheritable
    for cap in range(last + 1):
        if ambient >> cap & 1:
            lsys.ambient_raise(cap)
