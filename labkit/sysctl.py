"""linux.sysctl: kernel parameters a container sets for itself, in /proc/sys.

Most of /proc/sys is global: a container writing vm.swappiness would change
it for the whole machine. Only some parameters belong to a namespace, and a
container may set those only in a namespace of its own — the rules of
runc's validator (libcontainer/configs/validate):

  net.*                                   its network namespace
  kernel.msgmax, msgmnb, msgmni, sem,     its IPC namespace
  shmall, shmmax, shmmni, shm_rmid_forced,
  fs.mqueue.*
  kernel.domainname                       its UTS namespace (kernel.hostname
                                          is refused: the hostname field sets it)
  user.*                                  its user namespace (runc >= 1.2)

Anything else is refused before anything is made. A key may use '/' instead
of '.' as its separator (sysctl.d(5)); then a '.' is part of a name, as in
net/ipv4/conf/eth0.100/rp_filter.

The values are written by the container's init once its /proc is mounted,
before readonlyPaths makes /proc/sys read-only (runc's order).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import LabkitError

IPC_KEYS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                      "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
PROC_NS = {"network": "net", "ipc": "ipc", "uts": "uts", "user": "user"}  # the name under /proc/self/ns


def dotted(key: str) -> str:
    """The key with '.' separators (sysctl.d(5)): "net/ipv4/ip_forward" -> "net.ipv4.ip_forward"."""
    first = next((c for c in key if c in "./"), ".")
    return key if first == "." else key.translate(str.maketrans("./", "/."))


def proc_path(key: str) -> str:
    """The file under /proc/sys: separators become '/', and a '/' inside a dotted name a '.'."""
    return "/proc/sys/" + dotted(key).translate(str.maketrans("./", "/."))


def namespace_of(key: str) -> str | None:
    """The namespace type that makes `key` the container's own; None: it is global."""
    name = dotted(key)
    if name in IPC_KEYS or name.startswith("fs.mqueue."):
        return "ipc"
    if name.startswith("net."):
        return "network"
    if name == "kernel.domainname":
        return "uts"
    if name.startswith("user."):
        return "user"
    return None


def problems(sysctl: dict[str, str] | None, namespaces: Iterable[Any]) -> Iterator[str]:
    """Each key the container may not set; `namespaces` are linux.namespaces (type, path)."""
    by_type = {ns.type: ns for ns in namespaces}
    for key in sysctl or {}:
        where = _field(key)
        # On the file's path: "net/../kernel/core_pattern" would pass as net.* and escape it.
        parts = proc_path(key).removeprefix("/proc/sys/").split("/")
        if any(p in ("", ".", "..") or "\x00" in p for p in parts):
            yield f"{where} is not a sysctl name: no empty, '.' or '..' parts (e.g. net.ipv4.ip_forward)"
            continue
        if dotted(key) == "kernel.hostname":
            yield f"{where} is refused, as runc does: it would override the hostname field; set that instead"
            continue
        ns_type = namespace_of(key)
        if ns_type is None:
            yield (f"{where} is not namespaced: writing it would change the host for every process "
                   "(only net.*, IPC, fs.mqueue.*, kernel.domainname and user.* belong to a namespace)")
        elif ns_type not in by_type or _is_callers(ns_type, by_type[ns_type].path):
            yield (f"{where} needs its own {ns_type} namespace, or it would change the host's: "
                   f'add {{"type": "{ns_type}"}} to linux.namespaces')


def _field(key: str) -> str:
    return f"linux.sysctl[{json.dumps(key)}]"


def _is_callers(ns_type: str, path: str | None) -> bool:
    """Whether a joined namespace (by path) is this process's own, i.e. the host's (as runc checks)."""
    if not path:
        return False
    try:
        mine, theirs = os.stat(f"/proc/self/ns/{PROC_NS[ns_type]}"), os.stat(path)
    except OSError:
        return False  # a missing path is reported by the namespace checks
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def write_all(sysctl: dict[str, str]) -> None:
    """Write each value inside the container (its /proc mounted), in the spec's order."""
    for key, value in sysctl.items():
        path = proc_path(key)
        try:
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            raise LabkitError(f"{_field(key)}: {path} does not exist in the container",
                              "check the name with `sysctl -a` on the host, and that mounts has /proc") from None
        except OSError as err:
            raise LabkitError(f"{_field(key)}: writing {value!r} to {path} failed: {err.strerror}",
                              "check the value's format with `sysctl " + dotted(key) + "` on the host") from None
