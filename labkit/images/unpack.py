"""Applying a layer (an uncompressed tar stream) onto a directory — safely.

Two targets:
- FLAT: onto a tree that already holds the lower layers (what `umoci unpack`
  does). A whiteout `.wh.NAME` deletes NAME from the lower layers; an opaque
  marker `.wh..wh..opq` empties its directory of everything the lower layers
  put there. Entries of the same layer are never deleted by its whiteouts.
- OVERLAY: into an empty directory that becomes an overlayfs lowerdir. The
  whiteouts are translated to overlayfs' own format: a character device 0/0
  for a deletion and the xattr trusted.overlay.opaque=y for an opaque
  directory, so the kernel hides the lower entries at mount time.

An image is untrusted input. Every entry is checked before anything is
written: absolute names, `..`, a write through a symlink (the classic
"symlink then file" escape) and hard links to anything outside the tree are
refused with a LayerSecurityError. Symlinks are stored, never followed.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
import stat
import tarfile
from typing import IO

from ..errors import LabkitError

FLAT, OVERLAY = "flat", "overlay"
WHITEOUT = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
XATTR_PREFIX = "SCHILY.xattr."
OVERLAY_OPAQUE = "trusted.overlay.opaque"


class LayerSecurityError(LabkitError):
    """A layer entry would reach outside the directory it is applied to."""


@dataclasses.dataclass
class ApplyReport:
    entries: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    def __repr__(self) -> str:
        extra = f", notes={self.notes}" if self.notes else ""
        return f"ApplyReport(entries={self.entries}, whiteouts={self.whiteouts}, opaque_dirs={self.opaque_dirs}{extra})"


def clean_name(name: str, what: str = "entry") -> str:
    """A tar member name as a relative path; refuse absolute names and `..`."""
    if name.startswith("/"):
        raise LayerSecurityError(f"layer {what} {name!r} is an absolute path",
                                 "layer entries must be relative to the root; the image is malformed or hostile")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerSecurityError(f"layer {what} {name!r} contains '..' and could escape the root",
                                 "the image is malformed or hostile; nothing after this entry was applied")
    return "/".join(parts)


def apply_tar(stream: IO[bytes], root: str, mode: str = FLAT, same_owner: bool | None = None) -> ApplyReport:
    """Apply the uncompressed tar `stream` onto `root`; returns what was done."""
    os.makedirs(root, exist_ok=True)
    applier = _Applier(os.path.abspath(root), mode, os.geteuid() == 0 if same_owner is None else same_owner)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            applier.entry(tar, member)
    applier.finish()
    return applier.report


class _Applier:
    def __init__(self, root: str, mode: str, same_owner: bool) -> None:
        if mode not in (FLAT, OVERLAY):
            raise LabkitError(f"unknown apply mode {mode!r}", f"use {FLAT!r} or {OVERLAY!r}")
        self.root, self.mode, self.same_owner = root, mode, same_owner
        self.report = ApplyReport()
        self.written: set[str] = set()     # paths this layer created (its whiteouts spare them)
        self.known_dirs: set[str] = set()  # real directories already checked (no symlinks)
        self.dirs: dict[str, tarfile.TarInfo] = {}  # mode and mtime are set last, deepest first
        # Lower directories this layer changes the content of without describing them: their
        # times are put back at the end, so they keep the lower layer's metadata (as umoci does).
        self.times: dict[str, tuple[int, int]] = {}

    # --- one tar member ---
    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = clean_name(m.name)
        if not name:
            return  # "./" itself: the root's metadata is the caller's, not the layer's
        parent_rel, base = posixpath.split(name)
        parent = self._parent_dir(parent_rel, name)
        self.report.entries += 1
        if base == OPAQUE_MARKER:
            self._opaque(parent, parent_rel)
        elif base.startswith(WHITEOUT + WHITEOUT):
            self.report.notes.append(f"ignored AUFS metadata entry /{name}")
        elif base.startswith(WHITEOUT):
            self._whiteout(parent, parent_rel, base[len(WHITEOUT):], name)
        else:
            self._write(tar, m, name, os.path.join(parent, base))

    def _parent_dir(self, parent_rel: str, name: str) -> str:
        """The host path of an entry's parent: real directories only, created if missing."""
        path = self.root
        for i, part in enumerate(parent_rel.split("/") if parent_rel else []):
            path = os.path.join(path, part)
            if path in self.known_dirs:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._touch(os.path.dirname(path))
                os.mkdir(path, 0o755)
                self.known_dirs.add(path)
                continue
            rel = "/".join(parent_rel.split("/")[: i + 1])
            if stat.S_ISLNK(st.st_mode):
                raise LayerSecurityError(
                    f"layer entry {name!r} would be written through the symlink /{rel} -> {os.readlink(path)}",
                    "a layer never writes below a symlink; this is the symlink-escape attack — image refused")
            if not stat.S_ISDIR(st.st_mode):
                raise LabkitError(f"layer entry {name!r} needs /{rel} to be a directory, but it is not",
                                  "the layer is inconsistent with the layers below it")
            self.known_dirs.add(path)
        return path

    def _touch(self, directory: str) -> None:
        """Remember a directory's times before this layer first changes its content."""
        if self.mode == FLAT and directory not in self.times:
            st = os.lstat(directory)
            self.times[directory] = (st.st_atime_ns, st.st_mtime_ns)

    def _forget(self, path: str) -> None:
        """A path was replaced: what we knew about it (and below it) no longer holds."""
        self.known_dirs = {d for d in self.known_dirs if d != path and not d.startswith(path + "/")}

    def _remove(self, path: str, st: os.stat_result) -> None:
        self._forget(path)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def _write(self, tar: tarfile.TarFile, m: tarfile.TarInfo, name: str, path: str) -> None:
        try:
            existing: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is None or not (m.isdir() and stat.S_ISDIR(existing.st_mode)):
            self._touch(os.path.dirname(path))
        if existing is not None and not (m.isdir() and stat.S_ISDIR(existing.st_mode)):
            self._remove(path, existing)  # a new entry replaces whatever was there
            existing = None
        self.written.add(name)
        if m.isdir():
            if existing is None:
                os.mkdir(path, 0o700)
            self.known_dirs.add(path)
            self.dirs[path] = m
            self._owner(path, m)
            self._xattrs(path, m)
            return
        if m.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(m)
                assert source is not None
                shutil.copyfileobj(source, out, 1 << 20)
        elif m.issym():
            os.symlink(m.linkname, path)  # stored as is; never followed by this code
        elif m.islnk():
            os.link(self._link_target(m.linkname, name), path, follow_symlinks=False)
            return  # a hard link shares its target's inode and metadata
        elif m.ischr() or m.isblk():
            if not self._device(path, m, name):
                return
        elif m.isfifo():
            os.mkfifo(path, 0o600)
        else:
            self.report.notes.append(f"skipped /{name}: unsupported tar entry type {m.type!r}")
            self.written.discard(name)
            return
        self._owner(path, m)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)  # after chown, which clears setuid/setgid
        self._xattrs(path, m)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def _device(self, path: str, m: tarfile.TarInfo, name: str) -> bool:
        """Device nodes are created when we may (root); otherwise skipped, with a note."""
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        try:
            os.mknod(path, kind | (m.mode & 0o7777), os.makedev(m.devmajor, m.devminor))
            return True
        except PermissionError:
            self.written.discard(name)
            self.report.notes.append(f"skipped device node /{name} ({m.devmajor}:{m.devminor}): creating it needs root")
            return False

    def _link_target(self, linkname: str, name: str) -> str:
        """A hard link's target: inside the tree, not through a symlink, an existing non-directory."""
        target = clean_name(linkname, "hard link target")
        if not target:
            raise LayerSecurityError(f"hard link {name!r} points at the root directory", "the image is malformed")
        path = self.root
        parts = target.split("/")
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise LabkitError(f"hard link {name!r} -> {linkname!r}: the target does not exist",
                                  "a hard link must point at a file of the same (or a lower) layer") from None
            if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
                raise LayerSecurityError(f"hard link {name!r} -> {linkname!r} goes through the symlink or file /{'/'.join(parts[:i + 1])}",
                                         "hard links through symlinks could reach host files — image refused")
        if stat.S_ISDIR(st.st_mode):
            raise LayerSecurityError(f"hard link {name!r} -> {linkname!r} points at a directory",
                                     "hard links to directories are not allowed")
        return path

    def _owner(self, path: str, m: tarfile.TarInfo) -> None:
        if not self.same_owner:
            if "owners not restored (not root)" not in self.report.notes:
                self.report.notes.append("owners not restored (not root)")
            return
        os.lchown(path, m.uid, m.gid)

    def _xattrs(self, path: str, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith(XATTR_PREFIX):
                continue
            attr = key[len(XATTR_PREFIX):]
            if attr.startswith("trusted.overlay.") or attr.startswith("user.overlay."):
                self.report.notes.append(f"dropped overlayfs xattr {attr} on /{m.name}: only labkit sets those")
                continue
            try:
                os.setxattr(path, attr, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as err:
                self.report.notes.append(f"xattr {attr} on /{m.name} not set: {err.strerror}")

    # --- whiteouts ---
    def _whiteout(self, parent: str, parent_rel: str, target: str, name: str) -> None:
        if target in ("", ".", ".."):
            raise LayerSecurityError(f"whiteout {name!r} names {target!r}", "the image is malformed or hostile")
        rel = posixpath.join(parent_rel, target) if parent_rel else target
        path = os.path.join(parent, target)
        self.report.whiteouts += 1
        if rel in self.written:
            return  # a whiteout hides lower layers only
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            self._touch(parent)
            self._remove(path, st)
        if self.mode == OVERLAY:
            try:
                os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
            except PermissionError:
                raise LabkitError(f"cannot create the overlayfs whiteout for /{rel}: mknod needs root",
                                  "unpack layers for overlayfs as root (or in the lab VM)") from None

    def _opaque(self, parent: str, parent_rel: str) -> None:
        self.report.opaque_dirs += 1
        if self.mode == OVERLAY:
            try:
                os.setxattr(parent, OVERLAY_OPAQUE, b"y", follow_symlinks=False)
            except PermissionError:
                raise LabkitError(f"cannot mark /{parent_rel} opaque: trusted.* xattrs need root",
                                  "unpack layers for overlayfs as root (or in the lab VM)") from None
            return
        for child in os.listdir(parent):
            rel = posixpath.join(parent_rel, child) if parent_rel else child
            if rel not in self.written:
                self._touch(parent)
                self._remove(os.path.join(parent, child), os.lstat(os.path.join(parent, child)))

    # --- the end: directory modes and times, deepest first (writing inside changes mtimes) ---
    def finish(self) -> None:
        for path, (atime, mtime) in self.times.items():
            if path not in self.dirs and os.path.isdir(path) and not os.path.islink(path):
                os.utime(path, ns=(atime, mtime))
        for path, m in sorted(self.dirs.items(), key=lambda item: -item[0].count("/")):
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
            except FileNotFoundError:
                continue
            os.chmod(path, m.mode & 0o7777)
            os.utime(path, (m.mtime, m.mtime))
