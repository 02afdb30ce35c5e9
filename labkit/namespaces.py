"""Linux namespaces: what each type isolates, how to make, inspect and join them.

A namespace changes what a process *sees*. The kernel names each one by an
inode under /proc/PID/ns/; two processes share a namespace exactly when those
inodes are equal.

The notebook kernel never unshares itself: `spawn` runs a command through a
small helper process (`python -m labkit.namespaces`) that unshares and execs.
"""
from __future__ import annotations

import dataclasses
import os
import sys as _sys
from typing import TYPE_CHECKING, Iterable, Sequence

from . import sys as lsys
from .errors import LabkitError

if TYPE_CHECKING:  # imported in spawn(): the container init imports this module, not subprocess
    import subprocess

# OCI name -> (CLONE_* flag, name under /proc/PID/ns, what it isolates)
TYPES: dict[str, tuple[int, str, str]] = {
    "mount": (lsys.CLONE_NEWNS, "mnt", "the mount table"),
    "uts": (lsys.CLONE_NEWUTS, "uts", "hostname and domain name"),
    "ipc": (lsys.CLONE_NEWIPC, "ipc", "System V IPC and POSIX message queues"),
    "pid": (lsys.CLONE_NEWPID, "pid", "process IDs (the first process is PID 1)"),
    "network": (lsys.CLONE_NEWNET, "net", "interfaces, routes, firewall, ports"),
    "user": (lsys.CLONE_NEWUSER, "user", "user and group IDs, capabilities"),
    "cgroup": (lsys.CLONE_NEWCGROUP, "cgroup", "the view of the cgroup tree"),
}
# Short names people type (and /proc uses) map to the OCI names.
ALIASES = {"mnt": "mount", "net": "network", "ns": "mount"}


def canonical(ns_type: str) -> str:
    """The OCI name of a namespace type, accepting /proc names too."""
    name = ALIASES.get(ns_type, ns_type)
    if name not in TYPES:
        raise LabkitError(f"unknown namespace type {ns_type!r}",
                          f"use one of: {', '.join(TYPES)}")
    return name


def flags_for(types: Iterable[str]) -> int:
    """The unshare(2)/clone(2) flags for a set of namespace types."""
    flags = 0
    for ns_type in types:
        flags |= TYPES[canonical(ns_type)][0]
    return flags


def proc_name(ns_type: str) -> str:
    return TYPES[canonical(ns_type)][1]


@dataclasses.dataclass(frozen=True)
class NamespaceId:
    """One namespace as the kernel names it: type and inode."""

    type: str
    inode: int

    def __str__(self) -> str:
        return f"{proc_name(self.type)}:[{self.inode}]"


def inspect(pid: int | str = "self") -> dict[str, NamespaceId]:
    """The namespaces process `pid` is in, by OCI type."""
    result = {}
    for ns_type, (_, name, _) in TYPES.items():
        try:
            inode = os.stat(f"/proc/{pid}/ns/{name}").st_ino
        except FileNotFoundError:  # this kernel lacks the type
            continue
        result[ns_type] = NamespaceId(ns_type, inode)
    return result


def differing(pid_a: int | str, pid_b: int | str = "self") -> list[str]:
    """The namespace types in which two processes are isolated from each other."""
    a, b = inspect(pid_a), inspect(pid_b)
    return [t for t in TYPES if t in a and t in b and a[t] != b[t]]


def join(path: str, ns_type: str | None = None) -> None:
    """setns(2) into the namespace a /proc/PID/ns/* (or bind-mounted) file names."""
    flag = flags_for([ns_type]) if ns_type else 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        lsys.setns(fd, flag)
    finally:
        os.close(fd)


def spawn(cmd: Sequence[str], types: Iterable[str] = (), hostname: str | None = None,
          **run_kwargs) -> subprocess.CompletedProcess:
    """Run `cmd` in new namespaces of `types` and return its result.

    With "pid" the command is PID 1 of its namespace; with "pid" and "mount"
    a fresh /proc is mounted so tools like `ps` see only that namespace.
    """
    import subprocess

    names = [canonical(t) for t in types]
    helper = [_sys.executable, "-m", "labkit.namespaces", ",".join(names), hostname or "", "--", *cmd]
    run_kwargs.setdefault("capture_output", True)
    run_kwargs.setdefault("text", True)
    return subprocess.run(helper, **run_kwargs)


def _helper(argv: list[str]) -> int:
    """Body of `python -m labkit.namespaces TYPES HOSTNAME -- CMD...`."""
    types, hostname, cmd = argv[0], argv[1], argv[3:]
    names = [t for t in types.split(",") if t]
    lsys.unshare(flags_for(names))
    if "mount" in names:  # never let our mounts propagate back to the host
        lsys.mount(None, "/", None, lsys.MS_REC | lsys.MS_PRIVATE)
    if hostname:
        lsys.sethostname(hostname)
    if "pid" not in names:
        os.execvp(cmd[0], cmd)
    child = os.fork()  # the first child in a new PID namespace is its PID 1
    if child == 0:
        try:
            if "mount" in names:
                lsys.mount("proc", "/proc", "proc", lsys.MS_NOSUID | lsys.MS_NODEV | lsys.MS_NOEXEC)
            os.execvp(cmd[0], cmd)
        except OSError as err:
            print(f"labkit: {cmd[0]}: {err}", file=_sys.stderr)
        os._exit(127)
    _, status = os.waitpid(child, 0)
    return exit_code(status)


def exit_code(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    raise SystemExit(_helper(_sys.argv[1:]))
