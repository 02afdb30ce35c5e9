"""Root filesystems: build one from busybox, and make it a container's `/`.

Two halves:
- building: `build_busybox_rootfs` lays out a tiny Linux userland from the
  host's static busybox, with no network and byte-for-byte reproducible;
- entering: the steps a container's init runs, in order — the root's
  propagation (private unless linux.rootfsPropagation says otherwise), a
  bind mount of the rootfs onto itself, the spec's mounts, /dev (with
  linux.devices), then pivot_root and detaching the old root so nothing of
  the host's tree stays reachable (which chroot alone does not achieve);
  after it, linux.readonlyPaths and linux.maskedPaths.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import Any, Iterable, Iterator

from . import sys as lsys
from .errors import LabkitError, SyscallError

FIXED_MTIME = 1704067200  # 2024-01-01T00:00:00Z: same busybox -> same tree
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
ROOT_DIRS = ("bin", "dev", "etc", "home", "proc", "root", "sbin", "sys", "tmp",
             "usr", "usr/bin", "usr/sbin", "var", "var/tmp")
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    "etc/os-release": 'NAME="labkit busybox"\nID=labkit\nPRETTY_NAME="labkit busybox rootfs"\n',
}


# --- building --------------------------------------------------------------------
def find_busybox() -> str:
    """The host's static busybox, or an error that says how to get it."""
    for path in BUSYBOX_PATHS:
        if os.path.exists(path) and _is_static(path):
            return path
    raise LabkitError("no static busybox found on this host",
                      "install it: apt-get install busybox-static")


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096 * 4)
    return b"ld-linux" not in head  # dynamic ELF files name their loader early


def build_busybox_rootfs(dest: str, busybox: str | None = None) -> str:
    """Create a minimal root filesystem at `dest` (which must not exist yet).

    Every entry gets owner 0:0 and a fixed mtime, so the same busybox binary
    always yields the same tree (see `tree_digest`).
    """
    busybox = busybox or find_busybox()
    if os.path.lexists(dest):
        raise LabkitError(f"{dest} already exists", "pick a new directory or remove it first")
    os.makedirs(dest)
    for d in ROOT_DIRS:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    os.chmod(os.path.join(dest, "var/tmp"), 0o1777)
    os.chmod(os.path.join(dest, "root"), 0o700)
    import shutil  # building-only imports stay out of the container init's start path

    shutil.copyfile(busybox, os.path.join(dest, "bin/busybox"))
    os.chmod(os.path.join(dest, "bin/busybox"), 0o755)
    for applet in _applets(busybox):
        link = os.path.join(dest, applet)
        if applet != "bin/busybox" and not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)
    for rel, text in ETC_FILES.items():
        with open(os.path.join(dest, rel), "w") as f:
            f.write(text)
        os.chmod(os.path.join(dest, rel), 0o644)
    _normalise(dest)
    return dest


def _applets(busybox: str) -> list[str]:
    import subprocess

    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True)
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())


def _normalise(root: str) -> None:
    for path in [root, *(p for p, _ in _walk(root))]:
        os.lchown(path, 0, 0)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            yield path, os.lstat(path)


def tree_digest(root: str) -> str:
    """sha256 over every entry's path, type, mode, owner, mtime, and content."""
    import hashlib

    h = hashlib.sha256()
    for path, st in _walk(root):
        rel = os.path.relpath(path, root)
        h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}:{st.st_gid}\0{int(st.st_mtime)}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode())
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return "sha256:" + h.hexdigest()


# --- paths -------------------------------------------------------------------------
def secure_join(root: str, unsafe: str) -> str:
    """Join `unsafe` under `root`, resolving symlinks as if `root` were `/`.

    Neither `..` nor a symlink (absolute or relative) can lead outside root,
    so a hostile image cannot make the runtime mount or write over the host.
    """
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise LabkitError(f"too many symlinks resolving {unsafe!r} in {root}",
                                  "the image has a symlink loop")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


# --- mount options ---------------------------------------------------------------------
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    # option: (clear?, flag) as in mount(8)
    "ro": (False, lsys.MS_RDONLY), "rw": (True, lsys.MS_RDONLY),
    "nosuid": (False, lsys.MS_NOSUID), "suid": (True, lsys.MS_NOSUID),
    "nodev": (False, lsys.MS_NODEV), "dev": (True, lsys.MS_NODEV),
    "noexec": (False, lsys.MS_NOEXEC), "exec": (True, lsys.MS_NOEXEC),
    "noatime": (False, lsys.MS_NOATIME), "relatime": (False, lsys.MS_RELATIME),
    "strictatime": (False, lsys.MS_STRICTATIME),
    "bind": (False, lsys.MS_BIND), "rbind": (False, lsys.MS_BIND | lsys.MS_REC),
}
_PROPAGATION = {
    "private": lsys.MS_PRIVATE, "rprivate": lsys.MS_PRIVATE | lsys.MS_REC,
    "slave": lsys.MS_SLAVE, "rslave": lsys.MS_SLAVE | lsys.MS_REC,
    "shared": lsys.MS_SHARED, "rshared": lsys.MS_SHARED | lsys.MS_REC,
}


@dataclasses.dataclass(frozen=True)
class MountOptions:
    flags: int
    propagation: int
    data: str


def parse_mount_options(options: Iterable[str]) -> MountOptions:
    """Split OCI/mount(8) options into mount flags, propagation and fs data."""
    flags = propagation = 0
    data = []
    for opt in options:
        if opt in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return MountOptions(flags, propagation, ",".join(data))


# --- entering: run by the container's init, inside its own mount namespace ------------
# name: (major, minor) of the character devices OCI requires, in runc's order (it shows in
# /proc/self/mountinfo when they are bind mounts, inside a user namespace).
DEFAULT_DEVICES = {
    "null": (1, 3), "random": (1, 8), "full": (1, 7),
    "tty": (5, 0), "zero": (1, 5), "urandom": (1, 9),
}
DEV_SYMLINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
KCORE_LINK = ("core", "/proc/kcore")  # only where the kernel has /proc/kcore, as runc does


def make_mounts_private() -> None:
    """Stop mount events propagating to the host (systemd mounts / shared)."""
    lsys.mount(None, "/", None, lsys.MS_REC | lsys.MS_PRIVATE)


def bind_onto_itself(rootfs: str) -> None:
    """pivot_root needs new_root to be a mount point: make it one."""
    lsys.mount(rootfs, rootfs, None, lsys.MS_BIND | lsys.MS_REC)


# linux.rootfsPropagation: the values runc accepts ("" is unset).
ROOT_PROPAGATION = {
    "private": lsys.MS_PRIVATE, "rprivate": lsys.MS_PRIVATE | lsys.MS_REC,
    "slave": lsys.MS_SLAVE, "rslave": lsys.MS_SLAVE | lsys.MS_REC,
    "shared": lsys.MS_SHARED, "rshared": lsys.MS_SHARED | lsys.MS_REC,
    "unbindable": lsys.MS_UNBINDABLE, "runbindable": lsys.MS_UNBINDABLE | lsys.MS_REC,
}
# Unset: labkit makes every mount private; runc makes them rslave (host events still flow in).
# Neither lets a mount made in the container reach the host.
DEFAULT_ROOT_PROPAGATION = lsys.MS_PRIVATE | lsys.MS_REC


def prepare_root(rootfs: str, propagation: str | None) -> None:
    """Before any mount, as runc's prepareRoot: the propagation of / (the value asked for, or
    rprivate), then the mount holding the rootfs made private (slave for a slave value), since
    a shared parent makes pivot_root fail and would copy the rootfs's bind mount to the host."""
    flag = ROOT_PROPAGATION[propagation] if propagation else DEFAULT_ROOT_PROPAGATION
    lsys.mount(None, "/", None, flag)
    _set_parent_mount(rootfs, lsys.MS_SLAVE if flag & lsys.MS_SLAVE else lsys.MS_PRIVATE)


def _set_parent_mount(path: str, flag: int) -> None:
    """Set `flag` on the mount `path` is on: EINVAL means not a mount point, so try its parent."""
    path = os.path.realpath(path)
    while True:
        try:
            lsys.mount(None, path, None, flag)
            return
        except SyscallError as err:
            if err.errno != errno.EINVAL or path == "/":
                raise
        path = os.path.dirname(path)


def finish_root_propagation(propagation: str | None) -> None:
    """After pivot_root: shared and unbindable apply to the container's own / (private until
    now, so nothing of the rootfs's setup reached the host); private and slave are in place
    already. As runc >= 1.4 (1.1 left a shared root private and failed on unbindable)."""
    flag = ROOT_PROPAGATION[propagation] if propagation else 0
    if flag and not flag & (lsys.MS_PRIVATE | lsys.MS_SLAVE):
        lsys.mount(None, "/", None, flag)


def mount_one(rootfs: str, destination: str, fstype: str | None, source: str | None,
              options: Iterable[str]) -> None:
    """Mount one OCI `mounts[]` entry under rootfs (bind or a filesystem)."""
    opts = parse_mount_options(options)
    target = secure_join(rootfs, destination)
    is_bind = bool(opts.flags & lsys.MS_BIND) or fstype == "bind"
    if is_bind and source and not os.path.isdir(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()  # a file bind mount needs a file to cover
    else:
        os.makedirs(target, exist_ok=True)
    if is_bind:
        flags = opts.flags | lsys.MS_BIND
        lsys.mount(source, target, None, flags & (lsys.MS_BIND | lsys.MS_REC))
        if flags & ~(lsys.MS_BIND | lsys.MS_REC):  # bind ignores other flags until remount
            lsys.mount(None, target, None, flags | lsys.MS_REMOUNT)
    elif fstype == "sysfs":
        _mount_sysfs(target, opts)
    else:
        lsys.mount(source or fstype, target, fstype if fstype != "cgroup" else "cgroup2",
                   opts.flags, opts.data or None)
    if opts.propagation:
        lsys.mount(None, target, None, opts.propagation)


def _mount_sysfs(target: str, opts: MountOptions) -> None:
    try:
        lsys.mount("sysfs", target, "sysfs", opts.flags, opts.data or None)
    except SyscallError:  # a user namespace without its own netns may not mount sysfs
        lsys.mount("/sys", target, None, lsys.MS_BIND | lsys.MS_REC)
        lsys.mount(None, target, None, lsys.MS_BIND | lsys.MS_REMOUNT | lsys.MS_RDONLY | opts.flags)


def populate_dev(rootfs: str, devices: Iterable[dict[str, Any]] = ()) -> None:
    """Create the standard device nodes, those of linux.devices, and the links in /dev.

    mknod works for real root; inside a user namespace it is refused, and the
    host's node is bind-mounted instead (what runc does too).
    """
    dev = secure_join(rootfs, "/dev")
    os.makedirs(dev, exist_ok=True)
    umask = os.umask(0)  # as runc: each node gets exactly its fileMode, each new directory 0755
    try:
        for node in device_nodes(devices):
            make_device(rootfs, node)
    finally:
        os.umask(umask)
    links = dict(DEV_SYMLINKS)
    if os.path.exists(KCORE_LINK[1]):  # CONFIG_PROC_KCORE
        links[KCORE_LINK[0]] = KCORE_LINK[1]
    for name, target in links.items():
        path = os.path.join(dev, name)
        if not os.path.lexists(path):
            os.symlink(target, path)


DEVICE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}  # u: unbuffered char
MAJOR_MAX, MINOR_MAX = 2**12 - 1, 2**20 - 1  # the kernel's dev_t: 12 bits of major, 20 of minor


@dataclasses.dataclass(frozen=True)
class DeviceNode:
    path: str  # inside the container
    kind: int  # stat.S_IFCHR, S_IFBLK or S_IFIFO
    major: int = 0
    minor: int = 0
    mode: int = 0o666  # runc's default fileMode
    uid: int = 0
    gid: int = 0

    @classmethod
    def from_spec(cls, d: dict[str, Any]) -> "DeviceNode":
        """One linux.devices entry (its fields checked before)."""
        mode = d.get("fileMode")
        return cls(d["path"], DEVICE_TYPES[d["type"]], d.get("major") or 0, d.get("minor") or 0,
                   0o666 if mode is None else mode & 0o7777, d.get("uid") or 0, d.get("gid") or 0)


def device_nodes(devices: Iterable[dict[str, Any]]) -> list[DeviceNode]:
    """runc's list, in its order: the default nodes the spec does not redefine, then the
    spec's; /dev/ptmx is skipped (it is always the link to pts/ptmx)."""
    wanted = [DeviceNode.from_spec(d) for d in devices]
    redefined = {n.path for n in wanted}
    defaults = [DeviceNode(f"/dev/{name}", stat.S_IFCHR, major, minor) for name, (major, minor) in DEFAULT_DEVICES.items()]
    return [n for n in defaults if n.path not in redefined] + [n for n in wanted if os.path.normpath(n.path) != "/dev/ptmx"]


def make_device(rootfs: str, node: DeviceNode) -> None:
    """mknod one node with its mode and owner (the caller sets umask 0). Where mknod is refused
    (a user namespace, a devices cgroup without "m"), the host's node at the same path is
    bind-mounted instead, as runc does; an existing entry is kept, as runc ignores EEXIST."""
    target = secure_join(rootfs, node.path)
    os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
    if os.path.lexists(target):
        return
    try:
        os.mknod(target, node.kind | node.mode, os.makedev(node.major, node.minor))
    except PermissionError:
        _bind_host_node(node.path, target)
        return
    os.chown(target, node.uid, node.gid)


def _bind_host_node(path: str, target: str) -> None:
    open(target, "a").close()  # a file bind mount needs a file to cover
    try:
        lsys.mount(path, target, None, lsys.MS_BIND)
    except SyscallError as err:
        if err.errno != errno.ENOENT:
            raise
        raise LabkitError(f"linux.devices: mknod {path} is not permitted here (a user namespace, or the devices "
                          f"cgroup) and the host has no {path} to bind-mount instead",
                          "there, as with runc, a device must exist on the host at the same path") from None


def device_problems(devices: list[dict[str, Any]]) -> Iterator[str]:
    """linux.devices: what the JSON types cannot show (the type names are checked with them)."""
    seen = set()
    for i, d in enumerate(devices):
        where, path = f"linux.devices[{i}]", d["path"]
        if not path.startswith("/") or os.path.normpath(path) == "/":
            yield f"{where}.path {path!r} must be an absolute path to a file, e.g. /dev/loop0"
        if path in seen:
            yield f"{where}.path {path} is listed twice"
        seen.add(path)
        if d["type"] == "p":  # a FIFO has no device number
            continue
        for name, top in (("major", MAJOR_MAX), ("minor", MINOR_MAX)):
            if d.get(name) is None:
                yield f"{where}.{name} is required for a type {d['type']!r} device (see `ls -l {path}` on the host)"
            elif not 0 <= d[name] <= top:
                yield f"{where}.{name} must be 0 to {top}, got {d[name]}"


# --- after pivot_root: linux.readonlyPaths and linux.maskedPaths ----------------------
def readonly_path(path: str) -> None:
    """Bind `path` onto itself (with what is mounted below it) and make that read-only, keeping
    nosuid/nodev/noexec: a user namespace may not clear them, so the remount would fail (EPERM).
    Only the top mount is remounted, as runc does. A path this kernel lacks is skipped."""
    try:
        lsys.mount(path, path, None, lsys.MS_BIND | lsys.MS_REC)
    except SyscallError as err:
        if err.errno == errno.ENOENT:
            return
        raise
    have = os.statvfs(path).f_flag
    kept = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, lsys.MS_NOSUID), (os.ST_NODEV, lsys.MS_NODEV),
                             (os.ST_NOEXEC, lsys.MS_NOEXEC)):
        if have & st_flag:
            kept |= ms_flag
    lsys.mount(path, path, None, kept | lsys.MS_BIND | lsys.MS_REMOUNT | lsys.MS_RDONLY)


def mask_path(path: str) -> None:
    """Hide `path`: an empty read-only tmpfs over a directory, /dev/null over anything else
    (reads show nothing, writes fail). A path this kernel lacks is skipped, as runc does."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        lsys.mount("tmpfs", path, "tmpfs", lsys.MS_RDONLY)
    else:
        lsys.mount("/dev/null", path, None, lsys.MS_BIND)


def path_problems(linux: dict[str, Any], mount_namespace: bool) -> Iterator[str]:
    """linux.devices, maskedPaths, readonlyPaths and rootfsPropagation are all made with mounts
    (or mknod in the container's /dev tmpfs): they need a mount namespace of the container's."""
    asked = [f"linux.{name}" for name in ("devices", "maskedPaths", "readonlyPaths", "rootfsPropagation")
             if linux.get(name)]
    if asked and not mount_namespace:
        yield (f"{', '.join(asked)} need a mount namespace of the container's own, and linux.namespaces has "
               'none (the container would share the host\'s mounts): add {"type": "mount"} to linux.namespaces')
    propagation = linux.get("rootfsPropagation")
    if propagation and propagation not in ROOT_PROPAGATION:
        yield f"linux.rootfsPropagation must be one of {', '.join(ROOT_PROPAGATION)}, got {propagation!r}"
    yield from device_problems(linux.get("devices") or [])


def pivot_into(rootfs: str) -> None:
    """Make rootfs `/` and detach the old root entirely.

    pivot_root(".", ".") stacks the old root on top of the new one at the
    same place; unmounting "." (lazily) then removes it, with no directory
    needed inside the image. After this, no path leads back to the host.
    As runc, the old root is made rslave first: where the root's propagation
    left it shared with the host's mounts, the unmount would propagate there.
    """
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.chdir(rootfs)
        lsys.pivot_root(".", ".")
        os.fchdir(old_root)  # "." is now the old root for certain, whatever the kernel did with cwd
        lsys.mount(None, ".", None, lsys.MS_SLAVE | lsys.MS_REC)
        lsys.umount2(".", lsys.MNT_DETACH)
    finally:
        os.close(old_root)
    os.chdir("/")


def move_into(rootfs: str) -> None:
    """runc --no-pivot: move the rootfs mount onto / and chroot into it (for a root
    pivot_root refuses, e.g. a ramdisk). Weaker than pivot_root: the old root stays
    reachable below the new one for a process with CAP_SYS_CHROOT."""
    os.chdir(rootfs)
    lsys.mount(rootfs, "/", None, lsys.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def chroot_into(rootfs: str) -> None:
    """A container without a mount namespace of its own: chroot only, as runc does
    (pivot_root or any mount would change the shared namespace of the host)."""
    os.chroot(rootfs)
    os.chdir("/")


def remount_readonly_root() -> None:
    lsys.mount(None, "/", None, lsys.MS_BIND | lsys.MS_REMOUNT | lsys.MS_RDONLY | lsys.MS_REC)
