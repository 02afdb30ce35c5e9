"""Control groups: what a process can *use* — memory, CPU, PIDs, IO — and accounting.

One API, two backends chosen by probing the host:

- cgroup v2 (unified; students' VMs, current distributions): one tree at
  /sys/fs/cgroup. labkit owns the subtree /sys/fs/cgroup/labkit and enables
  controllers in its cgroup.subtree_control; containers get labkit/<id>.
- cgroup v1 / hybrid (older hosts, the CI machine): one tree per controller
  (/sys/fs/cgroup/memory, .../cpu, ...). labkit nests its groups under the
  creating process's own cgroup in each hierarchy (never moving or touching
  groups it did not create): <own>/labkit/<id>.

Values use the OCI `linux.resources` units (bytes, microseconds, shares) and
are translated per backend, the same way runc translates them. Every field is
applied, or refused by name (`problems` says which, before anything exists):
where runc silently skips a field this cgroup version has no file for, labkit
refuses it. Device rules are labkit.devices'. `mount_cgroups` makes the
container's /sys/fs/cgroup the way runc mounts it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import signal
import time
import warnings
from typing import Any, Iterable, Iterator

from .errors import LabkitError

CGROUP_ROOT = "/sys/fs/cgroup"
SYS_DEV_BLOCK = "/sys/dev/block"  # MAJ:MIN entries of the block devices that exist
PARENT = "labkit"
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices",
                  "hugetlb", "net_cls", "net_prio", "rdma",
                  "name=systemd")  # a named hierarchy, no controller: joined too, as runc joins it
V2_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")
# Passed down labkit's own groups only where the host's root already enables them.
V2_OPTIONAL = ("hugetlb", "rdma", "misc")
V2_PSEUDO = ("devices", "freezer")  # no cgroup.controllers entry: eBPF and cgroup.freeze, always there
MAX = "max"


class CgroupError(LabkitError):
    pass


# --- conversions (pure; unit-tested) ------------------------------------------------------
def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2..262144] -> v2 cpu.weight [1..10000], as runc/crun do."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def v2_swap_max(memory_limit: int | None, swap: int | None) -> str | None:
    """OCI swap is memory+swap together; v2 memory.swap.max is swap alone."""
    if swap is None:
        return None
    if swap == -1:
        return MAX
    if memory_limit is None or memory_limit == -1:
        raise CgroupError("memory.swap needs memory.limit on cgroup v2",
                          "set linux.resources.memory.limit too (swap is memory+swap)")
    if swap < memory_limit:
        raise CgroupError(f"memory.swap ({swap}) is less than memory.limit ({memory_limit})",
                          "OCI swap counts memory+swap: make it >= the memory limit")
    return str(swap - memory_limit)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """'key value' lines (memory.events, cpu.stat, ...) -> dict."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def limit_value(value: int | None) -> str:
    return MAX if value is None or value < 0 else str(value)


def blkio_to_io_weight(weight: int) -> int:
    """v1 blkio weight [10..1000] -> v2 io.weight [1..10000], as runc converts it."""
    return 1 + (weight - 10) * 9999 // 990


# --- linux.resources: every OCI field, its type, and the controller it needs ---------------
NOT_ON_V2 = ""  # the field has no cgroup v2 equivalent
# (section, field): (kind, v1 controller, v2 controller); None: needs no controller (ignored)
FIELDS: dict[tuple[str, str], tuple[str, str | None, str | None]] = {
    ("memory", "limit"): ("int", "memory", "memory"),
    ("memory", "reservation"): ("int", "memory", "memory"),
    ("memory", "swap"): ("int", "memory", "memory"),
    ("memory", "kernel"): ("int", None, None),
    ("memory", "kernelTCP"): ("int", None, None),
    ("memory", "swappiness"): ("int", "memory", NOT_ON_V2),  # -1: unset, as runc reads it
    ("memory", "disableOOMKiller"): ("bool", "memory", NOT_ON_V2),
    ("memory", "useHierarchy"): ("bool", "memory", "memory"),
    ("memory", "checkBeforeUpdate"): ("bool", "memory", "memory"),
    ("cpu", "shares"): ("uint", "cpu", "cpu"),
    ("cpu", "quota"): ("int", "cpu", "cpu"),
    ("cpu", "burst"): ("uint", "cpu", "cpu"),
    ("cpu", "period"): ("uint", "cpu", "cpu"),
    ("cpu", "realtimeRuntime"): ("int", "cpu", NOT_ON_V2),
    ("cpu", "realtimePeriod"): ("uint", "cpu", NOT_ON_V2),
    ("cpu", "cpus"): ("str", "cpuset", "cpuset"),
    ("cpu", "mems"): ("str", "cpuset", "cpuset"),
    ("cpu", "idle"): ("int", "cpu", "cpu"),
    ("pids", "limit"): ("int", "pids", "pids"),
    ("blockIO", "weight"): ("weight", "blkio", "io"),
    ("blockIO", "leafWeight"): ("weight", "blkio", NOT_ON_V2),
    ("blockIO", "weightDevice"): ("weightDevice", "blkio", "io"),
    ("blockIO", "throttleReadBpsDevice"): ("throttle", "blkio", "io"),
    ("blockIO", "throttleWriteBpsDevice"): ("throttle", "blkio", "io"),
    ("blockIO", "throttleReadIOPSDevice"): ("throttle", "blkio", "io"),
    ("blockIO", "throttleWriteIOPSDevice"): ("throttle", "blkio", "io"),
    ("network", "classID"): ("uint", "net_cls", NOT_ON_V2),
    ("network", "priorities"): ("priorities", "net_prio", NOT_ON_V2),
}
SECTIONS = ("memory", "cpu", "pids", "blockIO", "hugepageLimits", "network", "rdma", "unified", "devices")
WHY_NOT_ON_V2 = {  # runc accepts these on v2 and silently does nothing; labkit says so instead
    "memory.swappiness": "cgroup v2 has no per-group swappiness: limit swap with memory.swap instead",
    "memory.disableOOMKiller": "cgroup v2 cannot switch the OOM killer off for a group "
                               "(unified memory.high throttles instead of killing)",
    "cpu.realtimeRuntime": "cgroup v2 has no real-time group scheduling (cpu.rt_*)",
    "cpu.realtimePeriod": "cgroup v2 has no real-time group scheduling (cpu.rt_*)",
    "blockIO.leafWeight": "cgroup v2 has no leaf weights",
    "network.classID": "cgroup v2 has no net_cls controller (nftables and eBPF match the cgroup path instead)",
    "network.priorities": "cgroup v2 has no net_prio controller",
}
_PAGE_SIZE = re.compile(r"^[1-9][0-9]*[KMGT]B$")  # "2MB", "1GB": as in hugetlb.2MB.limit_in_bytes


def _given(section: str, field: str, value: Any) -> bool:
    """Whether a field asks for anything: runc treats 0 (and false, []) as unset, but
    swappiness 0 is a value and -1 means unset."""
    if field == "swappiness":
        return value is not None and value != -1
    return value not in (None, 0, False, "", [], {})


def _kind_problem(where: str, kind: str, value: Any) -> str | None:
    is_int = type(value) is int
    if kind == "int" and not is_int:
        return f"{where} must be an integer, not {value!r}"
    if kind == "uint" and not (is_int and value >= 0):
        return f"{where} must be an integer >= 0, not {value!r}"
    if kind == "bool" and not isinstance(value, bool):
        return f"{where} must be true or false, not {value!r}"
    if kind == "str" and not isinstance(value, str):
        return f"{where} must be a string like \"0-1\", not {value!r}"
    if kind == "weight" and not (is_int and (value == 0 or 10 <= value <= 1000)):
        return f"{where} must be a weight from 10 to 1000, not {value!r}"
    return None


def _entries_problems(where: str, entries: Any, fields: dict[str, str], required: tuple[str, ...]) -> list[str]:
    """A list of objects: each with the `required` fields and no unknown ones, of the given kinds."""
    if not isinstance(entries, list):
        return [f"{where} must be a list of objects with {', '.join(fields)}"]
    found = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            found.append(f"{at} must be an object with {', '.join(fields)}")
            continue
        found += [f"{at} needs {key}" for key in required if entry.get(key) is None]
        found += [f"{at}.{key} is not an OCI field (known: {', '.join(fields)})" for key in entry if key not in fields]
        found += [p for key, kind in fields.items() if entry.get(key) is not None
                  for p in [_kind_problem(f"{at}.{key}", kind, entry[key])] if p]
    return found


_DEVICE = {"major": "int", "minor": "int"}
_LISTS = {  # kind: (fields of each entry, the required ones)
    "weightDevice": ({**_DEVICE, "weight": "weight", "leafWeight": "weight"}, ("major", "minor")),
    "throttle": ({**_DEVICE, "rate": "uint"}, ("major", "minor", "rate")),
    "priorities": ({"name": "str", "priority": "uint"}, ("name", "priority")),
}


def _section_problems(section: str, body: dict[str, Any], v: int) -> list[str]:
    found = []
    for field, value in body.items():
        where = f"linux.resources.{section}.{field}"
        spec = FIELDS.get((section, field))
        if spec is None:
            known = ", ".join(f for s, f in FIELDS if s == section)
            found.append(f"{where} is not an OCI field (known: {known})")
            continue
        if value is None:
            continue
        kind = spec[0]
        shape = _entries_problems(where, value, *_LISTS[kind]) if kind in _LISTS else \
            [p for p in [_kind_problem(where, kind, value)] if p]
        if shape:
            found += shape
        elif field == "swappiness" and not -1 <= value <= 100:
            found.append(f"{where} must be from 0 to 100, not {value}")
        elif v == 2 and spec[2] == NOT_ON_V2 and _given(section, field, value):
            found.append(f"{where} cannot be applied: {WHY_NOT_ON_V2[f'{section}.{field}']}")
        elif v == 2 and field == "useHierarchy" and value is False:
            found.append(f"{where} false cannot be applied: cgroup v2 is always hierarchical")
    if v == 2 and section == "blockIO":
        for i, dev in enumerate(body.get("weightDevice") or []):
            if isinstance(dev, dict) and _given(section, "leafWeight", dev.get("leafWeight")):
                found.append(f"linux.resources.blockIO.weightDevice[{i}].leafWeight cannot be applied: "
                             f"{WHY_NOT_ON_V2['blockIO.leafWeight']}")
    return found


def _other_problems(resources: dict[str, Any], v: int) -> list[str]:
    """hugepageLimits, rdma, unified and devices: the sections that are not plain objects of fields."""
    from . import devices  # devices imports this module

    found = _entries_problems("linux.resources.hugepageLimits", resources.get("hugepageLimits") or [],
                              {"pageSize": "str", "limit": "uint"}, ("pageSize", "limit"))
    for i, entry in enumerate(resources.get("hugepageLimits") or []):
        size = entry.get("pageSize") if isinstance(entry, dict) else None
        if isinstance(size, str) and not _PAGE_SIZE.match(size):
            found.append(f"linux.resources.hugepageLimits[{i}].pageSize {size!r} is not a size like 2MB or 1GB")
    for device, limits in (resources.get("rdma") or {}).items():
        where = f"linux.resources.rdma.{device}"
        if not isinstance(limits, dict) or not limits or set(limits) - {"hcaHandles", "hcaObjects"}:
            found.append(f"{where} must be an object with hcaHandles and/or hcaObjects")
            continue
        found += [p for key, value in limits.items() for p in [_kind_problem(f"{where}.{key}", "uint", value)] if p]
    unified = resources.get("unified") or {}
    if unified and v == 1:
        found.append("linux.resources.unified cannot be applied: it names cgroup v2 files and this host "
                     "has cgroup v1 (runc refuses it too)")
    for key, value in unified.items():
        if "/" in key or key.startswith(".") or "." not in key or not isinstance(value, str):
            found.append(f"linux.resources.unified: {key!r}: {value!r} must map a file name like "
                         "\"memory.high\" to a string")
    return found + devices.problems(resources.get("devices"))


def _controller_problems(resources: dict[str, Any], v: int, available: set[str]) -> list[str]:
    needs: dict[str, list[str]] = {}  # controller -> the fields that need it
    for section in ("memory", "cpu", "pids", "blockIO", "network"):
        for field, value in (resources.get(section) or {}).items():
            spec = FIELDS.get((section, field))
            controller = spec and spec[1 if v == 1 else 2]
            if controller and isinstance(value, (int, str, list)) and _given(section, field, value):
                needs.setdefault(controller, []).append(f"{section}.{field}")
    for section, controller in (("hugepageLimits", "hugetlb"), ("rdma", "rdma"), ("devices", "devices")):
        if resources.get(section):
            needs.setdefault(controller, []).append(section)
    where = "is not mounted on this cgroup v1 host" if v == 1 else \
        "is not enabled on this cgroup v2 host (cgroup.subtree_control of the root)"
    return [f"linux.resources.{', '.join(fields)} need{'s' if len(fields) == 1 else ''} the {controller} "
            f"controller, which {where}" for controller, fields in needs.items() if controller not in available]


def problems(resources: Any, cgroup_version: int | None = None, available: Iterable[str] | None = None) -> list[str]:
    """What in OCI linux.resources cannot be applied here (empty if nothing); creates nothing.

    Malformed or unknown fields, fields cgroup v2 (or v1) has no file for, and limits
    for a controller the host lacks, as runc refuses them. `cgroup_version` and
    `available` (controller names) describe the host; by default they are read
    from /sys/fs/cgroup (see host_controllers)."""
    if resources is None:
        return []
    if not isinstance(resources, dict):
        return [f"linux.resources must be an object, not {type(resources).__name__}"]
    v = cgroup_version or version()
    found = [f"linux.resources.{key} is not an OCI field (known: {', '.join(SECTIONS)})"
             for key in resources if key not in SECTIONS]
    for section in ("memory", "cpu", "pids", "blockIO", "network", "rdma", "unified"):
        body = resources.get(section)
        if body is not None and not isinstance(body, dict):
            found.append(f"linux.resources.{section} must be an object, not {body!r}")
        elif body and section not in ("rdma", "unified"):
            found += _section_problems(section, body, v)
    if not isinstance(resources.get("hugepageLimits") or [], list):
        found.append("linux.resources.hugepageLimits must be a list of {pageSize, limit}")
    if found:  # the sections' shapes are wrong: the checks below would only repeat it
        return found
    found += _other_problems(resources, v)
    known = set(available) if available is not None else host_controllers()
    if known is not None:
        found += _controller_problems(resources, v, known)
    return found


# --- probing --------------------------------------------------------------------------------
def version(root: str = CGROUP_ROOT) -> int:
    """2 if root is the unified hierarchy, else 1 (v1 or hybrid)."""
    return 2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else 1


def v1_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """controller -> mount point of its v1 hierarchy (co-mounted ones share one)."""
    found: dict[str, str] = {}
    with open(mountinfo) as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = post.split()
            if len(fields) >= 3 and fields[0] == "cgroup":
                point = pre.split()[4]
                for opt in fields[2].split(","):
                    if opt in V1_CONTROLLERS:
                        found.setdefault(opt, point)
    return found


def _words(path: str) -> list[str]:
    with open(path) as f:
        return f.read().split()


def host_controllers(root: str = CGROUP_ROOT) -> set[str] | None:
    """The controllers labkit's groups get on this host; None if that cannot be read.

    v1: the hierarchies mounted under root. v2: the root's controllers that `create`
    enables (V2_CONTROLLERS, and the ones the root already passes down), plus the
    pseudo-controllers devices (eBPF) and freezer every v2 group has."""
    try:
        if version(root) == 1:
            return {c for c, point in v1_mounts().items() if point.startswith(root)}
        offered = set(_words(os.path.join(root, "cgroup.controllers")))
        passed_down = set(_words(os.path.join(root, "cgroup.subtree_control")))
        return offered & (set(V2_CONTROLLERS) | passed_down) | set(V2_PSEUDO)
    except OSError:
        return None


def own_v1_paths(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """controller -> this process's cgroup path in that hierarchy."""
    paths = {}
    with open(proc_cgroup) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(","):
                if c:
                    paths[c] = path
    return paths


# --- a group ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Cgroup:
    """One container's cgroup; `dirs` maps controller -> directory (v1) or "" -> dir (v2)."""

    name: str
    version: int
    dirs: dict[str, str]

    # --- files ---
    def _dir(self, controller: str) -> str:
        if self.version == 2:
            return self.dirs[""]
        if controller not in self.dirs:
            raise CgroupError(f"cgroup v1 controller {controller!r} is not mounted on this host",
                              "see `labkit doctor` for the controllers available")
        return self.dirs[controller]

    def path(self, controller: str, filename: str) -> str:
        return os.path.join(self._dir(controller), filename)

    def read(self, controller: str, filename: str) -> str:
        with open(self.path(controller, filename)) as f:
            return f.read().strip()

    def write(self, controller: str, filename: str, value: str | int) -> None:
        path = self.path(controller, filename)
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as err:
            error = CgroupError(f"writing {value!r} to {path} failed: {os.strerror(err.errno)}",
                                _write_hint(err.errno, filename))
            error.errno = err.errno  # type: ignore[attr-defined]  # for callers that tell cases apart
            raise error from None

    def has(self, controller: str, filename: str) -> bool:
        try:
            return os.path.exists(self.path(controller, filename))
        except CgroupError:
            return False

    def controllers(self) -> set[str] | None:
        """The controllers this group has (None if unknown): v1 its hierarchies, v2 cgroup.controllers."""
        if self.version == 1:
            return set(self.dirs)
        try:
            return set(_words(os.path.join(self.dirs[""], "cgroup.controllers"))) | set(V2_PSEUDO)
        except OSError:
            return None

    def _write_known(self, controller: str, filename: str, value: str | int, what: str, hint: str) -> None:
        """Write a file that not every kernel has: a missing one is refused, not created."""
        if not self.has(controller, filename):
            raise CgroupError(f"{what} cannot be applied: this kernel has no {filename} in "
                              f"{self._dir(controller)}", hint)
        self.write(controller, filename, value)

    def _write_or_defer(self, controller: str, filename: str, value: int, defer: bool) -> bool:
        """Write; if the kernel says EINVAL and `defer`, report False: the caller retries after
        the quota (a period or burst the old quota does not fit yet), as runc does."""
        try:
            self.write(controller, filename, value)
            return True
        except CgroupError as err:
            if defer and getattr(err, "errno", None) == errno.EINVAL:
                return False
            raise

    # --- membership ---
    def add(self, pid: int) -> None:
        """Move `pid` into this group in every hierarchy."""
        for d in sorted(set(self.dirs.values())):
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def pids(self) -> list[int]:
        d = self.dirs.get("") or self.dirs.get("pids") or next(iter(self.dirs.values()))
        with open(os.path.join(d, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]

    # --- limits (OCI units) ---
    def set_memory(self, limit: int | None = None, swap: int | None = None,
                   reservation: int | None = None) -> None:
        if self.version == 2:
            if limit is not None:
                self.write("memory", "memory.max", limit_value(limit))
            swap_max = v2_swap_max(limit, swap)
            if swap_max is not None and self.has("memory", "memory.swap.max"):
                self.write("memory", "memory.swap.max", swap_max)
            elif swap_max not in (None, MAX, "0"):  # unlimited or no swap: nothing to do without it, as runc
                raise CgroupError("memory.swap cannot be applied: this kernel has no swap accounting "
                                  "(no memory.swap.max)", "leave swap unset, or equal to the limit (no swap)")
            if reservation is not None:
                self.write("memory", "memory.low", limit_value(reservation))
            return
        # v1 wants limit <= memsw (memory+swap) after every single write, so the order
        # depends on the values already there (as runc's setMemoryAndSwap does it).
        memsw = self.has("memory", "memory.memsw.limit_in_bytes")
        if limit == -1 and swap is None and memsw:
            swap = -1  # unlimited memory: unlimited memory+swap too, or the kernel refuses
        if not memsw and swap not in (None, -1):
            raise CgroupError("memory.swap cannot be applied: this kernel has no swap accounting "
                              "(no memory.memsw.limit_in_bytes)", "leave swap unset, or boot with swapaccount=1")
        if not memsw:
            swap = None
        if limit is not None and swap is not None and \
                (swap == -1 or int(self.read("memory", "memory.limit_in_bytes")) < swap):
            self.write("memory", "memory.memsw.limit_in_bytes", swap)  # raising: memsw first
            self.write("memory", "memory.limit_in_bytes", limit)
        else:
            if limit is not None:
                self.write("memory", "memory.limit_in_bytes", limit)
            if swap is not None:
                self.write("memory", "memory.memsw.limit_in_bytes", swap)
        if reservation is not None:
            self.write("memory", "memory.soft_limit_in_bytes", reservation)

    def set_memory_v1_extras(self, swappiness: int | None = None, disable_oom_killer: bool = False,
                             use_hierarchy: bool | None = None) -> None:
        """v1-only memory knobs (cgroup v2 has none of these files)."""
        if self.version == 2:
            raise CgroupError("memory swappiness, disableOOMKiller and useHierarchy are cgroup v1 files",
                              "cgroup v2 has no equivalent: leave them unset there")
        if disable_oom_killer:
            self._write_known("memory", "memory.oom_control", 1, "memory.disableOOMKiller",
                              "this kernel's memory controller cannot disable the OOM killer")
        if swappiness is not None and swappiness != -1:
            self._write_known("memory", "memory.swappiness", swappiness, "memory.swappiness",
                              "this kernel has no per-group swappiness")
        if use_hierarchy is not None:
            self._write_known("memory", "memory.use_hierarchy", int(use_hierarchy), "memory.useHierarchy",
                              "this kernel has no memory.use_hierarchy")

    def set_cpu(self, quota: int | None = None, period: int | None = None, shares: int | None = None,
                cpus: str | None = None, mems: str | None = None, *, burst: int | None = None,
                idle: int | None = None, rt_runtime: int | None = None, rt_period: int | None = None) -> None:
        """CPU time: CFS quota/period/burst (microseconds), shares (v2 weight), idle, real-time
        runtime/period (v1 only), and the cpuset. None leaves a value as it is."""
        if self.version == 2:
            if rt_runtime or rt_period:
                raise CgroupError("cpu.realtimeRuntime/realtimePeriod cannot be applied: "
                                  f"{WHY_NOT_ON_V2['cpu.realtimeRuntime']}", "leave them unset on cgroup v2")
            self._set_cpu_v2(quota, period, shares, burst, idle)
        else:
            self._set_cpu_v1(quota, period, shares, burst, idle)
            self._set_rt(rt_runtime, rt_period)
        if cpus:
            self.write("cpuset", "cpuset.cpus", cpus)
        if mems:
            self.write("cpuset", "cpuset.mems", mems)

    def _set_cpu_v2(self, quota: int | None, period: int | None, shares: int | None, burst: int | None,
                    idle: int | None) -> None:
        if idle is not None:
            self._write_known("cpu", "cpu.idle", idle, "cpu.idle", "SCHED_IDLE groups need Linux 5.15 or later")
        if shares:
            self.write("cpu", "cpu.weight", shares_to_weight(shares))
        burst_done = burst is None
        if burst is not None:
            if not self.has("cpu", "cpu.max.burst"):
                raise CgroupError("cpu.burst cannot be applied: this kernel has no cpu.max.burst",
                                  "CFS burst needs Linux 5.14 or later")
            burst_done = self._write_or_defer("cpu", "cpu.max.burst", burst, quota is not None)
        if quota is not None or period is not None:
            self.write("cpu", "cpu.max", f"{limit_value(quota)} {period or 100000}")
        if not burst_done:
            self.write("cpu", "cpu.max.burst", burst)  # type: ignore[arg-type]

    def _set_cpu_v1(self, quota: int | None, period: int | None, shares: int | None, burst: int | None,
                    idle: int | None) -> None:
        if shares:
            self.write("cpu", "cpu.shares", shares)
            got = int(self.read("cpu", "cpu.shares"))  # the kernel clamps silently: say so, as runc
            if got != shares:
                raise CgroupError(f"cpu.shares {shares} is out of range: the kernel set {got}",
                                  "cpu.shares takes 2 to 262144")
        defer = quota is not None
        period_done = period is None or self._write_or_defer("cpu", "cpu.cfs_period_us", period, defer)
        burst_done = burst is None
        if burst is not None:
            if not self.has("cpu", "cpu.cfs_burst_us"):  # runc skips it silently; labkit refuses
                raise CgroupError("cpu.burst cannot be applied: this kernel has no cpu.cfs_burst_us",
                                  "CFS burst needs Linux 5.14 or later")
            burst_done = self._write_or_defer("cpu", "cpu.cfs_burst_us", burst, defer)
        if quota is not None:
            self.write("cpu", "cpu.cfs_quota_us", quota if quota > 0 else -1)
        if not period_done:
            self.write("cpu", "cpu.cfs_period_us", period)  # type: ignore[arg-type]
        if not burst_done:
            self.write("cpu", "cpu.cfs_burst_us", burst)  # type: ignore[arg-type]
        if idle is not None:
            self._write_known("cpu", "cpu.idle", idle, "cpu.idle", "SCHED_IDLE groups need Linux 5.15 or later")

    def _set_rt(self, runtime: int | None, period: int | None) -> None:
        """v1 real-time group scheduling; a period the old runtime does not fit is retried after it."""
        hint = ("a group gets real-time time only out of its parents' cpu.rt_runtime_us, and labkit's "
                "parents have none (0): grant it there first (as root), or leave it unset")
        for name in (("cpu.rt_period_us",) if period else ()) + (("cpu.rt_runtime_us",) if runtime else ()):
            if not self.has("cpu", name):
                raise CgroupError(f"cpu.realtime* cannot be applied: this kernel has no {name}",
                                  "real-time group scheduling needs CONFIG_RT_GROUP_SCHED")
        period_done = not period or self._write_or_defer("cpu", "cpu.rt_period_us", period, bool(runtime))
        try:
            if runtime:
                self.write("cpu", "cpu.rt_runtime_us", runtime)
            if not period_done:
                self.write("cpu", "cpu.rt_period_us", period)  # type: ignore[arg-type]
        except CgroupError as err:
            if getattr(err, "errno", None) != errno.EINVAL:
                raise
            raise CgroupError(f"cpu.realtimeRuntime {runtime}: {err.what}", hint) from None

    def set_pids(self, limit: int | None) -> None:
        if limit is not None:
            self.write("pids", "pids.max", limit_value(limit if limit > 0 else None))

    def set_io_bps(self, device: str, read_bps: int | None = None, write_bps: int | None = None) -> None:
        """Throttle a block device ("MAJ:MIN", a whole disk) in bytes per second."""
        self.set_io_limits(device, rbps=read_bps, wbps=write_bps)

    def set_io_limits(self, device: str, rbps: int | None = None, wbps: int | None = None,
                      riops: int | None = None, wiops: int | None = None) -> None:
        """Throttle a whole disk ("MAJ:MIN"): bytes (rbps, wbps) or operations (riops, wiops) per second."""
        limits = {k: v for k, v in (("rbps", rbps), ("wbps", wbps), ("riops", riops), ("wiops", wiops))
                  if v is not None}
        try:
            self._set_io_limits(device, limits)
        except CgroupError as err:
            if getattr(err, "errno", None) != errno.ENODEV:
                raise
            raise CgroupError(f"IO throttling is not available here: {device} is not a whole disk "
                              "(the kernel answered ENODEV)",
                              "throttles name a whole disk by MAJ:MIN (see /proc/partitions or lsblk); "
                              "labkit.cgroups.block_device(path) finds the one a path lives on") from None

    def _set_io_limits(self, device: str, limits: dict[str, int]) -> None:
        if self.version == 2 and not self.has("io", "io.max"):
            raise CgroupError(f"IO throttling is not available here: no io.max in {self._dir('io')}",
                              "the io controller is not enabled for this group (cgroup.subtree_control "
                              "of its parents); see `labkit doctor`")
        if not os.path.exists(os.path.join(SYS_DEV_BLOCK, device)):  # cgroup v2 may accept any MAJ:MIN
            raise CgroupError(f"IO throttling is not available here: there is no block device {device}",
                              "throttles name a whole disk by MAJ:MIN (see /proc/partitions or lsblk); "
                              "labkit.cgroups.block_device(path) finds the one a path lives on")
        if self.version == 2:
            if limits:
                self.write("io", "io.max", " ".join([device] + [f"{k}={v}" for k, v in limits.items()]))
            return
        for key, value in limits.items():
            self.write("blkio", V1_THROTTLE_FILES[key], f"{device} {value}")

    def set_io_weight(self, weight: int | None = None, leaf_weight: int | None = None,
                      devices: Iterable[dict[str, Any]] = ()) -> None:
        """Proportional IO: a default weight (10-1000) and per-disk ones ({major, minor, weight})."""
        if self.version == 2:
            self._set_io_weight_v2(weight, leaf_weight, list(devices))
            return
        # As runc: CFQ's blkio.weight where it exists (before Linux 5.0), else BFQ's.
        prefix = "blkio" if self.has("blkio", "blkio.weight") else "blkio.bfq"
        hint = "proportional IO needs the BFQ IO scheduler's blkio files (modprobe bfq)"
        if weight:
            self._write_known("blkio", f"{prefix}.weight", weight, "blockIO.weight", hint)
        if leaf_weight:
            self._write_known("blkio", "blkio.leaf_weight", leaf_weight, "blockIO.leafWeight",
                              "leaf weights were CFQ's, and CFQ is gone since Linux 5.0")
        for dev in devices:
            number = f"{dev['major']}:{dev['minor']}"
            if dev.get("weight"):
                self._write_known("blkio", f"{prefix}.weight_device", f"{number} {dev['weight']}",
                                  "blockIO.weightDevice", hint)
            if dev.get("leafWeight"):
                self._write_known("blkio", "blkio.leaf_weight_device", f"{number} {dev['leafWeight']}",
                                  "blockIO.weightDevice.leafWeight",
                                  "leaf weights were CFQ's, and CFQ is gone since Linux 5.0")

    def _set_io_weight_v2(self, weight: int | None, leaf_weight: int | None, devices: list[dict[str, Any]]) -> None:
        if leaf_weight or any(dev.get("leafWeight") for dev in devices):
            raise CgroupError(f"blockIO leafWeight cannot be applied: {WHY_NOT_ON_V2['blockIO.leafWeight']}",
                              "leave leafWeight unset on cgroup v2")
        bfq = self.read("io", "io.bfq.weight") if self.has("io", "io.bfq.weight") else None
        if weight and bfq is not None:  # BFQ takes the v1 scale as it is, as runc writes it
            self.write("io", "io.bfq.weight", weight)
        elif weight:
            self._write_known("io", "io.weight", blkio_to_io_weight(weight), "blockIO.weight",
                              "the io controller is not enabled for this group")
        weighted = [dev for dev in devices if dev.get("weight")]
        if weighted and (bfq is None or bfq.split()[0] != "default"):  # runc skips them silently
            raise CgroupError("blockIO.weightDevice cannot be applied: per-disk weights need the BFQ "
                              "scheduler's io.bfq.weight (Linux 5.4 or later)",
                              "set the BFQ scheduler on the disk (/sys/block/DISK/queue/scheduler), "
                              "or use blockIO.weight")
        for dev in weighted:
            self.write("io", "io.bfq.weight", f"{dev['major']}:{dev['minor']} {dev['weight']}")

    def set_hugepage_limit(self, page_size: str, limit: int) -> None:
        """Bytes of huge pages of one size ("2MB", "1GB") the group may use; its reservations too."""
        prefix, suffix = f"hugetlb.{page_size}", ".max" if self.version == 2 else ".limit_in_bytes"
        self._write_known("hugetlb", prefix + suffix, limit, f"hugepageLimits {page_size}",
                          "this machine has no huge pages of that size: see /sys/kernel/mm/hugepages")
        if self.has("hugetlb", prefix + ".rsvd" + suffix):  # Linux 5.7+; runc skips it where missing
            self.write("hugetlb", prefix + ".rsvd" + suffix, limit)

    def set_network(self, class_id: int | None = None, priorities: Iterable[dict[str, Any]] = ()) -> None:
        """v1 net_cls (a class id packets of the group carry) and net_prio (per-interface priorities)."""
        if self.version == 2:
            raise CgroupError(f"network cannot be applied: {WHY_NOT_ON_V2['network.classID']}",
                              "leave linux.resources.network unset on cgroup v2")
        if class_id:
            self.write("net_cls", "net_cls.classid", class_id)
        for entry in priorities:
            self.write("net_prio", "net_prio.ifpriomap", f"{entry['name']} {entry['priority']}")

    def set_rdma(self, limits: dict[str, dict[str, int]]) -> None:
        """Per RDMA device: how many HCA handles and objects the group may hold."""
        for device, limit in limits.items():
            parts = [device] + [f"{name}={limit[key]}" for key, name in (("hcaHandles", "hca_handle"),
                                                                          ("hcaObjects", "hca_object"))
                                if limit.get(key) is not None]
            self.write("rdma", "rdma.max", " ".join(parts))

    def set_unified(self, values: dict[str, str]) -> None:
        """cgroup v2 files by name ("memory.high": "1G"), written as given, one line at a time."""
        if self.version == 1:
            raise CgroupError("unified cannot be applied: it names cgroup v2 files and this group is v1",
                              "use the v1 fields (memory, cpu, ...) instead")
        available = self.controllers() or set()
        for key, value in values.items():
            controller = key.split(".", 1)[0]
            if not self.has("", key):  # a missing file would be refused by the kernel (EPERM/ENOENT)
                why = f"controller {controller!r} is not available to the group" \
                    if controller not in available and controller != "cgroup" else "no such file in the group"
                raise CgroupError(f"unified {key!r} cannot be set: {why}",
                                  f"see the files in {self.dirs['']} and `labkit doctor`")
            for line in [part for part in value.split("\n") if part] or [value]:  # as runc: a line a write
                self.write("", key, line)

    def apply(self, resources: dict[str, Any] | None) -> None:
        """Apply OCI linux.resources, as runc does: every field is applied, or CgroupError names it.

        Refused before anything is written: malformed fields, fields this cgroup version
        has no file for (runc ignores some of them silently), limits for a controller the
        group lacks. memory.kernel and memory.kernelTCP are ignored with a warning, as by runc."""
        from . import devices  # devices imports this module

        resources = resources or {}
        _check_shape(resources)
        found = problems(resources, self.version, self.controllers())
        if found:
            raise CgroupError("; ".join(found), f"fix linux.resources in config.json (this host has cgroup "
                                                f"v{self.version}; `labkit doctor` lists its controllers)")
        _warn_ignored(resources)
        get = lambda section: resources.get(section) or {}  # noqa: E731
        with _naming("memory"):
            self._apply_memory(get("memory"))
        with _naming("cpu"):
            cpu = get("cpu")
            self.set_cpu(*(_unset_zero(cpu.get(k)) for k in ("quota", "period", "shares")), cpu.get("cpus"),
                         cpu.get("mems"), burst=cpu.get("burst"), idle=cpu.get("idle"),
                         rt_runtime=_unset_zero(cpu.get("realtimeRuntime")),
                         rt_period=_unset_zero(cpu.get("realtimePeriod")))
        with _naming("pids"):
            self.set_pids(get("pids").get("limit"))
        with _naming("blockIO"):
            self._apply_block_io(get("blockIO"))
        with _naming("hugepageLimits"):
            for entry in resources.get("hugepageLimits") or []:
                self.set_hugepage_limit(entry["pageSize"], entry["limit"])
        with _naming("network"):
            if _unset_zero(get("network").get("classID")) is not None or get("network").get("priorities"):
                self.set_network(get("network").get("classID"), get("network").get("priorities") or [])
        with _naming("rdma"):
            self.set_rdma(get("rdma"))
        with _naming("devices"):
            if resources.get("devices"):
                devices.apply(self._dir("devices"), self.version, resources["devices"])
        with _naming("unified"):  # last, as runc: a unified file overrides what a field wrote
            if get("unified"):
                self.set_unified(get("unified"))

    def _apply_memory(self, mem: dict[str, Any]) -> None:
        limit, swap, reservation = (_unset_zero(mem.get(k)) for k in ("limit", "swap", "reservation"))
        if mem.get("checkBeforeUpdate"):
            self._check_usage(limit, swap)
        if (limit, swap, reservation) != (None, None, None):
            self.set_memory(limit, swap, reservation)
        extras = (mem.get("swappiness"), bool(mem.get("disableOOMKiller")), mem.get("useHierarchy"))
        if self.version == 1 and extras != (None, False, None):
            self.set_memory_v1_extras(*extras)

    def _check_usage(self, limit: int | None, swap: int | None) -> None:
        """checkBeforeUpdate: refuse a limit the group already uses, as runc does (on v2)."""
        try:
            usage = self.memory_usage()
        except (OSError, CgroupError):
            return  # best effort, as runc's
        for name, value in (("swap", swap), ("limit", limit)):
            if value is not None and 0 < value <= usage:
                raise CgroupError(f"memory.{name} {value} is not above the group's usage {usage} "
                                  "(checkBeforeUpdate)", "raise the limit, or free memory in the container first")

    def _apply_block_io(self, block: dict[str, Any]) -> None:
        weight, leaf = _unset_zero(block.get("weight")), _unset_zero(block.get("leafWeight"))
        if weight is not None or leaf is not None or block.get("weightDevice"):
            self.set_io_weight(weight, leaf, block.get("weightDevice") or [])
        for key, name in (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
                          ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops")):
            for dev in block.get(key) or []:
                self.set_io_limits(f"{dev['major']}:{dev['minor']}", **{name: dev["rate"]})

    # --- accounting ---
    def memory_usage(self) -> int:
        f = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return int(self.read("memory", f))

    def memory_peak(self) -> int | None:
        f = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return int(self.read("memory", f)) if self.has("memory", f) else None

    def memory_limit(self) -> int | None:
        raw = self.read("memory", "memory.max" if self.version == 2 else "memory.limit_in_bytes")
        return None if raw == MAX or int(raw) >= 2**62 else int(raw)

    def oom_kills(self) -> int:
        f = "memory.events" if self.version == 2 else "memory.oom_control"
        return parse_flat_keyed(self.read("memory", f)).get("oom_kill", 0)

    def cpu_stats(self) -> dict[str, int]:
        """usage_usec, nr_periods, nr_throttled, throttled_usec (v1 mapped to v2 names)."""
        stat = parse_flat_keyed(self.read("cpu", "cpu.stat"))
        if self.version == 2:
            return stat
        usage_ns = int(self.read("cpuacct", "cpuacct.usage")) if "cpuacct" in self.dirs else 0
        return {"usage_usec": usage_ns // 1000, "nr_periods": stat.get("nr_periods", 0),
                "nr_throttled": stat.get("nr_throttled", 0),
                "throttled_usec": stat.get("throttled_time", 0) // 1000}

    def pids_current(self) -> int:
        return int(self.read("pids", "pids.current"))

    def pids_max(self) -> int | None:
        raw = self.read("pids", "pids.max")
        return None if raw == MAX else int(raw)

    def stats(self) -> dict[str, Any]:
        """`docker stats`-style numbers, straight from the kernel's files."""
        return {"memory_usage": self.memory_usage(), "memory_limit": self.memory_limit(),
                "memory_peak": self.memory_peak(), "oom_kills": self.oom_kills(),
                "pids": self.pids_current(), **{f"cpu_{k}": v for k, v in self.cpu_stats().items()}}

    # --- freezing ---
    def freeze(self) -> None:
        if self.version == 2:
            self.write("", "cgroup.freeze", 1)
        else:
            self.write("freezer", "freezer.state", "FROZEN")
        self._wait_frozen(True)

    def thaw(self) -> None:
        if self.version == 2:
            self.write("", "cgroup.freeze", 0)
        else:
            self.write("freezer", "freezer.state", "THAWED")
        self._wait_frozen(False)

    def frozen(self) -> bool:
        if self.version == 2:
            return parse_flat_keyed(self.read("", "cgroup.events")).get("frozen") == 1
        return self.read("freezer", "freezer.state") == "FROZEN"

    def _wait_frozen(self, want: bool, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.frozen() != want:
            if time.monotonic() > deadline:
                raise CgroupError(f"cgroup {self.name} did not become {'frozen' if want else 'thawed'}",
                                  "a process may be stuck in an uninterruptible sleep (D state)")
            time.sleep(0.005)

    # --- removal ---
    def kill_all(self) -> None:
        """SIGKILL every process inside. On v1 a frozen task only dies once thawed."""
        if self.version == 2 and self.has("", "cgroup.kill"):
            self.write("", "cgroup.kill", 1)
        else:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.version == 1 and "freezer" in self.dirs and self.frozen():
            self.thaw()

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what is left, wait for it to go, rmdir in every hierarchy."""
        deadline = time.monotonic() + timeout
        for d in sorted(set(self.dirs.values()), key=len, reverse=True):
            while os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError as err:
                    if err.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(f"removing cgroup {d} failed: {os.strerror(err.errno)}",
                                          "a process is still inside: kill it first") from None
                    self.kill_all()
                    time.sleep(0.01)

    def __repr__(self) -> str:
        where = self.dirs.get("") or ", ".join(sorted(set(self.dirs.values())))
        return f"Cgroup({self.name!r}, v{self.version}, {where})"


V1_THROTTLE_FILES = {"rbps": "blkio.throttle.read_bps_device", "wbps": "blkio.throttle.write_bps_device",
                     "riops": "blkio.throttle.read_iops_device", "wiops": "blkio.throttle.write_iops_device"}
_EXAMPLES = {"memory": "{'limit': 67108864}", "cpu": "{'quota': 50000, 'period': 100000}",
             "pids": "{'limit': 32}", "blockIO": "{'throttleReadBpsDevice': [{'major': 8, 'minor': 0, 'rate': 1048576}]}",
             "network": "{'classID': 1048577}", "rdma": "{'mlx5_1': {'hcaHandles': 3}}",
             "unified": "{'memory.high': '1073741824'}"}


def _unset_zero(value: int | None) -> int | None:
    """runc treats 0 as "not set" for limits, shares, quota, period and weights."""
    return None if value == 0 else value


def _warn_ignored(resources: dict[str, Any]) -> None:
    memory = resources.get("memory") or {}
    ignored = [k for k in ("kernel", "kernelTCP") if memory.get(k) is not None]
    if ignored:
        warnings.warn(f"linux.resources.memory.{' and '.join(ignored)} ignored, as runc ignores them: kernel "
                      "memory is counted in the memory limit (separate limits are deprecated since Linux 5.4 "
                      "and cgroup v2 has none)", stacklevel=3)


@contextlib.contextmanager
def _naming(section: str) -> Iterator[None]:
    """An error while applying one section names it (linux.resources.<section>: ...)."""
    try:
        yield
    except CgroupError as err:
        if err.what.startswith("linux.resources"):
            raise
        named = CgroupError(f"linux.resources.{section}: {err.what}", err.hint)
        named.errno = getattr(err, "errno", None)  # type: ignore[attr-defined]
        raise named from None
    except OSError as err:  # a failed system call (bpf) or a file the group lacks
        hint = getattr(err, "hint", "") or "see `labkit doctor`"
        named = CgroupError(f"linux.resources.{section}: {getattr(err, 'what', err)}", hint)
        named.errno = err.errno  # type: ignore[attr-defined]
        raise named from None


def _check_shape(resources: Any) -> None:
    """OCI linux.resources and each of its sections are objects (dicts): say so if not."""
    if not isinstance(resources, dict):
        raise CgroupError(f"linux.resources must be an object, not {type(resources).__name__}",
                          "see the OCI runtime spec, config-linux.md: e.g. {'pids': {'limit': 32}}")
    for key, example in _EXAMPLES.items():
        if resources.get(key) is not None and not isinstance(resources[key], dict):
            raise CgroupError(f"linux.resources.{key} must be an object, not {resources[key]!r}",
                              f"write it as in the OCI runtime spec, e.g. {key!r}: {example}")


def _write_hint(err: int, filename: str) -> str:
    if err == errno.EINVAL and filename == "memory.limit_in_bytes":
        return ("cgroup v1 keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes (memory+swap): "
                "set swap too, e.g. set_memory(limit=L, swap=L)")
    if err == errno.ENODEV:
        return "no such block device here, or it is a partition: throttles take a whole disk's MAJ:MIN"
    if err == errno.EINVAL:
        return f"the kernel refused the value for {filename}: check its format and range"
    if err == errno.EBUSY:
        return "the limit is below what the group already uses, or the group has children"
    if err == errno.ENOENT:
        return "this controller is not enabled for the group (v2: cgroup.subtree_control)"
    if err == errno.EACCES or err == errno.EPERM:
        return "run as root"
    return "see the kernel's cgroup documentation"


# --- creating ---------------------------------------------------------------------------------
def _mkdir(path: str) -> bool:
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False


def _enable_v2_controllers(directory: str, wanted: Iterable[str]) -> None:
    with open(os.path.join(directory, "cgroup.controllers")) as f:
        available = set(f.read().split())
    with open(os.path.join(directory, "cgroup.subtree_control")) as f:
        enabled = set(f.read().split())
    missing = [c for c in wanted if c in available and c not in enabled]
    if missing:
        with open(os.path.join(directory, "cgroup.subtree_control"), "w") as f:
            f.write(" ".join(f"+{c}" for c in missing))


def create(name: str, root: str = CGROUP_ROOT, parent: str = PARENT) -> Cgroup:
    """Create (or adopt) the group `parent/name` with every controller usable.

    `name` may contain '/', and an absolute name (an OCI cgroupsPath like
    "/labkit-x/y") is taken from the hierarchy root instead of labkit's parent.
    """
    for attempt in range(20):
        try:
            if version(root) == 2:
                return _create_v2(name, root, parent)
            return _create_v1(name, root, parent)
        except FileNotFoundError as err:
            # Another container's exit removed the shared (then empty) labkit parent
            # between our mkdir of it and of our group: make it again.
            if attempt == 19:
                raise CgroupError(f"creating cgroup {name} failed: {err.strerror}: {err.filename}",
                                  "a parent cgroup keeps disappearing; is something removing it?") from None
            time.sleep(0.005)
    raise AssertionError("unreachable")


def _relative(name: str, base: str) -> str:
    return name.lstrip("/") if name.startswith("/") else os.path.join(base, name)


def _v2_wanted(directory: str, root: str) -> tuple[str, ...]:
    # The optional ones only below the root: in labkit's own groups, where the root passes them on.
    return V2_CONTROLLERS if directory == root else V2_CONTROLLERS + V2_OPTIONAL


def _create_v2(name: str, root: str, parent: str) -> Cgroup:
    rel = _relative(name, parent)
    current = root
    parts = rel.split("/")
    for part in parts[:-1]:  # every ancestor must pass the controllers down
        _enable_v2_controllers(current, _v2_wanted(current, root))
        current = os.path.join(current, part)
        _mkdir(current)
    _enable_v2_controllers(current, _v2_wanted(current, root))
    leaf = os.path.join(current, parts[-1])
    _mkdir(leaf)
    return Cgroup(name, 2, {"": leaf})  # the name as given, as on v1: remove_parents(name) needs it


def _create_v1(name: str, root: str, parent: str, mounts: dict[str, str] | None = None,
               own: dict[str, str] | None = None) -> Cgroup:
    mounts = v1_mounts() if mounts is None else mounts
    own = own_v1_paths() if own is None else own
    dirs = {}
    for controller, point in mounts.items():
        if not point.startswith(root):
            continue
        base = own.get(controller, "/").lstrip("/")
        rel = name.lstrip("/") if name.startswith("/") else os.path.join(base, parent, name)
        path = point
        for part in rel.split("/"):
            path = os.path.join(path, part)
            if _mkdir(path) and controller == "cpuset":
                _inherit_cpuset(path)
        dirs[controller] = path
    if not dirs:
        raise CgroupError("no cgroup hierarchy is mounted", "mount cgroups on /sys/fs/cgroup (see `labkit doctor`)")
    return Cgroup(name, 1, dirs)


def _inherit_cpuset(path: str) -> None:
    """A new v1 cpuset starts with no CPUs or memory nodes: copy the parent's."""
    parent = os.path.dirname(path)
    for f in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(parent, f)) as src:
            value = src.read().strip()
        with open(os.path.join(path, f), "w") as dst:
            dst.write(value)


def remove_parents(name: str, root: str = CGROUP_ROOT, parent: str = PARENT) -> None:
    """rmdir labkit's (now empty) parent directories left by `create`; others stay.

    Only parents named labkit* are labkit's: an absolute cgroupsPath like
    "/system.slice/x" never removes system.slice, even when it is empty.
    """
    absolute = name.startswith("/")
    if version(root) == 2:
        bases = [root]
    elif absolute:  # taken from each hierarchy's root, as _create_v1 made it
        bases = [p for p in v1_mounts().values() if p.startswith(root)]
    else:
        own = own_v1_paths()
        bases = [os.path.join(p, own.get(c, "/").lstrip("/")) for c, p in v1_mounts().items() if p.startswith(root)]
    rel = os.path.dirname(_relative(name, parent))
    for base in set(bases):
        parts = rel.split("/") if rel else []
        while parts and parts[-1].startswith("labkit"):
            try:
                os.rmdir(os.path.join(base, *parts))
            except OSError:
                break
            parts.pop()


def block_device(path: str = "/") -> str:
    """"MAJ:MIN" of the whole disk that holds `path`: what io.max / blkio throttles name."""
    dev = os.stat(path).st_dev
    number = f"{os.major(dev)}:{os.minor(dev)}"
    sysfs = f"/sys/dev/block/{number}"
    if os.major(dev) == 0 or not os.path.exists(sysfs):
        raise CgroupError(f"IO throttling is not available here: {path} is not on a block device ({number}; "
                          "a tmpfs, overlay, btrfs subvolume or shared folder)",
                          "pick a path on a real disk (see lsblk), or make a loop device")
    if os.path.exists(os.path.join(sysfs, "partition")):  # throttles apply to the whole disk
        with open(os.path.join(os.path.realpath(sysfs), os.pardir, "dev")) as f:
            return f.read().strip()
    return number


# --- the cgroup mount inside a container, as runc makes it -----------------------------------
# runc's mountCgroupV1/mountCgroupV2 (rootfs_linux.go): on v2 one cgroup2 mount; on v1 a
# tmpfs with one mount per hierarchy on it (named after the host's mount point, so
# "cpu,cpuacct" plus the links cpu and cpuacct), each a fresh mount of that hierarchy
# inside a cgroup namespace, else a bind mount of the container's own group in it.
@dataclasses.dataclass(frozen=True)
class MountStep:
    """One step; `target` is a path in the container, `fallback` is tried on EPERM/EBUSY."""

    kind: str  # "mount", "bind" or "symlink" (source is then the link's text)
    target: str
    source: str = ""
    fstype: str | None = None
    flags: int = 0
    data: str | None = None
    fallback: "MountStep | None" = None


def v1_hierarchies(mounts: list["mountinfo.Mount"], own: dict[str, str]) -> list[tuple["mountinfo.Mount", list[str]]]:
    """Each v1 hierarchy this process is in, once: (its first mount, its subsystems)."""
    seen: set[str] = set()
    found = []
    for m in mounts:
        if m.fstype != "cgroup":  # not cgroup2: a hybrid host's unified tree is not passed on, as runc
            continue
        subsystems = [opt for opt in m.super_options if opt in own and opt not in seen]
        if subsystems:
            seen.update(subsystems)
            found.append((m, subsystems))
    return found


def plan_cgroup_mounts(destination: str, options: Iterable[str], cgroup_version: int,
                       mounts: list["mountinfo.Mount"], own: dict[str, str], cgroupns: bool,
                       v2_dir: str | None = None) -> list[MountStep]:
    """The mounts and links that make `destination` the container's cgroup tree (pure).

    `mounts`: the mount table (mountinfo.parse); `own`: controller -> this process's
    cgroup path (/proc/self/cgroup); `v2_dir`: the container's cgroup v2 directory."""
    from .rootfs import parse_mount_options

    opts = parse_mount_options(options)
    if cgroup_version == 2:  # where cgroup2 may not be mounted (a user namespace without cgroupns): bind
        bind = MountStep("bind", destination, v2_dir if cgroupns and v2_dir else CGROUP_ROOT, flags=opts.flags)
        return [MountStep("mount", destination, "cgroup", "cgroup2", opts.flags, opts.data or None, bind)]
    steps = [MountStep("mount", destination, "tmpfs", "tmpfs", _CGROUP_MOUNT_FLAGS, "mode=755")]
    links = []
    for m, subsystems in v1_hierarchies(mounts, own):
        name = os.path.basename(m.point)
        target = os.path.join(destination, name)
        if cgroupns:  # the namespace makes the container's own group the root of a fresh mount
            source = "systemd" if subsystems == ["name=systemd"] else "cgroup"
            steps.append(MountStep("mount", target, source, "cgroup", _CGROUP_MOUNT_FLAGS | (opts.flags & _RDONLY),
                                   ",".join(subsystems)))
        else:
            path = os.path.normpath(os.path.join(m.point, os.path.relpath(own[subsystems[0]], m.root)))
            steps.append(MountStep("bind", target, path, flags=opts.flags))
        if "," in name:
            links += [MountStep("symlink", os.path.join(destination, sub), name) for sub in name.split(",")]
    return steps + links


_CGROUP_MOUNT_FLAGS = 0x8 | 0x2 | 0x4  # MS_NOEXEC | MS_NOSUID | MS_NODEV: runc's defaultMountFlags
_RDONLY = 0x1


def in_own_cgroupns() -> bool:
    """Whether this process has a cgroup namespace of its own (not the host's, as PID 1 sees it)."""
    try:
        return os.stat("/proc/self/ns/cgroup").st_ino != os.stat("/proc/1/ns/cgroup").st_ino
    except OSError:
        return False


def mount_cgroups(rootfs: str, destination: str, options: list[str], group: Cgroup | None,
                  cgroupns: bool | None = None) -> None:
    """Mount the cgroup tree at `destination` under `rootfs`, as runc does for a "cgroup" mount.

    Run by the container's init in its own mount namespace, after it joined its cgroup
    and before pivot_root. `ro` makes each hierarchy read-only (the v1 tmpfs stays rw,
    as runc leaves it). `cgroupns`: whether the init has its own cgroup namespace
    (by default: compared with PID 1's)."""
    from . import mountinfo

    steps = plan_cgroup_mounts(destination, options, version(), mountinfo.read(), own_v1_paths(),
                               in_own_cgroupns() if cgroupns is None else cgroupns,
                               group.dirs.get("") if group is not None else None)
    from .rootfs import parse_mount_options

    propagation = parse_mount_options(options).propagation
    for step in steps:
        _perform(rootfs, step, propagation)


def _perform(root: str, step: MountStep, propagation: int) -> None:
    from . import sys as lsys
    from .rootfs import secure_join

    target = secure_join(root, step.target)
    if step.kind == "symlink":
        if not os.path.lexists(target):
            os.symlink(step.source, target)
        return
    os.makedirs(target, exist_ok=True)
    try:
        if step.kind == "bind":
            _bind(step.source, target, step.flags)
        else:
            lsys.mount(step.source, target, step.fstype, step.flags, step.data)
    except OSError as err:
        if step.fallback is None or err.errno not in (errno.EPERM, errno.EBUSY):
            raise
        _bind(step.fallback.source, target, step.fallback.flags)
    if propagation:
        lsys.mount(None, target, None, propagation)


def _bind(source: str, target: str, flags: int) -> None:
    """A bind mount with its flags (ro, nosuid, ...): they only take effect on a remount."""
    from . import sys as lsys

    lsys.mount(source, target, None, lsys.MS_BIND | lsys.MS_REC)
    if flags & ~(lsys.MS_BIND | lsys.MS_REC):
        lsys.mount(None, target, None, lsys.MS_BIND | lsys.MS_REMOUNT | flags)
