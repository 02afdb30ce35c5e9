"""Preflight (`labkit doctor`), leak census (`--leaks`) and `labkit reset`.

Everything labkit makes is findable by name or place (DESIGN.md, "State on
disk"): mounts under a path component starting with "labkit", netns
"labkit-*", links "lk*"/"labkit*", cgroups "labkit*", nft table "labkit",
container state under the run roots, the namespace holders of labkit.net
(`python -m labkit.net hold`) and the host sysctls labkit.net recorded before
changing them. Nothing else is ever touched.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterator

from . import namespaces, net, procfs, settings
from .runtime import store

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        return f"{mark} {self.name}: {self.detail}" + ("" if self.ok or not self.fix else f"\n    fix: {self.fix}")


@dataclasses.dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def __str__(self) -> str:
        return "\n".join(c.line() for c in self.checks)

    def __repr__(self) -> str:
        return str(self)

    def __getitem__(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


# --- preflight -----------------------------------------------------------------------
def cgroup_version() -> int:
    """2 when /sys/fs/cgroup is the unified hierarchy, else 1 (v1 or hybrid)."""
    try:
        return 2 if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) else 1
    except OSError:
        return 1


def cgroup_controllers() -> list[str]:
    if cgroup_version() == 2:
        with open(os.path.join(CGROUP_ROOT, "cgroup.controllers")) as f:
            return sorted(f.read().split())
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = post.split()
            if fields and fields[0] == "cgroup":
                found.update(o for o in fields[2].split(",") if o in _V1_CONTROLLERS)
    return sorted(found)


_V1_CONTROLLERS = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                   "net_cls", "net_prio", "hugetlb", "perf_event", "rdma", "misc"}


def _probe_namespace(ns_type: str) -> tuple[bool, str]:
    if not os.path.exists(f"/proc/self/ns/{namespaces.proc_name(ns_type)}"):
        return False, "this kernel has no such namespace"
    result = namespaces.spawn(["true"], [ns_type], timeout=20)
    return result.returncode == 0, (result.stderr.strip().splitlines() or ["works"])[-1]


def preflight() -> Report:
    checks = [Check("root", os.geteuid() == 0, "running as root" if os.geteuid() == 0 else "not root",
                    "run as root (sudo), or use the lab VM")]
    for ns_type in namespaces.TYPES:
        ok, detail = _probe_namespace(ns_type)
        fix = "enable it in the kernel" if ns_type != "user" else \
            "sysctl -w user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 on Debian)"
        checks.append(Check(f"namespace {ns_type}", ok, "can be created" if ok else detail, fix))
    with open("/proc/filesystems") as f:
        filesystems = f.read().split()
    checks.append(Check("overlayfs", "overlay" in filesystems,
                        "available" if "overlay" in filesystems else "not loaded", "modprobe overlay"))
    version, controllers = cgroup_version(), cgroup_controllers()
    layout = "v2 (unified)" if version == 2 else ("v1 hybrid" if os.path.exists(f"{CGROUP_ROOT}/unified") else "v1")
    checks.append(Check("cgroups", bool(controllers), f"{layout}; controllers: {' '.join(controllers) or 'none'}",
                        "mount cgroup2 on /sys/fs/cgroup or enable controllers"))
    seccomp = "Seccomp" in procfs.status_fields()
    checks.append(Check("seccomp", seccomp, "supported" if seccomp else "not in this kernel",
                        "use a kernel built with CONFIG_SECCOMP_FILTER"))
    busybox = shutil.which("busybox")
    checks.append(Check("busybox-static", bool(busybox), busybox or "missing", "apt-get install busybox-static"))
    for peer in ("runc", "crun"):
        path = shutil.which(peer)
        checks.append(Check(f"peer {peer}", bool(path), path or "missing (only used for comparisons)",
                            f"apt-get install {peer}"))
    return Report(checks)


# --- leaks ------------------------------------------------------------------------------
@dataclasses.dataclass
class Leak:
    kind: str  # mount | netns | link | cgroup | nft | container | process | sysctl
    name: str
    pid: int = 0  # for processes
    path: str = ""  # for a registry process: its labkit-registry-* directory; for a sysctl: its record

    def __str__(self) -> str:
        return f"{self.kind}: {self.name}"


def _is_labkit_path(path: str) -> bool:
    return any(part.startswith("labkit") for part in path.split("/"))


def _mounts() -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if _is_labkit_path(point):
                found.append(point)
    return found


def _netns() -> list[str]:
    return sorted(n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
                  if n.startswith("labkit"))


def _links() -> list[str]:
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(("lk", "labkit")))


def _cgroups() -> list[str]:
    found = []
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        for d in list(dirnames):
            if d.startswith("labkit") and not d.endswith((".service", ".scope", ".slice")):  # systemd's units
                found.append(os.path.join(dirpath, d))
                dirnames.remove(d)  # report the top of each labkit subtree
        if dirpath.count("/") > 9:
            dirnames[:] = []
    return sorted(found)


def _nft_tables() -> list[str]:
    if not shutil.which("nft"):
        return []
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.split()[-1:] and line.split()[-1].startswith("labkit")]


def _run_roots() -> list[str]:
    roots = {settings.runtime_root(), "/run/labkit/runtime"}
    roots.update(glob.glob("/tmp/labkit*/runtime") + glob.glob("/tmp/labkit*/*/runtime"))
    return sorted(r for r in roots if os.path.isdir(r))


def _cmdlines() -> Iterator[tuple[int, bytes]]:
    """(pid, raw /proc/PID/cmdline) of every other process that still exists."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                yield int(entry), f.read()
        except OSError:
            continue


def _monitor_pids() -> list[int]:
    return [pid for pid, cmdline in _cmdlines()
            if b"labkit.monitor" in cmdline or b"labkit.engine.monitor" in cmdline]


def _netns_holders() -> list[tuple[int, str]]:
    """labkit.net.NetnsHolder processes (`python -m labkit.net hold NAME`): (pid, NAME)."""
    found = []
    for pid, cmdline in _cmdlines():
        for marker in (b"labkit.net\0hold\0", b"labkit.net hold "):
            if marker in cmdline:
                name = cmdline.split(marker, 1)[1].split(b"\0")[0].split(b" ")[0]
                found.append((pid, name.decode(errors="replace")))
                break
    return found


def _sysctl_records() -> list[str]:
    """The labkit.net records of changed host sysctls: the current run root's, and those of
    the other run roots found (a test session's, say)."""
    roots = {settings.run_root(), "/run/labkit"} | {os.path.dirname(r) for r in _run_roots()}
    return sorted(p for p in (os.path.join(r, os.path.basename(net.sysctl_record())) for r in roots)
                  if os.path.isfile(p))


_REGISTRY_BINARIES = {b"docker-registry", b"registry"}


def _registry_processes() -> list[tuple[int, str]]:
    """docker-registry processes serving a config under a labkit path: LocalRegistry's temp dirs,
    and the one `labkit registry start` runs (labkit.registry.service)."""
    ours = settings.registry_state() + os.sep  # `labkit registry start`'s, wherever the run root is
    found = []
    for pid, cmdline in _cmdlines():
        argv = cmdline.split(b"\0")
        if argv and os.path.basename(argv[0]) in _REGISTRY_BINARIES:
            args = [a.decode(errors="replace") for a in argv[1:]]
            config = next((a for a in args if _is_labkit_path(a) or a.startswith(ours)), None)
            if config:
                found.append((pid, config))
    return found


def leaks() -> list[Leak]:
    """Every kernel object or process that looks like labkit's and still exists."""
    found = [Leak("mount", m) for m in _mounts()]
    found += [Leak("netns", n) for n in _netns()]
    found += [Leak("link", n) for n in _links()]
    found += [Leak("cgroup", c) for c in _cgroups()]
    found += [Leak("nft", t) for t in _nft_tables()]
    for root in _run_roots():
        found += [Leak("container", os.path.join(root, i)) for i in store.list_ids(root)]
    found += [Leak("process", f"monitor pid {p}", pid=p) for p in _monitor_pids()]
    found += [Leak("process", f"registry pid {p} ({config})", pid=p, path=os.path.dirname(config))
              for p, config in _registry_processes()]
    found += [Leak("process", f"netns holder {name} (pid {p})", pid=p) for p, name in _netns_holders()]
    for record in _sysctl_records():
        found += [Leak("sysctl", f"{key} (was {value})", path=record)
                  for key, value in net.changed_host_sysctls(record).items()]
    return found


# --- reset ----------------------------------------------------------------------------------
_REMOVAL_ORDER = ("container", "process", "mount", "netns", "link", "nft", "cgroup", "sysctl")


def reset(only: list[Leak] | None = None) -> list[str]:
    """Remove what `leaks()` finds (or just the given leaks); returns what was done.

    Containers and processes go first, so their mounts and cgroups are free to go.
    """
    done: list[str] = []
    for leak in sorted(leaks() if only is None else only, key=lambda l: _REMOVAL_ORDER.index(l.kind)):
        done += remove(leak)
    return done


def remove(leak: Leak) -> list[str]:
    """Remove one leaked object of labkit's."""
    if leak.kind == "container":
        return _remove_container(leak.name)
    if leak.kind == "process":
        try:
            os.kill(leak.pid, signal.SIGKILL)
        except ProcessLookupError:
            return []
        done = [f"killed {leak.name}"]
        if leak.path and os.path.basename(leak.path).startswith("labkit-registry-"):
            shutil.rmtree(leak.path, ignore_errors=True)
            done.append(f"removed {leak.path}")
        return done
    if leak.kind == "cgroup":
        return _remove_cgroup_tree(leak.name)
    if leak.kind == "sysctl":  # write back the value labkit found
        key = leak.name.split(" (was ", 1)[0]
        return [f"restored {done}" for done in net.restore_host_sysctls(only=[key], record=leak.path or None)]
    command = {"mount": ["umount", "-l", leak.name], "netns": ["ip", "netns", "delete", leak.name],
               "link": ["ip", "link", "delete", leak.name], "nft": ["nft", "delete", *leak.name.split()]}[leak.kind]
    subprocess.run(command, capture_output=True)
    return [f"removed {leak}"]


def _remove_container(directory: str) -> list[str]:
    """Kill the monitor first (so it cannot write into the state dir any more), then the container,
    then its cgroup."""
    done = []
    saved = store.read_json(os.path.join(directory, "state.json")) or {}
    name = os.path.basename(directory)
    victims = [p for p in (saved.get("monitor_pid"), saved.get("pid")) if p and _is_ours(p, saved)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
        done.append(f"killed {'monitor of' if pid == saved.get('monitor_pid') else 'container'} {name} (pid {pid})")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(store.proc_start_time(p) is not None for p in victims):
        time.sleep(0.01)
    group = saved.get("cgroup")
    if group and group.get("dirs"):  # the runtime's delete would remove it: nobody called it
        for path in sorted(set(group["dirs"].values()), key=len, reverse=True):
            if os.path.isdir(path):
                done += _remove_cgroup_tree(path)
    shutil.rmtree(directory, ignore_errors=True)
    return done + [f"removed state of {name}"]


def _is_ours(pid: int, saved: dict) -> bool:
    """Each pid is checked by its start time (a pid may have been reused since)."""
    if pid == saved.get("pid"):
        return store.proc_start_time(pid) == saved.get("start_time")
    return store.proc_start_time(pid) == saved.get("monitor_start")


def _thaw_tree(top: str) -> None:
    """Thaw frozen groups, top down: on cgroup v1 a frozen task ignores SIGKILL until thawed."""
    for dirpath, _, _ in os.walk(top):
        for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            try:
                with open(os.path.join(dirpath, name), "w") as f:
                    f.write(value)
            except OSError:
                pass


def _remove_cgroup_tree(top: str) -> list[str]:
    done = []
    _thaw_tree(top)
    for dirpath, _, _ in sorted(os.walk(top), key=lambda item: -item[0].count("/")):
        procs = os.path.join(dirpath, "cgroup.procs")
        for _ in range(50):
            try:
                with open(procs) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(dirpath)
                done.append(f"removed cgroup {dirpath}")
                break
            except OSError:
                time.sleep(0.02)
    return done


if __name__ == "__main__":
    print(preflight())
    sys.exit(0)
