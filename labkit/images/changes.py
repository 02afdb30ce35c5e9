"""What changed between two directory trees: the content of a layer.

A layer is a changeset: paths added or modified (written out in full), paths
deleted (whiteouts) and directories whose old content is gone entirely
(opaque). Two ways to find one:

- `diff_trees(old, new)`: compare two trees entry by entry (what `docker
  commit` does on a plain copy of a filesystem);
- `upper_changes(upper)`: read an overlayfs upper directory, where the kernel
  already recorded the changes as it made them — a deletion is a character
  device 0/0, an opaque directory carries the xattr trusted.overlay.opaque=y.
"""
from __future__ import annotations

import dataclasses
import os
import stat
from typing import Iterator

ADD, MODIFY, DELETE, OPAQUE = "add", "modify", "delete", "opaque"
OVERLAY_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


@dataclasses.dataclass(frozen=True, order=True)
class Change:
    path: str  # relative to the tree's root, "/"-separated
    kind: str  # add | modify | delete | opaque

    def __str__(self) -> str:
        return f"{'A' if self.kind == ADD else 'C' if self.kind == MODIFY else 'D' if self.kind == DELETE else 'O'} /{self.path}"


# --- comparing two trees ---------------------------------------------------------------------
def diff_trees(old: str | None, new: str, compare_mtime: bool = True) -> list[Change]:
    """The changes that turn tree `old` (None: empty) into tree `new`, sorted by path.

    A directory whose old entries are all gone while it still exists becomes
    one OPAQUE change (plus its new entries) instead of a whiteout per entry.
    """
    out: list[Change] = []
    _diff_dir("", old, new, compare_mtime, out)
    return sorted(out, key=lambda c: c.path.split("/"))


def _listdir(path: str | None) -> set[str]:
    if path is None or not os.path.isdir(path) or os.path.islink(path):
        return set()
    return set(os.listdir(path))


def _diff_dir(rel: str, old: str | None, new: str, compare_mtime: bool, out: list[Change]) -> None:
    old_names, new_names = _listdir(old), _listdir(new)
    if rel and old_names and not old_names & new_names:
        out.append(Change(rel, OPAQUE))  # nothing of the old content survives
        old, old_names = None, set()
    for name in sorted(old_names - new_names):
        out.append(Change(_join(rel, name), DELETE))
    for name in sorted(new_names):
        child_rel, new_path = _join(rel, name), os.path.join(new, name)
        old_path = os.path.join(old, name) if old is not None and name in old_names else None
        n = os.lstat(new_path)
        o = os.lstat(old_path) if old_path else None
        if o is None or stat.S_IFMT(o.st_mode) != stat.S_IFMT(n.st_mode):
            out.append(Change(child_rel, ADD))  # apply replaces whatever was there
            if stat.S_ISDIR(n.st_mode):
                _diff_dir(child_rel, None, new_path, compare_mtime, out)
            continue
        if not same_entry(old_path, o, new_path, n, compare_mtime):  # type: ignore[arg-type]
            out.append(Change(child_rel, MODIFY))
        if stat.S_ISDIR(n.st_mode):
            _diff_dir(child_rel, old_path, new_path, compare_mtime, out)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def same_entry(a: str, sa: os.stat_result, b: str, sb: os.stat_result, compare_mtime: bool = True) -> bool:
    """Same type, mode (incl. setuid/sticky), owner, mtime (optional) and content."""
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    if compare_mtime and int(sa.st_mtime) != int(sb.st_mtime):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev == sb.st_rdev
    if stat.S_ISREG(sa.st_mode):
        return sa.st_size == sb.st_size and _same_content(a, b)
    return True


def _same_content(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 16), fb.read(1 << 16)
            if x != y:
                return False
            if not x:
                return True


# --- reading an overlayfs upper directory ---------------------------------------------------------
def is_overlay_whiteout(st: os.stat_result) -> bool:
    """overlayfs marks a deleted lower entry with a character device 0/0 in the upper dir."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_overlay_opaque(path: str) -> bool:
    for name in OVERLAY_OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def upper_changes(upper: str) -> list[Change]:
    """The changes an overlayfs upper dir holds, as layer changes, sorted by path.

    Every entry present is ADD (copied-up directories included: their
    metadata may have changed); 0/0 devices are DELETEs; opaque dirs OPAQUE.
    """
    return sorted(_walk_upper(upper, ""), key=lambda c: c.path.split("/"))


def _walk_upper(root: str, rel: str) -> Iterator[Change]:
    directory = os.path.join(root, rel)
    for name in sorted(os.listdir(directory)):
        child_rel = _join(rel, name)
        path = os.path.join(root, child_rel)
        st = os.lstat(path)
        if is_overlay_whiteout(st):
            yield Change(child_rel, DELETE)
            continue
        if stat.S_ISDIR(st.st_mode):
            yield Change(child_rel, OPAQUE if is_overlay_opaque(path) else ADD)
            yield from _walk_upper(root, child_rel)
        else:
            yield Change(child_rel, ADD)
