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
are translated per backend, the same way runc translates them.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time
from typing import Any, Iterable

from .errors import LabkitError

CGROUP_ROOT = "/sys/fs/cgroup"
SYS_DEV_BLOCK = "/sys/dev/block"  # MAJ:MIN entries of the block devices that exist
PARENT = "labkit"
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices")
V2_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")
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
            if reservation is not None:
                self.write("memory", "memory.low", limit_value(reservation))
            return
        # v1 wants limit <= memsw (memory+swap) after every single write, so the order
        # depends on the values already there (as runc's setMemoryAndSwap does it).
        memsw = self.has("memory", "memory.memsw.limit_in_bytes")
        if limit == -1 and swap is None and memsw:
            swap = -1  # unlimited memory: unlimited memory+swap too, or the kernel refuses
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

    def set_cpu(self, quota: int | None = None, period: int | None = None, shares: int | None = None,
                cpus: str | None = None, mems: str | None = None) -> None:
        if self.version == 2:
            if quota is not None or period is not None:
                self.write("cpu", "cpu.max", f"{limit_value(quota)} {period or 100000}")
            if shares:
                self.write("cpu", "cpu.weight", shares_to_weight(shares))
        else:
            if period is not None:
                self.write("cpu", "cpu.cfs_period_us", period)
            if quota is not None:
                self.write("cpu", "cpu.cfs_quota_us", quota if quota > 0 else -1)
            if shares:
                self.write("cpu", "cpu.shares", shares)
        if cpus:
            self.write("cpuset", "cpuset.cpus", cpus)
        if mems:
            self.write("cpuset", "cpuset.mems", mems)

    def set_pids(self, limit: int | None) -> None:
        if limit is not None:
            self.write("pids", "pids.max", limit_value(limit if limit > 0 else None))

    def set_io_bps(self, device: str, read_bps: int | None = None, write_bps: int | None = None) -> None:
        """Throttle a block device ("MAJ:MIN", a whole disk) in bytes per second."""
        try:
            self._set_io_bps(device, read_bps, write_bps)
        except CgroupError as err:
            if getattr(err, "errno", None) != errno.ENODEV:
                raise
            raise CgroupError(f"IO throttling is not available here: {device} is not a whole disk "
                              "(the kernel answered ENODEV)",
                              "throttles name a whole disk by MAJ:MIN (see /proc/partitions or lsblk); "
                              "labkit.cgroups.block_device(path) finds the one a path lives on") from None

    def _set_io_bps(self, device: str, read_bps: int | None, write_bps: int | None) -> None:
        if self.version == 2 and not self.has("io", "io.max"):
            raise CgroupError(f"IO throttling is not available here: no io.max in {self._dir('io')}",
                              "the io controller is not enabled for this group (cgroup.subtree_control "
                              "of its parents); see `labkit doctor`")
        if not os.path.exists(os.path.join(SYS_DEV_BLOCK, device)):  # cgroup v2 may accept any MAJ:MIN
            raise CgroupError(f"IO throttling is not available here: there is no block device {device}",
                              "throttles name a whole disk by MAJ:MIN (see /proc/partitions or lsblk); "
                              "labkit.cgroups.block_device(path) finds the one a path lives on")
        if self.version == 2:
            parts = [device] + ([f"rbps={read_bps}"] if read_bps is not None else []) + \
                    ([f"wbps={write_bps}"] if write_bps is not None else [])
            self.write("io", "io.max", " ".join(parts))
            return
        if read_bps is not None:
            self.write("blkio", "blkio.throttle.read_bps_device", f"{device} {read_bps}")
        if write_bps is not None:
            self.write("blkio", "blkio.throttle.write_bps_device", f"{device} {write_bps}")

    def apply(self, resources: dict[str, Any] | None) -> None:
        """Apply OCI linux.resources (memory, cpu, pids, blockIO throttles)."""
        resources = resources or {}
        _check_shape(resources)
        mem = resources.get("memory") or {}
        if mem:
            self.set_memory(mem.get("limit"), mem.get("swap"), mem.get("reservation"))
        cpu = resources.get("cpu") or {}
        if cpu:
            self.set_cpu(cpu.get("quota"), cpu.get("period"), cpu.get("shares"), cpu.get("cpus"), cpu.get("mems"))
        if resources.get("pids"):
            self.set_pids(resources["pids"].get("limit"))
        block = resources.get("blockIO") or {}
        for key, direction in (("throttleReadBpsDevice", "read"), ("throttleWriteBpsDevice", "write")):
            for dev in block.get(key) or []:
                device = f"{dev['major']}:{dev['minor']}"
                self.set_io_bps(device, **{f"{direction}_bps": dev["rate"]})

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


_EXAMPLES = {"memory": "{'limit': 67108864}", "cpu": "{'quota': 50000, 'period': 100000}",
             "pids": "{'limit': 32}", "blockIO": "{'throttleReadBpsDevice': [{'major': 8, 'minor': 0, 'rate': 1048576}]}"}


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


def _create_v2(name: str, root: str, parent: str) -> Cgroup:
    rel = _relative(name, parent)
    current = root
    parts = rel.split("/")
    for part in parts[:-1]:  # every ancestor must pass the controllers down
        _enable_v2_controllers(current, V2_CONTROLLERS)
        current = os.path.join(current, part)
        _mkdir(current)
    _enable_v2_controllers(current, V2_CONTROLLERS)
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
