"""Root filesystems: build one from busybox, and make it a container's `/`.

Two halves:
- building: `build_busybox_rootfs` lays out a tiny Linux userland from the
  host's static busybox, with no network and byte-for-byte reproducible;
- entering: the steps a container's init runs, in order — private
  propagation, a bind mount of the rootfs onto itself, the spec's mounts,
  /dev, then pivot_root and detaching the old root so nothing of the host's
  tree stays reachable (which chroot alone does not achieve).
"""
from __future__ import annotations

import dataclasses
import os
import stat
from typing import Iterable, Iterator

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


def populate_dev(rootfs: str) -> None:
    """Create the standard device nodes and links in the container's /dev.

    mknod works for real root; inside a user namespace it is refused, and the
    host's node is bind-mounted instead (what runc does too).
    """
    dev = secure_join(rootfs, "/dev")
    os.makedirs(dev, exist_ok=True)
    for name, (major, minor) in DEFAULT_DEVICES.items():
        path = os.path.join(dev, name)
        if os.path.exists(path):
            continue
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(path, 0o666)  # mknod applies the umask
        except PermissionError:
            open(path, "a").close()
            lsys.mount(f"/dev/{name}", path, None, lsys.MS_BIND)
    links = dict(DEV_SYMLINKS)
    if os.path.exists(KCORE_LINK[1]):  # CONFIG_PROC_KCORE
        links[KCORE_LINK[0]] = KCORE_LINK[1]
    for name, target in links.items():
        path = os.path.join(dev, name)
        if not os.path.lexists(path):
            os.symlink(target, path)


def pivot_into(rootfs: str) -> None:
    """Make rootfs `/` and detach the old root entirely.

    pivot_root(".", ".") stacks the old root on top of the new one at the
    same place; unmounting "." (lazily) then removes it, with no directory
    needed inside the image. After this, no path leads back to the host.
    """
    os.chdir(rootfs)
    lsys.pivot_root(".", ".")
    lsys.umount2(".", lsys.MNT_DETACH)
    os.chdir("/")


def remount_readonly_root() -> None:
    lsys.mount(None, "/", None, lsys.MS_BIND | lsys.MS_REMOUNT | lsys.MS_RDONLY | lsys.MS_REC)
